"""How each model's grids went, from the rows its run stored: what the discrimination table says when
a grid game has no value.

Why: a grid cell is an evaluation image the model classifies correctly with confidence
>= ``eval.grid_threshold``. A model that reaches it on no image (a random-init or an under-trained
checkpoint) plays no grid, and its grid-game columns are empty; said nowhere, the table's header would
describe games that never ran. Every method cell stores ``grid_count_NxN`` (grids played),
``grid_qualified`` (images that passed) and ``grid_best_confidence`` (the highest confidence of a
correct prediction; camzoo.metrics.discrimination), so the report can say which model had no grid and
how far it was from the threshold, without a rerun.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import pandas as pd

from .labels import Namer

GRID_COUNT = re.compile(r"grid_count_(\d+)x\1$")
STATUS_METRICS = ("grid_qualified", "grid_best_confidence")


@dataclass(frozen=True)
class GridPlay:
    """One model's grids: ``counts`` N -> N x N grids played; ``qualified`` images that could be cells;
    ``best`` the highest confidence of a correct prediction (NaN: a store from before it was kept)."""

    kind: str
    variant: str
    seed: int
    counts: dict[int, int] = field(default_factory=dict)
    qualified: float = math.nan
    best: float = math.nan


def grid_plays(rows: pd.DataFrame) -> dict[tuple[str, str], list[GridPlay]]:
    """(dataset, backbone) -> each model's :class:`GridPlay`, from a run's result rows (ResultsStore.results
    as a frame). Every method cell of a model stores the same numbers; the first is read."""
    if rows.empty:
        return {}
    sizes = {name: int(found.group(1)) for name in rows["metric"].unique() if (found := GRID_COUNT.match(str(name)))}
    chosen = rows[rows["metric"].isin([*sizes, *STATUS_METRICS])]
    plays: dict[tuple[str, str], list[GridPlay]] = {}
    keys = ["dataset", "backbone", "kind", "variant", "seed"]
    for (dataset, backbone, kind, variant, seed), group in chosen.groupby(keys, sort=True):
        values = group.drop_duplicates("metric").set_index("metric")["value"]
        counts = {sizes[name]: int(values[name]) for name in sizes if name in values}
        if not counts:
            continue
        plays.setdefault((dataset, backbone), []).append(GridPlay(
            kind, variant, int(seed), counts, float(values.get("grid_qualified", math.nan)),
            float(values.get("grid_best_confidence", math.nan))))
    return plays


def _reason(play: GridPlay, threshold: float) -> str | None:
    """Why ``play`` has no grid of some size ("no grid qualified (threshold 0.9, best confidence 0.31)");
    None when it played every size."""
    empty = sorted(n for n, count in play.counts.items() if count == 0)
    if not empty:
        return None
    if play.qualified == 0:
        best = ("" if play.best != play.best else ", no image classified correctly" if play.best <= 0
                else f", best confidence {play.best:.2f}")
        return f"no grid qualified (threshold {threshold:g}{best})"
    sizes = " or ".join(f"{n}×{n}" for n in empty)
    if play.qualified != play.qualified:  # an older store: the count alone
        return f"no {sizes} grid (threshold {threshold:g})"
    return (f"no {sizes} grid ({int(play.qualified)} images qualified at threshold {threshold:g}, of fewer than "
            f"{empty[0] ** 2} classes)")


def grid_status(plays: Sequence[GridPlay], threshold: float, backbone: str, name: Namer,
                empty_columns: Sequence[str] = ()) -> str | None:
    """One line naming each model that played no grid of a size and why, and the grid-game columns left
    without any value; None when every model played every size. ``name``: how the report names a model
    (camzoo.bench.labels.model_namer, with its kind); ``empty_columns``: those columns' headers."""
    found = [(play, reason) for play in plays if (reason := _reason(play, threshold)) is not None]
    if not found:
        return None
    said = "; ".join(f"{name(backbone, play.kind, play.variant, play.seed)}: {reason}" for play, reason in found)
    columns = f"{', '.join(empty_columns)}: no value. " if empty_columns else ""
    return (f"{columns}Grids: {said}. A grid cell is an image classified correctly with confidence ≥ the threshold "
            "(eval.grid_threshold): train longer, lower the threshold or score more images (eval.images).")


__all__ = ["GridPlay", "grid_plays", "grid_status"]
