"""One shard store per rank, merged into the results store exactly once.

Why shards: a distributed benchmark may span nodes whose only common ground is a network file
system, where one SQLite file written by many processes is not safe. Each rank therefore writes its
own SQLite file under ``DIR/shards/`` (only it writes there), and one process at a time merges the
shards into ``DIR/results.sqlite`` (:meth:`ResultsStore.merge_from`: a cell that is already there is
never copied again). Shards are kept after merging: merging is idempotent, a store shows how the
work was spread, and a shard is never deleted while its rank might still write to it.
"""

from __future__ import annotations

import re
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from collections.abc import Iterable, Mapping

import numpy as np

from .store import CellKey, ResultsStore

SHARD_DIR = "shards"


@dataclass(frozen=True)
class Worker:
    """Which process of how many computes cells: rank/world size and the host it runs on."""

    rank: int = 0
    world_size: int = 1
    host: str = field(default_factory=socket.gethostname)

    @property
    def label(self) -> str:
        """What each cell's provenance records: "host:rank"."""
        return f"{self.host}:{self.rank}"


def shard_name(worker: Worker) -> str:
    host = re.sub(r"[^A-Za-z0-9_.-]", "_", worker.host) or "host"
    return f"rank-{host}-{worker.rank}.sqlite"


def shard_paths(directory: str | Path) -> list[Path]:
    return sorted((Path(directory) / SHARD_DIR).glob("rank-*.sqlite"))


def merge_shards(directory: str | Path, store: ResultsStore | None = None) -> int:
    """Merge every shard of a results directory into its results.sqlite; the number of cells copied.
    Safe to call again at any time (cells already merged are skipped)."""
    paths = shard_paths(directory)
    if not paths:
        return 0
    own = store is None
    store = store or ResultsStore(directory)
    try:
        return sum(store.merge_from(path) for path in paths)
    finally:
        if own:
            store.close()


class ShardedStore:
    """What a rank's runner writes to: its own shard. A cell counts as done when the shard has it or
    it is in ``done`` (the cells rank 0 found in the merged store and sent to every rank), so only
    rank 0 ever opens results.sqlite."""

    def __init__(self, directory: str | Path, worker: Worker, done: Iterable[CellKey] = ()):
        self.shard = ResultsStore(Path(directory) / SHARD_DIR, name=shard_name(worker))
        self.path = self.shard.path
        self.done = frozenset(done)

    def close(self) -> None:
        self.shard.close()

    def record_run(self, run_id: str, config: Mapping[str, Any], provenance: Mapping[str, Any],
                   planned: Iterable[CellKey] | None = None) -> None:
        self.shard.record_run(run_id, config, provenance, planned)

    def is_done(self, run_id: str, key: CellKey) -> bool:
        """``done`` holds the cells of this rank's run only (the runner's run id)."""
        return key in self.done or self.shard.is_done(run_id, key)

    def write_cell(self, *args: Any, **kwargs: Any) -> None:
        self.shard.write_cell(*args, **kwargs)

    def arrays(self, run_id: str, name: str, **where: Any) -> Iterable[tuple[CellKey, np.ndarray]]:
        return self.shard.arrays(run_id, name, **where)
