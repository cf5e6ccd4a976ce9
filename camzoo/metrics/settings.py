"""The settings a benchmark cell is scored with, as one typed, frozen, validated record.

Why the metrics layer owns it: the metrics decide what their protocols need (steps, pixel span,
tolerances); the benchmark harness only fills it in from its config (``[eval]``), so no metric
reads the harness's keys by string, and a wrong value fails when the record is built — before any
cell runs — with the config key in the message.
"""

from __future__ import annotations

import dataclasses
import numbers
from dataclasses import dataclass
from typing import Any, Mapping

from .causal import PROTOCOLS
from .faithfulness import SUBSTRATES


def _positive_int(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and int(value) >= 1


def _number(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


@dataclass(frozen=True)
class EvalSettings:
    """How :func:`~camzoo.metrics.score_maps` scores one cell (defaults: RISE's steps, TorchRay's tolerance).

    Attributes:
        protocol: deletion/insertion protocol, a name in ``PROTOCOLS``: "default" plays the games below;
            "rise" is RISE's published protocol exactly (28 steps, all pixels, the predicted class) and
            ignores ``deletion_steps``, ``deletion_fraction`` and ``deletion_target``.
        deletion_steps: steps of every perturbation game (points = steps + 1).
        deletion_fraction: the share of pixels the games cover (a partial AUC); 1 = all.
        deletion_target: "label" scores the class each map explains, "prediction" the top-1 class.
        substrates: MoRF/LeRF substrates (``SUBSTRATES``); () plays none.
        game_images: the games play on the first N images only (None: every image), so a CPU budget
            can cap the costly games alone; every row of a column is scored on the same images.
        chunk_size: images per model forward inside the games.
        pointing_tolerance: the pointing game's tolerance in pixels of a ``pointing_reference_size``
            image (TorchRay: 15 px at ~224 px), scaled to the maps' size.
        pointing_reference_size: see ``pointing_tolerance``.
    """

    protocol: str = "default"
    deletion_steps: int = 28
    deletion_fraction: float = 1.0
    deletion_target: str = "label"
    substrates: tuple[str, ...] = ("zeros", "blur", "road")
    game_images: int | None = None
    chunk_size: int = 64
    pointing_tolerance: float = 15.0
    pointing_reference_size: int = 224

    def __post_init__(self) -> None:
        if isinstance(self.substrates, (list, tuple)):
            object.__setattr__(self, "substrates", tuple(self.substrates))
        problems = self.problems()
        if problems:
            raise ValueError("; ".join(problems))

    def problems(self) -> list[str]:
        """Every invalid field, each as "eval.<field> must be ..., got ..." (the config's key)."""
        found = []
        for key in ("deletion_steps", "chunk_size", "pointing_reference_size"):
            if not _positive_int(getattr(self, key)):
                found.append(f"eval.{key} must be a positive integer, got {getattr(self, key)!r}")
        if self.protocol not in PROTOCOLS:
            found.append(f"eval.protocol must be one of {sorted(PROTOCOLS)}, got {self.protocol!r}")
        if self.deletion_target not in ("label", "prediction"):
            found.append(f"eval.deletion_target must be 'label' or 'prediction', got {self.deletion_target!r}")
        substrates = self.substrates
        if not isinstance(substrates, tuple) or not all(isinstance(s, str) for s in substrates) or \
                set(substrates) - set(SUBSTRATES) or len(set(substrates)) != len(substrates):
            found.append(f"eval.substrates must be a list of distinct names from {SUBSTRATES}, got "
                         f"{substrates!r}")
        if self.game_images is not None and not _positive_int(self.game_images):
            found.append(f'eval.game_images must be a positive integer or "all", got {self.game_images!r}')
        if not _number(self.deletion_fraction) or not 0 < self.deletion_fraction <= 1:
            found.append(f"eval.deletion_fraction must be a number in (0, 1], got {self.deletion_fraction!r}")
        if not _number(self.pointing_tolerance) or self.pointing_tolerance < 0:
            found.append(f"eval.pointing_tolerance must be a number >= 0, got {self.pointing_tolerance!r}")
        return found

    @classmethod
    def from_config(cls, evaluation: Mapping[str, Any]) -> EvalSettings:
        """From a benchmark config's ``[eval]`` table (``game_images = "all"`` is None; keys that are not
        scoring settings, such as the number of evaluation images, are the harness's and ignored)."""
        fields = {f.name for f in dataclasses.fields(cls)}
        values = {key: value for key, value in evaluation.items() if key in fields}
        if values.get("game_images") == "all":
            values["game_images"] = None
        if isinstance(values.get("substrates"), (list, tuple)):
            values["substrates"] = tuple(values["substrates"])
        return cls(**values)

    def without_substrates(self) -> EvalSettings:
        """The same settings with no MoRF/LeRF substrate (the controls' cells skip those columns)."""
        return dataclasses.replace(self, substrates=())

    @property
    def game_slice(self) -> slice:
        """The images the perturbation games play on."""
        return slice(None) if self.game_images is None else slice(0, int(self.game_images))

    @property
    def predicted_target(self) -> bool:
        """Whether deletion/insertion score the model's top-1 class (RISE's protocol, or the config's)."""
        return self.protocol == "rise" or self.deletion_target == "prediction"


__all__ = ["EvalSettings"]
