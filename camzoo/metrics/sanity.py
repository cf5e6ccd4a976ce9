"""Model-parameter randomisation test (Adebayo et al., "Sanity Checks for Saliency Maps", 2018).

Why: a map that barely changes when the model's weights are replaced by random ones explains the
image, not the model. Cascading randomisation re-initialises layers from the top (logits) down, one
more at each step (in the reverse of the order a forward pass calls them), and compares each step's
maps with the trained model's maps. Metrics know nothing of explanation methods, so the maps come
from a caller-supplied ``explain_fn``.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence

import torch
from torch import nn

from ..modelutil import eval_mode, model_device, model_input_size
from ._checks import check_maps, check_targets
from .stability import _spearman, _ssim

ExplainFn = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]


def _owns_parameters(module: nn.Module) -> bool:
    return any(True for _ in module.parameters(recurse=False))


def _probe_input(model: nn.Module) -> torch.Tensor:
    """A zero RGB image (1,3,H,W) for one probe forward: the model's declared input size (its
    ``pretrained_cfg``) or 32x32, on its device, in its parameters' dtype."""
    size = model_input_size(model) or (32, 32)
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
    return torch.zeros(1, 3, *size, device=model_device(model), dtype=dtype)


def randomisable_layers(model: nn.Module, example: torch.Tensor | None = None) -> list[str]:
    """Names of the modules that own parameters directly, output side first.

    The order is the reverse of the order in which these modules are *called* in one probe forward
    pass (eval mode, no autograd; a module called more than once counts at its last call), so the
    cascade follows the data flow from the logits back to the input whatever the registration
    order: for LFI-CAM ``fc``, then the FIN, then the backbone; for ABN ``fc``, the last stage of
    the perception branch, then the attention branch (called before the last stage: it makes the
    map that multiplies the last stage's input; its aux-logit ``cls_conv`` first), then the trunk.
    Modules the forward pass never calls (including ones whose parameters are read without calling
    the module) come last, in reverse registration order.

    Args:
        model: the classifier; its parameters and each submodule's train/eval flag are left as they were.
        example: a probe input (a batch of one suffices); default: zeros (1,3,H,W) at the model's
            declared input size (``pretrained_cfg["input_size"]``) or 32x32, on its device.

    Returns:
        Dotted module names (as ``model.named_modules()`` gives them), output side first; empty when no
        submodule owns parameters.

    Raises:
        ValueError: the probe forward pass failed (pass ``example=`` an input the model accepts).
    """
    owners = [(name, module) for name, module in model.named_modules() if name and _owns_parameters(module)]
    if not owners:
        return []
    calls: list[str] = []

    def recorder(name: str):
        def hook(module: nn.Module, args: object) -> None:
            calls.append(name)
        return hook

    probe = _probe_input(model) if example is None else example
    handles = []
    try:
        for name, module in owners:
            handles.append(module.register_forward_pre_hook(recorder(name)))
        with eval_mode(model), torch.no_grad():
            try:
                model(probe)
            except Exception as err:
                raise ValueError(
                    f"randomisable_layers: a probe forward pass on an input of shape {tuple(probe.shape)} "
                    f"failed ({type(err).__name__}: {err}); pass example= (an input the model accepts) "
                    "or pass layers= to parameter_randomisation"
                ) from err
    finally:
        for handle in handles:
            handle.remove()
    last_call = {name: position for position, name in enumerate(calls)}
    called = sorted(last_call, key=last_call.__getitem__, reverse=True)
    never_called = [name for name, _ in reversed(owners) if name not in last_call]
    return called + never_called


def _reinitialise(module: nn.Module) -> None:
    """Fresh random parameters for ``module`` and everything inside it (its own default init).

    Modules without ``reset_parameters`` get N(0, s) with s their current std (or 0.01). BatchNorm's
    own reset gives weight 1, bias 0 and fresh running statistics.
    """
    for sub in module.modules():
        if hasattr(sub, "reset_parameters") and callable(sub.reset_parameters):
            sub.reset_parameters()
        else:
            for parameter in sub.parameters(recurse=False):
                spread = float(parameter.detach().float().std()) if parameter.numel() > 1 else 0.0
                with torch.no_grad():
                    parameter.normal_(0.0, spread if spread > 0 else 0.01)


def parameter_randomisation(
    model: nn.Module,
    images: torch.Tensor,
    targets: torch.Tensor | Sequence[int],
    explain_fn: ExplainFn,
    layers: Sequence[str] | None = None,
    seed: int = 0,
) -> dict[str, object]:
    """Cascading model-parameter randomisation, from the top layer down.

    Args:
        model: the trained classifier; never modified (the test works on a deep copy in eval mode).
        images: normalised images (B,C,H,W) on the model's device.
        targets: classes to explain (B,), the same at every step (as in the paper).
        explain_fn: ``explain_fn(model, images, targets) -> maps (B,H,W) in [0,1]``.
        layers: module names to randomise, in order (top first); default: every module that owns
            parameters, output side first, in the reverse of the order a forward pass on
            ``images[:1]`` calls them (``randomisable_layers``).
        seed: seeds the re-initialisation; the caller's RNG state is restored afterwards.

    Returns:
        ``layers``: the L names, in order; ``spearman`` and ``ssim``: (L,B) float32, per step and image,
        between the trained model's maps and the maps after randomising layers[0..i] (cumulatively);
        ``mean_spearman`` and ``mean_ssim``: (L,) means over images. Lower is better (in [-1,1]): the
        maps should depend on the weights. ``reference_maps``: (B,H,W) the trained model's maps
        (detached).

    Raises:
        TypeError: ``explain_fn`` is not callable; ``targets`` not integers; ``explain_fn`` returned
            a non-float or non-tensor map.
        ValueError: ``images`` not a (B,C,H,W) tensor; ``targets`` not (B,); no layer to randomise;
            unknown layer names; maps from ``explain_fn`` that are not (B,H,W) at the images' size,
            not finite or outside [0,1] (the SSIM also needs at least 7x7); a failed probe forward.
    """
    if not callable(explain_fn):
        raise TypeError("explain_fn must be a callable explain_fn(model, images, targets) -> maps (B,H,W)")
    if not isinstance(images, torch.Tensor) or images.dim() != 4:
        raise ValueError("images must be a (B,C,H,W) tensor")
    batch = images.shape[0]
    targets = check_targets(targets, batch, device=images.device)
    work = copy.deepcopy(model).eval()
    names = list(layers) if layers is not None else randomisable_layers(work, images[:1])
    if not names:
        raise ValueError("the model has no parameters to randomise")
    known = dict(work.named_modules())
    missing = [name for name in names if name not in known]
    if missing:
        raise ValueError(f"unknown layer names {missing[:5]}; see camzoo.metrics.randomisable_layers(model)")

    def explain(net: nn.Module, step: str) -> torch.Tensor:
        maps = explain_fn(net, images, targets)
        maps = check_maps(maps, f"explain_fn maps ({step})")
        if maps.shape[0] != batch or maps.shape[-2:] != images.shape[-2:]:
            raise ValueError(f"explain_fn must return (B,H,W) maps at the images' size; got {tuple(maps.shape)}")
        return maps.detach()

    reference = explain(work, "trained model")
    spearman_rows, ssim_rows = [], []
    rng_devices = [images.device] if images.device.type == "cuda" else []
    with torch.random.fork_rng(devices=rng_devices):
        torch.manual_seed(seed)
        for name in names:
            _reinitialise(known[name])
            maps = explain(work, f"after randomising {name}")
            spearman_rows.append(_spearman(reference, maps))
            ssim_rows.append(_ssim(reference, maps))
    spearman = torch.stack(spearman_rows)
    ssim = torch.stack(ssim_rows)
    return {
        "layers": names,
        "spearman": spearman,
        "ssim": ssim,
        "mean_spearman": spearman.mean(1),
        "mean_ssim": ssim.mean(1),
        "reference_maps": reference,
    }


__all__ = ["parameter_randomisation", "randomisable_layers"]
