"""torchvision architectures by name, built offline: classifiers, segmenters and detectors.

Why a module of its own: torchvision's segmentation and detection builders download an ImageNet
backbone unless told not to, hide their class count in a family-specific head (Faster R-CNN's last
Linear is the box regressor, with 4x the rows), and take images differently (detectors want [0, 1]
pixels and normalise inside). This module knows those rules so that ``load_any_model`` can build
``torchvision:NAME`` with ``weights=None, weights_backbone=None``, read the class count from a
checkpoint, and mark the model with its ``task`` and ``pretrained_cfg`` for the core and the CLI.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping
from typing import Any

from torch import nn

from ..modelutil import IMAGENET_MEAN, IMAGENET_STD, torchvision_input_size

PREFIX = "torchvision:"
CLASSIFIER_INPUT_SIZE = (3, 224, 224)  # torchvision classifiers do not record theirs; ImageNet ones use 224

# family prefix -> (task, the class-score weight, the box-regression weight whose rows are 4 x anchors
# per location, or None). Anchor-based heads (RetinaNet, SSDlite; FCOS with one "anchor") have
# anchors x classes score rows, so classes = score rows / (regression rows / 4).
FAMILIES: dict[str, tuple[str, str, str | None]] = {
    "fcn_": ("segmentation", "classifier.4.weight", None),
    "deeplabv3_": ("segmentation", "classifier.4.weight", None),
    "lraspp_": ("segmentation", "classifier.high_classifier.weight", None),
    "fasterrcnn_": ("detection", "roi_heads.box_predictor.cls_score.weight", None),
    "retinanet_": ("detection", "head.classification_head.cls_logits.weight", "head.regression_head.bbox_reg.weight"),
    "fcos_": ("detection", "head.classification_head.cls_logits.weight", "head.regression_head.bbox_reg.weight"),
    "ssdlite": ("detection", "head.classification_head.module_list.0.1.weight",
                "head.regression_head.module_list.0.1.weight"),
}
SUPPORTED = "the segmentation families fcn_*, deeplabv3_*, lraspp_* and the detection families fasterrcnn_*, " \
            "retinanet_*, fcos_*, ssdlite*"
AUX_FAMILIES = ("fcn_", "deeplabv3_")  # segmenters with an optional auxiliary head (aux_loss=True)
DETECTOR_MEAN, DETECTOR_STD = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)  # detectors take [0, 1] pixels, normalise inside


class UnknownArchitecture(ValueError):
    """``torchvision:NAME`` names no model camzoo can build (the message lists what it can)."""


class UnknownOption(ValueError):
    """A model option the builder would silently ignore (torchvision's segmentation builders drop
    unknown keywords, and its detectors pass them to a transform that drops them too)."""


def family(arch: str) -> str | None:
    """The segmentation / detection family prefix of ``arch`` (e.g. "fasterrcnn_"); None otherwise."""
    return next((prefix for prefix in FAMILIES if arch.startswith(prefix)), None)


def task_of(arch: str) -> str:
    """"classification", "segmentation" or "detection" for a supported torchvision name."""
    prefix = family(arch)
    return FAMILIES[prefix][0] if prefix else "classification"


def check_arch(arch: str) -> None:
    """Raise :class:`UnknownArchitecture` unless ``arch`` is a torchvision classifier or a model of a
    supported segmentation / detection family; other torchvision models (Mask R-CNN, Keypoint
    R-CNN, RAFT, video models...) are named as unsupported rather than unknown."""
    import torchvision

    classifiers = torchvision.models.list_models(module=torchvision.models)
    tasks = [n for m in (torchvision.models.segmentation, torchvision.models.detection)
             for n in torchvision.models.list_models(module=m) if family(n)]
    if arch in classifiers or arch in tasks:
        return
    if arch in torchvision.models.list_models():
        raise UnknownArchitecture(f"torchvision model {arch!r} is not supported; camzoo builds torchvision "
                                  f"classification models and {SUPPORTED}")
    close = difflib.get_close_matches(arch, classifiers + tasks, n=5)
    hint = f" Similar names: {', '.join(PREFIX + c for c in close)}." if close else ""
    raise UnknownArchitecture(f"{arch!r} is not a torchvision classification model.{hint} camzoo also builds {SUPPORTED}.")


_DETECTOR_CLASSES = {"fasterrcnn_": ("faster_rcnn", "FasterRCNN"), "retinanet_": ("retinanet", "RetinaNet"),
                     "fcos_": ("fcos", "FCOS"), "ssdlite": ("ssd", "SSD")}


def check_options(arch: str, kwargs: Mapping[str, Any]) -> None:
    """Raise :class:`UnknownOption` for a keyword that neither ``arch``'s builder nor its model class
    takes: torchvision would ignore it, so a typo (``box_score_tresh``) would silently keep the default."""
    import importlib
    import inspect

    import torchvision

    prefix = family(arch)
    if prefix is None:
        return
    callables = [torchvision.models.get_model_builder(arch)]
    if prefix in _DETECTOR_CLASSES:
        module, name = _DETECTOR_CLASSES[prefix]
        callables.append(getattr(importlib.import_module(f"torchvision.models.detection.{module}"), name))
    taken = {n for c in callables for n, p in inspect.signature(c).parameters.items()
             if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}
    if FAMILIES[prefix][0] == "segmentation":
        taken.add("aux_loss")  # the LR-ASPP builder reads it from its **kwargs (to refuse it)
    taken -= {"weights", "progress", "weights_backbone", "backbone", "self"}
    for key in kwargs:
        if key not in taken:
            close = difflib.get_close_matches(key, taken, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise UnknownOption(f"torchvision {arch!r} takes no option {key!r}{hint}; it takes "
                                f"{', '.join(sorted(taken))}")


def head_classes(arch: str, state: Mapping[str, Any]) -> int | None:
    """The class count a segmenter's or detector's state_dict was trained for (None: not found).

    For detectors it counts the background class, as torchvision's ``num_classes`` does."""
    prefix = family(arch)
    if prefix is None:
        return None
    _, score_key, box_key = FAMILIES[prefix]
    score = state.get(score_key)
    if not hasattr(score, "shape") or len(score.shape) < 1:
        return None
    rows = int(score.shape[0])
    if box_key is None:
        return rows
    box = state.get(box_key)
    if not hasattr(box, "shape") or len(box.shape) < 1 or int(box.shape[0]) % 4:
        return None
    anchors = int(box.shape[0]) // 4
    return rows // anchors if anchors and rows % anchors == 0 else None


def implied_kwargs(arch: str, state: Mapping[str, Any], kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """Builder options a checkpoint implies: ``aux_loss=True`` for an FCN / DeepLabV3 whose weights
    hold an auxiliary head (torchvision's reference training saves one), unless the user said."""
    if arch.startswith(AUX_FAMILIES) and "aux_loss" not in kwargs and any(k.startswith("aux_classifier.") for k in state):
        return {"aux_loss": True}
    return {}


def _mark(model: nn.Module, arch: str, num_classes: int | None) -> nn.Module:
    """Set ``task``, ``num_classes`` and ``pretrained_cfg`` (what the core and the CLI read)."""
    task = task_of(arch)
    if task == "classification":
        count = num_classes or 1000
        side = torchvision_input_size(model) or CLASSIFIER_INPUT_SIZE[1:]  # camzoo.explain's rule for the same class
        model.pretrained_cfg = {"input_size": (3, *side), "mean": IMAGENET_MEAN, "std": IMAGENET_STD,
                                "num_classes": count}
        model.num_classes = count
        return model
    count = head_classes(arch, model.state_dict()) or num_classes
    # no input_size: these models are fully convolutional (detectors also resize inside, to min_size /
    # max_size), so each image may be explained at its own size
    mean, std = (IMAGENET_MEAN, IMAGENET_STD) if task == "segmentation" else (DETECTOR_MEAN, DETECTOR_STD)
    model.pretrained_cfg = {"mean": mean, "std": std, "num_classes": count}
    model.num_classes = count
    model.task = task
    return model


def factory(arch: str, kwargs: Mapping[str, Any]) -> tuple[str, Callable[..., nn.Module]]:
    """(description for messages, ``build(num_classes=None, in_chans=None, **implied)``) for
    ``torchvision:arch``; ``build.read_state(state) -> (num_classes, implied kwargs)`` for a
    segmenter or detector. Raises :class:`UnknownArchitecture` or :class:`UnknownOption`."""
    check_arch(arch)
    check_options(arch, kwargs)
    kwargs = dict(kwargs)
    task = task_of(arch)

    def build_torchvision(num_classes: int | None = None, in_chans: int | None = None, **implied: Any) -> nn.Module:
        import torchvision

        offline = {"weights": None} if task == "classification" else {"weights": None, "weights_backbone": None}
        model = torchvision.models.get_model(arch, **offline, **kwargs, **implied,
                                             **({} if num_classes is None else {"num_classes": num_classes}))
        return _mark(model, arch, num_classes)

    if task != "classification":
        build_torchvision.read_state = lambda state: (  # type: ignore[attr-defined]
            head_classes(arch, state), implied_kwargs(arch, state, kwargs))
    return f"torchvision {'' if task == 'classification' else task + ' '}model {arch!r}", build_torchvision
