"""'legrad': LeGrad (Bousselham et al. 2024), the gradient of each transformer block's class score
with respect to that block's own attention probabilities, ReLU'd and averaged.

For block l with output tokens z_l (B,T,D) and attention probabilities A_l (B,heads,T,T), the
block's class score is the model's own head read on the mean of its tokens, s_l = head(norm(mean_T
z_l)) (TorchCAM's rule for torchvision: ``heads(encoder.ln(tokens.mean(1)))``); the map is
``mean_l mean_heads mean_queries ReLU(d s_l[c] / d A_l)``, its prefix keys (class, register tokens)
dropped and the patch keys read row-major as the patch grid.

Where the attention probabilities come from, per family (:func:`find_transformer`):

- **timm** ViT/DeiT/BEiT/EVA-style models (``blocks`` whose ``attn`` has timm's ``fused_attn`` switch
  and an ``attn_drop``): the fused kernel (``F.scaled_dot_product_attention``) never forms the
  probabilities, so the switch is turned off for the call and restored after it, also when it
  raises; the output of ``attn.attn_drop`` (the softmax: dropout is off in eval mode) is read.
- **torchvision** ``VisionTransformer``: its ``nn.MultiheadAttention`` is asked for per-head weights
  (``need_weights=True, average_attn_weights=False``, as TorchCAM does) and its output recomputed
  from them (weights @ V, ``out_proj``): the weights it returns are a view made after their use, so
  no gradient would reach them.

Why the gradients go no further down than needed: s_l depends on A_l only through block l, so each
explained block runs on its input detached (its probabilities a fresh leaf, autograd on from there
to its score, off again after the block). The blocks' graphs are then disjoint, one backward of
sum_l s_l gives every block its own d s_l / d A_l, and nothing below a block's attention, nor any
parameter ``.grad``, is touched.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .base import CAMMethod
from .layers import LayerSpec
from .objectives import targeted_forward
from .registry import register
from .reshape import declared_prefix_tokens, patch_grid

Probe = Callable[[torch.Tensor], torch.Tensor]  # a block's attention probabilities -> the tensor the block goes on with
_REFUSAL = ("method 'legrad' explains vision transformers with global self-attention (timm ViT, DeiT, BEiT, EVA; "
            "torchvision VisionTransformer)")
# nn.MultiheadAttention.forward's arguments after query, key and value, in order
_MHA_OPTIONS = ("key_padding_mask", "need_weights", "attn_mask", "average_attn_weights", "is_causal")
_UNSET = object()


@dataclass(frozen=True)
class Transformer:
    """What LeGrad reads in one model: its blocks (dotted name -> block, in forward order), how to
    hand a block's attention probabilities to a probe (a context manager), and the class score (B,K)
    of a block's tokens (B,T,D)."""

    blocks: dict[str, nn.Module]
    probe_attention: Callable[[nn.Module, Probe], contextlib.AbstractContextManager]
    score: Callable[[torch.Tensor], torch.Tensor]


@contextlib.contextmanager
def _timm_attention(block: nn.Module, probe: Probe) -> Iterator[None]:
    """Unfused attention for the call; ``attn_drop``'s output (the probabilities) goes through ``probe``."""
    attention = block.attn
    saved = attention.__dict__.get("fused_attn", _UNSET)
    handle = attention.attn_drop.register_forward_hook(lambda module, inputs, output: probe(output))
    try:
        attention.fused_attn = False
        yield
    finally:
        handle.remove()
        if saved is _UNSET:
            del attention.fused_attn  # the class's own value shows again
        else:
            attention.fused_attn = saved


@contextlib.contextmanager
def _torchvision_attention(block: nn.Module, probe: Probe) -> Iterator[None]:
    """Per-head weights from ``self_attention``, its output recomputed from what ``probe`` returns."""
    attention: nn.MultiheadAttention = block.self_attention
    asked: dict[str, bool] = {}

    def before(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        kwargs = {**kwargs, **dict(zip(_MHA_OPTIONS, args[3:]))}
        asked["weights"], asked["average"] = kwargs.get("need_weights", True), kwargs.get("average_attn_weights", True)
        return args[:3], {**kwargs, "need_weights": True, "average_attn_weights": False}

    def after(module: nn.MultiheadAttention, args: tuple, kwargs: dict, output: tuple) -> tuple:
        weights = probe(output[1])  # (B, heads, T, S)
        batch, heads, queries, sources = weights.shape
        dim, bias = module.embed_dim, module.in_proj_bias
        values = F.linear(args[2], module.in_proj_weight[2 * dim:], None if bias is None else bias[2 * dim:])
        values = values.reshape(batch, sources, heads, dim // heads).transpose(1, 2)
        mixed = (weights @ values).transpose(1, 2).reshape(batch, queries, dim)
        returned = None if not asked["weights"] else weights.mean(1) if asked["average"] else weights
        return module.out_proj(mixed), returned

    handles = [attention.register_forward_pre_hook(before, with_kwargs=True),
               attention.register_forward_hook(after, with_kwargs=True)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _timm_transformer(model: nn.Module) -> Transformer | None:
    blocks = getattr(model, "blocks", None)
    if not isinstance(blocks, (nn.Sequential, nn.ModuleList)) or not len(blocks) or \
            not isinstance(getattr(model, "patch_embed", None), nn.Module) or \
            not isinstance(getattr(model, "norm", None), nn.Module) or not callable(getattr(model, "forward_head", None)):
        return None
    for block in blocks:
        attention = getattr(block, "attn", None)
        if not isinstance(getattr(attention, "fused_attn", None), bool) or \
                not isinstance(getattr(attention, "attn_drop", None), nn.Module):
            return None

    def score(tokens: torch.Tensor) -> torch.Tensor:
        # every position holds the mean token, so the head's pooling (class token, average, the
        # distilled pair) reads that mean: head(fc_norm(norm(mean)))
        return model.forward_head(model.norm(tokens.mean(dim=1, keepdim=True).expand_as(tokens)))

    return Transformer({f"blocks.{name}": block for name, block in blocks.named_children()}, _timm_attention, score)


def _torchvision_transformer(model: nn.Module) -> Transformer | None:
    if not any(c.__name__ == "VisionTransformer" and c.__module__.startswith("torchvision.") for c in type(model).__mro__):
        return None
    layers = model.encoder.layers
    for name, block in layers.named_children():
        attention = getattr(block, "self_attention", None)
        if not isinstance(attention, nn.MultiheadAttention) or not attention.batch_first or \
                not attention._qkv_same_embed_dim or attention.bias_k is not None or attention.add_zero_attn:
            raise ValueError(f"{_REFUSAL}; block 'encoder.layers.{name}' has no batch-first nn.MultiheadAttention "
                             "with shared Q/K/V projections and no added key tokens")
    return Transformer({f"encoder.layers.{name}": block for name, block in layers.named_children()},
                       _torchvision_attention, lambda tokens: model.heads(model.encoder.ln(tokens.mean(dim=1))))


def find_transformer(model: nn.Module) -> Transformer:
    """The model's :class:`Transformer` (module docstring), or a one-line error saying what to use instead."""
    found = _timm_transformer(model) or _torchvision_transformer(model)
    if found is None:
        raise ValueError(f"{_REFUSAL}; {type(model).__name__} has no such attention blocks. For a CNN use 'gradcam' "
                         "or another CAM method; for a windowed transformer (Swin), 'gradcam' on its default layer")
    return found


@register
class LeGrad(CAMMethod):
    """LeGrad: the positive gradients of each transformer block's class score with respect to its own
    attention probabilities, averaged over heads, queries and blocks (Bousselham et al. 2024).

    ``layer``: transformer blocks by name or module (e.g. ``"blocks.11"`` or a list of them; a module
    inside a block names that block); None: the last ``blocks`` blocks, all by default (the paper
    aggregates over every layer). Vision transformers only; the map lives on the patch grid.
    """

    name = "legrad"
    # not "gradient": it differentiates attention probabilities and needs attention blocks, so a
    # preset's "@family:gradient" (maps of a layer's activations, any CNN) does not pull it in
    family = "attention-gradient"
    cost = "backward"
    uses_gradients = True
    serves_output_targets = False  # a block's score is a class of the model's own head

    @classmethod
    def applies_to(cls, model_class: type) -> bool:
        """Not to camzoo's kinds nor the grid games' wrappers: they declare a CNN feature map as
        their CAM layer (``default_cam_layer``) and have no attention blocks. A loaded model is
        checked when the method is built."""
        return not isinstance(getattr(model_class, "default_cam_layer", None), str)

    def __init__(self, model: nn.Module, layer: LayerSpec = None, batch_size: int | None = None, *,
                 blocks: int | None = None, aug_smooth: bool = False):
        self.transformer = find_transformer(model) if isinstance(model, nn.Module) else None
        super().__init__(model, layer, batch_size, aug_smooth=aug_smooth)
        assert self.transformer is not None
        names = list(self.transformer.blocks)
        if blocks is not None and (isinstance(blocks, bool) or not isinstance(blocks, int) or not 1 <= blocks <= len(names)):
            raise ValueError(f"blocks must be a whole number from 1 to {len(names)} (the last N transformer blocks) or "
                             f"None (all of them); got {blocks!r}")
        if layer is not None and blocks is not None:
            raise ValueError("pass either layer= (transformer blocks by name) or blocks=N (the last N blocks), not both")
        chosen = [self._block_of(name) for name in self.layers] if layer is not None else \
            names[-(blocks or len(names)):]
        self.layers = sorted(set(chosen), key=names.index)
        self.layer = "+".join(self.layers)

    def _block_of(self, name: str) -> str:
        """The transformer block a layer name is or lies in (``blocks.11.norm1`` -> ``blocks.11``)."""
        found = [block for block in self.transformer.blocks if name == block or name.startswith(block + ".")]
        if not found:
            names = list(self.transformer.blocks)
            raise ValueError(f"layer {name!r} is not in a transformer block of {type(self.model).__name__}; LeGrad "
                             f"reads whole blocks ({names[0]} ... {names[-1]}): name them, or pass blocks=N for the last N")
        return found[0]

    @contextlib.contextmanager
    def layer_hooks(self, leaves: dict[str, torch.Tensor], scores: dict[str, torch.Tensor]) -> Iterator[None]:
        """Each explained block: its probabilities become a leaf (autograd on), its score is taken
        from its output, and the next block gets that output detached (autograd off)."""

        def leaf_of(name: str) -> Probe:
            def probe(probabilities: torch.Tensor) -> torch.Tensor:
                torch.set_grad_enabled(True)
                leaves[name] = probabilities.detach().requires_grad_(True)
                return leaves[name].clone()  # not the leaf itself, so in-place ops after it stay legal
            return probe

        def score_of(name: str) -> Callable[..., torch.Tensor]:
            def hook(module: nn.Module, inputs: object, output: object) -> torch.Tensor:
                if not isinstance(output, torch.Tensor) or output.ndim != 3:
                    raise ValueError(f"block {name!r} returns {type(output).__name__}, not (B,tokens,C) tokens")
                scores[name] = self.transformer.score(output)
                torch.set_grad_enabled(False)
                return output.detach()
            return hook

        with contextlib.ExitStack() as stack:
            for name in self.layers:
                block = self.transformer.blocks[name]
                stack.enter_context(self.transformer.probe_attention(block, leaf_of(name)))
                stack.callback(block.register_forward_hook(score_of(name)).remove)
            yield

    def raw_maps(
        self, images: torch.Tensor, targets: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if torch.is_inference_mode_enabled():
            raise RuntimeError("legrad cannot run inside torch.inference_mode(), which forbids autograd everywhere; "
                               "call explain outside it (inside torch.no_grad() is fine)")
        leaves: dict[str, torch.Tensor] = {}
        scores: dict[str, torch.Tensor] = {}
        grad_was_enabled = torch.is_grad_enabled()
        with self.layer_hooks(leaves, scores):
            try:
                torch.set_grad_enabled(False)  # each explained block's attention switches it on, its end off
                result = targeted_forward(self.model, images, targets)
            finally:
                torch.set_grad_enabled(grad_was_enabled)
        missing = [name for name in self.layers if name not in leaves or name not in scores]
        if missing:
            raise RuntimeError(f"block {missing[0]!r} did not compute its attention probabilities in the forward pass "
                               "(a fused or custom attention kernel?); legrad cannot read them")
        logits = result.logits.detach()
        for name in self.layers:
            if scores[name].shape != logits.shape:
                raise ValueError(f"the model's head gives {tuple(scores[name].shape)} for block {name!r}'s tokens, but "
                                 f"the model returns {tuple(logits.shape)} logits; legrad needs a classifier whose "
                                 "logits are its head's")
        with torch.enable_grad():
            total = sum(scores[name].float().gather(1, result.chosen[:, None]).sum() for name in self.layers)
            gradients = torch.autograd.grad(total, [leaves[name] for name in self.layers])
        return logits, result.chosen, self._patch_map(torch.stack(gradients).float(), images)

    def _patch_map(self, gradients: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        """(L,B,heads,T,T) gradients -> the (B,h,w) map: ReLU, mean over heads, queries and blocks,
        prefix keys dropped, patch keys on the grid."""
        size = (int(images.shape[-2]), int(images.shape[-1]))
        grid = patch_grid(self.model, size)
        prefix = declared_prefix_tokens(self.model) or 0
        tokens = gradients.shape[-1]
        if grid is None or gradients.ndim != 5 or gradients.shape[-2] != tokens or tokens != prefix + grid[0] * grid[1]:
            raise ValueError(f"attention probabilities of shape {tuple(gradients.shape[1:])} do not match {prefix} prefix "
                             f"tokens + a {grid} patch grid for a {size[0]}x{size[1]} input; legrad cannot place them")
        relevance = gradients.clamp_min(0).mean(dim=(2, 3)).mean(dim=0)[:, prefix:]
        return relevance.reshape(relevance.shape[0], *grid)
