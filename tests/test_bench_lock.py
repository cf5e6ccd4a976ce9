"""The lock of a bench's ``--out`` (camzoo.bench.lock): a second bench on one folder waits for the
first, says for whom it waits, and ``camzoo bench`` takes the lock (issue 24).

The children start through tests/forked.py's ``started``: a session of their own with SIGINT set to
raise KeyboardInterrupt (a suite launched with SIGINT ignored would pass the ignored signal on, and
the Ctrl-C below would not stop the waiting bench), their groups killed when each block ends."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

from forked import started

HOLD = ("import sys, time\nfrom camzoo.bench.lock import run_lock\n"
        "with run_lock(sys.argv[1], echo=print):\n    print('held', flush=True)\n    time.sleep(float(sys.argv[2]))")


def test_a_second_bench_on_one_out_waits_for_the_first(tmp_path):
    from camzoo.bench.lock import run_lock

    with started([sys.executable, "-c", HOLD, tmp_path, "1.5"], stdout=subprocess.PIPE, text=True) as holder:
        assert holder.stdout.readline().strip() == "held"
        said: list[str] = []
        start = time.monotonic()
        with run_lock(tmp_path, echo=said.append):
            waited = time.monotonic() - start
        holder.wait(timeout=60)
    assert waited > 0.5 and len(said) == 1 and "waiting" in said[0] and f"pid {holder.pid}" in said[0]
    with run_lock(tmp_path, echo=said.append):  # released: taken again at once, silently
        assert len(said) == 1


def test_camzoo_bench_takes_the_lock_of_its_out(tmp_path):
    with started([sys.executable, "-c", HOLD, tmp_path, "120"], stdout=subprocess.PIPE, text=True) as holder:
        assert holder.stdout.readline().strip() == "held"
        with started([sys.executable, "-m", "camzoo", "bench", "--out", tmp_path, "--no-progress"],
                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as bench:
            assert "waiting: camzoo bench" in bench.stdout.readline()
            bench.send_signal(signal.SIGINT)  # Ctrl-C while it waits
            assert bench.wait(timeout=60) == 130
