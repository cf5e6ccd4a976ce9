"""The benchmark spread over ranks: shards merge exactly once, a rerun after a lost rank finishes the
grid, and 2 gloo processes on the CPU give the table of 1 process, with each cell's worker recorded."""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from camzoo.bench.config import resolve_config
from camzoo.bench.plan import build_plan
from camzoo.bench.runner import BenchRunner
from camzoo.bench.shards import SHARD_DIR, Worker, merge_shards, shard_paths
from camzoo.bench.store import CellKey, ResultsStore
from forked import Forked, camzoo_main, run_camzoo
from helpers import TINY_RANKS

KEY = ["dataset", "backbone", "kind", "variant", "seed", "method"]


def cells(out: Path) -> pd.DataFrame:
    with sqlite3.connect(out / "results.sqlite") as db:
        return pd.read_sql("SELECT * FROM cells", db)


def test_merging_shards_copies_each_cell_once(tmp_path):
    def key(seed: int, method: str) -> CellKey:
        return CellKey("shapes", "resnet8", "baseline", "default", seed, method)

    def write(store: ResultsStore, cell: CellKey, value: float, worker: str) -> None:
        store.write_cell("r", cell, {"deletion": (value, np.full(3, value))}, {"maps": np.full((3, 2, 2), value)},
                         code_version="0", device="cpu", worker=worker)

    shards = tmp_path / SHARD_DIR
    with ResultsStore(shards, name="rank-a-0.sqlite") as a, ResultsStore(shards, name="rank-b-1.sqlite") as b, \
            ResultsStore(tmp_path) as merged:
        for store in (a, b, merged):
            store.record_run("r", {"seeds": [0, 1]}, {"device": "cpu"})
        write(merged, key(0, "gradcam"), 0.5, "a:0")  # finished before: the shard's copy must not replace it
        write(a, key(0, "gradcam"), 0.9, "a:0")
        write(a, key(0, "random"), 0.1, "a:0")
        write(b, key(1, "gradcam"), 0.2, "b:1")
        assert merge_shards(tmp_path, merged) == 2
        assert merge_shards(tmp_path, merged) == 0  # idempotent
        assert merged.workers("r") == {key(0, "gradcam"): "a:0", key(0, "random"): "a:0", key(1, "gradcam"): "b:1"}
        values = {(r["seed"], r["method"]): r["value"] for r in merged.results("r")}
        assert values == {(0, "gradcam"): 0.5, (0, "random"): 0.1, (1, "gradcam"): 0.2}
        assert merged.array("r", key(1, "gradcam"), "maps").tolist() == np.full((3, 2, 2), 0.2).tolist()
        assert len(merged.runs()) == 1
    assert len(shard_paths(tmp_path)) == 2  # kept: they record how the work was spread


@pytest.mark.slow
def test_two_gloo_ranks_give_the_table_of_one_process(tmp_path):
    config_path = tmp_path / "tiny.toml"
    config_path.write_text(TINY_RANKS.format(cache=tmp_path / "cache"), encoding="utf-8")
    config = resolve_config(None, config_path)
    plan = build_plan(config)
    planned = plan.cells

    # One process, after a rank that was lost part-way: its shard holds seed 1's cells only. The rerun
    # merges the shard, computes the rest, and every cell is there once (seed 1's from the lost rank).
    one = tmp_path / "one"
    lost = BenchRunner(plan, one, progress=False, worker=Worker(1, 2, host="lost-node"))
    lost.record_run()
    lost.run_models([job for job in plan.jobs if job.seed == 1])
    lost.store.close()
    BenchRunner(plan, one, progress=False).run()
    found = cells(one)
    assert len(found) == planned and not found.duplicated(KEY).any()
    assert set(found[found["seed"] == 1]["worker"]) == {"lost-node:1"}
    assert set(found[found["seed"] == 0]["worker"]) == {f"{socket.gethostname()}:0"}  # the gallery: lost-node

    # Two gloo processes through the --nproc shortcut (torchrun), launched by a process of its own
    two = tmp_path / "two"
    status, output = run_camzoo(["bench", "--config", config_path, "--out", two, "--nproc", "2", "--no-progress",
                                 "--no-html"])
    assert status == 0, output[-6000:]
    found = cells(two)
    assert len(found) == planned and not found.duplicated(KEY).any()
    host = socket.gethostname()
    # each model job (its model and method cells) is computed by one rank, whichever claimed it first;
    # stability and the gallery by rank 0 after the merge
    jobs = found[(found["seed"] >= 0) & (found["method"] != "gallery")]
    assert (jobs.groupby("seed")["worker"].nunique() == 1).all()
    assert set(jobs["worker"]) <= {f"{host}:0", f"{host}:1"}
    assert set(found[(found["seed"] < 0) & (found["method"] != "gallery")]["worker"]) == {f"{host}:0"}
    assert len(shard_paths(two)) == 2

    from camzoo.bench.report import write_report

    write_report(one, formats=("csv",))
    tables = [pd.read_csv(out / "summary.csv") for out in (one, two)]
    timing = [c for c in tables[0] if c.startswith(("ms_per_image", "peak_memory_mb"))]
    assert timing, "the cost columns are in the table"
    pd.testing.assert_frame_equal(tables[0].drop(columns=timing), tables[1].drop(columns=timing))


def _rank_pid(out: Path, rank: int) -> int | None:
    """The pid of the process writing rank ``rank``'s shard of the run in ``out``: the one that holds
    the shard open (read from /proc; forked and spawned ranks alike)."""
    shards = {p.resolve() for p in shard_paths(out) if p.name.endswith(f"-{rank}.sqlite")}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if any(Path(os.readlink(fd)) in shards for fd in (entry / "fd").iterdir()):
                return int(entry.name)
        except OSError:
            continue
    return None


def _shard_cells(out: Path, rank: int) -> int:
    paths = [p for p in shard_paths(out) if p.name.endswith(f"-{rank}.sqlite")]
    if not paths:
        return 0
    try:
        with sqlite3.connect(f"file:{paths[0]}?mode=ro", uri=True, timeout=1) as db:
            return int(db.execute("SELECT count(*) FROM cells").fetchone()[0])
    except sqlite3.Error:
        return 0


@pytest.mark.skipif(not Path("/proc/self/fd").exists(), reason="finds the rank's process through /proc (Linux)")
@pytest.mark.slow
def test_kill_9_of_a_rank_then_a_rerun_leaves_every_cell_once(tmp_path):
    """A rank killed with SIGKILL after its first finished cells: torchrun stops the group, and the same
    command run again completes the grid, keeping the dead rank's finished cells, each cell once."""
    config_path = tmp_path / "tiny.toml"
    config_path.write_text(TINY_RANKS.format(cache=tmp_path / "cache").replace("seeds = [0, 1]", "seeds = [0, 1, 2, 3]"),
                           encoding="utf-8")
    planned = build_plan(resolve_config(None, config_path)).cells
    out = tmp_path / "out"
    command = ["bench", "--config", str(config_path), "--out", str(out), "--nproc", "2", "--no-progress", "--no-html"]
    with Forked(camzoo_main, command) as first:  # its group (the launcher and both ranks) killed at the end
        deadline = time.monotonic() + 300
        while _shard_cells(out, 1) < 1 and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        pid = _rank_pid(out, 1)
        assert pid is not None and first.poll() is None, "rank 1 finished or vanished before it could be killed"
        os.kill(pid, signal.SIGKILL)
        first.wait(timeout=120)
    assert first.returncode != 0  # the group stopped with the lost rank
    killed_rank_cells = _shard_cells(out, 1)
    assert 0 < killed_rank_cells

    status, output = run_camzoo(command)
    assert status == 0, output[-6000:]
    found = cells(out)
    assert len(found) == planned and not found.duplicated(KEY).any()
    with sqlite3.connect(out / "results.sqlite") as db:
        metrics = pd.read_sql("SELECT * FROM results", db)
    assert not metrics.duplicated([*KEY, "metric"]).any()
    assert (found["worker"] == f"{socket.gethostname()}:1").sum() >= killed_rank_cells  # its finished work was kept


def test_jobs_go_to_the_first_rank_that_asks():
    """Two ranks drawing from one counter get every job exactly once, in order, whatever the
    interleaving; a rank that asks more often gets more jobs."""
    import torch.distributed as dist

    from camzoo.bench.distributed import claimed_jobs

    store = dist.HashStore()
    jobs = [f"job{i}" for i in range(7)]
    fast = claimed_jobs(jobs, "run", Worker(0, 2), store)
    slow = claimed_jobs(jobs, "run", Worker(1, 2), store)
    taken = {0: [next(fast)], 1: [next(slow)]}
    taken[0] += [next(fast), next(fast), next(fast)]  # rank 0's models were quick
    taken[1] += list(slow)
    taken[0] += list(fast)
    assert sorted(taken[0] + taken[1]) == jobs
    assert taken[0] == ["job0", "job2", "job3", "job4"] and taken[1] == ["job1", "job5", "job6"]
    # a new launch (another run id or restart) starts from the first job again
    assert list(claimed_jobs(jobs[:2], "other-run", Worker(0, 2), store)) == jobs[:2]


def test_a_bench_rank_reads_its_place_and_device_from_camzoo_world(monkeypatch):
    """world_from_env and rank_device are camzoo.world's rules in the bench's types: a Worker, a
    device name; one process (no torchrun, or a world of one) is not a worker."""
    from camzoo.bench.distributed import rank_device, world_from_env
    from camzoo.world import WorldError

    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert world_from_env() is None
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert world_from_env() is None
    monkeypatch.setenv("WORLD_SIZE", "3")
    worker = world_from_env()
    assert (worker.rank, worker.world_size) == (1, 3)
    monkeypatch.setenv("RANK", "x")
    with pytest.raises(WorldError, match="RANK='x'"):
        world_from_env()
    assert rank_device("cpu") == "cpu"
    monkeypatch.setattr("torch.cuda.is_available", lambda: True)
    monkeypatch.setattr("torch.cuda.device_count", lambda: 4)
    monkeypatch.setenv("LOCAL_RANK", "2")
    assert rank_device("auto") == "cuda:2" and rank_device("cuda:3") == "cuda:3"


def test_rank_0_builds_the_plan_once_and_every_rank_runs_it(tmp_path, monkeypatch):
    """Ranks receive rank 0's plan (pickled, as torch.distributed sends it) instead of rebuilding it; a
    problem rank 0 finds stops every rank with rank 0's message."""
    import pickle

    import torch.distributed as dist

    from camzoo.bench import distributed
    from camzoo.bench.plan import ConfigError

    sent: list[bytes] = []

    def broadcast(objects: list, src: int) -> None:  # rank 0 calls first; the other ranks get its objects
        if not sent:
            sent.append(pickle.dumps(objects))
        else:
            objects[:] = pickle.loads(sent.pop())

    built = []
    real = distributed.build_plan
    monkeypatch.setattr(dist, "broadcast_object_list", broadcast)
    monkeypatch.setattr(distributed, "_all_ok", lambda ok, device: ok)
    monkeypatch.setattr(distributed, "build_plan", lambda *args: built.append(args) or real(*args))
    config_path = tmp_path / "tiny.toml"
    config_path.write_text(TINY_RANKS.format(cache=tmp_path / "cache"), encoding="utf-8")
    config = resolve_config(None, config_path)
    zero = distributed._shared_plan(config, "cpu", Worker(0, 2))
    one = distributed._shared_plan(config, "cpu", Worker(1, 2))
    assert len(built) == 1 and one.jobs == zero.jobs and one.run_id == zero.run_id and one is not zero
    assert (one.device, one.device_label) == (zero.device, zero.device_label)

    config["train"]["epochs"] = 0
    with pytest.raises(ConfigError) as first:
        distributed._shared_plan(config, "cpu", Worker(0, 2))
    with pytest.raises(ConfigError) as other:
        distributed._shared_plan(config, "cpu", Worker(1, 2))
    assert str(other.value) == str(first.value) and "epochs must be an integer >= 1" in str(other.value)
    assert len(built) == 2  # rank 1 never built a plan
