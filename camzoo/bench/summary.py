"""The numbers behind every table, from the store alone.

For each row (kind, method) and metric column: the mean over seeds, the sample std over seeds
(ddof=1; stability: over seed pairs), a 95 % hierarchical bootstrap CI (seeds, then images), and a
significance-tested mark — "best" only when a row is significantly better than every other
non-reference row of its column (Wilcoxon signed-rank on per-image values averaged over seeds,
Holm-corrected within the column, p < 0.05), "tie" for the rows no test separates from the top.
Reference rows (the controls) are never marked; they anchor a normalised score
(value - random) / (oracle - random) for the other rows of the same model kind.

Why from the store: the per-image values are kept, so a new statistic never needs a rerun.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any
from collections.abc import Callable, Mapping

import numpy as np
import pandas as pd

from . import stats
from .cells import Cell, Column, is_reference, metric_info, table_columns, paired_vector
from .grid_status import GridPlay, grid_plays
from .record import RunRecord
from .store import ALL_SEEDS, ResultsStore

RESAMPLES = 2000
ALPHA = 0.05
NORMALISED_SCOPES = ("map",)  # metrics whose controls give a floor (random) and a ceiling (oracle)
MIN_CONTROL_GAP = 0.02  # normalise only where oracle and random differ by >= 2 % of the metric's range


def row_rank(config: Mapping[str, Any]) -> Callable[[str, str], tuple[int, int, str]]:
    """Rows in the order the run's config lists its kinds and methods."""
    kinds = {kind: i for i, kind in enumerate(config.get("kinds") or [])}
    methods = {method: i for i, method in enumerate(config.get("methods") or [])}

    def rank(kind: str, method: str) -> tuple[int, int, str]:
        return kinds.get(kind, len(kinds)), methods.get(method, len(methods)), method

    return rank


def _stack(arrays: list[Any]) -> np.ndarray | None:
    if not arrays or any(a is None for a in arrays) or len({np.shape(a) for a in arrays}) != 1:
        return None
    return np.stack([np.asarray(a, dtype=np.float64) for a in arrays])


Rows = dict[tuple[str, str, str], pd.DataFrame]  # (kind, method, metric) -> its result rows


def _by_cell(frame: pd.DataFrame) -> Rows:
    """The rows of each (kind, method, metric): grouped once, instead of filtering the whole frame for
    every cell of the table (that filtering was most of a small report's time)."""
    return {key: rows for key, rows in frame.groupby(["kind", "method", "metric"], sort=False)}


def _cell(per_seed: Rows, stability: Rows, column: Column, kind: str, method: str) -> Cell | None:
    if column.source == "stability":
        chosen = stability.get((kind, method, column.metric))  # a group is never empty
        if chosen is None:
            return None
        row = chosen.iloc[0]
        per_image = None if row["per_image"] is None else np.asarray(row["per_image"], dtype=np.float64)
        if per_image is not None and per_image.ndim == 1:  # an older store: one value per pair
            per_image = per_image[:, None]
        values = [] if per_image is None else list(per_image.mean(1))
        return Cell(values, per_image, float(row["value"]))
    source = "model" if column.source == "model" else method
    chosen = per_seed.get((kind, source, column.metric))
    if chosen is None:
        return None
    chosen = chosen.sort_values(["variant", "seed"])
    values = [float(v) for v in chosen["value"]]
    return Cell(values, _stack(list(chosen["per_image"])), float(np.mean(values)))


def _interval(cell: Cell, column: Column, resamples: int) -> tuple[float, float]:
    """95 % CI: seeds (or pairs) then images resampled; a dataset-level metric is recomputed from
    each resample's pooled per-image tables, so the CI brackets the statistic the table shows."""
    pooled = metric_info(column).pooled
    if cell.per_image is None:
        return stats.hierarchical_bootstrap_ci(np.asarray(cell.values)[:, None], resamples) if cell.values else (math.nan,) * 2
    if pooled is not None and cell.per_image.ndim > 2:
        return stats.hierarchical_bootstrap_ci_of(cell.per_image, pooled, resamples)
    if cell.per_image.ndim != 2:
        return math.nan, math.nan  # tables without a pooled statistic: no CI rather than a wrong one
    return stats.hierarchical_bootstrap_ci(cell.per_image, resamples)


def _marks(vectors: dict[str, np.ndarray], means: dict[str, float], higher: bool, effect: Effect
           ) -> tuple[set[str], set[str], list[dict]]:
    """(best rows, tied rows, pairwise records) of one column among the competing rows. A pair is
    separated (``significant``) only by a Holm-significant test AND an effect that is not negligible."""
    if len({v.shape for v in vectors.values()}) != 1:
        return set(), set(), []
    winner, records = stats.significant_best({k: v[None, :] for k, v in vectors.items()}, higher, ALPHA,
                                             separates=lambda record: effect.separates(record, vectors))
    if winner is not None:
        return {winner}, set(), records
    top = (max if higher else min)(means, key=lambda name: means[name])
    tied = {top} | {r["b"] if r["a"] == top else r["a"] for r in records
                    if top in (r["a"], r["b"]) and not r["significant"]}
    return set(), tied if len(tied) > 1 else set(), records


@dataclass(frozen=True)
class Effect:
    """When a significant difference is large enough to separate two rows (the run's ``EvalSettings``):
    Cliff's |δ| of their per-image values at least ``min_delta`` and, where the column's controls span a
    range (``span``: |oracle − random|, NaN where they do not), the paired median difference at least
    ``min_span`` of it. Why: with hundreds of paired images a Wilcoxon test calls a 1e-4 difference
    significant (two random-init models: every row at chance, yet "0.167ᵃ" and "0.167ᵇ")."""

    min_delta: float
    min_span: float
    span: float

    def separates(self, record: dict[str, Any], vectors: Mapping[str, np.ndarray]) -> bool:
        """Adds ``cliffs_delta``, ``relative_difference`` and ``negligible`` to ``record``; True when not negligible."""
        from .psychometrics import cliffs_delta

        delta = cliffs_delta(vectors[record["a"]], vectors[record["b"]])
        relative = record["median_difference"] / self.span if self.span == self.span and self.span > 0 else math.nan
        negligible = not abs(delta) >= self.min_delta or abs(relative) < self.min_span
        record.update(cliffs_delta=float(delta), relative_difference=float(relative), negligible=bool(negligible))
        return not negligible


@dataclass
class Summary:
    frame: pd.DataFrame  # one row per (dataset, backbone, kind, method): every column's numbers and marks
    pairwise: pd.DataFrame  # one row per tested pair of rows per column
    agreement: dict[tuple[str, str], dict[str, Any]]  # (dataset, backbone) -> Kendall's tau between substrates
    reliability: pd.DataFrame = dataclasses.field(default_factory=pd.DataFrame)  # reliability.csv: a card per metric
    # (dataset, backbone) -> each model's grids (camzoo.bench.grid_status): what the discrimination table says
    grids: dict[tuple[str, str], list[GridPlay]] = dataclasses.field(default_factory=dict)


def substrate_agreement(frame: pd.DataFrame) -> dict[str, Any] | None:
    """Kendall's tau between the rankings of the non-control rows by SRG under each substrate."""
    from ..metrics import substrate_agreement as agreement

    rows = frame[~frame["reference"].astype(bool)] if "reference" in frame else frame
    columns = [c for c in rows if c.startswith("srg_") and c.endswith("_mean") and rows[c].notna().all()]
    if len(columns) < 2 or len(rows) < 2:
        return None
    scores = {c[len("srg_"):-len("_mean")]: {f"{r.kind}/{r.method}": float(r[c]) for _, r in rows.iterrows()}
              for c in columns}
    return agreement(scores)


def summarise(store: ResultsStore, run: RunRecord, resamples: int = RESAMPLES) -> Summary:
    """Every summary number of a run: see :class:`Summary`."""
    columns = table_columns()
    rank = row_rank(run.config)
    rows = pd.DataFrame(store.results(run.run_id, with_per_image=True))
    if rows.empty:
        return Summary(pd.DataFrame(), pd.DataFrame(), {}, pd.DataFrame())
    settings = run.settings
    records: list[dict[str, Any]] = []
    pairwise: list[dict[str, Any]] = []
    groups: dict[tuple[str, str], tuple[dict[str, dict], dict[str, dict], pd.DataFrame]] = {}
    for (dataset, backbone), group in rows.groupby(["dataset", "backbone"], sort=False):
        cells_by_column: dict[str, dict[tuple[str, str], Cell | None]] = {}
        vectors_by_column: dict[str, dict[str, np.ndarray]] = {}  # metric -> row label -> its paired vector
        per_seed, stability = group[group["seed"] != ALL_SEEDS], group[group["seed"] == ALL_SEEDS]
        cells = per_seed[~per_seed["method"].isin(["model", "gallery"])][["kind", "method"]].drop_duplicates()
        keys = sorted(((k, m) for k, m in cells.itertuples(index=False)), key=lambda km: rank(*km))
        table = {key: {"dataset": dataset, "backbone": backbone, "kind": key[0], "method": key[1],
                       "reference": is_reference(key[1])} for key in keys}
        per_seed_rows, stability_rows = _by_cell(per_seed), _by_cell(stability)
        for column in columns:
            found = {key: _cell(per_seed_rows, stability_rows, column, *key) for key in keys}
            for key, cell in found.items():
                record = table[key]
                name = column.metric
                if cell is None:
                    record.update({f"{name}_mean": math.nan, f"{name}_std": math.nan,
                                   f"{name}_ci_low": math.nan, f"{name}_ci_high": math.nan})
                    continue
                low, high = _interval(cell, column, resamples)
                record.update({f"{name}_mean": cell.mean, f"{name}_std": stats.seed_std(cell.values),
                               f"{name}_ci_low": low, f"{name}_ci_high": high})
                if column.source != "stability":
                    record["seeds"] = max(record.get("seeds", 0), len(cell.values))
            effect = Effect(settings.negligible_delta, settings.negligible_span, control_span(found, column))
            best, tied, tested, letters, vectors = _column_marks(found, column, effect)
            cells_by_column[column.metric], vectors_by_column[column.metric] = found, vectors
            for key in keys:
                table[key][f"{column.metric}_best"] = key in best
                table[key][f"{column.metric}_tie"] = key in tied
                table[key][f"{column.metric}_group"] = letters.get(key, math.nan)  # NaN: no letters
            pairwise += [{"dataset": dataset, "backbone": backbone, "metric": column.metric, **r} for r in tested]
        _normalise(table, columns)
        records += [table[key] for key in keys]
        groups[(dataset, backbone)] = (cells_by_column, vectors_by_column, group)
    frame = pd.DataFrame(records)
    agreement = {}
    for key, group in frame.groupby(["dataset", "backbone"], sort=False):
        found = substrate_agreement(group.dropna(axis=1, how="all"))
        if found is not None:
            agreement[key] = found
    pairwise_frame = pd.DataFrame(pairwise)
    from .reliability import reliability_cards

    cards = reliability_cards(frame, pairwise_frame, groups, run, store)
    return Summary(frame, pairwise_frame, agreement, cards, grid_plays(rows))


def control_span(found: Mapping[tuple[str, str], Cell | None], column: Column) -> float:
    """|oracle − random| of the column, averaged over the kinds whose two controls are at least
    ``MIN_CONTROL_GAP`` of the metric's range apart; NaN where none are (no scale to judge a difference by)."""
    info = metric_info(column)
    spans = []
    for kind in {kind for kind, _ in found}:
        random_cell, oracle_cell = found.get((kind, "random")), found.get((kind, "oracle"))
        if random_cell is not None and oracle_cell is not None and _controls_apart(random_cell.mean, oracle_cell.mean, info):
            spans.append(abs(oracle_cell.mean - random_cell.mean))
    return float(np.mean(spans)) if spans else math.nan


def _controls_apart(floor: float, ceiling: float, info: Any) -> bool:
    """Whether random and oracle are at least ``MIN_CONTROL_GAP`` of the metric's range apart: closer, a
    difference relative to their span is noise over noise (e.g. deletion on a model that has not learned
    the object)."""
    return abs(ceiling - floor) >= MIN_CONTROL_GAP * (info.high - info.low)


def _column_marks(found: dict[tuple[str, str], Cell | None], column: Column, effect: Effect
                  ) -> tuple[set, set, list[dict], dict[tuple[str, str], str], dict[str, np.ndarray]]:
    """Marks among non-reference rows, their significance letters and the rows' paired vectors (by row
    label: "kind/method", or the kind for a model-level column) (``stats.compact_letters``, from
    the same tests; only where every row has at least two seeds or pairs: one model's images say
    nothing about another training run). A model-level column compares kinds (rows of one kind share it)."""
    competing = {key: cell for key, cell in found.items() if cell is not None and not is_reference(key[1])}
    label = (lambda key: key[0]) if column.source == "model" else (lambda key: f"{key[0]}/{key[1]}")
    vectors, means, replicated = {}, {}, True
    for key, cell in competing.items():
        vector = paired_vector(cell, column)
        if vector is not None:
            vectors[label(key)], means[label(key)] = vector, cell.mean
            # a stability value already compares two or more models; other columns need two seeds
            replicated = replicated and (column.source == "stability" or len(cell.values) >= 2)
    if len(vectors) < 2:
        return set(), set(), [], {}, vectors
    best, tied, records = _marks(vectors, means, column.higher_is_better, effect)
    letters: dict[tuple[str, str], str] = {}
    if replicated and records:
        order = sorted(means, key=lambda name: means[name], reverse=column.higher_is_better)
        significant = [(r["a"], r["b"]) for r in records if r["significant"]]
        by_label = stats.compact_letters(order, significant)
        letters = {key: by_label[label(key)] for key in competing if label(key) in by_label}
    return ({k for k in competing if label(k) in best}, {k for k in competing if label(k) in tied}, records, letters,
            vectors)


def _normalise(table: dict[tuple[str, str], dict[str, Any]], columns: tuple[Column, ...]) -> None:
    """(value - random) / (oracle - random) with the same kind's control rows, where both exist and the
    controls are at least ``MIN_CONTROL_GAP`` of the metric's range apart (closer, the ratio is noise
    over noise: e.g. deletion on a model that has not learned the object)."""
    from ..metrics import METRICS

    for column in columns:
        info = METRICS[column.metric]
        if info.scope not in NORMALISED_SCOPES:
            continue
        name = column.metric
        for (kind, _method), record in table.items():
            floor = table.get((kind, "random"), {}).get(f"{name}_mean", math.nan)
            ceiling = table.get((kind, "oracle"), {}).get(f"{name}_mean", math.nan)
            value = record.get(f"{name}_mean", math.nan)
            apart = _controls_apart(floor, ceiling, info)
            record[f"{name}_norm"] = float(stats.normalised_score(value, floor, ceiling)) if apart else math.nan
