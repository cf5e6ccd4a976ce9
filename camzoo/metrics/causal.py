"""Causal metrics: deletion / insertion (RISE) and Average Drop / Increase in Confidence (Grad-CAM++).

Why: localisation asks whether a map points at the object; causal metrics ask whether the pixels the
map ranks first are the ones the *model* needs. Both query the model on perturbed copies of each
image, so they are the expensive metrics: every (image, step) pair goes through the model as part of
large batched forwards on the model's device, ``chunk_size`` inputs at a time, under ``no_grad``.
The protocol details (kernel, padding, step counts, tie-breaking) are in docs/metrics.md.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ._checks import check_images, check_maps, check_targets
from ._model import check_same_device, check_targets_in_range, eval_mode, unperturbed_scores
from .games import Curve, check_game_arguments, pixel_budget, play, point_counts

Substrate = float | torch.Tensor | Callable[[torch.Tensor], torch.Tensor]

RISE_BLUR = (11, 5.0)  # the official RISE notebook: gkern(klen=11, nsig=5)
# RISE's published protocol (Evaluation.ipynb, final cell): CausalMetric(model, 'del', 224 * 8, ...)
# = 1,792 px per step at 224 x 224 -> 28 steps, 29 points; we keep 28 steps at every image size.
RISE_STEPS = 28


@dataclass(frozen=True)
class CausalProtocol:
    """A named deletion/insertion protocol, so that a table can say which one produced its numbers.

    ``steps``: number of steps (``steps + 1`` points) at any image size; ``substrate``: the deletion
    value in normalised space (0 = the dataset's mean colour); ``blur``: (kernel, sigma) of RISE's
    ``gkern`` blur, insertion's start; ``target``: ``"predicted"`` scores the model's top-1 class on
    the unperturbed image (``targets`` are ignored), ``"given"`` scores ``targets`` (the class each map
    explains; the prediction when ``targets`` is None); ``softmax``: probabilities, not logits.
    """

    name: str
    steps: int
    substrate: float
    blur: tuple[int, float]
    target: str
    softmax: bool = True
    reference: str = ""

    def __post_init__(self) -> None:
        if self.target not in ("predicted", "given"):
            raise ValueError(f"CausalProtocol.target must be 'predicted' or 'given'; got {self.target!r}")
        if int(self.steps) < 1:
            raise ValueError(f"CausalProtocol.steps must be >= 1; got {self.steps}")


RISE_PROTOCOL = CausalProtocol(
    name="rise", steps=RISE_STEPS, substrate=0.0, blur=RISE_BLUR, target="predicted", softmax=True,
    reference="eclique/RISE, Evaluation.ipynb, final cell: CausalMetric(model, 'del', 224 * 8, "
              "substrate_fn=torch.zeros_like) and CausalMetric(model, 'ins', 224 * 8, substrate_fn=blur), "
              "scoring the softmax probability of the top-1 class (ResNet-50: deletion 0.1048, insertion 0.7719)",
)
PROTOCOLS: dict[str, CausalProtocol] = {
    "rise": RISE_PROTOCOL,
    # RISE's steps, substrate and blur, scoring the class each map explains.
    "default": replace(RISE_PROTOCOL, name="default", target="given",
                       reference="RISE's 28 steps, zero substrate and gkern(11, 5) blur; scores the given targets"),
}


def causal_protocol(protocol: str | CausalProtocol) -> CausalProtocol:
    """The protocol of that name (``PROTOCOLS``), or ``protocol`` itself.

    Args:
        protocol: a name in ``PROTOCOLS`` (``"rise"``, ``"default"``), or a ``CausalProtocol``, which is
            returned unchanged.

    Returns:
        The ``CausalProtocol``.

    Raises:
        ValueError: ``protocol`` is a name not in ``PROTOCOLS``.
    """
    if isinstance(protocol, CausalProtocol):
        return protocol
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown causal protocol {protocol!r}; known: {sorted(PROTOCOLS)}")
    return PROTOCOLS[protocol]


def rise_blur_kernel(kernel_size: int = 11, sigma: float = 5.0) -> torch.Tensor:
    """The 2-D blur kernel (k,k) of RISE's ``gkern``, exactly.

    RISE builds it as ``scipy.ndimage.gaussian_filter`` of a k x k delta. SciPy's filter has radius
    ``int(4 * sigma + 0.5)`` (20 for sigma 5, wider than the 11 x 11 array) and mode 'reflect', so the
    Gaussian's tails fold back into the array: it is not a truncated Gaussian. We reproduce that
    folding in closed form (the filter is separable, so the 2-D kernel is an outer product).

    Args:
        kernel_size: side k of the kernel, >= 1 (RISE: 11).
        sigma: standard deviation of the Gaussian in pixels, > 0 (RISE: 5).

    Returns:
        (k,k) float32 tensor on the CPU: the outer product of the folded 1-D kernel with itself.

    Raises:
        ValueError: ``kernel_size < 1`` or ``sigma <= 0``.
    """
    if kernel_size < 1 or sigma <= 0:
        raise ValueError(f"blur needs kernel_size >= 1 and sigma > 0; got {kernel_size}, {sigma}")
    radius = int(4.0 * sigma + 0.5)
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float64)
    weights = torch.exp(-0.5 * (offsets / sigma) ** 2)
    weights = weights / weights.sum()
    centre = kernel_size // 2
    positions = torch.arange(kernel_size)[:, None] + offsets.long()[None, :]  # (k, 2r+1)
    period = positions.remainder(2 * kernel_size)  # 'reflect' = symmetric extension, period 2k
    folded = torch.where(period < kernel_size, period, 2 * kernel_size - 1 - period)
    kernel_1d = (weights[None, :] * (folded == centre)).sum(1)
    return torch.outer(kernel_1d, kernel_1d).float()


def rise_blur(images: torch.Tensor, kernel_size: int = 11, sigma: float = 5.0) -> torch.Tensor:
    """RISE's insertion start: each channel convolved with ``rise_blur_kernel``, zero padding.

    Zero padding (as RISE's ``conv2d(x, kern, padding=klen//2)``) pulls the border towards 0, which in
    normalised space is the dataset's mean colour.

    Args:
        images: (B,C,H,W) float images (normalised), any device; each channel is blurred separately.
        kernel_size: side of the square kernel (RISE: 11); padding is ``kernel_size // 2``, so an odd
            size keeps H,W (an even one adds a row and a column).
        sigma: standard deviation of the Gaussian in pixels (RISE: 5).

    Returns:
        The blurred images, (B,C,H,W) for an odd ``kernel_size``, on the images' device and in their dtype.

    Raises:
        ValueError: ``kernel_size < 1`` or ``sigma <= 0``.
    """
    channels = images.shape[1]
    kernel = rise_blur_kernel(kernel_size, sigma).to(images.device, images.dtype)
    weight = kernel.expand(channels, 1, kernel_size, kernel_size)
    return F.conv2d(images, weight, padding=kernel_size // 2, groups=channels)


def saliency_rank(maps: torch.Tensor) -> torch.Tensor:
    """Rank of every pixel (B,H*W) in the order of decreasing saliency; 0 = most salient.

    Ties follow RISE's ``np.flip(np.argsort(saliency))`` made deterministic, i.e. exactly
    ``np.flip(np.argsort(saliency.reshape(-1), kind="stable"))``: among equal values the *later* pixel
    (higher raster index) comes first. (RISE's default sort is not stable, so its order among ties is
    whatever the sort left; this is the one stable reading of it, identical on every device.)

    Args:
        maps: saliency (B,H,W) (any trailing shape: it is flattened from dim 1); only the order of the
            values matters.

    Returns:
        (B,H*W) int64 on the maps' device: entry [b, p] is the rank of raster pixel p of map b
        (0 = most salient, H*W - 1 = least).
    """
    flat = maps.flatten(1)
    # A stable descending sort of the reversed map keeps equal values in reversed index order.
    order = torch.sort(flat.flip(1), dim=1, descending=True, stable=True).indices
    order = flat.shape[1] - 1 - order
    positions = torch.arange(flat.shape[1], device=flat.device).expand_as(order)
    return torch.empty_like(order).scatter_(1, order, positions)


def auc(curves: torch.Tensor) -> torch.Tensor:
    """Normalised trapezoidal area under each curve (B,S+1), x spaced evenly over [0,1] (RISE's ``auc``).

    Args:
        curves: (..., S+1) float tensor, one curve per row along the last dim, S >= 1 steps.

    Returns:
        (...,) the area of each curve: its trapezoid sum divided by S, so a curve in [0,1] gives an AUC
        in [0,1].

    Raises:
        ValueError: a curve has fewer than two points.
    """
    steps = curves.shape[-1] - 1
    if steps < 1:
        raise ValueError("a curve needs at least two points")
    return (curves.sum(-1) - curves[..., 0] / 2 - curves[..., -1] / 2) / steps


def _substrate_for(substrate: Substrate, images: torch.Tensor, lo: int, hi: int, name: str) -> torch.Tensor:
    """The substrate images for ``images[lo:hi]`` from a constant, a tensor or a callable."""
    chunk = images[lo:hi]
    if callable(substrate):
        result = substrate(chunk)
        if not isinstance(result, torch.Tensor) or result.shape != chunk.shape:
            raise ValueError(f"{name} callable must return a tensor shaped like its input {tuple(chunk.shape)}")
        return result.to(chunk.dtype)
    if isinstance(substrate, torch.Tensor):
        substrate = substrate.to(chunk.device, chunk.dtype)
        if substrate.dim() == 4:
            if substrate.shape != images.shape:
                raise ValueError(f"a (B,C,H,W) {name} must match the images {tuple(images.shape)}")
            return substrate[lo:hi]
        try:
            return substrate.expand_as(chunk)
        except RuntimeError:
            raise ValueError(
                f"{name} tensor {tuple(substrate.shape)} does not broadcast to the images (C,H,W) "
                f"{tuple(chunk.shape[1:])}"
            ) from None
    return torch.full_like(chunk, float(substrate))


def deletion_insertion(
    model: nn.Module,
    images: torch.Tensor,
    maps: torch.Tensor,
    targets: torch.Tensor | Sequence[int] | None = None,
    steps: int | None = None,
    substrate: Substrate | None = None,
    blur: tuple[int, float] | Callable[[torch.Tensor], torch.Tensor] | None = None,
    chunk_size: int = 64,
    autocast: bool = False,
    softmax: bool | None = None,
    modes: Sequence[str] = ("deletion", "insertion"),
    protocol: str | CausalProtocol = "default",
    fraction: float = 1.0,
    original_scores: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """RISE's deletion and insertion games for a batch, as batched forwards.

    Pixels are ranked by decreasing saliency (ties: the later pixel first, ``saliency_rank``). Point k
    of a curve (k = 0..steps) has the first ``floor(k * H * W / steps)`` pixels changed: deletion
    replaces them (all channels) with ``substrate`` (default 0 = the mean colour in normalised space);
    insertion starts from ``blur(images)`` (default RISE's 11 x 11, sigma 5 ``gkern``) and restores
    the original pixels. The score at each point is the softmax probability of the target class (raw
    model output when ``softmax=False``). AUC is the trapezoidal area with x in [0,1].

    ``protocol`` (a name in ``PROTOCOLS`` or a ``CausalProtocol``) sets steps, substrate, blur, softmax
    and the target rule; arguments passed explicitly override it. ``"rise"`` is RISE's published
    protocol: 28 steps (1,792 px per step at 224 x 224), the top-1 *predicted* class (``targets``
    ignored). ``"default"`` is the same but scores ``targets`` (the predicted class when None).

    Args:
        model: classifier returning logits (B,C); put in eval mode for the call, its modes restored.
        images: normalised images (B,C,H,W) on the model's device.
        maps: saliency (B,H,W); only the order of the values matters (any finite values).
        targets: class whose score is tracked, (B,); None = the model's prediction.
        steps: number of steps (``steps + 1`` points); ``H*W/steps`` need not be an integer.
        substrate: deletion substrate: a constant, a tensor broadcastable to (C,H,W) or (B,C,H,W),
            or a callable images -> images.
        blur: insertion start: (kernel_size, sigma) for RISE's blur, or a callable images -> images.
        chunk_size: (image, step) inputs per forward pass; bounds the memory.
        autocast: mixed precision (float16 on CUDA, bfloat16 on CPU).
        softmax: score probabilities (True) or raw outputs (False).
        modes: which games to play, any of "deletion", "insertion".
        protocol: the protocol supplying the defaults above.
        fraction: play the games over the first ``fraction`` of the pixels only (a partial AUC, with
            x in [0,1] spanning that range): point k has ``floor(k * round(fraction*H*W) / steps)``
            pixels changed. On small objects a full game spends most steps after the object is gone;
            a partial one resolves it (docs/metrics.md). 1.0 = the full game (RISE).
        original_scores: (B, num_classes) the model's scores on the unperturbed images (probabilities
            or raw outputs, as ``softmax``), when the caller has them: saves their forward.

    Returns:
        ``deletion`` / ``insertion``: AUC per image (B,) in [0,1] — lower deletion and higher insertion
        are better; ``deletion_curve`` / ``insertion_curve``: (B, steps+1); ``fraction``: (steps+1,)
        the fraction of pixels changed at each point; ``targets``: (B,) the classes scored.
    """
    chosen = causal_protocol(protocol)
    steps = chosen.steps if steps is None else steps
    substrate = chosen.substrate if substrate is None else substrate
    blur = chosen.blur if blur is None else blur
    softmax = chosen.softmax if softmax is None else bool(softmax)
    maps = check_maps(maps, unit_range=False)
    images = check_images(images, maps)
    check_same_device(model, images)
    batch, _, height, width = images.shape
    pixels = height * width
    predicted = chosen.target == "predicted" or targets is None
    if not predicted:
        targets = check_targets(targets, batch, device=images.device)
    modes = tuple(modes)
    unknown = set(modes) - {"deletion", "insertion"}
    if not modes or unknown:
        raise ValueError(f"modes must be a non-empty subset of ('deletion', 'insertion'); got {modes}")
    steps, fraction, chunk_size = check_game_arguments(steps, fraction, chunk_size, pixels)
    budget = pixel_budget(fraction, pixels)  # pixels changed at the last point
    if callable(blur):
        blur_fn = blur
    else:
        kernel_size, sigma = blur
        blur_fn = lambda x: rise_blur(x, int(kernel_size), float(sigma))  # noqa: E731

    device = images.device
    ranks = saliency_rank(maps).int()[None]  # int32 halves the bytes gathered per input
    counts = point_counts(steps, budget, device)

    with torch.no_grad(), eval_mode(model):
        # The unperturbed images first: deletion's first point, insertion's last, and (when the
        # target is the prediction) the classes to track — one forward per image for all three.
        scores_all = unperturbed_scores(model, images, softmax, autocast, chunk_size, original_scores)
    if predicted:
        targets = scores_all.argmax(1)  # RISE: np.argmax of the probabilities
    else:
        check_targets_in_range(targets, scores_all)
    original = scores_all.gather(1, targets[:, None])[:, 0]

    # Sources: the originals, then deletion's substrate and insertion's blurred start, as played.
    sources = [lambda lo, hi: images[lo:hi]]
    curves = []
    if "deletion" in modes:  # points 1..steps: original -> substrate
        sources.append(lambda lo, hi: _substrate_for(substrate, images, lo, hi, "substrate"))
        curves.append(Curve(order=0, start=0, end=len(sources) - 1, points=tuple(range(1, steps + 1))))
    if "insertion" in modes:  # points 0..steps-1: blur -> original
        sources.append(lambda lo, hi: _substrate_for(blur_fn, images, lo, hi, "blur"))
        curves.append(Curve(order=0, start=len(sources) - 1, end=0, points=tuple(range(steps))))
    scores = play(model, images, ranks, counts, curves, sources, targets, chunk_size, softmax, autocast)

    result: dict[str, torch.Tensor] = {"fraction": counts.float() / pixels, "targets": targets}
    offset = 0
    if "deletion" in modes:
        curve = torch.cat([original[:, None], scores[:, offset:offset + steps]], dim=1)
        result["deletion_curve"], result["deletion"] = curve, auc(curve)
        offset += steps
    if "insertion" in modes:
        curve = torch.cat([scores[:, offset:offset + steps], original[:, None]], dim=1)
        result["insertion_curve"], result["insertion"] = curve, auc(curve)
    return result


__all__ = [
    "PROTOCOLS",
    "RISE_BLUR",
    "RISE_PROTOCOL",
    "RISE_STEPS",
    "CausalProtocol",
    "auc",
    "causal_protocol",
    "deletion_insertion",
    "rise_blur",
    "rise_blur_kernel",
    "saliency_rank",
]
