"""What one cell of a summary table is: its column (from the metrics table), the per-seed values and
per-image tables behind it, and the per-image vector its paired tests compare.

Why a module of its own: the summary (camzoo.bench.summary) and the reliability cards
(camzoo.bench.reliability) read the same cells, and neither should import the other.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Column:
    metric: str  # name in the store
    header: str
    higher_is_better: bool
    source: str  # "model": the model cell; "method": the method cell; "stability": across seeds
    digits: int = 3
    group: str = "main"  # which table of the report shows it


_SOURCES = {"model": "model", "map": "method", "cost": "method", "stability": "stability", "dataset": "gallery"}


def table_columns() -> tuple[Column, ...]:
    """The summary tables' columns, generated from the metrics table (camzoo.metrics.table)."""
    from ..metrics import table_columns as metric_columns

    return tuple(Column(info.name, info.column, info.higher_is_better, _SOURCES[info.scope], info.digits, info.group)
                 for info in metric_columns())


def is_reference(method: str) -> bool:
    """Whether a method is a control row (its class says so; unknown names are not)."""
    from ..methods import get_method

    try:
        return bool(get_method(method).reference)
    except ValueError:
        return False


@dataclass
class Cell:
    """One (row, column): the per-seed (or per-pair) values and the per-image table, if kept."""

    values: list[float]
    per_image: np.ndarray | None  # (S, N) or (S, N, T) for MaxBoxAcc; stability: (pairs, N)
    mean: float


def metric_info(column: Column) -> Any:
    """The column's entry of the metrics table (camzoo.metrics.METRICS): direction, range, pooling."""
    from ..metrics import METRICS

    return METRICS[column.metric]


def paired_vector(cell: Cell, column: Column) -> np.ndarray | None:
    """Per-image values averaged over seeds (or pairs): the unit the paired tests compare."""
    if cell.per_image is None:
        return None
    score = metric_info(column).per_image_score
    if score is not None and cell.per_image.ndim > 2:
        return np.stack([score(tables) for tables in cell.per_image]).mean(0)
    return cell.per_image.mean(0) if cell.per_image.ndim == 2 else None
