"""Processes the tests start: how they start, how they end, and the check that none outlives its test.

Every child a test starts gets its own session (a process group of its own, with whatever it starts in
turn), its signal dispositions set by the test (``child_signals``), and its whole group killed when
the test is done with it, pass or fail (``started``, ``run``, ``Forked``). Why: a suite launched with
SIGINT ignored (``nohup``, a background job without job control, some CI runners) passes the ignored
SIGINT on to every child, so a child that a test stops with Ctrl-C did not stop, and outlived the
suite. ``LeftoverCheck`` (registered by conftest.py) fails a test file that leaves a process behind.

``Forked``: a test that must run camzoo in a process of its own (to SIGKILL it, to launch ranks, to keep
an example's registrations out of the other tests) paid ~7 s of CPU for a new interpreter to import
torch, torch._dynamo, pandas, matplotlib and scipy again. multiprocessing's fork server imports them
once per pytest process; each process started here is forked from it: a clean interpreter (nothing
a test did in the pytest process reaches it), with one thread, in milliseconds. Tests that check how
``python -m camzoo`` itself starts use ``started`` / ``run`` (subprocess).
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

PRELOAD = ["torch", "torch._dynamo", "camzoo.cli", "camzoo.bench.distributed", "camzoo.bench.evaluation",
           "camzoo.bench.report", "camzoo.bench.runner", "camzoo.data", "camzoo.methods", "camzoo.metrics",
           "camzoo.models", "camzoo.train", "click.testing", "matplotlib.pyplot", "pandas", "scipy.stats", "timm"]


def child_signals() -> None:
    """In a new child, before it runs anything: SIGINT raises KeyboardInterrupt (Python's own handler)
    and SIGTERM ends the process, whatever the test run inherited.

    Both kinds of child call it. A forked child (``Forked``) runs on in this interpreter, so the handler
    is what it keeps. A subprocess child calls it as ``preexec_fn``, between fork and exec: exec turns a
    handled signal into SIG_DFL (an ignored one stays ignored), and a new interpreter that finds SIGINT
    at SIG_DFL installs its KeyboardInterrupt handler, as when started from a terminal. It only sets
    signal dispositions (no lock another thread could hold at the fork: pytest-xdist's workers run one)."""
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def end_group(process: subprocess.Popen | Forked) -> None:
    """SIGKILL ``process`` and everything in its process group (what it started, its ranks), then reap
    it. A child started here leads its own group, so the group's id is its pid; gone already: nothing."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


@contextlib.contextmanager
def started(args: Sequence[Any], **options: Any) -> Iterator[subprocess.Popen]:
    """``with started([sys.executable, ...], stdout=PIPE) as process:`` a subprocess.Popen in a session
    of its own, its signals set by ``child_signals``; its group killed when the block ends, however."""
    process = subprocess.Popen([os.fspath(a) for a in args], start_new_session=True, preexec_fn=child_signals,
                               **options)
    try:
        yield process
    finally:
        end_group(process)
        for stream in (process.stdin, process.stdout, process.stderr):
            if stream is not None:
                stream.close()


def run(args: Sequence[Any], timeout: float = 600, input: str | bytes | None = None,
        **options: Any) -> subprocess.CompletedProcess:
    """subprocess.run(args, capture_output=True, timeout=...) through ``started``: on a timeout or an
    error the child's whole group is killed, not only the child (subprocess.run kills the child alone)."""
    with started(args, stdin=subprocess.PIPE if input is not None else None, stdout=subprocess.PIPE,
                 stderr=subprocess.PIPE, **options) as process:
        out, err = process.communicate(input, timeout=timeout)
        return subprocess.CompletedProcess(process.args, process.wait(), out, err)


def _context() -> Any:
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(PRELOAD)  # read when the server starts: the first process of a pytest process
    return context


def _child(target: Callable[..., Any], args: Sequence[Any], cwd: str, env: Mapping[str, str], log: str) -> None:
    """In the forked process: a session of its own, signals set, the caller's directory and environment,
    the log, then ``target(*args)``."""
    os.setsid()
    child_signals()
    os.chdir(cwd)
    os.environ.clear()
    os.environ.update(env)
    with open(log, "ab", buffering=0) as sink:  # stdout and stderr merged, as subprocess.STDOUT merges them
        os.dup2(sink.fileno(), 1)
        os.dup2(sink.fileno(), 2)
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
    merged, to ``log`` (default: discarded); its directory and environment default to the caller's.
    ``with Forked(...) as process:`` kills its group when the block ends; ``kill()`` does at once."""

    def __init__(self, target: Callable[..., Any], *args: Any, cwd: str | Path | None = None,
                 env: Mapping[str, str] | None = None, log: str | Path | None = None) -> None:
        self._process = _context().Process(target=_child, args=(
            target, args, str(cwd or os.getcwd()), dict(os.environ if env is None else env), str(log or os.devnull)))
        self._process.start()
        self.pid: int = self._process.pid

    def __enter__(self) -> Forked:
        return self

    def __exit__(self, *exc: object) -> None:
        end_group(self)

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
        """SIGKILL the process and its group (whatever it started), and reap it."""
        end_group(self)

    def send_signal(self, sig: int) -> None:
        """``sig`` to the process alone (a test's SIGKILL or Ctrl-C of camzoo itself)."""
        if self._process.exitcode is None:
            os.kill(self.pid, sig)


def run_camzoo(argv: Sequence[Any], timeout: float = 600, **options: Any) -> tuple[int, str]:
    """``camzoo ARGV`` in a forked process, waited for: (exit status, stdout and stderr merged)."""
    with tempfile.TemporaryDirectory(prefix="camzoo-forked-") as folder:
        log = Path(folder) / "output.log"
        with Forked(camzoo_main, [str(a) for a in argv], log=log, **options) as process:
            process.wait(timeout)
        return int(process.returncode), log.read_text(encoding="utf-8", errors="replace") if log.exists() else ""


# --- the check that no process outlives its test file ----------------------------------------------
OWNER = "CAMZOO_TEST_OWNER"  # inherited by every process a test starts, and by what those start
_HELPERS = ("multiprocessing.forkserver import main", "multiprocessing.resource_tracker import main")


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except OSError:  # gone meanwhile, or another user's
        return b""


def _processes() -> dict[int, tuple[int, str]]:
    """{pid: (parent pid, state)} of every process /proc shows."""
    found = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            fields = _read(f"/proc/{entry.name}/stat").rpartition(b")")[2].split()
            if len(fields) > 1:
                found[int(entry.name)] = (int(fields[1]), fields[0].decode())
    return found


def survivors(token: str, me: int | None = None) -> dict[int, str]:
    """{pid: command line} of the live processes this pytest process started, directly or not: its
    descendants, and any process whose environment carries ``OWNER=token`` (one that lost its parent
    and was adopted by init, or started a session of its own). multiprocessing's fork server and
    resource tracker, children of pytest itself, live as long as it does: not counted."""
    me = os.getpid() if me is None else me
    table = _processes()
    children: dict[int, list[int]] = {}
    for pid, (parent, _) in table.items():
        children.setdefault(parent, []).append(pid)
    found, stack = set(), [me]
    while stack:
        for child in children.get(stack.pop(), []):
            found.add(child)
            stack.append(child)
    marker = f"\0{OWNER}={token}\0".encode()
    found |= {pid for pid in table if pid != me and marker in b"\0" + _read(f"/proc/{pid}/environ")}
    result = {}
    for pid in found:
        command = _read(f"/proc/{pid}/cmdline").replace(b"\0", b" ").decode(errors="replace").strip()
        parent, state = table[pid]
        if state not in ("Z", "X") and not (parent == me and any(h in command for h in _HELPERS)):
            result[pid] = command
    return result


class LeftoverCheck:
    """After the last test of each file, the processes that file left running fail it (an error at the
    teardown of its last test, naming each process), and are killed. conftest.py calls ``after_test``
    from its ``pytest_runtest_teardown`` and fails the file with what it returns (pytest stays out of
    this module: forked children import it).

    Each pytest process (each pytest-xdist worker, or pytest alone) checks what it started itself:
    ``OWNER`` is set to a token of its own here, before any test runs. A process that survived gets
    ``grace`` seconds to finish ending (a killed child being reaped) before it counts."""

    def __init__(self, grace: float = 5.0) -> None:
        self.token = f"{os.getpid()}-{uuid.uuid4().hex[:12]}"
        self.grace = grace
        os.environ[OWNER] = self.token

    def after_test(self, path: Path, next_path: Path | None) -> str | None:
        """When ``path``'s last test is done (``next_path``: the next test's file, None at the end): what
        it left running, killed, as the line that fails it; None when it left nothing."""
        if next_path == path:
            return None
        left = survivors(self.token)
        deadline = time.monotonic() + self.grace
        while left and time.monotonic() < deadline:
            time.sleep(0.05)
            left = survivors(self.token)
        if not left:
            return None
        for pid in left:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        for pid in left:  # reap the ones that were this process's own children (others: ChildProcessError)
            with contextlib.suppress(OSError):
                os.waitpid(pid, 0)
        listed = "; ".join(f"pid {pid}: {command[:200]}" for pid, command in sorted(left.items()))
        return (f"{Path(path).name} left {len(left)} process(es) running (now killed): {listed}. A test ends "
                "every process it starts, pass or fail: tests/forked.py's started(), run() or `with Forked(...)`")
