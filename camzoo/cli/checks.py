"""Up-front checks of options several commands share: ``--device`` and a writable ``--out``.

Why up front: a device that does not exist or an output place that cannot be written must be a
usage error before any work, not a failure after minutes of training or explaining.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    import torch


def resolve_device_option(text: str, param: str = "--device") -> torch.device:
    """auto | cpu | cuda | cuda:N -> torch.device (camzoo.modelutil.resolve_device), or a usage error
    on ``param`` that says what exists."""
    from ..modelutil import resolve_device

    try:
        return resolve_device(text)
    except ValueError as err:
        raise click.BadParameter(str(err), param_hint=param) from err


def check_writable(path: Path, param: str, is_dir: bool) -> None:
    """Fail now, as a usage error, when ``path`` cannot be written (a file where a folder is
    needed or the reverse, a read-only or impossible place) — not after minutes of work."""
    if is_dir and path.exists() and not path.is_dir():
        raise click.BadParameter(f"{str(path)!r} is a file; give a directory (created if missing)", param_hint=param)
    if not is_dir and path.is_dir():
        raise click.BadParameter(f"{str(path)!r} is a directory; give a file name, e.g. {str(path / 'out.png')!r}",
                                 param_hint=param)
    folder = path if is_dir else path.parent
    existing = next((p for p in (folder, *folder.parents) if p.exists()), None)
    if existing is not None and not existing.is_dir():
        raise click.BadParameter(f"cannot write to {str(folder)!r}: {str(existing)!r} is a file, not a folder",
                                 param_hint=param)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as err:
        raise click.BadParameter(f"cannot write to {str(folder)!r}: {err.strerror or err}", param_hint=param) from err
