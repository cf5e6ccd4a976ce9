"""The metrics registry, and the metric names each list of the scoring settings may hold.

Why a module below both the table and the settings: the table's metrics compute from an
:class:`~camzoo.metrics.EvalSettings`, and the settings check their lists of metric names
(``grid_games``, ``sensitivity``, ``substrates``) against the table. Each table entry declares the
list that selects it (``MetricInfo.selected_by``); the registry lives here so that the settings read
those declarations without importing the table — one entry registers a selectable metric, and
``GRID_GAMES`` / ``SENSITIVITY_TESTS`` are views of the registry, never a second list to keep in step.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, overload

from ..registry import Registry

# name -> camzoo.metrics.table.MetricInfo (the entries are registered there, by register_metric)
METRICS: Registry[Any] = Registry("metric")

# the EvalSettings fields that list metric names, each name asking for the metrics that declare it
SELECTING_FIELDS = ("substrates", "grid_games", "sensitivity")


def choices(field: str) -> tuple[str, ...]:
    """The names ``EvalSettings.<field>`` may list, in table order: each registered entry's
    ``selected_as`` (default: its name) whose ``selected_by`` is ``field``."""
    return tuple(dict.fromkeys(info.selected_as or info.name for info in METRICS.values()
                               if info.selected_by == field))


class Choices(Sequence[str]):
    """A read-only, live view of :func:`choices` for one field: a metric registered later (a plug-in's
    grid game, a test's dummy) is in it from then on. Compares equal to the tuple of its names."""

    def __init__(self, field: str) -> None:
        if field not in SELECTING_FIELDS:
            raise ValueError(f"no settings field lists metric names as {field!r}; one of {SELECTING_FIELDS}")
        self.field = field

    @overload
    def __getitem__(self, index: int) -> str: ...

    @overload
    def __getitem__(self, index: slice) -> tuple[str, ...]: ...

    def __getitem__(self, index: int | slice) -> str | tuple[str, ...]:
        return choices(self.field)[index]

    def __len__(self) -> int:
        return len(choices(self.field))

    def __iter__(self) -> Iterator[str]:
        return iter(choices(self.field))

    def __contains__(self, name: object) -> bool:
        return name in choices(self.field)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, (tuple, Choices)) and choices(self.field) == tuple(other)

    __hash__ = None  # type: ignore[assignment]  # live, so not hashable

    def __repr__(self) -> str:
        return repr(choices(self.field))


__all__ = ["METRICS", "SELECTING_FIELDS", "Choices", "choices"]
