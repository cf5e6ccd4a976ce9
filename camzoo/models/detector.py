"""A small one-level FCOS detector on any camzoo backbone, to explain detected boxes with ground truth.

Why FCOS: it is anchor-free (one point per feature-map position, no anchor shapes to tune for 7-25 px
objects), its loss (focal classification, GIoU boxes, centerness) trains from scratch in tens of
seconds on a CPU, and it is torchvision's own: :class:`torchvision.models.detection.FCOS`'s target
assignment, loss and post-processing run here unchanged (borrowed as methods: this module has every
attribute they read). Only one feature level is used, the backbone's final map (stride 4 on a CIFAR
ResNet), so FCOS's scale ranges reduce to "every object on the one level".

Data flow: images (already normalised with the dataset's mean/std, like every camzoo model's input)
-> ``transform`` (torchvision's GeneralizedRCNNTransform with mean 0, std 1 and min = max size = the
model's image size: the identity at that size, so boxes are in input pixels) -> ``backbone`` ->
``cam_hook`` (the default CAM layer: the backbone's final map, a tensor) -> optional 1x1 ``neck`` to
the head's width -> FCOSHead -> in eval mode torchvision's list of dicts ``boxes`` (x0, y0, x1, y1),
``labels`` (0 is background and never predicted; dataset class c is label c + 1) and ``scores``.
Scores are differentiable down to the backbone (sqrt(sigmoid(class logit) * sigmoid(centerness))),
so Grad-CAM with ``camzoo.targets.BoxTarget`` reaches ``cam_hook``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
from torch import nn
from torchvision.models.detection import FCOS
from torchvision.models.detection import _utils as det_utils
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.fcos import FCOSHead
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.transform import GeneralizedRCNNTransform, resize_boxes

from ..modelutil import eval_mode
from .backbones import Backbone
from .base import CamModel
from .kinds import register_kind

GROUPS = 32  # FCOSHead normalises with GroupNorm(32, width): the head's width is a multiple of 32
MAX_DEFAULT_HEAD_WIDTH = 256  # FCOS's FPN width; wider backbones get a 1x1 projection to 128
DEFAULTS = {"head_convs": 1, "box_score_thresh": 0.05, "box_nms_thresh": 0.6, "detections_per_img": 20}


class DetectionOutput(NamedTuple):
    """One forward pass before post-processing: what the loss and the detections are made from."""

    logits: torch.Tensor  # (B, N, K) class logits per point (column 0: background, never a positive)
    box_regression: torch.Tensor  # (B, N, 4) FCOS's left/top/right/bottom distances, in units of the stride
    centerness: torch.Tensor  # (B, N, 1) centerness logits
    anchors: list[torch.Tensor]  # per image (N, 4): one stride-sized box per point
    image_sizes: list[tuple[int, int]]  # after the transform
    original_sizes: list[tuple[int, int]]  # of the input


@register_kind
class Detector(CamModel):
    """Backbone -> ``cam_hook`` -> [1x1 neck] -> FCOS head on one level -> boxes, labels, scores."""

    kind = "detector"
    task = "detection"
    options = ("head_width", "head_convs", "box_score_thresh", "box_nms_thresh", "detections_per_img")
    produces_attention = False

    # torchvision FCOS's own target assignment and post-processing (they read center_sampling_radius,
    # head, box_coder, score_thresh, topk_candidates, nms_thresh and detections_per_img)
    compute_loss = FCOS.compute_loss
    postprocess_detections = FCOS.postprocess_detections

    @classmethod
    def kind_kwargs(cls, options: dict[str, Any], backbone: Backbone) -> dict[str, Any]:
        """``head_width`` (default: the backbone's channels if a multiple of 32 up to 256, else 128),
        ``head_convs`` (3x3 conv + GroupNorm + ReLU blocks per branch, default 1; FCOS's is 4),
        ``box_score_thresh`` (0.05), ``box_nms_thresh`` (0.6), ``detections_per_img`` (20)."""
        channels = backbone.num_features
        width = options.get("head_width")
        if width is None:
            width = channels if channels % GROUPS == 0 and channels <= MAX_DEFAULT_HEAD_WIDTH else 128
        if isinstance(width, bool) or not isinstance(width, int) or width < GROUPS or width % GROUPS:
            raise ValueError(f"head_width must be a positive multiple of {GROUPS} (the head's GroupNorm has {GROUPS} "
                             f"groups), got {width!r}")
        kwargs: dict[str, Any] = {"head_width": width, **{k: options.get(k, v) for k, v in DEFAULTS.items()}}
        for key in ("head_convs", "detections_per_img"):
            value = kwargs[key]
            if isinstance(value, bool) or not isinstance(value, int) or value < (0 if key == "head_convs" else 1):
                raise ValueError(f"{key} must be an integer >= {0 if key == 'head_convs' else 1}, got {value!r}")
        for key in ("box_score_thresh", "box_nms_thresh"):
            value = kwargs[key]
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
                raise ValueError(f"{key} must be a number in [0, 1], got {value!r}")
            kwargs[key] = float(value)
        return kwargs

    @classmethod
    def default_stem_stride1(cls, backbone: Backbone) -> bool:
        """As the segmenter: timm backbones end at stride 32 (2x2 at 64 px); a stride-1 stem halves that."""
        return backbone.family != "cifar_resnet" and backbone.stem_stride() > 1

    def __init__(self, backbone: Backbone, num_classes: int, config: dict, pretrained_cfg: dict,
                 class_names: list[str] | None = None, *, head_width: int = 64, head_convs: int = 1,
                 box_score_thresh: float = 0.05, box_nms_thresh: float = 0.6, detections_per_img: int = 20) -> None:
        super().__init__(backbone, num_classes, config, pretrained_cfg, class_names)
        del self.fc  # no global pooling: the head scores every position
        stride = _output_stride(backbone)
        size = int(self.pretrained_cfg["input_size"][-1])
        self.transform = GeneralizedRCNNTransform(size, size, [0.0] * 3, [1.0] * 3, size_divisible=stride)
        channels = backbone.num_features
        self.neck = nn.Identity() if head_width == channels else nn.Conv2d(channels, head_width, 1)
        self.head = FCOSHead(head_width, 1, num_classes, num_convs=head_convs)
        self.anchor_generator = AnchorGenerator(((stride,),), ((1.0,),))  # FCOS: one stride-sized point per cell
        self.box_coder = det_utils.BoxLinearCoder(normalize_by_size=True)
        self.center_sampling_radius = 1.5
        self.score_thresh, self.nms_thresh = box_score_thresh, box_nms_thresh
        self.detections_per_img, self.topk_candidates = detections_per_img, 1000

    def forward(self, x: torch.Tensor, targets: Sequence[dict[str, torch.Tensor]] | None = None) -> Any:
        """Detections (a list of dicts ``boxes``, ``labels``, ``scores``, one per image); with
        ``targets`` in train mode, torchvision's dict of losses (classification, bbox_regression,
        bbox_ctrness), as a torchvision detector returns them."""
        out = self.forward_train(x)
        if self.training and targets is not None:
            return self.losses(out, targets)
        return self.detections(out)

    def forward_train(self, x: torch.Tensor) -> DetectionOutput:
        """The head's outputs on every point of the final feature map, and the points."""
        self.check_input(x)
        original_sizes = [(int(x.shape[-2]), int(x.shape[-1]))] * x.shape[0]
        images = self._batch(x)
        features = self.neck(self.cam_hook(self.backbone(images.tensors)))
        head = self.head([features])
        anchors = self.anchor_generator(images, [features])
        return DetectionOutput(head["cls_logits"], head["bbox_regression"], head["bbox_ctrness"], anchors,
                               images.image_sizes, original_sizes)

    def _batch(self, x: torch.Tensor) -> ImageList:
        """``transform``'s batch of ``x``. At the model's own size (a multiple of the stride) the transform
        is the identity (mean 0, std 1, resize by 1, no padding), so ``x`` is taken as it is: no per-image
        copies, and its memory layout (channels_last in training) is kept."""
        size, divisible = self.transform.min_size[-1], self.transform.size_divisible
        if x.shape[-2] == x.shape[-1] == size and size % divisible == 0:
            return ImageList(x, [(size, size)] * x.shape[0])
        images, _ = self.transform(x)
        tensors = images.tensors
        if x.is_contiguous(memory_format=torch.channels_last):  # the transform's batching drops the layout
            tensors = tensors.contiguous(memory_format=torch.channels_last)
        return ImageList(tensors, images.image_sizes)

    def losses(self, output: DetectionOutput, targets: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """FCOS's three losses, each normalised by the number of positive points. ``targets``: one dict
        per image with ``boxes`` (G, 4) x0, y0, x1, y1 in input pixels and ``labels`` (G,) in 1..K-1."""
        if len(targets) != len(output.anchors):
            raise ValueError(f"the detector got {len(targets)} targets for {len(output.anchors)} images; give one "
                             "dict with boxes and labels per image")
        scaled = [t if size == original else {**t, "boxes": resize_boxes(t["boxes"], original, size)}
                  for t, size, original in zip(targets, output.image_sizes, output.original_sizes)]
        # float32: under autocast the box decoding and GIoU would run in half precision
        head = {"cls_logits": output.logits.float(), "bbox_regression": output.box_regression.float(),
                "bbox_ctrness": output.centerness.float()}
        return self.compute_loss(scaled, head, output.anchors, [output.logits.shape[1]])

    def loss(self, output: DetectionOutput, labels: Sequence[dict[str, torch.Tensor]]) -> torch.Tensor:
        """The training objective: the sum of :meth:`losses` (``labels`` are the per-image target dicts)."""
        return sum(self.losses(output, labels).values())

    def detections(self, output: DetectionOutput) -> list[dict[str, torch.Tensor]]:
        """torchvision's post-processing (score threshold, top-k, per-class NMS, the best
        ``detections_per_img``) over the object classes only: background is never detected."""
        head = {"cls_logits": [output.logits[..., 1:].float()], "bbox_regression": [output.box_regression.float()],
                "bbox_ctrness": [output.centerness.float()]}
        found = self.postprocess_detections(head, [[a] for a in output.anchors], output.image_sizes)
        for detection in found:
            detection["labels"] = detection["labels"] + 1
        return self.transform.postprocess(found, output.image_sizes, output.original_sizes)


def _output_stride(backbone: Backbone) -> int:
    """The backbone's output stride, from one 64 px probe (BatchNorm statistics untouched)."""
    with eval_mode(backbone), torch.no_grad():
        features = backbone(torch.zeros(1, 3, 64, 64))
    return max(1, 64 // int(features.shape[-1]))
