"""One ``camzoo bench`` at a time per results directory.

Why: two benches on one ``--out`` stayed correct (each cell commits once) but both did all the
work; the second now waits for the first and then computes only what is still missing.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
from pathlib import Path
from typing import Any
from collections.abc import Callable, Iterator

LOCK_NAME = ".bench.lock"


@contextlib.contextmanager
def run_lock(directory: str | Path, echo: Callable[[str], Any] = print) -> Iterator[None]:
    """Hold ``DIR/.bench.lock`` while one ``camzoo bench`` writes into DIR.

    A second bench on the same directory waits here (saying once for which process) and then
    resumes: by then the first one's cells are in the store, so nothing is computed twice. The lock
    is the OS's (``flock``), released when its process ends however it ends, so it is never stale.
    """
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock; concurrent runs stay correct (cells commit once), just redundant
        yield
        return
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / LOCK_NAME, "a+", encoding="utf-8") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            echo(f"waiting: camzoo bench ({holder}) is writing to {directory}; this run goes on when it ends and "
                 "computes only what is missing (Ctrl-C stops waiting)")
            fcntl.flock(handle, fcntl.LOCK_EX)
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {socket.gethostname()}, since {time.strftime('%Y-%m-%dT%H:%M:%S%z')}\n")
        handle.flush()
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
