"""'attention': the map a trainable explainer (ABN, LFI-CAM) computes in its own forward pass."""

from __future__ import annotations

import torch

from .base import CAMMethod, select_targets
from .registry import register


@register
class AttentionMap(CAMMethod):
    """Reads ``model.forward_with_attention(x) -> (logits, attention (B,1,h,w))``; no hooks, no gradients."""

    name = "attention"
    family = "attention"
    cost = "forward"
    paper = "ABN: Fukui et al., CVPR 2019; LFI-CAM: Lee et al., ICCV 2021"
    # the raw map is the model's own attention in [0,1] (ABN: a sigmoid; LFI-CAM: min-max), a fixed
    # scale the LFI-CAM script quantises as it is (metrics.lfi_script_maps)
    raw_unit_scale = True

    @classmethod
    def applies_to(cls, model_class: type) -> bool:
        """Only to kinds whose forward pass produces their own map (ABN, LFI-CAM)."""
        return bool(getattr(model_class, "produces_attention", False))

    serves_output_targets = False  # the model's own map is of its predicted class, not of a region or box

    def __init__(self, model: torch.nn.Module, layer: object = None, batch_size: int | None = None):
        if layer is not None:
            raise ValueError("method 'attention' reads the model's own map and takes no layer; drop layer=...")
        if not callable(getattr(model, "forward_with_attention", None)):
            raise ValueError(
                f"method 'attention' needs a trainable explainer built by camzoo.build_model('abn' or 'lfi', ...); "
                f"{type(model).__name__} has no forward_with_attention. Use 'gradcam' or 'eigencam' instead."
            )
        super().__init__(model, None, batch_size)

    def raw_maps(
        self, images: torch.Tensor, targets: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            logits, attention = self.model.forward_with_attention(images)
        if attention.ndim != 4 or attention.shape[1] != 1:
            raise ValueError(f"forward_with_attention returned a map of shape {tuple(attention.shape)}; expected (B,1,h,w)")
        return logits, select_targets(targets, logits), attention[:, 0].float()
