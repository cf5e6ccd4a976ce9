"""File helpers every part of camzoo shares: atomic writes and safe checkpoint loading.

Why: an interrupted run must never leave a half-written file where a finished one is expected,
and a checkpoint must never be able to execute code when it is loaded.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

import torch


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    os.chmod(tmp_path, 0o666 & ~_current_umask())  # mkstemp makes 0600; finished files get the usual mode
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def atomic_write(path: str | os.PathLike, write: Callable[[Path], Any]) -> Path:
    """Call ``write(tmp_path)`` and atomically move the result to ``path``."""
    with atomic_path(path) as tmp:
        write(tmp)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def save_torch(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` through a temp file + rename, so a crash never leaves a truncated file."""
    return atomic_write(path, lambda tmp: torch.save(obj, tmp))


def load_torch(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> Any:
    """Load a torch file with ``weights_only=True``; raise a clear error for missing or corrupt files."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist (or is not a file)")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file  # timm depends on safetensors

        try:
            return load_file(str(path), device=str(map_location))
        except Exception as err:  # safetensors raises several unrelated types
            raise ValueError(f"cannot read safetensors file {str(path)!r}: {err}") from err
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:
        raise ValueError(
            f"cannot load {str(path)!r} as a torch checkpoint ({type(err).__name__}: {err}). "
            "The file may be truncated or corrupt, or it may hold pickled objects other than "
            "tensors, which camzoo refuses to unpickle (weights_only=True)."
        ) from err
