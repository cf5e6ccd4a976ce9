"""One stored run as the report side reads it: :class:`RunRecord`, built once per report and passed down.

Why one record: the tables, the summary, report.md/.html, ``camzoo.bench.load`` and the reliability
cards all need the run's scoring settings. Each used to read the stored config's ``[eval]`` by string
key with its own copy of the defaults, so a setting added later (absent from an older store) could
report one way in a table and another in the summary. Here the stored ``[eval]`` is read once, into
:class:`~camzoo.metrics.EvalSettings`: a key an older store lacks takes the field's default, the one
copy there is. The stored format is not changed; this only reads it.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any
from collections.abc import Mapping

from ..metrics.causal import RISE_PROTOCOL
from ..metrics.settings import EvalSettings
from .store import ResultsStore


def latest_run(store: ResultsStore) -> dict[str, Any]:
    """The run row (``ResultsStore.runs``) a bench started last in the store, or a clear error when there
    is none. Started last, not created last: a rerun on inputs an earlier run already scored (a
    checkpoint restored) resumes that earlier run, and it is then the one to report."""
    latest = store.latest_run_id()
    if latest is None:
        raise ValueError(f"{store.path} holds no benchmark run yet; run `camzoo bench --out {store.directory}` first")
    return find_run(store, latest)


def find_run(store: ResultsStore, run_id: str) -> dict[str, Any]:
    """The run row of that id in the store, or a clear error listing the runs there."""
    run = next((r for r in store.runs() if r["run_id"] == run_id), None)
    if run is None:
        raise ValueError(f"no run {run_id!r} in {store.path}; runs: {', '.join(r['run_id'] for r in store.runs())}")
    return run


@dataclass(frozen=True)
class RunRecord:
    """A stored run, typed: what every report path reads of it.

    ``config`` and ``provenance`` are the stored mappings as they are (report.html embeds the config);
    the scoring settings are read from ``settings`` and the harness's image count from ``images``,
    never from ``config["eval"]``."""

    run_id: str
    created_at: str
    config: Mapping[str, Any]  # the resolved config stored with the run
    provenance: Mapping[str, Any]  # versions, device, host (camzoo.bench.runner)
    settings: EvalSettings  # how every cell was scored; defaults for keys an older store lacks
    images: int  # evaluation images per model (eval.images; from a store: the most any dataset had)
    seeds: tuple[int, ...]  # the training seeds (a [[models]] run: unused, its checkpoints are the replicates)
    used_images: Mapping[str, int] = field(default_factory=dict)  # dataset -> the evaluation images it had

    @classmethod
    def from_config(cls, config: Mapping[str, Any], run_id: str = "", created_at: str = "",
                    provenance: Mapping[str, Any] | None = None) -> RunRecord:
        """The record of a resolved (or stored) config: the one place that reads its ``[eval]``."""
        evaluation = config["eval"]
        return cls(run_id=run_id, created_at=created_at, config=config, provenance=dict(provenance or {}),
                   settings=EvalSettings.from_config(evaluation), images=int(evaluation["images"]),
                   seeds=tuple(config.get("seeds") or ()))

    @classmethod
    def from_row(cls, run: Mapping[str, Any]) -> RunRecord:
        """From a run row of ``ResultsStore.runs()`` (run_id, config, provenance, created_at)."""
        return cls.from_config(run["config"], run["run_id"], run["created_at"], run["provenance"])

    @classmethod
    def from_store(cls, store: ResultsStore, run_id: str | None = None) -> RunRecord:
        """The run ``run_id`` of the store (None: the latest), or a clear error naming the runs there; its
        image count is what each dataset had (its image-set cell), not what ``eval.images`` asked for: a
        folder of 20 images scores 20 whatever the config says."""
        record = cls.from_row(find_run(store, run_id) if run_id else latest_run(store))
        used = {row["dataset"]: int(row["value"]) for row in store.results(record.run_id)
                if row["metric"] == "eval_images"}
        return replace(record, images=max(used.values()), used_images=used) if used else record

    @property
    def replicates(self) -> int:
        """Models per table row: a [[models]] entry's checkpoints, else seeds x variants."""
        models = self.config.get("models") or []
        if models:
            return len(models[0]["checkpoints"])
        return len(self.seeds) * max(1, len(self.config.get("variants") or []))

    @property
    def tasks(self) -> tuple[str, ...]:
        """The datasets' tasks (``[[datasets]]`` ``task``), each once, in config order."""
        return tuple(dict.fromkeys(d.get("task", "classification") for d in self.config.get("datasets") or ()))

    @property
    def game_fraction(self) -> float:
        """The share of the pixels the deletion/insertion games span: RISE's protocol plays over every one."""
        return 1.0 if self.settings.protocol == RISE_PROTOCOL.name else float(self.settings.deletion_fraction)

    @property
    def game_images(self) -> int:
        """The images the perturbation games played on (``eval.game_images``, at most ``images``)."""
        games = self.settings.game_images
        return self.images if games is None else min(int(games), self.images)


__all__ = ["RunRecord", "find_run", "latest_run"]
