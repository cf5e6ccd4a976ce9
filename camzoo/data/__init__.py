"""Datasets: the built-in "shapes" dataset with exact masks and boxes, "scenes" (several objects per
image, each with its mask and box), and loaders for local copies of standard datasets in their
official on-disk layouts. See docs/datasets.md."""

from __future__ import annotations

from .base import ArrayDataset, CamzooDataset
from .errors import DatasetError
from .loading import BatchLoader, collate, loader
from .registry import DATASETS, DatasetInfo, info, load, names, register_dataset

__all__ = ["ArrayDataset", "BatchLoader", "CamzooDataset", "DATASETS", "DatasetInfo", "DatasetError", "collate", "info", "load",
           "loader", "names", "register_dataset"]
