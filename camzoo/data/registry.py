"""Dataset names -> loaders, so the CLI, the benchmark and users share one list."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from collections.abc import Callable

from ..registry import Registry
from .base import ArrayDataset, CamzooDataset
from .errors import DatasetError
from .shortcuts import KINDS as SHORTCUTS, plant_shortcut


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    summary: str
    layout: str                    # what root must hold (empty for generated datasets)
    splits: tuple[str, ...]
    annotations: tuple[str, ...]   # what targets may hold
    build: Callable[..., CamzooDataset]
    needs_root: bool = True


def _shapes(split: str, root: Any, image_size: Any, **options: Any) -> CamzooDataset:
    from .shapes import load_shapes

    return load_shapes(split, root=root, image_size=image_size, **options)


def _scenes(split: str, root: Any, image_size: Any, **options: Any) -> CamzooDataset:
    from .scenes import load_scenes

    return load_scenes(split, root=root, image_size=image_size, **options)


def _parts(split: str, root: Any, image_size: Any, **options: Any) -> CamzooDataset:
    from .parts import load_parts

    return load_parts(split, root=root, image_size=image_size, **options)


def _cifar(num_classes: int) -> Callable[..., CamzooDataset]:
    def build(split: str, root: Any, image_size: Any, **options: Any) -> CamzooDataset:
        from .cifar import load_cifar

        return load_cifar(root, split, num_classes=num_classes, image_size=image_size, **options)

    return build


def _lazy(module: str, function: str) -> Callable[..., CamzooDataset]:
    def build(split: str, root: Any, image_size: Any, **options: Any) -> CamzooDataset:
        mod = __import__(f"{__package__}.{module}", fromlist=[function])
        return getattr(mod, function)(root, split, image_size=image_size, **options)

    return build


DATASETS: Registry[DatasetInfo] = Registry("dataset")


def register_dataset(info: DatasetInfo, aliases: tuple[str, ...] = ()) -> DatasetInfo:
    """Add a dataset: ``camzoo.data.load(name, ...)``, the CLI, the trainer and the benchmark config
    then accept ``info.name`` (and ``aliases``, its old names).

    Args:
        info: its name, summary, on-disk layout, splits, annotations and ``build(split, root,
            image_size, **options) -> CamzooDataset``; ``needs_root=False`` for generated datasets.
        aliases: names results stores may hold from before a rename.

    Returns:
        ``info``.
    """
    if not isinstance(info, DatasetInfo):
        raise TypeError(f"register_dataset takes a DatasetInfo; got {type(info).__name__}")
    return DATASETS.add(info.name, info, aliases)


for _entry in (
        DatasetInfo("shapes", "built-in: one class-defining shape among distractors on real textures",
                    "", ("train", "val", "test"), ("mask", "boxes"), _shapes, needs_root=False),
        DatasetInfo("scenes", "built-in: 2-4 shapes of distinct classes per image, every object's mask and box "
                    "(segmentation and detection ground truth)",
                    "", ("train", "val", "test"), ("mask", "boxes"), _scenes, needs_root=False),
        DatasetInfo("parts", "built-in: birds of 5 part slots whose variants define 50 classes, exact part maps "
                    "and re-rendered part removals (a 2-D FunnyBirds)",
                    "", ("train", "val", "test"), ("mask", "boxes"), _parts, needs_root=False),
        DatasetInfo("digits", "built-in: scikit-learn's 1,797 real 8x8 handwritten digits, upsampled (default 32 px)",
                    "", ("train", "val", "test"), (),
                    lambda split, root, image_size, **options: __import__(
                        f"{__package__}.digits", fromlist=["load_digits"]).load_digits(
                        split, root, image_size, **options), needs_root=False),
        DatasetInfo("cifar10", "CIFAR-10, official python pickle batches",
                    "cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}", ("train", "test"), (),
                    _cifar(10)),
        DatasetInfo("cifar100", "CIFAR-100, official python pickle batches",
                    "cifar-100-python/{train,test,meta}", ("train", "test"), (), _cifar(100)),
        DatasetInfo("stl10", "STL-10, official binaries", "stl10_binary/{train,test}_{X,y}.bin",
                    ("train", "test"), (), _lazy("cifar", "load_stl10")),
        DatasetInfo("imagefolder", "any ImageFolder tree", "<split>/<class>/<image>",
                    ("train", "val", "test"), (), _lazy("folders", "load_imagefolder")),
        DatasetInfo("imagenet", "ImageNet-style folder with Pascal VOC XML boxes",
                    "<split>/[<wnid>/]<image>.JPEG + <image>.xml anywhere under root", ("train", "val"),
                    ("boxes",), _lazy("folders", "load_imagenet_voc")),
        DatasetInfo("cub200", "CUB-200-2011 birds with bounding_boxes.txt (+ segmentations/ if present)",
                    "CUB_200_2011/{images/,images.txt,train_test_split.txt,image_class_labels.txt,"
                    "classes.txt,bounding_boxes.txt}", ("train", "test"), ("boxes", "mask"),
                    _lazy("folders", "load_cub")),
        DatasetInfo("pets", "Oxford-IIIT Pet with trimaps as masks",
                    "{images/*.jpg, annotations/{list.txt,trainval.txt,test.txt,trimaps/*.png}}",
                    ("train", "test"), ("mask", "boxes"), _lazy("folders", "load_pets")),
        DatasetInfo("annotated", "your own images: ImageFolder classes, optional boxes.csv, masks/ and classes.txt",
                    "[<split>/]<class>/<image> [+ boxes.csv (file,x0,y0,x1,y1), masks/<same path>.png, classes.txt]",
                    ("test", "val", "train"), ("mask", "boxes"), _lazy("annotated", "load_annotated")),
):
    register_dataset(_entry)


def names() -> list[str]:
    return sorted(DATASETS)


def info(name: str) -> DatasetInfo:
    """The registered dataset ``name`` (or an old name of it); a "did you mean" error otherwise."""
    return DATASETS.lookup(name)


def load(name: str, split: str, root: str | os.PathLike | None = None, image_size: int | None = None,
         **options: Any) -> CamzooDataset:
    """A dataset split as a torch Dataset of ``(image, label, target)`` (see the data contract).

    ``root``: the local copy of an on-disk dataset (default: $CAMZOO_DATA/<name>), or the cache
    directory of "shapes", "scenes" and "parts". ``image_size``: the side of the square images returned
    (default: the dataset's native size, 224 for photo folders, 64 for "shapes", "scenes" and "parts").
    """
    entry = info(name)
    if split not in entry.splits:
        raise ValueError(f"{name}: unknown split {split!r}; available: {', '.join(entry.splits)}")
    if image_size is not None and (not isinstance(image_size, int) or image_size < 8):
        raise ValueError(f"{name}: image_size must be an int >= 8, got {image_size!r}")
    if entry.needs_root:
        if root is None:
            env = os.environ.get("CAMZOO_DATA")
            if not env:
                raise DatasetError(f"{name}: pass root=<folder holding {entry.layout}> (or set $CAMZOO_DATA)")
            root = Path(env) / name
        if not Path(root).exists():
            raise DatasetError(f"{name}: dataset root {str(root)!r} does not exist (expected {entry.layout})")
    shortcut, rate = options.pop("shortcut", None), options.pop("shortcut_rate", None)
    if (shortcut is not None or rate is not None) and shortcut not in SHORTCUTS:
        raise ValueError(f"{name}: option shortcut must be one of {', '.join(SHORTCUTS)}, got {shortcut!r}"
                         + (" (shortcut_rate needs it)" if shortcut is None else ""))
    try:
        dataset = entry.build(split, root, image_size, **options)
    except TypeError as err:
        if "unexpected keyword" in str(err):
            raise ValueError(f"{name}: {err}") from None
        raise
    return dataset if shortcut is None and rate is None else _planted(name, dataset, shortcut, rate, options)


def _planted(name: str, dataset: CamzooDataset, shortcut: Any, rate: Any, options: dict[str, Any]) -> CamzooDataset:
    """``dataset`` with the ``shortcut`` option's artefact planted (camzoo.data.shortcuts), seeded by its ``seed``."""
    if not isinstance(dataset, ArrayDataset):
        raise ValueError(f"{name}: option shortcut needs an in-memory dataset (e.g. shapes, digits); {name} is read "
                         "from files: drop shortcut from its options")
    try:
        return plant_shortcut(dataset, shortcut, 0.9 if rate is None else rate, options.get("seed", 0))
    except ValueError as err:
        raise ValueError(f"{name}: {err}") from None
