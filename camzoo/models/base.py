"""What every camzoo model shares: the output record, the GAP + Linear head, the CAM hook point.

Why one base class: the trainer, the checkpoint code and the CAM methods treat baseline, ABN
and LFI-CAM alike — ``model(x)`` gives plain logits, ``forward_train(x)`` gives everything the
loss needs, ``loss(output, labels)`` knows the kind's own objective.
"""

from __future__ import annotations

from typing import Any, ClassVar, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from .backbones import Backbone


class ModelOutput(NamedTuple):
    """All outputs of one forward pass. Only ``logits`` is always set."""

    logits: torch.Tensor  # (B, K): the prediction (ABN: perception branch); a segmenter's (B, K, H, W)
    attention: torch.Tensor | None = None  # (B, 1, h, w) in [0, 1] for abn / lfi
    aux_logits: torch.Tensor | None = None  # (B, K): ABN's attention-branch logits
    channel_weights: torch.Tensor | None = None  # (B, C): LFI-CAM's FIN softmax weights


class CamModel(nn.Module):
    """Backbone features -> (kind-specific attention) -> ``cam_hook`` -> GAP -> Linear."""

    kind: ClassVar[str] = "base"  # the registry name (camzoo.models.kinds)
    kind_aliases: ClassVar[tuple[str, ...]] = ()  # names this kind was registered under before (old stores)
    options: ClassVar[tuple[str, ...]] = ()  # build options of this kind beyond build_model's common ones
    produces_attention: ClassVar[bool] = False  # True: forward_with_attention gives the model's own map
    #: what the model predicts: "classification" (B, K) logits per image, "segmentation" (B, K, H, W)
    #: per pixel, or "detection" (torchvision's boxes, labels, scores per image). The trainer picks its
    #: labels and accuracy by it, camzoo.inference its metrics, and the benchmark pairs kinds with
    #: datasets by it.
    task: ClassVar[str] = "classification"
    #: dotted name of the module whose output is the final feature map feeding global pooling
    #: (after the attention mechanism); Grad-CAM / Eigen-CAM use it as their default layer.
    default_cam_layer: str = "cam_hook"

    def __init__(self, backbone: Backbone, num_classes: int, config: dict, pretrained_cfg: dict,
                 class_names: list[str] | None = None) -> None:
        super().__init__()
        self.backbone = backbone
        self.cam_hook = nn.Identity()
        self.fc = nn.Linear(backbone.num_features, num_classes)
        self.num_classes = num_classes
        self.config = config  # what build_model needs to rebuild this exact architecture
        self.pretrained_cfg = dict(pretrained_cfg)
        self.class_names = list(class_names) if class_names is not None else None

    # -- what a kind says about building it ---------------------------------------------------
    @classmethod
    def kind_kwargs(cls, options: dict[str, Any], backbone: Backbone) -> dict[str, Any]:
        """Constructor arguments from this kind's build ``options`` (validated, defaults filled in);
        they are recorded in the checkpoint's config, so a loaded model is built identically."""
        return {}

    @classmethod
    def default_stem_stride1(cls, backbone: Backbone) -> bool:
        """Whether to halve the stem's stride when the user does not say (``stem_stride1=None``)."""
        return False

    # -- the public forward passes ---------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Plain logits (B, num_classes), in train and eval mode alike."""
        return self.forward_train(x).logits

    def forward_train(self, x: torch.Tensor) -> ModelOutput:  # pragma: no cover - abstract
        raise NotImplementedError

    def loss(self, output: ModelOutput, labels: torch.Tensor) -> torch.Tensor:
        """The kind's training objective: one cross-entropy on the logits (per pixel for (B, K, H, W)
        logits and (B, H, W) labels)."""
        return F.cross_entropy(output.logits, labels)

    # -- shared pieces ---------------------------------------------------------------------
    def classify(self, features: torch.Tensor) -> torch.Tensor:
        """``cam_hook`` -> global average pooling -> Linear."""
        return self.fc(self.cam_hook(features).mean(dim=(2, 3)))

    def check_input(self, x: torch.Tensor) -> None:
        # Shape checks only: no device sync in the hot path.
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{type(self).__name__} expects a tensor (B, 3, H, W), got {type(x).__name__}")
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(
                f"{type(self).__name__} expects images of shape (B, 3, H, W), got {tuple(x.shape)}; "
                "add a batch dimension with x.unsqueeze(0) for a single image"
            )

    def extra_repr(self) -> str:
        return f"kind={self.kind!r}, backbone={self.backbone.name!r}, num_classes={self.num_classes}"

