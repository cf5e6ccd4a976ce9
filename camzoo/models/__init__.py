"""Trainable explainers (ABN, LFI-CAM), their baseline, a small segmenter and a small detector, on
timm CNNs and CIFAR-style ResNets.

    model = build_model("lfi", "resnet20", num_classes=10)
    logits = model(x)                                   # plain logits
    logits, attention = model.forward_with_attention(x) # abn / lfi: attention (B,1,h,w) in [0,1]
    out = model.forward_train(x); loss = model.loss(out, labels)
    seg = build_model("segmenter", "resnet8", num_classes=7)  # seg(x): (B, 7, H, W) per-pixel logits
    det = build_model("detector", "resnet8", num_classes=7)   # det.eval()(x): [{boxes, labels, scores}] per image

Kinds are an open registry (:mod:`camzoo.models.kinds`); importing this package registers the
built-in ones.
"""

from __future__ import annotations

# registers the built-in kinds in table order: baseline, abn, lfi, segmenter, detector
from . import baseline  # noqa: F401
from . import abn, lfi, segmenter, detector  # noqa: F401
from .abn import ABN
from .backbones import Backbone, build_backbone
from .base import CamModel, ModelOutput
from .baseline import BaselineModel
from .build import build_model
from .checkpoint import load_model, model_checkpoint, read_checkpoint, save_model
from .detector import Detector
from .kinds import get_kind, kind_names, register_kind
from .lfi import LFICAM
from .segmenter import Segmenter

__all__ = [
    "ABN", "LFICAM", "Segmenter", "Detector", "BaselineModel", "CamModel", "ModelOutput", "Backbone", "build_model",
    "build_backbone",
    "get_kind", "kind_names", "load_model", "register_kind", "save_model", "read_checkpoint", "model_checkpoint",
]
