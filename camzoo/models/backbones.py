"""Backbones split into a *trunk* and a *last stage*, the cut that ABN and LFI-CAM both need.

Why this split: ABN inserts its attention between the second-last and the last stage and runs a
stride-1 copy of the last stage; LFI-CAM and the baseline only need ``last_stage(trunk(x))``, the
final feature map before global pooling. Two families are provided:

* CIFAR-style ResNets (``resnet8/14/20/32/44/56/110`` or ``cifar_resnet<6n+2>``): 3x3 stem with
  stride 1, three stages of 16/32/64 channels, as in the CIFAR models of the official ABN and
  LFI-CAM repositories (which follow bearpaw/pytorch-classification). The trunk is stem + layer1 +
  layer2, the last stage is layer3.
* timm CNNs whose ``feature_info`` names modules that run one after another in the model's
  forward (ResNet family, RegNet, EfficientNet/MobileNet, ConvNeXt, DenseNet, ...). The trunk
  ends at the second-last feature level (stride 16), the last stage ends at the last feature
  level (stride 32); timm's own head (pooling, classifier, and any layer after the last feature
  level such as EfficientNet's ``conv_head``) is dropped, the camzoo model adds GAP + Linear.
"""

from __future__ import annotations

import copy
import difflib
import re
from collections import OrderedDict
from collections.abc import Callable

import torch
from torch import nn

from ..modelutil import IMAGENET_MEAN, IMAGENET_STD, eval_mode

# CIFAR-10 channel statistics; a trained model gets its dataset's statistics instead.
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)

CIFAR_DEPTHS = (8, 14, 20, 32, 44, 56, 110)
_CIFAR_NAME = re.compile(r"^(?:cifar_)?resnet(\d+)$")


class Backbone(nn.Module):
    """``forward(x) = last_stage(trunk(x))``: the final feature map (B, num_features, h, w).

    ``make_stride1_last_stage()`` returns a freshly initialised copy of the last stage whose
    strided layers run at stride 1 (ABN's attention branch), ``set_stem_stride1()`` halves the
    output stride (LFI-CAM's official ImageNet setting).
    """

    def __init__(
        self,
        name: str,
        family: str,
        trunk: nn.Module,
        last_stage: nn.Module,
        trunk_channels: int,
        num_features: int,
        pretrained_cfg: dict,
        fresh_last_stage: Callable[[], nn.Module],
    ) -> None:
        super().__init__()
        self.name = name
        self.family = family  # "cifar_resnet" or "timm"
        self.trunk = trunk
        self.last_stage = last_stage
        self.trunk_channels = trunk_channels
        self.num_features = num_features
        self.pretrained_cfg = dict(pretrained_cfg)
        self._fresh_last_stage = fresh_last_stage

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.last_stage(self.trunk(x))

    def make_stride1_last_stage(self) -> nn.Module:
        """A new module with the last stage's architecture at stride 1 (own weights, own init)."""
        stage = self._fresh_last_stage()
        restride(stage)
        return stage

    def _stem_conv(self) -> nn.Conv2d:
        first = next((m for m in self.trunk.modules() if isinstance(m, nn.Conv2d)), None)
        if first is None:
            raise ValueError(f"backbone {self.name!r} has no convolution in its stem")
        return first

    def stem_stride(self) -> int:
        return max(self._stem_conv().stride)

    def set_stem_stride1(self) -> None:
        """Halve the first convolution's stride (2 -> 1 as in LFI-CAM's official ImageNet model;
        ConvNeXt's 4x4 patchify 4 -> 2), so every feature map doubles in size."""
        conv = self._stem_conv()
        stride = max(conv.stride)
        if stride == 1:
            raise ValueError(
                f"backbone {self.name!r} already has a stride-1 stem; stem_stride1=True would "
                "change nothing (it is meant for ImageNet-style stems)"
            )
        new = stride // 2
        conv.stride = (new, new)
        if type(conv).forward is nn.Conv2d.forward and conv.padding_mode == "zeros":
            # keep the output at exactly input / new stride when the kernel allows it
            conv.padding = tuple(max(p, (d * (k - 1) + 1 - new) // 2)
                                 for p, d, k in zip(conv.padding, conv.dilation, conv.kernel_size))


def restride(module: nn.Module) -> nn.Module:
    """Run ``module`` at stride 1, in place: strided convolutions get stride 1 and 'same'
    padding (output size = input size), strided pooling (ResNet-D's average-pool shortcut, VGG/DenseNet pools) becomes
    identity. Why 'same': a kernel-2 patchify convolution (ConvNeXt) at stride 1 with its
    original padding 0 would shrink the map by one pixel."""
    for name, child in list(module.named_children()):
        if isinstance(child, nn.Conv2d) and max(child.stride) > 1:
            child.stride = (1, 1)
            if child.padding_mode == "zeros" and type(child).forward is nn.Conv2d.forward:
                setattr(module, name, _same_padding(child))
        elif isinstance(child, (nn.AvgPool2d, nn.MaxPool2d)) and _stride_of(child) > 1:
            setattr(module, name, nn.Identity())
        else:
            restride(child)
    return module


def _same_padding(conv: nn.Conv2d) -> nn.Module:
    """A stride-1 conv padded to keep the input size; even kernels get PyTorch's 'same' split
    (the extra pixel on the right/bottom) through an explicit pad, which avoids the padded copy
    and the warning that ``padding='same'`` costs for even kernels."""
    total = [d * (k - 1) for d, k in zip(conv.dilation, conv.kernel_size)]
    if all(t % 2 == 0 for t in total):
        conv.padding = tuple(t // 2 for t in total)
        return conv
    conv.padding = (0, 0)
    (th, tw) = total
    return nn.Sequential(nn.ZeroPad2d((tw // 2, tw - tw // 2, th // 2, th - th // 2)), conv)


def _stride_of(pool: nn.Module) -> int:
    stride = pool.stride
    return max(stride) if isinstance(stride, (tuple, list)) else int(stride)


# ----------------------------------------------------------------------------- CIFAR ResNets


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_ch: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        # one activation module per call (parameter-free, so checkpoints are unchanged): Captum's DeepLift
        # hooks each module once and refuses a module called twice
        self.relu1, self.relu2 = nn.ReLU(inplace=True), nn.ReLU(inplace=True)
        self.downsample = _shortcut(in_ch, planes, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + identity)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, in_ch: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        out_ch = planes * self.expansion
        self.conv1 = nn.Conv2d(in_ch, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out_ch, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_ch)
        self.relu1, self.relu2, self.relu3 = (nn.ReLU(inplace=True) for _ in range(3))  # one per call (BasicBlock)
        self.downsample = _shortcut(in_ch, out_ch, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.relu2(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu3(out + identity)


def _shortcut(in_ch: int, out_ch: int, stride: int) -> nn.Module | None:
    # Projection shortcut (1x1 conv + BN) as in the official repos, not He et al.'s zero padding.
    if stride == 1 and in_ch == out_ch:
        return None
    return nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride, bias=False), nn.BatchNorm2d(out_ch))


def _cifar_stage(block: type, in_ch: int, planes: int, n: int, stride: int) -> nn.Sequential:
    blocks = [block(in_ch, planes, stride)]
    blocks += [block(planes * block.expansion, planes) for _ in range(n - 1)]
    return nn.Sequential(*blocks)


def init_like_official(module: nn.Module) -> None:
    """He-normal (fan-out) convolutions, BN weight 1 / bias 0: the official repos' init."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def cifar_depth(name: str) -> int | None:
    """Depth if ``name`` is a CIFAR-style ResNet name, else None."""
    match = _CIFAR_NAME.match(name)
    if match is None:
        return None
    depth = int(match.group(1))
    if name.startswith("cifar_") or depth in CIFAR_DEPTHS:
        return depth
    return None


def cifar_resnet(depth: int, block: str = "basic", name: str | None = None) -> Backbone:
    """CIFAR ResNet of depth 6n+2: stem 16, stages 16/32/64 (x4 for bottlenecks).

    ``block="bottleneck"`` reproduces the official repos' choice for depth >= 44 (bearpaw's
    code switches to bottlenecks there); the default is He et al.'s BasicBlock at every depth.
    """
    if depth < 8 or (depth - 2) % 6 != 0:
        raise ValueError(f"CIFAR ResNet depth must be 6n+2 with n >= 1 (8, 14, 20, ...), got {depth}")
    if block not in ("basic", "bottleneck"):
        raise ValueError(f"block must be 'basic' or 'bottleneck', got {block!r}")
    n = (depth - 2) // 6
    block_cls = BasicBlock if block == "basic" else Bottleneck
    exp = block_cls.expansion
    stem = nn.Sequential(
        OrderedDict(conv1=nn.Conv2d(3, 16, 3, 1, 1, bias=False), bn1=nn.BatchNorm2d(16), relu=nn.ReLU(inplace=True))
    )
    trunk = nn.Sequential(
        OrderedDict(
            stem=stem,
            layer1=_cifar_stage(block_cls, 16, 16, n, 1),
            layer2=_cifar_stage(block_cls, 16 * exp, 32, n, 2),
        )
    )

    def make_layer3(stride: int = 2) -> nn.Module:
        stage = nn.Sequential(OrderedDict(layer3=_cifar_stage(block_cls, 32 * exp, 64, n, stride)))
        init_like_official(stage)
        return stage

    init_like_official(trunk)
    cfg = {"input_size": (3, 32, 32), "mean": CIFAR_MEAN, "std": CIFAR_STD}
    return Backbone(
        name or f"resnet{depth}", "cifar_resnet", trunk, make_layer3(), 32 * exp, 64 * exp, cfg,
        fresh_last_stage=make_layer3,
    )


# ----------------------------------------------------------------------------- timm CNNs


def timm_backbone(name: str, pretrained: bool = False, **timm_kwargs) -> Backbone:
    """Split a timm CNN at its last two feature levels (see the module docstring)."""
    import timm  # heavy import, only when a timm backbone is asked for

    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=6, cutoff=0.75)
        hint = f" Close timm names: {', '.join(close)}." if close else ""
        raise ValueError(
            f"unknown backbone {name!r}: not a CIFAR ResNet ({', '.join(f'resnet{d}' for d in CIFAR_DEPTHS)}) "
            f"and not a timm model.{hint}"
        )

    def create(pretrained_weights: bool) -> nn.Module:
        return timm.create_model(name, pretrained=pretrained_weights, **timm_kwargs)

    model = create(pretrained)
    trunk, last, trunk_ch, out_ch = split_timm_model(name, model)
    cfg = dict(getattr(model, "pretrained_cfg", None) or {})
    pretrained_cfg = {
        "input_size": tuple(cfg.get("input_size", (3, 224, 224))),
        "mean": tuple(cfg.get("mean", IMAGENET_MEAN)),
        "std": tuple(cfg.get("std", IMAGENET_STD)),
    }

    def fresh_last_stage() -> nn.Module:
        # Pretrained: start ABN's branch from the pretrained last stage (fine-tuning). Otherwise
        # a second model gives the branch its own weights drawn with timm's own init scheme.
        if pretrained:
            return copy.deepcopy(last)
        return split_timm_model(name, create(False))[1]

    backbone = Backbone(name, "timm", trunk, last, trunk_ch, out_ch, pretrained_cfg, fresh_last_stage)
    _check_split(backbone)
    return backbone


def split_timm_model(name: str, model: nn.Module) -> tuple[nn.Sequential, nn.Sequential, int, int]:
    """(trunk, last stage, trunk channels, final channels) of a timm model, cut at its last two
    feature levels; both parts share the model's modules."""
    info = getattr(model, "feature_info", None)
    if not isinstance(info, (list, tuple)) or len(info) < 2:
        raise ValueError(
            f"timm model {name!r} has no feature_info with at least two levels, so camzoo cannot "
            "split it into stages; use a CNN such as resnet18, regnetx_002 or efficientnet_b0"
        )
    info = list(info)
    cut_level, end_level = info[-2], info[-1]
    wanted = {cut_level["module"], end_level["module"]}
    flat: list[tuple[str, nn.Module]] = []
    for child_name, child in model.named_children():
        nested = any(w.startswith(child_name + ".") for w in wanted)
        if nested and isinstance(child, nn.Sequential):
            flat += [(f"{child_name}.{n}", m) for n, m in child.named_children()]
        else:
            flat.append((child_name, child))
    names = [n for n, _ in flat]
    missing = [w for w in (cut_level["module"], end_level["module"]) if w not in names]
    if missing:
        raise ValueError(
            f"timm model {name!r}: feature module(s) {missing} are not top-level steps of the "
            "model (nor inside a top-level nn.Sequential), so its forward cannot be split into "
            "a trunk and a last stage"
        )
    cut, end = names.index(cut_level["module"]), names.index(end_level["module"])

    def seq(items: list[tuple[str, nn.Module]]) -> nn.Sequential:
        return nn.Sequential(OrderedDict((n.replace(".", "_"), m) for n, m in items))

    return seq(flat[: cut + 1]), seq(flat[cut + 1 : end + 1]), int(cut_level["num_chs"]), int(end_level["num_chs"])


@torch.no_grad()
def _check_split(backbone: Backbone) -> None:
    """Run the split model once on a small input: a model whose forward is not a plain
    sequence of its children (HRNet, ...) fails here with a clear message, not later in training."""
    size = 64
    x = torch.zeros(1, 3, size, size)
    try:
        with eval_mode(backbone):
            mid = backbone.trunk(x)
            out = backbone.last_stage(mid)
    except Exception as err:
        raise ValueError(
            f"timm model {backbone.name!r} cannot be run as trunk + last stage "
            f"({type(err).__name__}: {err}); its forward is not a sequence of its modules"
        ) from err
    if mid.dim() != 4 or out.dim() != 4:
        raise ValueError(
            f"timm model {backbone.name!r} does not produce (B, C, H, W) feature maps at its feature "
            "levels (a transformer?); camzoo's trainable models need a CNN"
        )
    if mid.shape[1] != backbone.trunk_channels or out.shape[1] != backbone.num_features:
        raise ValueError(
            f"timm model {backbone.name!r}: splitting at its feature levels gives {mid.shape[1]}/"
            f"{out.shape[1]} channels where feature_info says {backbone.trunk_channels}/"
            f"{backbone.num_features}; this model cannot be split into stages"
        )


def build_backbone(name: str, pretrained: bool = False, cifar_block: str = "basic", **timm_kwargs) -> Backbone:
    """A CIFAR ResNet for ``resnet8/14/20/32/44/56/110`` or ``cifar_resnet<d>``, else a timm CNN."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"backbone must be a non-empty string, got {name!r}")
    depth = cifar_depth(name)
    if depth is not None:
        if pretrained:
            raise ValueError(f"no pretrained weights exist for the CIFAR ResNet {name!r}; use pretrained=False")
        if timm_kwargs:
            raise ValueError(f"unexpected options for CIFAR ResNet {name!r}: {sorted(timm_kwargs)}")
        return cifar_resnet(depth, block=cifar_block, name=name)
    return timm_backbone(name, pretrained=pretrained, **timm_kwargs)


def output_stride(backbone: Backbone, image_size: int) -> float:
    """Measured input/feature size ratio (used by docs and tests, not in the hot path)."""
    with torch.no_grad(), eval_mode(backbone):
        out = backbone(torch.zeros(1, 3, image_size, image_size))
    return image_size / out.shape[-1]


__all__ = ["Backbone", "build_backbone", "cifar_resnet", "timm_backbone", "split_timm_model", "restride", "cifar_depth",
           "init_like_official", "output_stride"]
