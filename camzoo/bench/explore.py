"""A results store as pandas DataFrames: ``camzoo.bench.load(results_dir)``.

Why: the store keeps per-image values as ``.npy`` blobs keyed by cell, which is right for resuming
and for the report's statistics but not for a user who wants to group, filter and plot. One long
table (a row per image) is the shape pandas, seaborn and R read directly; nobody should have to
decode blobs by hand. Everything here is read from ``results.sqlite`` alone, like ``camzoo report``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any
from collections.abc import Mapping

import numpy as np
import pandas as pd

from .record import RunRecord, find_run, latest_run
from .store import ALL_SEEDS, STORE_NAME, ResultsStore
from .summary import RESAMPLES, summarise

CELL_COLUMNS = ["dataset", "backbone", "kind", "variant", "seed", "method"]
LONG_COLUMNS = [*CELL_COLUMNS, "metric", "pair", "image", "value"]
CURVE_COLUMNS = [*CELL_COLUMNS, "metric", "step", "fraction", "value"]
BOOKKEEPING = ("gallery",)  # cells that hold the evaluation images, not results


def open_store(directory: str | Path) -> ResultsStore:
    """Open an existing store (never create one: a typo in a path should fail, not make a new directory)."""
    directory = Path(directory)
    if not (directory / STORE_NAME).is_file():
        raise FileNotFoundError(f"{directory} holds no results store ({STORE_NAME}); run `camzoo bench --out {directory}`")
    return ResultsStore(directory)


@dataclass(frozen=True)
class Results:
    """One run of a store, as DataFrames (see :func:`load`)."""

    directory: Path
    record: RunRecord  # the run: id, stored config and provenance, scoring settings (camzoo.bench.record)
    cells: pd.DataFrame  # one row per (cell, metric): the stored value (the mean the tables average over seeds)
    long: pd.DataFrame  # one row per (cell, metric, [pair,] image): metrics with one number per image
    curves: pd.DataFrame  # one row per (cell, curve, step): deletion/insertion curves averaged over images

    @property
    def run_id(self) -> str:
        return self.record.run_id

    @property
    def config(self) -> Mapping[str, Any]:
        return self.record.config

    @property
    def provenance(self) -> Mapping[str, Any]:
        return self.record.provenance

    @property
    def created_at(self) -> str:
        return self.record.created_at

    def summary(self, resamples: int = RESAMPLES) -> pd.DataFrame:
        """The frame behind summary.csv (means, stds, CIs, marks, normalised scores), by the report's own code."""
        with open_store(self.directory) as store:
            return summarise(store, self.record, resamples).frame

    def reliability(self, resamples: int = RESAMPLES) -> pd.DataFrame:
        """The frame behind reliability.csv: one reliability card per (dataset, backbone, metric) with its
        verdict (``rank``/``report``) and reason (camzoo.bench.reliability; docs/metrics.md)."""
        with open_store(self.directory) as store:
            return summarise(store, self.record, resamples).reliability


def curve_fractions(record: RunRecord, points: int) -> np.ndarray:
    """x of a deletion/insertion curve: the fraction of the pixels changed at each of its points."""
    return np.linspace(0.0, record.game_fraction, points)


def _frames(rows: list[dict[str, Any]], record: RunRecord) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(cells, long, curves) from the store's result rows (per-image blobs decoded)."""
    cells, long_parts, curve_parts = [], [], []
    for row in rows:
        if row["method"] in BOOKKEEPING:
            continue
        per_image = row["per_image"]
        key = {c: row[c] for c in CELL_COLUMNS} | {"metric": row["metric"]}
        cells.append({**key, "value": np.nan if row["value"] is None else row["value"],
                      "per_image_shape": None if per_image is None else tuple(per_image.shape)})
        if per_image is None:
            continue
        values = np.asarray(per_image, dtype=np.float64)
        if row["metric"].endswith("_curve") and values.ndim == 2:
            mean = values.mean(0)
            curve_parts.append(pd.DataFrame({**key, "step": np.arange(len(mean)),
                                             "fraction": curve_fractions(record, len(mean)), "value": mean}))
        elif values.ndim == 1 or (row["seed"] == ALL_SEEDS and values.ndim == 2):
            table = values.reshape(-1, values.shape[-1])  # (pairs or 1, images)
            pairs, images = np.indices(table.shape)
            long_parts.append(pd.DataFrame({
                **key, "pair": pd.array(pairs.ravel() if values.ndim == 2 else [pd.NA] * table.size, dtype="Int64"),
                "image": images.ravel(), "value": table.ravel()}))
    cells_frame = pd.DataFrame(cells, columns=[*CELL_COLUMNS, "metric", "value", "per_image_shape"])
    long = pd.concat(long_parts, ignore_index=True) if long_parts else pd.DataFrame(columns=LONG_COLUMNS)
    curves = pd.concat(curve_parts, ignore_index=True) if curve_parts else pd.DataFrame(columns=CURVE_COLUMNS)
    for frame in (cells_frame, long, curves):
        frame["seed"] = frame["seed"].astype("int64")
    return cells_frame, long[LONG_COLUMNS], curves[CURVE_COLUMNS]


def load(results_dir: str | Path, run: str | None = None) -> Results:
    """Read one run (default: the latest) of ``results_dir/results.sqlite`` into DataFrames.

    - ``cells``: dataset, backbone, kind, variant, seed, method, metric, value — every number the
      store holds for the run, one row per cell and metric (method "model": accuracy and training;
      seed -1 / variant "*": cross-seed stability).
    - ``long``: the same keys plus ``pair`` and ``image`` — one row per evaluation image for the
      metrics that keep one number per image (stability: per seed pair and image; ``top1``: per
      test image). Dataset-level metrics (MaxBoxAcc, PxAP) keep tables, not numbers, per image.
    - ``curves``: deletion/insertion curves averaged over images, per cell and step, with
      ``fraction`` = the share of pixels changed.
    - ``config``, ``provenance``: the run's resolved config and versions/device/host; ``record``: the
      run typed (camzoo.bench.record.RunRecord: its scoring settings as an ``EvalSettings``).
    - ``summary()``: the summary.csv frame (CIs, significance marks), computed on demand.
    - ``reliability()``: the reliability.csv frame (a card per metric: rank or report, and why).

    Args:
        results_dir: the directory ``camzoo bench --out`` wrote, holding ``results.sqlite``.
        run: a run id in the store; None: the latest run.

    Returns:
        A frozen :class:`Results` with ``directory``, ``record`` (and its ``run_id``, ``config``,
        ``provenance``, ``created_at``) and the ``cells``, ``long`` and ``curves`` DataFrames described above.

    Raises:
        FileNotFoundError: ``results_dir`` holds no results store (one is never created).
        ValueError: the store holds no run, or no run ``run``.
    """
    with open_store(results_dir) as store:
        return read_results(store, RunRecord.from_store(store, run), results_dir)


def read_results(store: ResultsStore, record: RunRecord, directory: str | Path | None = None) -> Results:
    """:func:`load` of an open store and a record already built (camzoo report reads both once)."""
    cells, long, curves = _frames(store.results(record.run_id, with_per_image=True), record)
    return Results(Path(directory if directory is not None else store.directory), record, cells, long, curves)


# find_run and latest_run (the run rows) live in camzoo.bench.record; importable from here as before
__all__ = ["Results", "curve_fractions", "find_run", "latest_run", "load", "open_store", "read_results"]
