"""Processes the tests start, forked from one interpreter that has imported torch and camzoo.

Why: a test that must run camzoo in a process of its own (to SIGKILL it, to launch ranks, to keep
an example's registrations out of the other tests) paid ~7 s of CPU for a new interpreter to import
torch, torch._dynamo, pandas, matplotlib and scipy again. multiprocessing's fork server imports them
once per pytest process; each process started here is forked from it: a clean interpreter (nothing
a test did in the pytest process reaches it), with one thread, in milliseconds. Tests that check how
``python -m camzoo`` itself starts keep using subprocess.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

PRELOAD = ["torch", "torch._dynamo", "camzoo.cli", "camzoo.bench.distributed", "camzoo.bench.evaluation",
           "camzoo.bench.report", "camzoo.bench.runner", "camzoo.data", "camzoo.methods", "camzoo.metrics",
           "camzoo.models", "camzoo.train", "click.testing", "matplotlib.pyplot", "pandas", "scipy.stats", "timm"]


def _context() -> Any:
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(PRELOAD)  # read when the server starts: the first process of a pytest process
    return context


def _child(target: Callable[..., Any], args: Sequence[Any], cwd: str, env: Mapping[str, str], log: str) -> None:
    """In the forked process: the caller's directory and environment, the log, then ``target(*args)``."""
    os.chdir(cwd)
    os.environ.clear()
    os.environ.update(env)
    with open(log, "ab", buffering=0) as sink:  # stdout and stderr merged, as subprocess.STDOUT merges them
        os.dup2(sink.fileno(), 1)
        os.dup2(sink.fileno(), 2)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    import torch

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS") or 1))
    target(*args)


def camzoo_main(argv: Sequence[str]) -> None:
    """``camzoo ARGV`` as the console script runs it (exits with the command's status)."""
    from camzoo.cli import main

    sys.argv = ["camzoo", *argv]
    main.main(args=list(argv), prog_name="camzoo")


class Forked:
    """A started process with the parts of subprocess.Popen the tests use. Its stdout and stderr go,
    merged, to ``log`` (default: discarded); its directory and environment default to the caller's."""

    def __init__(self, target: Callable[..., Any], *args: Any, cwd: str | Path | None = None,
                 env: Mapping[str, str] | None = None, log: str | Path | None = None) -> None:
        self._process = _context().Process(target=_child, args=(
            target, args, str(cwd or os.getcwd()), dict(os.environ if env is None else env), str(log or os.devnull)))
        self._process.start()
        self.pid: int = self._process.pid

    @property
    def returncode(self) -> int | None:
        return self._process.exitcode

    def poll(self) -> int | None:
        return self._process.exitcode

    def wait(self, timeout: float | None = None) -> int:
        self._process.join(timeout)
        if self._process.exitcode is None:
            raise subprocess.TimeoutExpired(f"forked process {self.pid}", timeout or 0)
        return self._process.exitcode

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def send_signal(self, sig: int) -> None:
        if self._process.exitcode is None:
            os.kill(self.pid, sig)


def run_camzoo(argv: Sequence[Any], timeout: float = 600, **options: Any) -> tuple[int, str]:
    """``camzoo ARGV`` in a forked process, waited for: (exit status, stdout and stderr merged)."""
    with tempfile.TemporaryDirectory(prefix="camzoo-forked-") as folder:
        log = Path(folder) / "output.log"
        process = Forked(camzoo_main, [str(a) for a in argv], log=log, **options)
        try:
            process.wait(timeout)
        finally:
            process.kill()
        return int(process.returncode), log.read_text(encoding="utf-8", errors="replace") if log.exists() else ""
