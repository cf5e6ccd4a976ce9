"""The lock of a bench's ``--out`` (camzoo.bench.lock): a second bench on one folder waits for the
first, says for whom it waits, and ``camzoo bench`` takes the lock (issue 24)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time


def test_a_second_bench_on_one_out_waits_for_the_first(tmp_path):
    from camzoo.bench.lock import run_lock

    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom camzoo.bench.lock import run_lock\n"
         "with run_lock(sys.argv[1], echo=print):\n    print('held', flush=True)\n    time.sleep(float(sys.argv[2]))",
         str(tmp_path), "1.5"], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    said: list[str] = []
    start = time.monotonic()
    with run_lock(tmp_path, echo=said.append):
        waited = time.monotonic() - start
    holder.wait()
    assert waited > 0.5 and len(said) == 1 and "waiting" in said[0] and f"pid {holder.pid}" in said[0]
    with run_lock(tmp_path, echo=said.append):  # released: taken again at once, silently
        assert len(said) == 1


def test_camzoo_bench_takes_the_lock_of_its_out(tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom camzoo.bench.lock import run_lock\n"
         "with run_lock(sys.argv[1]):\n    print('held', flush=True)\n    time.sleep(120)", str(tmp_path)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        bench = subprocess.Popen([sys.executable, "-m", "camzoo", "bench", "--out", str(tmp_path), "--no-progress"],
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            assert "waiting: camzoo bench" in bench.stdout.readline()
        finally:
            bench.send_signal(signal.SIGINT)
            assert bench.wait(timeout=60) == 130
    finally:
        holder.kill()
        holder.wait()
