"""MetaQuantus' perturbation passes: every method cell explained and scored again under perturbed inputs and models.

Why a module of its own: a metric's reliability card (``eval.reliability = "full"``) needs its per-image
values under perturbations that should *not* change them (noise resilience, NR) and under perturbations
that should (adversarial reactivity, AR) — Hedström et al., "The meta-evaluation problem in explainable
AI" (MetaQuantus, TMLR 2023). The runner decides *when* (full mode only); this module says *what* a
perturbed pass is, so that every pass of every method is the same experiment:

* input perturbation: ``x + U(−ε, ε)`` on the (normalised) evaluation images, ε = ``input_noise``;
* model perturbation: every parameter (weights and biases, BatchNorm's affine ones included; never its
  running statistics, which are buffers) multiplied by ``N(1, σ)`` on a deep copy of the model,
  σ = ``model_noise``; the games' scorer is that copy with BatchNorm folded, as for the unperturbed cell;
* each at a small strength (should keep the prediction) and a large one (should change it), with
  K = ``perturbation_draws`` draws each.

Paired by construction: draw k of a (test, strength) comes from a ``torch.Generator`` seeded from
(test, strength, k) — and the block's first image for the input noise — never from the method, so
every method of a model sees the very same perturbed inputs or model (the inter-method consistency
compares the methods' ranks per image under one perturbation). The grid games, Focus and the class
tests play on the grids and mosaics the unperturbed pass built (copied into each pass's fresh model
memo, with the draw's input noise added under the input perturbation), so each perturbed value pairs
with an unperturbed one; everything else a model memo holds (unperturbed scores, the games) is
recomputed on the perturbed model or images. Blocks join as ``camzoo.metrics.combine_blocks`` joins
the unperturbed rows (concatenated along the images; the "inputs" metrics on the first block only).

Arrays (one set per method cell): ``perturbed_{test}_{strength}_{metric}`` (K, N) float32 — test in
``TESTS``, strength in ``STRENGTHS``, one value per per-image value of the unperturbed cell (the grid
games: per (grid, cell) job), tables (MaxBoxAccV2, PxAP) reduced by the metric's ``per_image_score`` —
and ``perturbed_{test}_{strength}_kept`` (K,), the share of evaluation images whose top-1 prediction
the draw left unchanged.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
from dataclasses import dataclass, field
from typing import Any
from collections.abc import Callable, Iterator, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from ..metrics import EvalSettings

TESTS = ("input", "model")
STRENGTHS = ("small", "large")
SHARED_MEMO = ("grids", "focus")  # model-memo entries every perturbed pass replays (metrics.discrimination)


def array_name(test: str, strength: str, metric: str) -> str:
    """The stored array of one metric under one perturbation: ``perturbed_{test}_{strength}_{metric}``."""
    return f"perturbed_{test}_{strength}_{metric}"


def draw_seed(test: str, strength: str, draw: int, start: int | None = None) -> int:
    """The generator seed of draw ``draw`` of a (test, strength): a digest of exactly these (and of the
    block's first image ``start`` for the input noise), so every method of a model gets the same draw."""
    text = f"camzoo.perturbation/{test}/{strength}/{draw}" + ("" if start is None else f"/{start}")
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") & (2 ** 63 - 1)


def _generator(seed: int, device: torch.device) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


def perturb_model(model: nn.Module, sigma: float, seed: int) -> nn.Module:
    """A deep copy of ``model`` with every parameter multiplied by N(1, σ) (buffers untouched); ``model``
    is left as it was."""
    perturbed = copy.deepcopy(model)
    generators: dict[torch.device, torch.Generator] = {}  # one stream per device, in the parameters' order
    with torch.no_grad():
        for parameter in perturbed.parameters():
            if parameter.device not in generators:
                generators[parameter.device] = _generator(seed, parameter.device)
            generator = generators[parameter.device]
            noise = torch.randn(parameter.shape, generator=generator, device=parameter.device, dtype=torch.float32)
            parameter.mul_((1.0 + sigma * noise).to(parameter.dtype))
    return perturbed


def uniform_noise(shape: Sequence[int], epsilon: float, generator: torch.Generator,
                  device: torch.device) -> torch.Tensor:
    """U(−ε, ε) of ``shape``, drawn from ``generator`` on ``device``."""
    return (torch.rand(tuple(shape), generator=generator, device=device) * 2.0 - 1.0) * epsilon


@torch.no_grad()
def predictions(model: nn.Module, images: torch.Tensor, chunk_size: int) -> torch.Tensor:
    """The model's top-1 class of every image (eval mode, ``chunk_size`` images per forward)."""
    from ..modelutil import eval_mode, select_output

    with eval_mode(model):
        return torch.cat([select_output(model(chunk)).argmax(1) for chunk in images.split(chunk_size)])


@dataclass
class PerturbedBlock:
    """One block's perturbed passes: per method ``{(test, strength, metric): K per-image arrays}`` (as
    ``score_maps`` returned them: tables not yet reduced), and per (test, strength) the images whose
    prediction each draw kept, of ``count``."""

    count: int
    values: dict[str, dict[tuple[str, str, str], list[np.ndarray]]] = field(default_factory=dict)
    kept: dict[tuple[str, str], list[int]] = field(default_factory=dict)


def _normalise_groups(groups: Sequence[str] | Sequence[Sequence[str]]) -> list[list[str]]:
    return [[groups]] if isinstance(groups, str) else \
        [list(groups)] if groups and isinstance(groups[0], str) else [list(g) for g in groups]


def _shared_entries(memo: Mapping[Any, Any]) -> dict[Any, Any]:
    """The unperturbed memo's grids and Focus mosaics (keys whose first element is "grids" or "focus")."""
    def name(key: Any) -> Any:
        return key[0] if isinstance(key, tuple) and key else key

    return {key: value for key, value in memo.items() if name(key) in SHARED_MEMO}


def _seeded_memo(shared: Mapping[Any, Any], epsilon: float | None, generator: torch.Generator | None) -> dict:
    """A fresh model memo holding the unperturbed pass's grids and mosaics: copies (never the originals),
    their ``images`` plus the draw's U(−ε, ε) noise under the input perturbation (``epsilon``)."""
    memo: dict = {}
    for key in sorted(shared, key=repr):  # a fixed order: the generator's stream is the same for every method
        entry = shared[key]
        if isinstance(entry, Mapping) and epsilon is not None and isinstance(entry.get("images"), torch.Tensor):
            images = entry["images"]
            entry = {**entry, "images": images + uniform_noise(images.shape, epsilon, generator, images.device)
                     .to(images.dtype)}
        elif isinstance(entry, Mapping):
            entry = dict(entry)
        memo[key] = entry
    return memo


def _draws(settings: EvalSettings, model: nn.Module, scorer: nn.Module, images: torch.Tensor, start: int,
           shared: Mapping[Any, Any]) -> Iterator[tuple[str, str, int, nn.Module, nn.Module, torch.Tensor, dict]]:
    """Every pass: (test, strength, draw, model to explain, scorer, images, seeded model memo), one at a time
    (a perturbed model lives for its own pass only)."""
    from ..batchnorm_folding import fold_batchnorm

    for test in TESTS:
        for index, strength in enumerate(STRENGTHS):
            for draw in range(settings.perturbation_draws):
                if test == "input":
                    epsilon = float(settings.input_noise[index])
                    generator = _generator(draw_seed(test, strength, draw, start), images.device)
                    noisy = images + uniform_noise(images.shape, epsilon, generator, images.device).to(images.dtype)
                    yield test, strength, draw, model, scorer, noisy, _seeded_memo(shared, epsilon, generator)
                else:
                    sigma = float(settings.model_noise[index])
                    perturbed = perturb_model(model, sigma, draw_seed(test, strength, draw))
                    memo = _seeded_memo(shared, None, None)
                    yield test, strength, draw, perturbed, fold_batchnorm(perturbed), images, memo
                    del perturbed


def _tabulated(name: str, per_image: np.ndarray | None) -> bool:
    """Whether a scored metric gets perturbed arrays: per-image values, a table column, scope "map"."""
    from ..metrics import METRICS

    info = METRICS.get(name)
    return per_image is not None and info is not None and bool(info.column) and info.scope == "map" \
        and not name.endswith("_curve")


def perturbed_block(model: nn.Module, scorer: nn.Module, block: Any, groups: Sequence[str] | Sequence[Sequence[str]],
                    settings: EvalSettings | Callable[[str], EvalSettings], *,
                    layers: Mapping[str, str | None] | None = None, reshape: Callable | None = None,
                    batch_size: int = 64, device: torch.device | str | None = None,
                    model_memo: Mapping[Any, Any] | None = None) -> PerturbedBlock:
    """Explain and score one block of evaluation images under every perturbation (4 x K passes).

    Args:
        model: the classifier the runner explains (never modified: the model perturbation works on copies).
        scorer: its BatchNorm-folded copy, which the unperturbed cell's games query (``fold_batchnorm``).
        block: the block of evaluation images (:class:`~camzoo.bench.evaluation.EvalSet`).
        groups: the one-pass method groups to explain (or one group, a list of method rows).
        settings: the scoring settings, or a method row's (``BenchPlan.settings_for``); the first row's
            give K, ε and σ.
        layers: each row's layer (``ModelJob.layers``); reshape: a ``[[models]]`` entry's reshape rule.
        batch_size: images per explain call; device: where the block lives (None: its images' device).
        model_memo: the unperturbed pass's model memo of this block, *after* every method was scored on
            it: its grids and mosaics are played again (read, never changed).

    Returns:
        a :class:`PerturbedBlock`; :func:`perturbed_arrays` joins the blocks of a method into its arrays.
    """
    from .evaluation import explain_block, score_block

    groups = _normalise_groups(groups)
    settings_for = settings if callable(settings) else (lambda _method: settings)
    first = settings_for(groups[0][0])
    device = block.images.device if device is None else torch.device(device)
    shared = _shared_entries(model_memo or {})
    chunk = first.chunk_for(block.images)
    result = PerturbedBlock(count=int(block.images.shape[0]),
                            values={method: {} for group in groups for method in group})
    original = predictions(scorer, block.images, chunk)
    map_memo: dict = {}  # the controls' map-only results (MaxBoxAcc) across this block's passes (they read maps only)
    for test, strength, _draw, explained_model, draw_scorer, images, memo in _draws(
            first, model, scorer, block.images, block.start, shared):
        view = dataclasses.replace(block, images=images, memo={})
        kept = int((predictions(draw_scorer, images, chunk) == original).sum())
        result.kept.setdefault((test, strength), []).append(kept)
        for group in groups:
            explained, _seconds = explain_block(explained_model, view, group, batch_size, device, layers, reshape,
                                                warm_up=False)
            for method in group:
                maps, _raw = explained.pop(method)
                rows = score_block(draw_scorer, view, method, maps, settings_for(method), memo, map_memo,
                                 (layers or {}).get(method), reshape)
                for name, (_value, per_image) in rows.items():
                    if _tabulated(name, per_image):
                        result.values[method].setdefault((test, strength, name), []).append(np.asarray(per_image))
    return result


def perturbed_arrays(blocks: Sequence[PerturbedBlock], method: str,
                     reference: Mapping[str, tuple[float, np.ndarray | None]] | None = None) -> dict[str, np.ndarray]:
    """A method cell's arrays from its blocks (in order): ``perturbed_{test}_{strength}_{metric}`` (K, N)
    float32 and ``perturbed_{test}_{strength}_kept`` (K,).

    Each draw's per-image values are concatenated over the blocks that scored the metric (as
    ``combine_blocks`` joins the unperturbed ones), then a table metric's ``per_image_score`` makes one
    value per image (MaxBoxAccV2's best CAM threshold is the whole set's, as for the unperturbed values).
    ``reference``: the unperturbed cell's combined rows; only metrics with per-image values there are
    kept, and N must match theirs.
    """
    from ..metrics import METRICS

    keys = list(dict.fromkeys(key for block in blocks for key in block.values.get(method, {})))
    arrays: dict[str, np.ndarray] = {}
    for test, strength, name in keys:
        if reference is not None and (name not in reference or reference[name][1] is None):
            continue
        parts = [block.values[method][(test, strength, name)] for block in blocks
                 if (test, strength, name) in block.values.get(method, {})]
        draws = [np.concatenate([part[k] for part in parts]) for k in range(len(parts[0]))]
        score = METRICS[name].per_image_score
        values = np.stack([score(d) if score is not None else d for d in draws]).astype(np.float32)
        if values.ndim != 2:
            continue  # not one value per image (no such tabulated metric today)
        if reference is not None and values.shape[1] != np.asarray(reference[name][1]).shape[0]:
            raise ValueError(f"perturbed {name!r} has {values.shape[1]} values per draw, the unperturbed cell "
                             f"{np.asarray(reference[name][1]).shape[0]}")
        arrays[array_name(test, strength, name)] = values
    if any(method in block.values for block in blocks):
        total = sum(block.count for block in blocks)
        for test, strength in dict.fromkeys(key for block in blocks for key in block.kept):
            counts = np.sum([block.kept[(test, strength)] for block in blocks], axis=0)
            arrays[array_name(test, strength, "kept")] = (counts / max(total, 1)).astype(np.float32)
    return arrays


def perturbed_scores(model: nn.Module, scorer: nn.Module, block: Any, groups: Sequence[str] | Sequence[Sequence[str]],
                     settings: EvalSettings | Callable[[str], EvalSettings], **options: Any
                     ) -> dict[str, dict[str, np.ndarray]]:
    """:func:`perturbed_block` on one block joined into each method's arrays: ``{method: {array name:
    (K, N) float32, ..._kept: (K,)}}`` (``options``: perturbed_block's keywords)."""
    found = perturbed_block(model, scorer, block, groups, settings, **options)
    return {method: perturbed_arrays([found], method) for method in found.values}


__all__ = ["STRENGTHS", "TESTS", "PerturbedBlock", "array_name", "draw_seed", "perturb_model", "perturbed_arrays",
           "perturbed_block", "perturbed_scores", "predictions", "uniform_noise"]
