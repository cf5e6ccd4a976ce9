"""Faithfulness with headroom: the MoRF / LeRF pair, its symmetric gain, and substrate agreement.

Why: deletion alone (MoRF, "most relevant first") rewards a map for finding *some* pixels whose
removal hurts the model, and the number depends heavily on what the removed pixels are replaced with
(the substrate). Blücher et al. (TMLR 2024, "Decoupling pixel flipping and occlusion strategy") show
that MoRF and LeRF ("least relevant first") rankings of explanation methods disagree, that the choice
among occlusion strategies changes those rankings, and propose the symmetric relevance gain
SRG = AUC(LeRF) - AUC(MoRF), which is high only when a map both finds the pixels the model needs and
leaves the pixels it does not need for last. Rong et al. (ICML 2022, ROAD) replace removed pixels by
noisy linear imputation so that the substrate itself leaks less of the removal mask. This module
computes MoRF, LeRF and SRG for several substrates in one batched pass, and ``substrate_agreement``
measures (Kendall's tau) whether a ranking of methods survives a change of substrate, so that a table
shows how much of its conclusion is the substrate's doing. Protocol details: docs/metrics.md.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from ._checks import check_images, check_maps, check_targets
from ._model import check_same_device, check_targets_in_range, unperturbed_scores
from .games import Curve, check_game_arguments, pixel_budget, play, point_counts
from .causal import auc, rise_blur, saliency_rank
from .imputation import ROAD_NOISE, ROAD_TOL, noise_field, noise_scale, linear_imputation

SubstrateSpec = str | Callable[[torch.Tensor], torch.Tensor]

SUBSTRATES = ("zeros", "mean", "blur", "road")
# 28 steps = RISE's 224 * 8 px per step at 224 x 224 (the published deletion protocol); each step
# costs two forwards per image (and one linear solve per input with the "road" substrate).
MORF_LERF_STEPS = 28
# --------------------------------------------------------------------------- MoRF / LeRF


def _check_substrate(substrate: object) -> SubstrateSpec:
    if isinstance(substrate, str):
        if substrate not in SUBSTRATES:
            raise ValueError(f"unknown substrate {substrate!r}; choose one of {SUBSTRATES} or pass a callable")
        return substrate
    if callable(substrate):
        return substrate
    raise ValueError(f"substrate must be one of {SUBSTRATES} or a callable images -> images; got {substrate!r}")


def morf_lerf(
    model: nn.Module,
    images: torch.Tensor,
    maps: torch.Tensor,
    targets: torch.Tensor | Sequence[int],
    substrate: SubstrateSpec = "mean",
    steps: int = MORF_LERF_STEPS,
    fraction: float = 1.0,
    chunk_size: int = 64,
    autocast: bool = False,
    road_noise: float | torch.Tensor | Sequence[float] = ROAD_NOISE,
    seed: int = 0,
    road_tol: float = ROAD_TOL,
    morf_curve: torch.Tensor | None = None,
    original_scores: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """MoRF and LeRF pixel-removal curves, their AUCs and SRG = AUC(LeRF) - AUC(MoRF), batched.

    MoRF removes the most salient pixels first (RISE's deletion game), LeRF the least salient first.
    Point k of a curve (k = 0..steps) has the first ``floor(k * N / steps)`` pixels of its order
    removed (all channels), with ``N = round(fraction * H * W)``; the score is the target's softmax
    probability, and the AUCs use RISE's trapezoid over x in [0,1]. With ``fraction < 1`` the curves
    stop after N pixels and their AUC is a *partial* AUC rescaled to [0,1] over that range (the x axis
    spans the evaluated pixels), so a small object can dominate the number instead of being a few
    percent of the area; ``fraction`` (returned) keeps the true share of pixels removed.

    Order and ties: LeRF ranks pixels with ``saliency_rank(-maps)``, i.e. ascending saliency with
    ties broken by the *same* rule as MoRF (not by reversing MoRF's order). Hence a constant map gives
    identical MoRF and LeRF curves (SRG = 0 exactly) and negating a map negates its SRG, ties or not.

    Substrates (what removed pixels become):
      - ``"zeros"``: 0 in normalised space, i.e. the dataset's mean colour (RISE's deletion);
      - ``"mean"``: the image's own per-channel mean (ROAD's "fixed" imputer), which needs no
        assumption about the normalisation;
      - ``"blur"``: RISE's blurred copy of the image (``causal.rise_blur``), as insertion's start;
      - ``"road"``: ROAD's noisy linear imputation of the removed pixels (``road_impute``), which
        depends on the removal mask and so is solved for every input. The noise is one seeded field
        per image (``road_noise`` * N(0,1), see ``road_impute`` for its units) shared by all steps
        and both orders — common random numbers, so curves do not depend on ``chunk_size`` and a
        constant map still gives SRG = 0;
      - a callable images (n,C,H,W) -> substrate images of the same shape.

    Batching: the original image (point 0 of both curves) is evaluated once, and so is the fully
    removed image when ``fraction == 1`` (the last point of both): ``2 * steps`` forwards per image
    (``2 * steps + 1`` for a partial AUC), built on the fly with one ``torch.where`` against per-pixel
    ranks and sent through the model ``chunk_size`` inputs at a time under ``no_grad``, in eval mode.

    Args:
        model: classifier returning logits (B,K); its modes are restored afterwards.
        images: normalised images (B,C,H,W) on the model's device.
        maps: saliency (B,H,W); only the order of the values matters.
        targets: the class whose probability is tracked, (B,).
        substrate: one of ``SUBSTRATES`` or a callable (see above).
        steps: points per curve minus one; at most ``round(fraction * H * W)``.
        fraction: share of pixels (0, 1] the curves cover.
        chunk_size: inputs per forward pass.
        autocast: mixed precision forwards (float16 on CUDA, bfloat16 on CPU).
        road_noise, seed, road_tol: the "road" substrate's noise (number or per channel), noise seed
            and solver tolerance; ignored by the other substrates.
        morf_curve: (B, steps+1) the MoRF curve when it has already been played, e.g. RISE's deletion
            game with the zero substrate on the same targets, steps and ``fraction`` (it is the same
            game): only LeRF is played, and its first point (and last, when ``fraction == 1``) is taken
            from this curve. The caller vouches that it is that game.
        original_scores: (B, K) the model's softmax probabilities on the unperturbed images, when the
            caller has them: point 0 of both curves is then read from them instead of played.

    Returns:
        ``morf`` (↓), ``lerf`` (↑), ``srg`` (↑, in [-1,1]): per image (B,); ``morf_curve`` and
        ``lerf_curve``: (B, steps+1); ``fraction``: (steps+1,) share of all pixels removed at each point.
    """
    substrate = _check_substrate(substrate)
    maps = check_maps(maps, unit_range=False)
    images = check_images(images, maps)
    check_same_device(model, images)
    batch, channels, height, width = images.shape
    pixels = height * width
    device = images.device
    targets = check_targets(targets, batch, device=device)
    steps, fraction, chunk_size = check_game_arguments(steps, fraction, chunk_size, pixels)
    evaluated = pixel_budget(fraction, pixels)
    noise = None
    if substrate == "road":
        scale = noise_scale(road_noise, channels, device, images.dtype)
        noise = noise_field(images.shape, scale, seed) if bool((scale > 0).any()) else None

    if morf_curve is not None:
        morf_curve = torch.as_tensor(morf_curve)
        if morf_curve.shape != (batch, steps + 1):
            raise ValueError(f"morf_curve must be (B, steps+1) = {(batch, steps + 1)}; got {tuple(morf_curve.shape)}")
        morf_curve = morf_curve.to(device=device, dtype=torch.float32)

    # (order, image, pixel) -> rank; order 0 = MoRF, 1 = LeRF (same tie rule, see the docstring).
    ranks = torch.stack([saliency_rank(maps), saliency_rank(-maps)]).int()
    counts = point_counts(steps, evaluated, device)
    shared_end = evaluated == pixels  # both orders end on the fully removed image
    lerf_points = list(range(1, steps if shared_end else steps + 1))
    # point 0 (nothing removed) is the unperturbed image: played with MoRF unless its scores are given
    given = None
    if original_scores is not None:
        with torch.no_grad():
            given = unperturbed_scores(model, images, True, autocast, chunk_size, original_scores)  # checked
        check_targets_in_range(targets, given)
    morf_points = [] if morf_curve is not None else list(range(0 if given is None else 1, steps + 1))
    sources, impute = _removal_sources(substrate, images, noise, road_tol)
    end = None if impute is not None else 1
    curves = [Curve(order=0, start=0, end=end, points=tuple(morf_points)),
              Curve(order=1, start=0, end=end, points=tuple(lerf_points))]
    scores = play(model, images, ranks, counts, curves, sources, targets, chunk_size, True, autocast, impute)

    if morf_curve is None:
        morf_curve = scores[:, : len(morf_points)]
        if given is not None:
            morf_curve = torch.cat([given.gather(1, targets[:, None]), morf_curve], dim=1)
    lerf_parts = [morf_curve[:, :1], scores[:, len(morf_points):]]
    if shared_end:
        lerf_parts.append(morf_curve[:, steps:steps + 1])
    lerf_curve = torch.cat(lerf_parts, dim=1)
    morf, lerf = auc(morf_curve), auc(lerf_curve)
    return {
        "morf": morf,
        "lerf": lerf,
        "srg": lerf - morf,
        "morf_curve": morf_curve,
        "lerf_curve": lerf_curve,
        "fraction": counts.float() / pixels,
    }


def _removal_sources(substrate: SubstrateSpec, images: torch.Tensor, noise: torch.Tensor | None,
                     road_tol: float) -> tuple[list[Callable[[int, int], torch.Tensor]], Callable | None]:
    """The game engine's sources for a substrate (originals, then what removed pixels become), or for
    "road" the originals and an imputation of each input's removed pixels (it depends on the mask)."""
    sources: list[Callable[[int, int], torch.Tensor]] = [lambda lo, hi: images[lo:hi]]
    if substrate == "road":
        def impute(originals: torch.Tensor, removed: torch.Tensor, image_idx: torch.Tensor) -> torch.Tensor:
            inputs = linear_imputation(originals, removed, tol=road_tol)
            return inputs if noise is None else inputs + noise[image_idx] * removed[:, None]

        return sources, impute
    if substrate == "zeros":
        sources.append(lambda lo, hi: torch.zeros_like(images[lo:hi]))
    elif substrate == "mean":
        means = images.mean((2, 3), keepdim=True)
        sources.append(lambda lo, hi: means[lo:hi].expand_as(images[lo:hi]))
    else:  # blur or a callable: made once per image
        sources.append(lambda lo, hi: _substrate_images(substrate, images[lo:hi]))
    return sources, None


def _substrate_images(substrate: SubstrateSpec, images: torch.Tensor) -> torch.Tensor:
    """Mask-independent substrate images for ``images`` ("blur" or a user callable)."""
    result = rise_blur(images) if substrate == "blur" else substrate(images)
    if not isinstance(result, torch.Tensor) or result.shape != images.shape:
        raise ValueError(f"the substrate callable must return a tensor shaped like its input {tuple(images.shape)}")
    return result.to(device=images.device, dtype=images.dtype)


# --------------------------------------------------------------------------- rank agreement


def substrate_agreement(scores: Mapping[str, Mapping[str, float]],
                        higher_is_better: bool = True) -> dict[str, object]:
    """Kendall's tau-b between the method rankings that different substrates produce.

    Args:
        scores: ``{substrate: {method: score}}``, e.g. mean SRG per method for each substrate; every
            substrate must score the same methods (at least two), with finite scores.
        higher_is_better: only orders ``rankings`` (tau itself does not depend on the direction).

    Returns:
        ``substrates`` and ``methods`` (the order used), ``pairs`` {(a, b): tau} for every pair of
        substrates, ``matrix`` (S x S nested list, 1 on the diagonal), ``mean_tau`` (mean over
        pairs), ``rankings`` {substrate: methods best first}. tau-b (``scipy.stats.kendalltau``'s
        default) counts tied scores as ties; it is undefined (NaN) when a substrate scores every
        method the same, and such pairs are left out of ``mean_tau`` (NaN if no pair is defined).

    Raises:
        ValueError: fewer than two substrates or methods; substrates that score different methods;
            a NaN or inf score.
    """
    if not isinstance(scores, Mapping) or len(scores) < 2:
        raise ValueError("scores must map at least two substrates to {method: score}")
    substrates = list(scores)
    first = scores[substrates[0]]
    if not isinstance(first, Mapping) or len(first) < 2:
        raise ValueError(f"substrate {substrates[0]!r} must map at least two methods to scores")
    methods = list(first)
    values = {}
    for name in substrates:
        entry = scores[name]
        if not isinstance(entry, Mapping) or set(entry) != set(methods):
            got = set(entry) if isinstance(entry, Mapping) else entry
            raise ValueError(
                f"every substrate must score the same methods: {substrates[0]!r} has {sorted(methods)}, "
                f"{name!r} has {sorted(got) if isinstance(got, set) else got!r}"
            )
        row = np.array([float(entry[m]) for m in methods])
        if not np.isfinite(row).all():
            raise ValueError(f"scores of substrate {name!r} contain NaN or inf")
        values[name] = row

    from scipy.stats import kendalltau  # here, not at import: scipy.stats adds ~1.5 s to every process start

    pairs: dict[tuple[str, str], float] = {}
    for a, b in itertools.combinations(substrates, 2):
        if np.ptp(values[a]) == 0 or np.ptp(values[b]) == 0:
            pairs[(a, b)] = math.nan  # tau-b is 0/0 for a constant ranking
        else:
            pairs[(a, b)] = float(kendalltau(values[a], values[b])[0])  # tau-b
    index = {name: i for i, name in enumerate(substrates)}
    matrix = [[1.0 if i == j else math.nan for j in range(len(substrates))] for i in range(len(substrates))]
    for (a, b), tau in pairs.items():
        matrix[index[a]][index[b]] = matrix[index[b]][index[a]] = tau
    defined = [tau for tau in pairs.values() if not math.isnan(tau)]
    sign = -1.0 if higher_is_better else 1.0
    rankings = {name: [methods[i] for i in np.argsort(sign * values[name], kind="stable")] for name in substrates}
    return {
        "substrates": substrates,
        "methods": methods,
        "pairs": pairs,
        "matrix": matrix,
        "mean_tau": float(np.mean(defined)) if defined else math.nan,
        "rankings": rankings,
    }


__all__ = [
    "MORF_LERF_STEPS",
    "SUBSTRATES",
    "morf_lerf",
    "substrate_agreement",
]
