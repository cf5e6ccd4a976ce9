"""The suite however it is launched (tests/forked.py): children handle Ctrl-C even when the suite was
started with SIGINT ignored (nohup, a background job, some CI runners), a child's whole group ends
with its test, and a test file that leaves a process running fails, under pytest-xdist too."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import forked
from forked import OWNER, Forked, started

TESTS = Path(__file__).resolve().parent
REPORT = ("import os, signal\nprint(signal.getsignal(signal.SIGINT) is signal.default_int_handler, "
          "signal.getsignal(signal.SIGTERM) == signal.SIG_DFL, os.getsid(0) == os.getpid())")


@contextlib.contextmanager
def sigint_ignored() -> Iterator[None]:
    """This process as nohup or a shell's background job starts it: SIGINT ignored."""
    old = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, dead but not yet reaped, does not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def gone_within(pids: list[int], seconds: float) -> bool:
    end = time.monotonic() + seconds
    while any(alive(pid) for pid in pids) and time.monotonic() < end:
        time.sleep(0.05)
    return not any(alive(pid) for pid in pids)


def report_signals(path: str) -> None:
    """In a Forked child: what REPORT prints, written to ``path``."""
    Path(path).write_text(" ".join(str(x) for x in (
        signal.getsignal(signal.SIGINT) is signal.default_int_handler,
        signal.getsignal(signal.SIGTERM) == signal.SIG_DFL, os.getsid(0) == os.getpid())))


def test_children_handle_ctrl_c_even_when_the_suite_ignores_it():
    with sigint_ignored():
        inherited = subprocess.run([sys.executable, "-c", REPORT], capture_output=True, text=True, timeout=60)
        with started([sys.executable, "-c", REPORT], stdout=subprocess.PIPE, text=True) as child:
            said = child.communicate(timeout=60)[0]
    assert inherited.stdout.split()[0] == "False", "a plain child inherits the ignored SIGINT (else this proves nothing)"
    assert said.split() == ["True", "True", "True"]  # handles SIGINT, default SIGTERM, leads its own session


def test_forked_children_handle_ctrl_c_even_when_the_suite_ignores_it(tmp_path):
    """Whatever the fork server inherited when it started, a Forked child sets its own signals and session."""
    with sigint_ignored(), Forked(report_signals, str(tmp_path / "forked.txt")) as process:
        assert process.wait(120) == 0
    assert (tmp_path / "forked.txt").read_text().split() == ["True", "True", "True"]


def test_a_child_s_whole_group_ends_with_its_block():
    grandchild = ("import subprocess, sys, time\n"
                  "print(subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']).pid, flush=True)\n"
                  "time.sleep(60)")
    with started([sys.executable, "-c", grandchild], stdout=subprocess.PIPE, text=True) as child:
        pids = [child.pid, int(child.stdout.readline())]
        assert all(alive(pid) for pid in pids)
    assert gone_within(pids, 10), "the child's own child outlived the block"
    result = forked.run([sys.executable, "-c", "import sys; print(sys.stdin.read()[::-1])"], timeout=60, input="abc",
                        text=True)
    assert (result.returncode, result.stdout.strip()) == (0, "cba")


def test_this_process_checks_for_leftovers():
    """conftest.py registered the check here (in each pytest-xdist worker: its own token)."""
    assert os.environ[OWNER].startswith(f"{os.getpid()}-")


LEAKS = '''
import subprocess, sys
from pathlib import Path

SLEEP = [sys.executable, "-c", "import time; time.sleep(120)"]


def test_leaves_its_child_running():
    Path({pids!r}, "child").write_text(str(subprocess.Popen(SLEEP).pid))


def test_leaves_an_orphan_in_a_session_of_its_own():
    """Its parent has exited (init adopted it) and it left the group: only the inherited marker finds it."""
    code = ("import subprocess, sys; print(subprocess.Popen(%r, start_new_session=True, stdout=subprocess.DEVNULL, "
            "stderr=subprocess.DEVNULL).pid)" % (SLEEP,))
    pid = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60).stdout.strip()
    Path({pids!r}, "orphan").write_text(pid)
'''
CLEAN = '''
import subprocess, sys
from forked import run, started


def test_ends_what_it_starts():
    with started([sys.executable, "-c", "import time; time.sleep(120)"]):
        pass
    assert run([sys.executable, "-c", "print(1)"], timeout=60, text=True).stdout.strip() == "1"
'''
CONFTEST = '''
import sys
from pathlib import Path

import pytest

sys.path.insert(0, {tests!r})
from forked import LeftoverCheck  # noqa: E402

CHECK = []


def pytest_configure(config):
    CHECK.append(LeftoverCheck(grace=1.0))


@pytest.hookimpl(trylast=True)
def pytest_runtest_teardown(item, nextitem):
    problem = CHECK[0].after_test(Path(str(item.path)), nextitem and Path(str(nextitem.path)))
    if problem:
        pytest.fail(problem, pytrace=False)
'''


def test_a_test_file_that_leaves_a_process_running_fails_and_the_process_is_killed(tmp_path):
    """A pytest run on two pytest-xdist workers, as ``make test`` runs: one file leaks two processes, one
    cleans up after itself."""
    suite, pids = tmp_path / "suite", tmp_path / "pids"
    suite.mkdir()
    pids.mkdir()
    (suite / "conftest.py").write_text(CONFTEST.format(tests=str(TESTS)), encoding="utf-8")
    (suite / "test_leaks.py").write_text(LEAKS.format(pids=str(pids)), encoding="utf-8")
    (suite / "test_clean.py").write_text(CLEAN, encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
    try:
        result = forked.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-n", "2", "--dist",
                             "loadfile", suite], timeout=240, cwd=suite, env=env, text=True)
        leaked = [int((pids / name).read_text()) for name in ("child", "orphan")]
        output = result.stdout + result.stderr
        assert result.returncode == 1, output
        assert "test_leaks.py left 2 process(es) running (now killed)" in output, output
        assert all(f"pid {pid}: " in output for pid in leaked), output
        assert "test_clean.py left" not in output and "3 passed, 1 error" in output, output
        assert gone_within(leaked, 10), "the check did not kill what it found"
    finally:
        for name in ("child", "orphan"):
            with contextlib.suppress(OSError, ValueError):
                os.kill(int((pids / name).read_text()), signal.SIGKILL)
