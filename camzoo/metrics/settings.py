"""The settings a benchmark cell is scored with, as one typed, frozen, validated record.

Why the metrics layer owns it: the metrics decide what their protocols need (steps, pixel span,
tolerances); the benchmark harness only fills it in from its config (``[eval]``), so no metric
reads the harness's keys by string, and a wrong value fails when the record is built — before any
cell runs — with the config key in the message.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass
from typing import Any
from collections.abc import Mapping

from .causal import PROTOCOLS
from .selection import SELECTING_FIELDS, Choices

# the metrics that explain new inputs with the cell's method (camzoo.metrics.discrimination): the names
# eval.grid_games and eval.sensitivity may list, read from the metrics table's entries (their
# ``selected_by``), so a registered grid game or test is selectable with no edit here
GRID_GAMES = Choices("grid_games")
SENSITIVITY_TESTS = Choices("sensitivity")
RELIABILITY_MODES = ("quick", "full")  # EvalSettings.reliability
# eval.chunk_mb = "auto" on a CPU: MiB of input per model forward inside the games and tests. Why bytes:
# a forward's temporaries grow with the bytes of its inputs, and glibc maps every block above 32 MB
# afresh (the kernel zeroes each page on first touch): 64 inputs of 224 px are 38.5 MB, a ResNet's
# first activation of them 205 MB, and two thirds of the CPU time went to page faults. 4 MiB is 6
# such inputs (their first activation 19 MB), or the whole chunk_size of 64 at up to 74 px.
CPU_CHUNK_MB = 4.0


def _positive_int(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and int(value) >= 1


def _number(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


class SettingsError(ValueError):
    """Invalid scoring settings; ``problems`` lists each one (the benchmark reports them beside its own)."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = list(problems)


@dataclass(frozen=True)
class EvalSettings:
    """How :func:`~camzoo.metrics.score_maps` scores one cell (defaults: RISE's steps, TorchRay's tolerance).

    ``substrates``, ``grid_games`` and ``sensitivity`` list names that select metrics: the names the
    table's entries declare (``MetricInfo.selected_by``; :mod:`camzoo.metrics.selection`), and
    ``score_maps`` skips an entry whose name is not listed.

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
        chunk_size: inputs per model forward inside the games and tests, at most.
        chunk_mb: MiB of input per such forward, at most ("auto": ``CPU_CHUNK_MB`` on a CPU, no limit on
            a GPU, whose caching allocator reuses its blocks): :meth:`chunk_for` takes the smaller.
        pointing_tolerance: the pointing game's tolerance in pixels of a ``pointing_reference_size``
            image (TorchRay: 15 px at ~224 px), scaled to the maps' size.
        pointing_reference_size: see ``pointing_tolerance``.
        grid_games: the grid games each method cell plays (``GRID_GAMES``; the grid size is in the
            name): new inputs built once per model from the evaluation images, explained with the
            cell's method; () plays none.
        grid_threshold: a cell of a grid (or Focus mosaic) is an evaluation image the model
            classifies correctly with at least this softmax confidence (the paper's 0.99).
        grid_count: grids (and Focus mosaics) per model, each explained once per cell.
        sensitivity: class-sensitivity and sanity tests per method cell (``SENSITIVITY_TESTS``).
        randomisation_draws: independent full randomisations the ``randomisation_spearman`` test
            averages over (one random network is shared by all images of a draw).
        reliability: how much of each metric's reliability card (camzoo.bench.reliability) a run
            computes: "quick" every field from the stored per-image values; "full" also MetaQuantus'
            noise resilience and adversarial reactivity, which re-explains and re-scores every method
            cell under perturbed inputs and models (``perturbation_draws`` x 4 extra passes).
        perturbation_draws: K, the draws of each MetaQuantus perturbation ("full" only).
        input_noise: (small, large) ε of the input perturbation x + U(−ε, ε), in the model's
            normalised input units: the small one should keep the prediction, the large one change it.
        model_noise: (small, large) σ of the model perturbation weights × N(1, σ).
        negligible_delta: a significant difference between two rows separates them (letters, bold,
            rank-plot bars) only when Cliff's |δ| reaches this (Romano et al. 2006: below 0.147 is
            "negligible") ...
        negligible_span: ... and the paired median difference reaches this share of the column's
            random–oracle span (where the controls span at least 2 % of the metric's range).
        min_alpha: a column ranks only when the images agree on the order of the methods:
            Krippendorff's α (ordinal) of the per-image rankings at least this.
        min_oracle_share: a column ranks only when the oracle beats the random control on at least
            this share of the images (where the run has both controls).
    """

    protocol: str = "default"
    deletion_steps: int = 28
    deletion_fraction: float = 1.0
    deletion_target: str = "label"
    substrates: tuple[str, ...] = ("zeros", "blur", "road")
    game_images: int | None = None
    chunk_size: int = 64
    chunk_mb: float | str = "auto"
    pointing_tolerance: float = 15.0
    pointing_reference_size: int = 224
    grid_games: tuple[str, ...] = ()
    grid_threshold: float = 0.99
    grid_count: int = 64
    sensitivity: tuple[str, ...] = ()
    randomisation_draws: int = 3
    reliability: str = "quick"
    perturbation_draws: int = 5
    input_noise: tuple[float, float] = (0.01, 2.0)
    model_noise: tuple[float, float] = (0.01, 1.0)
    negligible_delta: float = 0.147
    negligible_span: float = 0.05
    min_alpha: float = 0.2
    min_oracle_share: float = 0.6

    def __post_init__(self) -> None:
        for key in ("substrates", "grid_games", "sensitivity", "input_noise", "model_noise"):
            if isinstance(getattr(self, key), list):
                object.__setattr__(self, key, tuple(getattr(self, key)))
        problems = self.problems()
        if problems:
            raise SettingsError(problems)

    def problems(self) -> list[str]:
        """Every invalid field, each as "eval.<field> must be ..., got ..." (the config's key)."""
        found = []
        for key in ("deletion_steps", "chunk_size", "pointing_reference_size", "grid_count", "randomisation_draws",
                    "perturbation_draws"):
            if not _positive_int(getattr(self, key)):
                found.append(f"eval.{key} must be a positive integer, got {getattr(self, key)!r}")
        if self.chunk_mb != "auto" and (not _number(self.chunk_mb) or not self.chunk_mb > 0):
            found.append(f'eval.chunk_mb must be a positive number of MiB or "auto", got {self.chunk_mb!r}')
        if self.protocol not in PROTOCOLS:
            found.append(f"eval.protocol must be one of {sorted(PROTOCOLS)}, got {self.protocol!r}")
        if self.deletion_target not in ("label", "prediction"):
            found.append(f"eval.deletion_target must be 'label' or 'prediction', got {self.deletion_target!r}")
        for key in SELECTING_FIELDS:  # substrates, grid games, tests: the names the table's entries declare
            chosen, allowed = getattr(self, key), Choices(key)
            if not isinstance(chosen, tuple) or not all(isinstance(c, str) for c in chosen) or \
                    set(chosen) - set(allowed) or len(set(chosen)) != len(chosen):
                found.append(f"eval.{key} must be a list of distinct names from {allowed}, got {chosen!r}")
        if not _number(self.grid_threshold) or not 0 <= self.grid_threshold <= 1:
            found.append(f"eval.grid_threshold must be a probability in [0, 1], got {self.grid_threshold!r}")
        if self.game_images is not None and not _positive_int(self.game_images):
            found.append(f'eval.game_images must be a positive integer or "all", got {self.game_images!r}')
        if not _number(self.deletion_fraction) or not 0 < self.deletion_fraction <= 1:
            found.append(f"eval.deletion_fraction must be a number in (0, 1], got {self.deletion_fraction!r}")
        if not _number(self.pointing_tolerance) or self.pointing_tolerance < 0:
            found.append(f"eval.pointing_tolerance must be a number >= 0, got {self.pointing_tolerance!r}")
        if self.reliability not in RELIABILITY_MODES:
            found.append(f"eval.reliability must be one of {RELIABILITY_MODES}, got {self.reliability!r}")
        for key in ("input_noise", "model_noise"):
            pair = getattr(self, key)
            if not (isinstance(pair, tuple) and len(pair) == 2 and all(_number(v) and v > 0 for v in pair)
                    and pair[0] < pair[1]):
                found.append(f"eval.{key} must be [small, large]: two positive numbers, small < large, got {pair!r}")
        for key in ("negligible_delta", "negligible_span", "min_oracle_share"):
            if not _number(getattr(self, key)) or not 0 <= getattr(self, key) <= 1:
                found.append(f"eval.{key} must be a number in [0, 1], got {getattr(self, key)!r}")
        if not _number(self.min_alpha) or not -1 <= self.min_alpha <= 1:
            found.append(f"eval.min_alpha must be a number in [-1, 1], got {self.min_alpha!r}")
        return found

    @classmethod
    def from_config(cls, evaluation: Mapping[str, Any]) -> EvalSettings:
        """From a benchmark config's ``[eval]`` table (``game_images = "all"`` is None; keys that are not
        scoring settings, such as the number of evaluation images, are the harness's and ignored)."""
        fields = {f.name for f in dataclasses.fields(cls)}
        values = {key: value for key, value in evaluation.items() if key in fields}
        if values.get("game_images") == "all":
            values["game_images"] = None
        for key in ("substrates", "grid_games", "sensitivity", "input_noise", "model_noise"):
            if isinstance(values.get(key), (list, tuple)):
                values[key] = tuple(values[key])
        return cls(**values)

    def chunk_for(self, images: Any, scale: int = 1) -> int:
        """Inputs per model forward for inputs of ``scale`` images like those of ``images`` (a tensor
        (N,C,H,W); ``scale``: a grid's cells side by side): ``chunk_size``, fewer when they would
        exceed ``chunk_mb``, at least 1."""
        budget = (CPU_CHUNK_MB if images.device.type == "cpu" else None) if self.chunk_mb == "auto" else self.chunk_mb
        if budget is None:
            return int(self.chunk_size)
        per_input = math.prod(images.shape[1:]) * images.element_size() * max(1, int(scale))
        return max(1, min(int(self.chunk_size), int(float(budget) * 2 ** 20 // max(1, per_input))))

    @property
    def discrimination(self) -> tuple[str, ...]:
        """The metrics that explain new inputs with the cell's method: the grid games and tests asked for."""
        return self.grid_games + self.sensitivity

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


__all__ = ["CPU_CHUNK_MB", "EvalSettings", "GRID_GAMES", "RELIABILITY_MODES", "SENSITIVITY_TESTS", "SettingsError"]
