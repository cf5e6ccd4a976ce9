"""CIFAR-10 / CIFAR-100 from the official "python version" pickle batches, and STL-10 binaries.

The official CIFAR files are Python pickles; reading them needs ``pickle``. Users point camzoo at
their own local copy, and we unpickle with an allow-list that admits only what those files hold
(dicts, lists, bytes and numpy arrays), so a foreign pickle cannot run code.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import transforms as T
from .base import ArrayDataset
from .errors import DatasetError

CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN, CIFAR100_STD = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)
STL10_MEAN, STL10_STD = (0.4467, 0.4398, 0.4066), (0.2603, 0.2566, 0.2713)

_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
}


class _BatchUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load global {module}.{name}: not part of a CIFAR batch")


def read_pickle_batch(path: Path) -> dict[str, Any]:
    """One official CIFAR batch as a dict with str keys; a clear error names a missing or broken file."""
    if not path.is_file():
        raise DatasetError(f"CIFAR batch file {str(path)!r} does not exist")
    try:
        with open(path, "rb") as f:
            raw = _BatchUnpickler(f, encoding="bytes").load()
    except (EOFError, pickle.UnpicklingError, ValueError, TypeError, AttributeError, IndexError) as err:
        raise DatasetError(
            f"CIFAR batch file {str(path)!r} is truncated or corrupt ({type(err).__name__}: {err}); "
            "re-extract it from the official cifar-*-python.tar.gz"
        ) from err
    if not isinstance(raw, dict):
        raise DatasetError(f"CIFAR batch file {str(path)!r} holds a {type(raw).__name__}, not a dict")
    return {(k.decode("latin1") if isinstance(k, bytes) else k): v for k, v in raw.items()}


def _names(values: Any) -> list[str]:
    return [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in values]


def _find_dir(root: Path, dirname: str, marker: str) -> Path:
    """Accept either the extracted folder itself or the folder that contains it."""
    if not root.exists():
        raise DatasetError(f"dataset root {str(root)!r} does not exist")
    for candidate in (root, root / dirname):
        if (candidate / marker).is_file():
            return candidate
    raise DatasetError(
        f"no {dirname} found under {str(root)!r}: expected {str(root / dirname / marker)!r} "
        f"(point root at the folder extracted from the official archive)"
    )


def _images_from_rows(data: Any, path: Path, key: str, side: int = 32) -> np.ndarray:
    data = np.asarray(data)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * side * side:
        raise DatasetError(
            f"{str(path)!r}: record {key!r} must be uint8 rows of {3 * side * side} values, "
            f"got {data.dtype} {data.shape}"
        )
    return data.reshape(-1, 3, side, side)


def load_cifar(
    root: str | Path, split: str, num_classes: int = 10, image_size: int | None = None,
    augment: bool = False, label_type: str = "fine",
) -> ArrayDataset:
    """CIFAR-10 (data_batch_1..5 / test_batch) or CIFAR-100 (train / test), all images in memory."""
    if split not in ("train", "test"):
        raise ValueError(f"cifar{num_classes}: split must be 'train' or 'test', got {split!r}")
    root = Path(root)
    if num_classes == 10:
        folder = _find_dir(root, "cifar-10-batches-py", "batches.meta")
        files = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
        classes = _names(read_pickle_batch(folder / "batches.meta").get("label_names", []))
        label_key, mean, std = "labels", CIFAR10_MEAN, CIFAR10_STD
    elif num_classes == 100:
        folder = _find_dir(root, "cifar-100-python", "meta")
        files = [split]
        if label_type not in ("fine", "coarse"):
            raise ValueError(f"cifar100: label_type must be 'fine' or 'coarse', got {label_type!r}")
        classes = _names(read_pickle_batch(folder / "meta").get(f"{label_type}_label_names", []))
        label_key, mean, std = f"{label_type}_labels", CIFAR100_MEAN, CIFAR100_STD
    else:
        raise ValueError(f"CIFAR has 10 or 100 classes, got {num_classes}")
    images, labels = [], []
    for name in files:
        path = folder / name
        batch = read_pickle_batch(path)
        for key in ("data", label_key):
            if key not in batch:
                raise DatasetError(f"{str(path)!r}: record {key!r} is missing (keys: {sorted(batch)})")
        rows = _images_from_rows(batch["data"], path, "data")
        lab = np.asarray(batch[label_key], dtype=np.int64)
        if lab.shape != (rows.shape[0],):
            raise DatasetError(f"{str(path)!r}: {rows.shape[0]} images but {lab.size} entries in {label_key!r}")
        if lab.size and (lab.min() < 0 or lab.max() >= len(classes)):
            bad = int(np.nonzero((lab < 0) | (lab >= len(classes)))[0][0])
            raise DatasetError(f"{str(path)!r}: record {bad} has label {lab[bad]}, outside 0..{len(classes) - 1}")
        images.append(rows)
        labels.append(lab)
    tensor = torch.from_numpy(np.concatenate(images))
    if image_size is not None:
        tensor = T.resize_uint8(tensor, image_size)
    return ArrayDataset(
        tensor, torch.from_numpy(np.concatenate(labels)), classes, mean, std, augment=augment,
        name=f"cifar{num_classes}", split=split,
    )


STL_SIDE = 96


def load_stl10(root: str | Path, split: str, image_size: int | None = None, augment: bool = False) -> ArrayDataset:
    """STL-10 binaries: {split}_X.bin (uint8, each image column-major 3x96x96) and {split}_y.bin (1..10)."""
    if split not in ("train", "test"):
        raise ValueError(f"stl10: split must be 'train' or 'test', got {split!r}")
    folder = _find_dir(Path(root), "stl10_binary", f"{split}_X.bin")
    x_path, y_path = folder / f"{split}_X.bin", folder / f"{split}_y.bin"
    if not y_path.is_file():
        raise DatasetError(f"stl10: label file {str(y_path)!r} does not exist")
    raw = np.fromfile(x_path, dtype=np.uint8)
    per_image = 3 * STL_SIDE * STL_SIDE
    if raw.size == 0 or raw.size % per_image:
        raise DatasetError(
            f"stl10: {str(x_path)!r} holds {raw.size} bytes, not a whole number of {per_image}-byte images "
            "(truncated or corrupt file)"
        )
    # The official layout stores each channel column by column: axes (image, channel, x, y).
    images = raw.reshape(-1, 3, STL_SIDE, STL_SIDE).transpose(0, 1, 3, 2)
    labels = np.fromfile(y_path, dtype=np.uint8).astype(np.int64) - 1
    if labels.shape[0] != images.shape[0]:
        raise DatasetError(f"stl10: {str(x_path)!r} holds {images.shape[0]} images but {str(y_path)!r} "
                           f"holds {labels.shape[0]} labels")
    names_path = folder / "class_names.txt"
    classes = ([s.strip() for s in names_path.read_text().splitlines() if s.strip()] if names_path.is_file()
               else ["airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck"])
    if labels.size and (labels.min() < 0 or labels.max() >= len(classes)):
        bad = int(np.nonzero((labels < 0) | (labels >= len(classes)))[0][0])
        raise DatasetError(f"stl10: {str(y_path)!r} record {bad} has label {labels[bad] + 1}, outside 1..{len(classes)}")
    tensor = torch.from_numpy(np.ascontiguousarray(images))
    if image_size is not None:
        tensor = T.resize_uint8(tensor, image_size)
    return ArrayDataset(tensor, torch.from_numpy(labels), classes, STL10_MEAN, STL10_STD, augment=augment,
                        name="stl10", split=split)
