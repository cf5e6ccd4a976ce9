"""A benchmark grid spread over processes with torch.distributed (launched by torchrun, or by
``camzoo bench --nproc``: camzoo.train.launch).

Why torch.distributed and not a scheduler of our own: torchrun already starts one process per
device on one or many nodes, restarts or tears down the group when one dies, and gives every
process its rank; all the benchmark adds is who computes which cell and where it is written:

1. rank 0 builds the run's plan from the config, which validates it, and sends it to every rank (a
   problem stops all ranks with rank 0's message, before any cell); each rank executes that plan on
   its own device;
2. rank 0 merges the shards of earlier attempts into results.sqlite and sends every rank the list
   of finished cells (no other rank opens results.sqlite, which may sit on a network share);
3. the model jobs that still lack a cell go, in grid order, each to the first rank that asks for
   one (a counter in torchrun's store), so a rank whose models were quick takes the next instead of
   idling; each rank trains and explains its models on its own device (cuda:LOCAL_RANK with NCCL,
   else the CPU with gloo) and writes its cells to its own shard (camzoo.bench.shards); barrier;
4. rank 0 merges the shards and computes the stability cells (they compare the maps of every seed).

A rank killed at any point loses at most the cell it was computing: rerunning the same command
(on any number of ranks) merges what was finished and deals out the rest.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import Any
from collections.abc import Callable, Iterator, Mapping, Sequence

import torch

from .. import world
from .plan import BenchPlan, ConfigError, ModelJob, build_plan
from .runner import BenchRunner
from .shards import ShardedStore, Worker, merge_shards
from .store import CellKey, ResultsStore


def world_from_env() -> Worker | None:
    """This process's place in a torchrun group (camzoo.world), or None when not launched as one of
    several ranks."""
    place = world.place_from_env()
    return Worker(place.rank, place.world_size) if place is not None else None


def rank_device(requested: str) -> str:
    """One device per rank (camzoo.world.rank_device): "auto"/"cuda" -> cuda:LOCAL_RANK where CUDA
    exists; "cpu" stays the CPU; "cuda:N" is kept."""
    return str(world.rank_device(requested))


# What every rank of a bench imports before its first cell (torch._dynamo: torch's optimizers import
# it, ~2 s); forked ranks start with them loaded (camzoo.train.launch).
RANK_MODULES = ("camzoo.bench.runner", "camzoo.bench.evaluation", "camzoo.data", "camzoo.methods", "camzoo.metrics",
                "camzoo.models", "camzoo.train", "pandas", "torch._dynamo")


def claimed_jobs(jobs: Sequence[ModelJob], run_id: str, worker: Worker, store: Any = None) -> Iterator[ModelJob]:
    """The jobs this rank takes: each job, in order, goes to the first rank that asks for one.

    Why not a fixed share: model jobs differ in cost (an ABN or LFI-CAM model scores slower than a
    baseline) and a grid rarely divides evenly, so fixed shares left one of two CPU processes idle for
    the last ~40 s of the quick preset's grid. The counter is an atomic ``add`` in the store torchrun
    gives the process group (one per launch and restart, hence the restart count in the key), or in
    ``store``; a torch without that store falls back to the fixed round-robin share.
    """
    import torch.distributed as dist

    if store is None:
        get_store = getattr(dist.distributed_c10d, "_get_default_store", None)
        if get_store is None:
            yield from jobs[worker.rank::worker.world_size]
            return
        store = get_store()
    key = f"camzoo-bench/{run_id}/next-job/{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}"
    while (index := store.add(key, 1) - 1) < len(jobs):
        yield jobs[index]


def _all_ok(ok: bool, device: str) -> bool:
    """True when every rank says ok (one all-reduce of a flag)."""
    import torch.distributed as dist

    flag = torch.tensor([0 if ok else 1], device=device if device.startswith("cuda") else "cpu")
    dist.all_reduce(flag)
    return int(flag.item()) == 0


def _shared_plan(config: Mapping[str, Any], device: str, worker: Worker, out_dir: str | Path | None = None
                 ) -> BenchPlan:
    """The run's plan on every rank: rank 0 builds (and so validates) it once and sends it to the others;
    each rank runs it on its own device. A problem stops every rank with rank 0's message."""
    import torch.distributed as dist

    from ..modelutil import describe_device, resolve_device

    sent: list[Any] = [None, None]  # the plan, or the message of why there is none
    failure = None
    if worker.rank == 0:
        try:
            sent[0] = build_plan(config, device, worker.world_size, out_dir)  # out_dir: where input hashes are cached
        except Exception as err:  # every rank must hear of it, or the others wait here
            failure = err
            sent[1] = str(err) if isinstance(err, ValueError) else f"rank 0: {type(err).__name__}: {err}"
    dist.broadcast_object_list(sent, src=0)
    if failure is not None:
        raise failure
    plan, message = sent
    if message is not None:
        raise ConfigError(message)
    error = None
    try:  # this rank's own device (rank 0's was checked with the plan)
        resolved = resolve_device(device)
    except ValueError as err:
        error = ConfigError(f"rank {worker.rank}: device: {err}")
    if not _all_ok(error is None, device):
        raise error or ConfigError(f"rank {worker.rank}: another rank cannot use its device (see its message)")
    return replace(plan, device=str(resolved), device_label=describe_device(resolved))


def run_distributed(config: Mapping[str, Any], out_dir: str | Path, worker: Worker, device: str | None = None,
                    progress: bool = True, echo: Callable[[str], None] = print,
                    job_seconds: Mapping[str, float] | None = None) -> BenchRunner:
    """This rank's share of the grid (see the module docstring); returns its runner (rank 0's holds
    the merged store). Call it in every process of a torchrun group."""
    import torch.distributed as dist

    device = rank_device(device or config["device"])
    world.join(torch.device(device))
    try:
        plan = _shared_plan(config, device, worker, out_dir)
        runner = BenchRunner(plan, out_dir, progress=progress, echo=echo, worker=worker, job_seconds=job_seconds)
        done = [None]
        if worker.rank == 0:  # the only rank that opens results.sqlite before the end
            with ResultsStore(out_dir) as merged:
                merge_shards(out_dir, merged)
                done = [[key.as_tuple() for key in merged.cells(runner.run_id)]]
        dist.broadcast_object_list(done, src=0)
        runner.use_store(ShardedStore(out_dir, worker, (CellKey(*key) for key in done[0])))
        jobs = runner.pending_jobs()  # the same list on every rank (from the broadcast cells)
        runner.record_run()
        runner.run_models(claimed_jobs(jobs, runner.run_id, worker))
        world.barrier(device)
        if worker.rank == 0:
            merged = ResultsStore(out_dir)
            merge_shards(out_dir, merged)
            runner.use_store(merged)
            runner.run_stability()
        return runner
    finally:
        dist.destroy_process_group()
