"""Average Drop and Increase in Confidence (Chattopadhyay et al., Grad-CAM++, 2018) and Average Gain
(Zhang et al., Opti-CAM, 2024): how much of the target's score survives, or is gained, when the image
is multiplied by its map. One extra forward pass per image, batched on the model's device.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ._checks import check_images, check_maps, check_targets
from ._model import check_same_device, check_targets_in_range, eval_mode, target_probabilities, unperturbed_scores


def average_drop_increase(
    model: nn.Module,
    images: torch.Tensor,
    maps: torch.Tensor,
    targets: torch.Tensor | Sequence[int],
    baseline: float | torch.Tensor = 0.0,
    chunk_size: int = 64,
    autocast: bool = False,
    softmax: bool = True,
    original_scores: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Average Drop and Increase in Confidence (Chattopadhyay et al., Grad-CAM++, 2018).

    The "explanation map" of an image x is ``baseline + map * (x - baseline)`` (with the default
    baseline 0 in normalised space: x * map, masked-out pixels go to the mean colour). With Y the
    target's softmax score on x and O the score on the explanation map:

    - ``average_drop`` = 100 * mean(max(0, Y - O) / Y), in [0, 100], lower is better;
    - ``increase_in_confidence`` = 100 * mean(O > Y), in [0, 100], higher is better;
    - ``average_gain`` = 100 * mean(max(0, O - Y) / (1 - Y)), in [0, 100], higher is better: the
      Opti-CAM paper's complement to Average Drop, which a map can game by keeping the whole image.

    Per-image values come back too (``drop`` and ``gain`` in [0,1], ``increase`` bool, ``score`` Y,
    ``explanation_score`` O) so that results can be pooled over batches. ``original_scores`` (B, K),
    the model's scores on the unperturbed images (as ``softmax``), saves their forward when given.

    Args:
        model: classifier returning logits (B,K) (or a tuple whose first item they are); run in eval
            mode under ``no_grad``, its modes restored afterwards.
        images: normalised images (B,C,H,W), finite floats, on the model's device.
        maps: saliency (B,H,W) in [0,1] at the images' size, same device; multiplies every channel.
        targets: (B,) integer class of each map (a tensor or a sequence), < K.
        baseline: what a zero map value leaves: a number, or a tensor broadcastable to (C,H,W) (a (C,)
            one is read per channel); 0 = the mean colour in normalised space.
        chunk_size: images per forward pass (>= 1).
        autocast: mixed precision forwards (float16 on CUDA, bfloat16 elsewhere).
        softmax: score softmax probabilities (True) or raw outputs (False; the ranges above then need not
            hold).
        original_scores: (B,K) the model's scores on the unperturbed images, when the caller has them.

    Returns:
        ``average_drop``, ``increase_in_confidence``, ``average_gain``: scalar float32 percentages in
        [0,100]; per image (B,): ``drop`` and ``gain`` float32, ``increase`` bool, ``score`` (Y) and
        ``explanation_score`` (O) float32. On the images' device.

    Raises:
        TypeError: ``maps``/``images`` not float tensors; ``targets`` not integers.
        ValueError: bad shapes, NaN/inf, maps outside [0,1]; the model and images on different devices;
            ``targets`` not (B,) or not below the model's number of outputs; ``chunk_size < 1``;
            ``original_scores`` not (B,K); a model output that is not (B,K).
    """
    maps = check_maps(maps)
    images = check_images(images, maps)
    check_same_device(model, images)
    batch = images.shape[0]
    targets = check_targets(targets, batch, device=images.device)
    if int(chunk_size) < 1:
        raise ValueError(f"chunk_size must be >= 1; got {chunk_size}")
    if isinstance(baseline, torch.Tensor):
        baseline = baseline.to(images.device, images.dtype)
        if baseline.dim() == 1:
            baseline = baseline[:, None, None]
    masked = torch.empty(batch, device=images.device)
    with torch.no_grad(), eval_mode(model):
        scores = unperturbed_scores(model, images, softmax, autocast, int(chunk_size), original_scores)
        check_targets_in_range(targets, scores)
        full = scores.gather(1, targets[:, None])[:, 0]
        for start in range(0, batch, int(chunk_size)):
            part = slice(start, min(start + int(chunk_size), batch))
            x, m, t = images[part], maps[part, None], targets[part]
            explanation = baseline + m * (x - baseline)
            masked[part] = target_probabilities(model, explanation, t, softmax, autocast)
    tiny = torch.finfo(full.dtype).tiny
    drop = (full - masked).clamp(min=0) / full.clamp(min=tiny)
    gain = (masked - full).clamp(min=0) / (1 - full).clamp(min=tiny)  # Y = 1 leaves no gain: 0 / tiny
    increase = masked > full
    return {
        "average_drop": 100 * drop.mean(),
        "increase_in_confidence": 100 * increase.float().mean(),
        "average_gain": 100 * gain.mean(),
        "drop": drop,
        "gain": gain,
        "increase": increase,
        "score": full,
        "explanation_score": masked,
    }


__all__ = ["average_drop_increase"]
