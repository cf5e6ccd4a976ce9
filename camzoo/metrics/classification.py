"""Top-k classification accuracy.

Why here: the benchmark reports accuracy next to every explanation metric, because an explainer
that makes the classifier worse (ABN, LFI-CAM change the model) is not free.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ._checks import check_targets


def accuracy(logits: torch.Tensor, labels: torch.Tensor,
             topk: Sequence[int] | None = None) -> dict[str, torch.Tensor]:
    """Top-k accuracy of ``logits`` (B,C) against ``labels`` (B,).

    ``topk=None`` means (1, 5), with 5 dropped when there are 5 classes or fewer (top-5 of a 5-class
    problem is always 1, so it says nothing). An explicit k larger than the number of classes is an
    error. Ties among logits are broken by ``torch.topk``.

    Args:
        logits: (B,C) finite float scores (logits or probabilities: only their order matters), B >= 1.
        labels: (B,) integer true classes in [0, C), a tensor or a sequence (one int is used for all).
        topk: the k values to report, each in [1, C] (duplicates dropped); None: (1, 5) as above.

    Returns:
        ``{"top1": scalar, "top5": scalar, ..., "correct": (B,) bool top-1 hits}``, accuracies as float32
        fractions in [0,1] (higher is better), one ``top{k}`` key per k in ascending order, on the
        logits' device.

    Raises:
        ValueError: ``logits`` not a non-empty (B,C) finite float tensor; ``labels`` not (B,) or out of
            [0, C); a k outside [1, C].
        TypeError: ``labels`` holds floats or bools.
    """
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2:
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise ValueError(f"logits must be a (B,num_classes) tensor; got {shape}")
    if not logits.is_floating_point() or not bool(torch.isfinite(logits).all()):
        raise ValueError("logits must be finite floats (got NaN/inf or a non-float dtype)")
    batch, num_classes = logits.shape
    if batch == 0:
        raise ValueError("logits is empty (batch size 0)")
    labels = check_targets(labels, batch, num_classes, device=logits.device)
    if topk is None:
        ks = [k for k in (1, 5) if k == 1 or k < num_classes]
    else:
        ks = sorted({int(k) for k in topk})
        if not ks or ks[0] < 1 or ks[-1] > num_classes:
            raise ValueError(f"topk must hold integers in [1, {num_classes}]; got {list(topk)}")
    ranked = logits.topk(max(ks), dim=1).indices  # (B, kmax)
    hits = ranked == labels[:, None]
    result = {f"top{k}": hits[:, :k].any(1).float().mean() for k in ks}
    result["correct"] = hits[:, 0]
    return result
