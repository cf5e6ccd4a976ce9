"""File helpers every part of camzoo shares: atomic writes, safe checkpoint loading, bounded walks.

Why: an interrupted run must never leave a half-written file where a finished one is expected, a
full disk or read-only place must be named as such, a checkpoint must never be able to execute code
when it is loaded, and walking a folder must end (symlink loops) and say what it could not read.
"""

from __future__ import annotations

import contextlib
import errno
import fnmatch
import glob
import io
import os
import stat
import tempfile
from pathlib import Path
from typing import Any
from collections.abc import Callable, Iterator, Sequence

import torch


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# errno -> (what it means, what to do): the write failures a user can fix, named in one line.
WRITE_FAILURES = {
    errno.ENOSPC: ("no space left on the device", "free some space (or write elsewhere) and rerun"),
    errno.EDQUOT: ("the disk quota is exceeded", "free some space (or write elsewhere) and rerun"),
    errno.EFBIG: ("the file is larger than this file system or process allows", "write elsewhere and rerun"),
    errno.EROFS: ("the file system is read-only", "write somewhere else"),
    errno.EACCES: ("permission denied", "write somewhere you may write, or change the folder's permissions"),
    errno.EPERM: ("operation not permitted", "write somewhere you may write, or change the folder's permissions"),
}


def describe_os_error(err: OSError, path: str | os.PathLike | None = None) -> str | None:
    """One line naming the file, the cause and what to do, for the write failures of WRITE_FAILURES
    (full disk, read-only or forbidden place); None for any other OSError.

    Why: torch, numpy and SQLite report a full disk as "unexpected pos", "65536 requested and 55232
    written" or "disk I/O error", none of which says which file or that the disk is full.
    """
    if err.errno not in WRITE_FAILURES:
        return None
    cause, action = WRITE_FAILURES[err.errno]
    standard = os.strerror(err.errno) + ": "
    if isinstance(err.strerror, str) and err.strerror.startswith(standard):  # raised by camzoo with its own advice
        action = err.strerror[len(standard):]
    where = err.filename if err.filename is not None else path
    shown = display_path(where) if where is not None else "a file"
    return f"cannot write {shown}: {cause} ({errno.errorcode.get(err.errno, err.errno)}); {action}"


def display_path(path: str | os.PathLike | bytes) -> str:
    """A path as text that can always be printed: bytes of a name that is not UTF-8 (kept by Python as
    surrogates) are shown as ``\\xNN`` escapes instead of raising UnicodeEncodeError on output."""
    raw = path if isinstance(path, bytes) else os.fsencode(path)
    return raw.decode("utf-8", "backslashreplace")


def _with_filename(err: OSError, path: Path) -> OSError:
    """The same OSError, naming ``path`` (the finished file's name, not the temp file's)."""
    if err.errno is None:
        return err
    return type(err)(err.errno, err.strerror or os.strerror(err.errno), str(path))


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` only if the block succeeds.

    An OSError with an errno (full disk, read-only place) is re-raised naming ``path``, and the temp
    file is removed, so a failed write leaves the previous file (if any) untouched.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # the writer's host and pid in the name: remove_stale_temporaries knows a dead writer's temp at once
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{_writer()}.", suffix=".tmp", dir=path.parent)
    except OSError as err:
        raise _with_filename(err, path) from err
    os.close(fd)
    tmp_path = Path(tmp)
    os.chmod(tmp_path, 0o666 & ~_current_umask())  # mkstemp makes 0600; finished files get the usual mode
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    except OSError as err:
        raise _with_filename(err, path) from err
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def _writer() -> str:
    """This process as a temp file names it: HOST-PID (the host with only letters, digits, _ and -)."""
    import re
    import socket

    return f"{re.sub(r'[^A-Za-z0-9_-]', '_', socket.gethostname())}-{os.getpid()}"


def _writer_gone(path: Path) -> bool | None:
    """Whether the writer a temp file names (``.NAME.HOST-PID.XXXX.tmp``) has ended: True when it ran
    on this host and no longer runs, False while it runs, None when that cannot be known (another
    host, or a name without a writer)."""
    parts = path.name[1:-len(".tmp")].rsplit(".", 2)
    host, _, pid = parts[1].rpartition("-") if len(parts) == 3 else ("", "", "")
    if not pid.isdigit() or host != _writer().rpartition("-")[0]:
        return None
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except OSError:  # it runs, under another user
        return False
    return False


def remove_stale_temporaries(directory: str | os.PathLike, older_than_s: float = 60.0) -> list[Path]:
    """Delete the temp files :func:`atomic_path` left in ``directory`` when its writer was killed
    (SIGKILL skips the cleanup): hidden ``.NAME.HOST-PID.XXXX.tmp`` files whose writer ran on this host
    and has ended, at once; those of a writer that cannot be checked (another host, an older name
    ``.NAME.XXXX.tmp``) once untouched for ``older_than_s`` seconds (a live writer's is younger: it
    exists only while one file is written). A running writer's temp is left alone. Returns them."""
    import time

    found = []
    cutoff = time.time() - older_than_s
    for path in Path(directory).glob(".*.tmp"):
        try:
            gone = _writer_gone(path)
            if path.is_file() and (gone or (gone is None and path.stat().st_mtime < cutoff)):
                path.unlink()
                found.append(path)
        except OSError:  # gone meanwhile, or not ours to delete: leave it
            continue
    return found


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` atomically. Why bytes first: numpy and torch report a short write as "N requested
    and M written" or "unexpected pos" with no errno; a plain write raises OSError(ENOSPC) naming the file."""
    return atomic_write(path, lambda tmp: tmp.write_bytes(data))


def save_npy(path: str | os.PathLike, array: Any) -> Path:
    """``np.save`` atomically, with full-disk errors as a plain OSError (see :func:`write_bytes`)."""
    import numpy as np

    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return write_bytes(path, buffer.getvalue())


def atomic_write(path: str | os.PathLike, write: Callable[[Path], Any]) -> Path:
    """Call ``write(tmp_path)`` and atomically move the result to ``path``."""
    with atomic_path(path) as tmp:
        write(tmp)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def save_torch(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` through a temp file + rename, so a crash never leaves a truncated file.

    Serialised in memory first: torch's own file writer reports a full disk as a RuntimeError
    ("inline_container.cc ... unexpected pos"), a plain write as OSError(ENOSPC) naming the file.
    """
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return write_bytes(path, buffer.getbuffer().tobytes())


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


Problems = list[tuple[Path, str]]  # (path, why it was skipped), for the caller to list


def special_file_problem(path: str | os.PathLike) -> str | None:
    """Why ``path``, which is not a regular file, cannot be read as one ("is a named pipe", "is a
    symbolic link to 'x', which does not exist", ...); None for a regular file or a missing path.

    Why: opening a named pipe blocks forever, and a dangling link looks like a missing file."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        if os.path.islink(path):
            return f"is a symbolic link to {display_path(os.readlink(path))!r}, which does not exist"
        return None
    except OSError as err:  # ELOOP (a link to itself), EACCES on a folder above it, ...
        return f"cannot be opened ({err.strerror or err})"
    for test, kind in ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a named pipe"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device")):
        if test(mode):
            return f"is {kind}, not a regular file"
    return None


def walk_files(root: str | os.PathLike, problems: Problems | None = None, *, skip_hidden: bool = True,
               descend: Callable[[tuple[str, ...]], bool] | None = None,
               exclude: Sequence[str | os.PathLike] = ()) -> Iterator[tuple[tuple[str, ...], Path]]:
    """Every non-folder entry below ``root`` as (names relative to root, path), each real folder
    listed once (folder symlinks are followed, but a loop or a second way into a folder is not);
    hidden names (``.x``) skipped with ``skip_hidden``; folders in ``exclude`` and those ``descend``
    refuses (it gets the folder's relative names) not entered. Folders that cannot be listed are
    added to ``problems``."""
    def identity(path: str | os.PathLike) -> tuple[int, int]:
        info = os.stat(path)
        return info.st_dev, info.st_ino

    seen = set()
    for path in exclude:
        with contextlib.suppress(OSError):
            seen.add(identity(path))
    stack: list[tuple[tuple[str, ...], Path]] = [((), Path(root))]
    while stack:
        parts, folder = stack.pop()
        try:
            key = identity(folder)
            if key in seen:
                continue
            seen.add(key)
            with os.scandir(folder) as listing:
                entries = sorted(listing, key=lambda entry: entry.name)
        except OSError as err:
            if problems is not None:
                problems.append((folder, f"folder cannot be listed ({err.strerror or err})"))
            continue
        folders = []
        for entry in entries:
            if skip_hidden and entry.name.startswith("."):
                continue
            names = (*parts, entry.name)
            try:
                is_dir = entry.is_dir()  # follows a symlink to a folder
            except OSError:
                is_dir = False
            if not is_dir:
                yield names, Path(entry.path)
            elif descend is None or descend(names):
                folders.append((names, Path(entry.path)))
        stack.extend(reversed(folders))


def _glob_match(names: Sequence[str], segments: Sequence[str]) -> bool:
    if not segments:
        return not names
    if segments[0] == "**":
        return any(_glob_match(names[k:], segments[1:]) for k in range(len(names) + 1))
    return bool(names) and fnmatch.fnmatchcase(names[0], segments[0]) and _glob_match(names[1:], segments[1:])


def glob_files(pattern: str, problems: Problems | None = None, exclude: Sequence[str | os.PathLike] = ()) -> list[Path]:
    """Files a glob pattern names (``**`` matching any number of folders), and every file below a
    folder it names, found by :func:`walk_files` (so a symlink loop ends; ``glob.glob`` with ``**``
    runs for minutes on one). Hidden names are not matched."""
    parts = Path(pattern).parts
    first = next((i for i, part in enumerate(parts) if glob.has_magic(part)), len(parts))
    base, segments = (Path(*parts[:first]) if first else Path(".")), parts[first:]
    recursive = "**" in segments

    def matched(names: Sequence[str]) -> bool:  # the path, or a folder above it, matches the pattern
        return any(_glob_match(names[:k], segments) for k in range(1, len(names) + 1))

    def descend(names: tuple[str, ...]) -> bool:
        return recursive or matched(names) or (len(names) < len(segments) and all(
            fnmatch.fnmatchcase(name, segment) for name, segment in zip(names, segments)))

    if not base.is_dir():
        return []
    return sorted(base.joinpath(*names) for names, _ in walk_files(base, problems, descend=descend, exclude=exclude)
                  if matched(names))
