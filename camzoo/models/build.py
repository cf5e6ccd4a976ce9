"""``build_model``: a camzoo model of any registered kind on a CIFAR ResNet or a timm CNN."""

from __future__ import annotations

from collections.abc import Sequence

from .backbones import build_backbone
from .base import CamModel
from .kinds import get_kind

COMMON_OPTIONS = ("pretrained", "class_names", "image_size", "mean", "std", "cifar_block", "stem_stride1", "timm_kwargs")


def build_model(kind: str, backbone: str, num_classes: int, **options) -> CamModel:
    """Build a camzoo model.

    Args:
        kind: a registered kind (``camzoo.models.kind_names()``: "baseline" | "abn" | "lfi" | "segmenter" |
            "detector").
        backbone: a CIFAR ResNet (resnet8/14/20/32/44/56/110, cifar_resnet<6n+2>) or a timm CNN name
            (resnet18/34/50, regnetx_002, efficientnet_b0, ...).
        num_classes: number of classes, an int >= 2 (a segmenter's and a detector's include background as class 0).
        **options: Options (all kinds): ``pretrained`` (False; True downloads timm weights, never done by
            camzoo itself), ``class_names`` (num_classes names), ``image_size`` (an int >= 8) / ``mean``
            / ``std`` (3 values each, std > 0; preprocessing recorded in ``model.pretrained_cfg``),
            ``cifar_block`` ("basic" | "bottleneck"), ``stem_stride1`` (halve the stem convolution's
            stride; default: the kind's ``default_stem_stride1`` — True for LFI-CAM on timm backbones
            with a strided stem, as the official ImageNet code; False otherwise), ``timm_kwargs`` (dict
            passed to ``timm.create_model``). Kind options: each kind's ``options`` (LFI-CAM:
            ``fin_width``, default C, the paper's; ``fin_variant`` "imagenet" | "cifar", default "cifar"
            on CIFAR ResNets, as in the official code); segmenter: ``head_width`` (channels of the head's
            3x3 conv, default min(C, 256); 0: a 1x1 conv only); detector: ``head_width``, ``head_convs``,
            ``box_score_thresh``, ``box_nms_thresh``, ``detections_per_img`` (``camzoo.models.detector``).

    Returns:
        A new model of the kind's class (a ``CamModel``); ``model.config`` records what ``build_model``
        needs to rebuild this exact architecture, ``model.pretrained_cfg`` its input size, mean and std.

    Raises:
        ValueError: an unknown kind or option; ``num_classes`` not an int >= 2; ``class_names`` of the
            wrong length; a bad ``image_size``, ``mean`` or ``std``; ``pretrained`` or ``timm_kwargs``
            with a CIFAR ResNet; an empty backbone name.
    """
    model_class = get_kind(kind)
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}")
    allowed = COMMON_OPTIONS + tuple(model_class.options)
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ValueError(f"unknown option(s) {unknown} for kind {kind!r}; valid options: {', '.join(allowed)}")

    pretrained = bool(options.get("pretrained", False))
    class_names = _check_class_names(options.get("class_names"), num_classes)
    timm_kwargs = dict(options.get("timm_kwargs") or {})
    cifar_block = options.get("cifar_block", "basic")
    net = build_backbone(backbone, pretrained=pretrained, cifar_block=cifar_block, **timm_kwargs)

    is_cifar = net.family == "cifar_resnet"
    stem_stride1 = options.get("stem_stride1")
    if stem_stride1 is None:
        stem_stride1 = model_class.default_stem_stride1(net)
    if stem_stride1:
        net.set_stem_stride1()

    pretrained_cfg = _pretrained_cfg(net.pretrained_cfg, options, num_classes)
    kind_kwargs = model_class.kind_kwargs(options, net)
    config = {
        "kind": kind,
        "backbone": backbone,
        "num_classes": num_classes,
        "options": {
            "class_names": class_names,
            "image_size": pretrained_cfg["input_size"][-1],
            "mean": list(pretrained_cfg["mean"]),
            "std": list(pretrained_cfg["std"]),
            "stem_stride1": bool(stem_stride1),
            **({"cifar_block": cifar_block} if is_cifar else {}),
            **({"timm_kwargs": timm_kwargs} if timm_kwargs else {}),
            **kind_kwargs,
        },
    }
    return model_class(net, num_classes, config, pretrained_cfg, class_names, **kind_kwargs)


def _check_class_names(names: Sequence[str] | None, num_classes: int) -> list[str] | None:
    if names is None:
        return None
    names = [str(n) for n in names]
    if len(names) != num_classes:
        raise ValueError(f"class_names has {len(names)} entries but num_classes is {num_classes}")
    return names


def _pretrained_cfg(base: dict, options: dict, num_classes: int) -> dict:
    size = options.get("image_size")
    if size is None:
        input_size = tuple(base["input_size"])
    else:
        if isinstance(size, bool) or not isinstance(size, int) or size < 8:
            raise ValueError(f"image_size must be an integer >= 8, got {size!r}")
        input_size = (3, size, size)
    stats = {}
    for key in ("mean", "std"):
        value = options.get(key)
        value = tuple(float(v) for v in (base[key] if value is None else value))
        if len(value) != 3:
            raise ValueError(f"{key} must have 3 values (one per RGB channel), got {value}")
        if key == "std" and min(value) <= 0:
            raise ValueError(f"std must be positive, got {value}")
        stats[key] = value
    return {"input_size": input_size, **stats, "num_classes": num_classes}
