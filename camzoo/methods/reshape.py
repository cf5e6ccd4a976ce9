"""Bring a layer's output into the (B,C,h,w) layout every CAM method computes on.

Why a rule and not a guess from the shape: a Swin stage at 32 px gives (1, 4, 4, 32), which reads
as a valid channels-first map with 4 channels of 4x32 pixels: striped garbage that no shape test
can catch. So the layout is decided by what produced the tensor:

- **Tokens (B, T, C)**: a 3-D output of a model with a patch embedding. The patch grid (h, w)
  comes from the model for this input size (timm's ``PatchEmbed.dynamic_feat_size`` /
  ``patch_size``, torchvision ViT's ``patch_size``); the first ``T - h*w`` tokens are prefix tokens
  (class, distillation, register: timm's ``num_prefix_tokens``, torchvision's ``class_token``) and are
  dropped; the rest are read row-major as the grid (both libraries order patches this way).
- **Channels-last (B, H, W, C)**: a 4-D output of an ``nn.LayerNorm`` (not a ``LayerNorm2d``) or an
  ``nn.Linear``, which act on the last dimension; or of any other non-convolutional module of a
  model whose family is channels-last (timm's ``output_fmt == "NHWC"``: Swin; torchvision's
  ``SwinTransformer`` trunk, ``features`` and ``norm``). Permuted to (B,C,H,W).
- **Channels-first (B, C, H, W)**: everything else 4-D (convolutions, CNN stages, ConvNeXt stages).

- **Feature pyramids** (a dict of (B, C_l, h_l, w_l) levels: a torchvision detector's ``backbone``,
  FPN levels "0", "1", ..., "pool"): every level resized bilinearly to the *finest* level's size
  and concatenated along channels, in the dict's order. pytorch-grad-cam's detection tutorial
  resizes to the coarsest level ("pool", 1x1 for a small input) and takes absolute values; camzoo
  keeps the finest level's resolution and the sign, which gradients need.

Anything else (a 2-D vector, a tuple, tokens of a model with no patch grid) fails with an error
that names the layer and its shape and says how to pass ``layer=`` and ``reshape=``; a user's
``reshape`` callable replaces the rule (and is applied to activations and gradients alike).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
import torch.nn.functional as F
from torch import nn

Reshape = Callable[[torch.Tensor], torch.Tensor]  # or of a dict of levels, for a pyramid layer

_CHANNELS_FIRST_LEAVES = (nn.Conv2d, nn.ConvTranspose2d, nn.BatchNorm2d, nn.GroupNorm, nn.InstanceNorm2d,
                          nn.MaxPool2d, nn.AvgPool2d)
_HOW_TO_FIX = ("pass layer=... naming a module with a (B,C,h,w) output (see model.named_modules()), or "
               "reshape=f, a callable turning this layer's output into (B,C,h,w)")


def _is_channels_last_leaf(module: nn.Module) -> bool | None:
    """True/False where the module's type fixes which axis holds the channels; None for containers."""
    if isinstance(module, nn.LayerNorm):
        return "2d" not in type(module).__name__.lower()  # timm/torchvision LayerNorm2d: channels-first
    if isinstance(module, nn.Linear):
        return True
    if isinstance(module, _CHANNELS_FIRST_LEAVES):
        return False
    return None


def _family_is_channels_last(model: nn.Module, name: str) -> bool:
    """Whether ``name`` sits in the channels-last trunk of a model family known to be NHWC."""
    if getattr(model, "output_fmt", None) == "NHWC":  # timm's own flag (Swin, and others)
        return not name.startswith("head")
    cls = type(model)
    if cls.__name__ == "SwinTransformer" and cls.__module__.startswith("torchvision."):
        return name.split(".")[0] in ("features", "norm")
    return False


def is_channels_last(model: nn.Module, name: str, module: nn.Module) -> bool:
    """The documented rule (module docstring) for a 4-D output of ``module`` (called ``name``)."""
    by_type = _is_channels_last_leaf(module)
    return by_type if by_type is not None else _family_is_channels_last(model, name)


def _pair(value: object) -> tuple[int, int] | None:
    if isinstance(value, int):
        return value, value
    if isinstance(value, (tuple, list)) and len(value) == 2 and all(isinstance(v, int) for v in value):
        return int(value[0]), int(value[1])
    return None


def patch_grid(model: nn.Module, input_size: tuple[int, int]) -> tuple[int, int] | None:
    """(h, w) of the model's token grid for an input of ``input_size``; None if it has no patch embedding.

    timm: the first module with a ``patch_size`` (``patch_embed``, Mixer's ``stem``), whose
    ``dynamic_feat_size`` handles dynamic padding; torchvision ViT: the model's own ``patch_size``.
    """
    candidates = [model] + [m for _, m in model.named_modules() if m is not model]
    for module in candidates:
        patch = _pair(getattr(module, "patch_size", None))
        if patch is None:
            continue
        feat_size = getattr(module, "dynamic_feat_size", None)
        if callable(feat_size) and getattr(module, "dynamic_img_pad", False):
            grid = _pair(tuple(int(v) for v in feat_size(tuple(input_size))))
            if grid is not None:
                return grid
        return input_size[0] // patch[0], input_size[1] // patch[1]
    return None


def declared_prefix_tokens(model: nn.Module) -> int | None:
    """Prefix tokens the model declares: timm's ``num_prefix_tokens``; 1 for torchvision's class token."""
    count = getattr(model, "num_prefix_tokens", None)
    if isinstance(count, int):
        return count
    if isinstance(getattr(model, "class_token", None), torch.Tensor):
        return 1
    return None


def tokens_to_map(tokens: torch.Tensor, model: nn.Module, name: str, input_size: tuple[int, int]) -> torch.Tensor:
    """(B, prefix + h*w, C) tokens -> (B, C, h, w), prefix tokens dropped (see the module docstring)."""
    grid = patch_grid(model, input_size)
    shape = tuple(tokens.shape)
    if grid is None:
        raise ValueError(f"layer {name!r} outputs tokens of shape {shape}, but camzoo finds no patch grid in "
                         f"{type(model).__name__} (no module with a patch_size); {_HOW_TO_FIX}")
    height, width = grid
    prefix = shape[1] - height * width
    declared = declared_prefix_tokens(model)
    if prefix < 0 or (declared is not None and prefix != declared) or (declared is None and prefix != 0):
        expected = f"{declared or 0} prefix tokens + {height}x{width} patches = {(declared or 0) + height * width}"
        raise ValueError(f"layer {name!r} outputs {shape[1]} tokens (shape {shape}), but a {input_size[0]}x"
                         f"{input_size[1]} input gives {expected}: it is not the patch grid (a pooled or "
                         f"merged stage?); {_HOW_TO_FIX}")
    return tokens[:, prefix:].transpose(1, 2).reshape(shape[0], shape[2], height, width)


def _refuse_token_internals(output: torch.Tensor, model: nn.Module, name: str, input_size: tuple[int, int]) -> None:
    """A 4-D output of a ViT-style model with a whole token axis (class token included) is attention
    internals, (B, heads, tokens, head_dim), not an image: the trial's striped ``attn.k_norm`` maps."""
    prefix, grid = declared_prefix_tokens(model), patch_grid(model, input_size)
    if prefix is None or grid is None or grid[0] * grid[1] <= 1:
        return
    tokens = prefix + grid[0] * grid[1]
    if tokens in tuple(output.shape[1:]):
        raise ValueError(f"layer {name!r} outputs shape {tuple(output.shape)}, which holds all {tokens} tokens on "
                         f"one axis (attention heads x tokens?), not a (B,C,h,w) feature map; {_HOW_TO_FIX}")


def pyramid_to_feature_map(levels: Mapping[str, torch.Tensor], name: str = "") -> torch.Tensor:
    """A dict of (B, C_l, h_l, w_l) levels -> (B, sum C_l, h, w) at the finest level's size (module docstring)."""
    tensors = list(levels.values())
    if not tensors or any(t.ndim != 4 for t in tensors):
        shapes = {k: tuple(v.shape) for k, v in levels.items()}
        raise ValueError(f"layer {name!r} outputs a dict {shapes}; camzoo reads a dict only as a feature pyramid of "
                         f"(B,C,h,w) levels; {_HOW_TO_FIX}")
    size = max((tuple(t.shape[-2:]) for t in tensors), key=lambda hw: hw[0] * hw[1])
    return torch.cat([t if tuple(t.shape[-2:]) == size else
                      F.interpolate(t, size=size, mode="bilinear", align_corners=False) for t in tensors], dim=1)


def to_feature_map(
    output: torch.Tensor | Mapping[str, torch.Tensor],
    model: nn.Module,
    name: str,
    module: nn.Module,
    input_size: tuple[int, int],
    reshape: Reshape | None = None,
) -> torch.Tensor:
    """A layer's output (tokens, NHWC or NCHW) -> (B,C,h,w); the user's ``reshape`` wins when given."""
    if reshape is not None:
        result = reshape(output)  # type: ignore[arg-type]
        if not isinstance(result, torch.Tensor) or result.ndim != 4:
            got = tuple(result.shape) if isinstance(result, torch.Tensor) else type(result).__name__
            raise ValueError(f"reshape= must turn layer {name!r}'s output {tuple(output.shape)} into a "
                             f"(B,C,h,w) tensor; it returned {got}")
        return result
    if isinstance(output, Mapping):
        return pyramid_to_feature_map(output, name)
    if output.ndim == 4:
        _refuse_token_internals(output, model, name, input_size)
        return output.permute(0, 3, 1, 2) if is_channels_last(model, name, module) else output
    if output.ndim == 3:
        return tokens_to_map(output, model, name, input_size)
    raise ValueError(f"layer {name!r} outputs shape {tuple(output.shape)}, not a (B,C,h,w) feature map nor "
                     f"(B,tokens,C) patch tokens; {_HOW_TO_FIX}")


def check_spatial(feature_map: torch.Tensor, name: str, input_size: tuple[int, int]) -> None:
    """Refuse a map with no spatial extent: a 1x1 map upsampled is a constant, or noise, not a location."""
    if feature_map.shape[-2] * feature_map.shape[-1] <= 1:
        raise ValueError(f"layer {name!r} gives a {feature_map.shape[-2]}x{feature_map.shape[-1]} map for a "
                         f"{input_size[0]}x{input_size[1]} input: no spatial extent to explain. Use a larger image "
                         "or an earlier layer (layer=...)")
