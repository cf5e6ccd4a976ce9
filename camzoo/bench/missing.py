"""What a stored run lacks: the planned cells that are not in the store, counted and named.

Why: a bench killed after one of two models left a store whose report showed one model's numbers as
if they were the run's, said "2 checkpoint(s)" and exited 0. A run records the cells it plans
(``ResultsStore.record_run``), so a report compares them with the cells finished, says at its top
which models, seeds, methods and cells are missing, and ``camzoo report`` exits with
:data:`INCOMPLETE_EXIT`. A store written before runs recorded their plan is judged by the models its
config names and the methods its finished models have.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import product
from pathlib import Path
from typing import Any
from collections.abc import Mapping, Sequence

from .record import RunRecord
from .store import ALL_SEEDS, CellKey, ResultsStore

INCOMPLETE_EXIT = 3  # `camzoo report` / `camzoo bench`: the report is written, but cells of the run are missing
_MODEL, _GALLERY = "model", "gallery"
_SHOWN = 6  # models named in the line; the others counted


@dataclass(frozen=True)
class Missing:
    """The cells of a run that are not in its store (``planned``: how many it plans; ``inferred``: an older
    store that did not record its plan, judged from its config and finished cells)."""

    run_id: str
    directory: str
    planned: int
    cells: tuple[CellKey, ...]
    models: Mapping[str, tuple[int, int]]  # unfinished model -> (its cells missing, its cells planned)
    inferred: bool = False

    def __bool__(self) -> bool:
        return bool(self.cells)

    def counts(self) -> dict[str, int]:
        """Missing cells by kind: model, method, stability, gallery."""
        kinds = [_cell_kind(key) for key in self.cells]
        return {kind: kinds.count(kind) for kind in ("model", "method", "stability", "gallery") if kind in kinds}

    def line(self) -> str:
        """One line: what is missing, counted and named, and what to do."""
        counts = ", ".join(f"{n} {kind}" for kind, n in self.counts().items())
        absent = [name for name, (gone, total) in self.models.items() if gone == total]
        partial = [f"{name} ({gone} of {total} cells)" for name, (gone, total) in self.models.items() if gone < total]
        parts = [f"run {self.run_id} is incomplete: {len(self.cells)} of {self.planned} planned cells are missing "
                 f"({counts})"]
        if absent:
            parts.append(f"{len(absent)} model(s) have no cell: {_listed(absent)}")
        if partial:
            parts.append(f"{len(partial)} model(s) are unfinished: {_listed(partial)}")
        how = "judged from its config (an older store that did not record its plan); " if self.inferred else ""
        return ("; ".join(parts) + f"; {how}the tables show the finished cells only: rerun the same `camzoo bench` "
                f"command with --out {self.directory} to finish it")


def _listed(names: Sequence[str]) -> str:
    shown = ", ".join(names[:_SHOWN])
    return shown + (f" and {len(names) - _SHOWN} more" if len(names) > _SHOWN else "")


def _cell_kind(key: CellKey) -> str:
    if key.method == _GALLERY:
        return "gallery"
    if key.seed == ALL_SEEDS:
        return "stability"
    return "model" if key.method == _MODEL else "method"


def find_missing(store: ResultsStore, record: RunRecord, directory: str | Path) -> Missing:
    """The run's planned cells that the store lacks (empty when the run is complete)."""
    done = set(store.cells(record.run_id))
    planned = store.planned_cells(record.run_id)
    inferred = planned is None
    if planned is None:
        planned = _inferred_plan(record, done)
    missing = tuple(key for key in planned if key not in done)
    jobs: dict[tuple, list[int]] = {}  # (dataset, backbone, kind, variant, seed) -> [missing, planned]
    for key in planned:
        if key.seed != ALL_SEEDS:
            counts = jobs.setdefault(key.as_tuple()[:5], [0, 0])
            counts[0] += key not in done
            counts[1] += 1
    names = _model_names(record.config)
    models = {names(*job): (gone, total) for job, (gone, total) in jobs.items() if gone}
    return Missing(record.run_id, str(directory), len(planned), missing, models, inferred)


def _model_names(config: Mapping[str, Any]):
    """(dataset, backbone, kind, variant, seed) -> how a report names that model: its checkpoint file
    for a ``[[models]]`` entry, else its job label."""
    from .plan import job_label
    from .sources import SOURCE_KIND, entry_label

    files = {}
    for entry in config.get("models") or []:
        for seed, path in enumerate(entry.get("checkpoints") or []):
            files[entry_label(entry), seed] = path

    def name(dataset: str, backbone: str, kind: str, variant: str, seed: int) -> str:
        path = files.get((backbone, seed)) if kind == SOURCE_KIND else None
        label = job_label(dataset, backbone, kind, variant, seed)
        return f"{label} ({Path(path).name})" if path else label

    return name


def _inferred_plan(record: RunRecord, done: set[CellKey]) -> list[CellKey]:
    """An older store's plan, judged from its config and its finished cells: every model its config names
    on every dataset and kind that has cells, with the methods its finished models of that kind have."""
    from .sources import SOURCE_KIND, entry_label

    config = record.config
    datasets = sorted({key.dataset for key in done})
    kinds = {dataset: sorted({key.kind for key in done if key.dataset == dataset and key.method != _GALLERY})
             for dataset in datasets}
    if config.get("models"):
        models = [(entry_label(entry), SOURCE_KIND, "default", seed) for entry in config["models"]
                  for seed in range(len(entry.get("checkpoints") or []))]
    else:
        variants = [v.get("name") for v in config.get("variants") or []] or ["default"]
        models = [(backbone, kind, variant, seed) for backbone, kind, variant, seed in product(
            config.get("backbones") or [], config.get("kinds") or [], variants, config.get("seeds") or [])]
    planned: list[CellKey] = []
    for dataset in datasets:
        for backbone, kind, variant, seed in models:
            if kind not in kinds[dataset]:
                continue
            methods = sorted({key.method for key in done if key.dataset == dataset and key.kind == kind
                              and key.seed != ALL_SEEDS})
            planned += [CellKey(dataset, backbone, kind, variant, seed, method) for method in methods]
    return planned


__all__ = ["INCOMPLETE_EXIT", "Missing", "find_missing"]
