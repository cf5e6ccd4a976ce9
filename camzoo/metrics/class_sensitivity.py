"""Does a map depend on the class it explains, and on the model it explains?

* :func:`random_logit_similarity` — the Random Logit test (Sixt, Granz & Landgraf, ICML 2020, "When
  explanations lie"; Quantus ``RandomLogit``): the similarity between the map of the explained class
  and the map of a class drawn uniformly among the *other* classes (seeded). Lower is better; a
  class-agnostic method (Eigen-CAM: the first principal component of the activations, whatever the
  target) scores 1.
* :func:`randomisation_spearman` — the model-parameter randomisation test (Adebayo et al., NeurIPS
  2018, "Sanity checks for saliency maps"), cascading from the output layer down
  (:func:`camzoo.metrics.sanity.parameter_randomisation`); the score is the Spearman correlation of
  each map with the trained model's map once every layer is randomised. Lower is better.

Similarity measure: **Spearman rank correlation** by default (SSIM on request, ``measure="ssim"``).
Why: it is invariant to any monotone rescaling, so the per-image min-max normalisation of the maps
and each method's own scale cannot move it; it has no window size (SSIM's 7x7 window needs maps of
at least 7x7 and weighs the 3-px border out); and it is the statistic of the randomisation column,
so the two columns read on one scale. Degenerate maps follow ``camzoo.metrics.spearman``: two
constant maps agree (1), exactly one constant map scores 0.

The maps come from the caller: ``explain`` is a CAM method name (run through ``camzoo.explain``)
or a function ``explain(model, images, targets) -> maps (B,H,W) in [0,1]``, as in ``sanity.py``.
"""

from __future__ import annotations

from typing import Any
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from ._checks import check_maps, check_targets
from .sanity import ExplainFn, parameter_randomisation
from .stability import _spearman, _ssim

MEASURES = ("spearman", "ssim")


def method_explain_fn(method: str | ExplainFn, layer: Any = None, batch_size: int | None = None,
                      method_options: Mapping[str, Any] | None = None) -> ExplainFn:
    """A CAM method name -> ``explain(model, images, targets) -> maps``; a callable is returned as is."""
    if callable(method):
        return method
    if not isinstance(method, str):
        raise TypeError(f"explain must be a method name or a callable explain(model, images, targets); got "
                        f"{type(method).__name__}")

    def run(model: nn.Module, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        from ..methods import run_method  # lazy: metrics do not import the methods at import time

        return run_method(model, images, method, targets, layer, batch_size, method_options).maps

    return run


def _similarity(maps_a: torch.Tensor, maps_b: torch.Tensor, measure: str) -> torch.Tensor:
    if measure == "spearman":
        return _spearman(maps_a, maps_b)
    return _ssim(maps_a, maps_b)


def _num_classes(model: nn.Module, images: torch.Tensor) -> int:
    declared = getattr(model, "num_classes", None)
    if isinstance(declared, int) and declared > 0:
        return declared
    from ..modelutil import select_output
    from ._model import eval_mode

    with eval_mode(model), torch.no_grad():
        return int(select_output(model(images[:1])).shape[1])  # read as camzoo.explain reads it


def random_other_classes(targets: torch.Tensor, num_classes: int, seed: int = 0) -> torch.Tensor:
    """(B,) classes drawn uniformly among the ``num_classes - 1`` classes other than each target."""
    if num_classes < 2:
        raise ValueError(f"the random logit test needs at least 2 classes; the model has {num_classes}")
    generator = torch.Generator().manual_seed(int(seed))
    offset = torch.randint(1, num_classes, targets.shape, generator=generator).to(targets.device)
    return (targets + offset) % num_classes


def random_logit_similarity(
    model: nn.Module, images: torch.Tensor, explain: str | ExplainFn, labels: torch.Tensor | Sequence[int],
    *, num_classes: int | None = None, seed: int = 0, measure: str = "spearman", layer: Any = None,
    batch_size: int | None = None, method_options: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The Random Logit test: similarity of the map for ``labels`` and for a random other class.

    Args:
        model: the classifier, on the images' device.
        images: normalised (B,3,H,W).
        explain: a CAM method name (with ``layer``/``batch_size``/``method_options`` for camzoo.explain)
            or ``explain(model, images, targets) -> maps (B,H,W) in [0,1]``.
        labels: (B,) the explained classes (the true classes, as Quantus does).
        num_classes: default the model's ``num_classes`` or its logits' width.
        seed: seeds the random classes (a local generator: the global RNG is untouched).
        measure: "spearman" (default; see the module docstring) or "ssim" (scikit-image's SSIM).
        layer: with a method name, the layer it explains (None: the method's default).
        batch_size: with a method name, images per pass (None: the method's default).
        method_options: with a method name, its options (checked against the method's signature).

    Returns:
        ``random_logit_similarity`` (mean, 0-d tensor), ``per_image`` (B,), ``targets`` (B,) the
        explained classes, ``random_targets`` (B,) the random other classes and ``measure``. Lower is
        better; range [-1,1]; class-agnostic maps give 1.

    Raises:
        ValueError: an unknown ``measure``; ``images`` not a (B,C,H,W) tensor; ``labels`` not (B,) or
            outside [0, num_classes); fewer than 2 classes; maps from ``explain`` that are not (B,H,W),
            not finite, outside [0,1] or not one per (image, class) pair; with "ssim", maps under 7x7.
        TypeError: ``explain`` is neither a method name nor a callable; ``labels`` not integers; maps
            that are not a float tensor.
    """
    if measure not in MEASURES:
        raise ValueError(f"measure must be one of {MEASURES}; got {measure!r}")
    if not isinstance(images, torch.Tensor) or images.dim() != 4:
        raise ValueError(f"images must be a (B,C,H,W) tensor; got "
                         f"{tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__}")
    batch = images.shape[0]
    classes = num_classes if num_classes is not None else _num_classes(model, images)
    targets = check_targets(labels, batch, classes, device=images.device)
    others = random_other_classes(targets, classes, seed)
    run = method_explain_fn(explain, layer, batch_size, method_options)
    both = run(model, torch.cat([images, images]), torch.cat([targets, others]))  # one batched call
    both = check_maps(both, "explain maps")
    if both.shape[0] != 2 * batch:
        raise ValueError(f"explain returned {both.shape[0]} maps for {2 * batch} (image, class) pairs")
    per_image = _similarity(both[:batch], both[batch:], measure)
    return {"random_logit_similarity": per_image.mean(), "per_image": per_image, "targets": targets,
            "random_targets": others, "measure": measure}


def randomisation_spearman(
    model: nn.Module, images: torch.Tensor, explain: str | ExplainFn, targets: torch.Tensor | Sequence[int],
    *, cascade: bool = True, layers: Sequence[str] | None = None, seed: int = 0, draws: int = 1, layer: Any = None,
    batch_size: int | None = None, method_options: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Spearman correlation of each map with the trained model's map after randomising every layer.

    Args:
        model: the trained classifier; never modified (the test works on a deep copy).
        images, targets: normalised (B,3,H,W) and the explained classes (B,), the same at every step.
        explain: a method name or ``explain(model, images, targets) -> maps`` (see
            :func:`random_logit_similarity`).
        cascade: True (Adebayo's protocol) randomises the layers one at a time from the output down
            and explains after each (``per_layer`` is the curve; L+1 explanations); False randomises
            the whole model at once and explains once (2 explanations). The end state is the same
            (every layer freshly initialised; the draws differ), so ``randomisation_spearman`` is
            the same statistic either way.
        layers: the cascade's order (default: ``camzoo.metrics.randomisable_layers``).
        seed: seeds the re-initialisation; the caller's RNG state is restored.
        draws: independent randomisations (seeds ``seed, seed+1, ...``), averaged per image. Why: all
            images of one draw share one random network, so their values are correlated; measured on a
            ResNet-8, one draw's mean moved from -0.22 to 0.64 (Eigen-CAM) between seeds. Use several
            draws (cheap with ``cascade=False``) before reading differences between methods.
        layer: with a method name, the layer it explains (None: the method's default).
        batch_size: with a method name, images per pass (None: the method's default).
        method_options: with a method name, its options (checked against the method's signature).

    Returns:
        ``randomisation_spearman`` (mean, 0-d tensor), ``per_image`` (B,) (mean over draws),
        ``per_draw`` (D,), ``per_layer`` (L,) mean Spearman after each cascade step (one value when
        ``cascade=False``; mean over draws), ``layers`` and ``ssim_per_image`` (B,) at full
        randomisation. Lower is better; range [-1,1].

    Raises:
        ValueError: ``draws`` not a positive int; ``layers`` given with ``cascade=False``; the errors of
            :func:`camzoo.metrics.parameter_randomisation` (bad images, targets or layer names, a
            model without parameters, maps that are not (B,H,W) in [0,1] at the images' size).
        TypeError: ``explain`` is neither a method name nor a callable; ``targets`` not integers.
    """
    if isinstance(draws, bool) or not isinstance(draws, int) or draws < 1:
        raise ValueError(f"draws must be a positive int; got {draws!r}")
    run = method_explain_fn(explain, layer, batch_size, method_options)
    steps: Sequence[str] | None
    if cascade:
        steps = layers
    else:
        if layers is not None:
            raise ValueError("layers= sets the cascade's order; it has no meaning with cascade=False")
        steps = [""]  # the root module: every parameter at once
    results = [parameter_randomisation(model, images, targets, run, layers=steps, seed=seed + draw)
               for draw in range(draws)]  # one model copy per draw; each draw is batched over images
    spearman = torch.stack([r["spearman"] for r in results])        # (D, L, B)
    per_image = spearman[:, -1].mean(0)
    return {"randomisation_spearman": per_image.mean(), "per_image": per_image,
            "per_draw": spearman[:, -1].mean(1), "per_layer": spearman.mean(dim=(0, 2)),
            "layers": results[0]["layers"], "ssim_per_image": torch.stack([r["ssim"][-1] for r in results]).mean(0)}


__all__ = ["MEASURES", "method_explain_fn", "random_logit_similarity", "random_other_classes",
           "randomisation_spearman"]
