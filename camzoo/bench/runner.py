"""Run a benchmark grid: train or load each model, explain, score, and commit every cell.

The grid is dataset x backbone x kind x variant x seed. For each model: a "model" cell (accuracy,
training time), then one cell per applicable method (maps of the evaluation images, deletion /
insertion, localization, time per image). After all seeds of a (dataset, backbone, kind): one
stability cell per method, comparing every pair of seeds (and variants) on the same images.
Each cell commits in its own transaction, so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import hashlib
import platform
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import numpy as np
import torch

from .._version import __version__
from ..modelutil import describe_device, resolve_device, synchronize
from .config import applicable_methods, run_id, variants
from .store import ALL_SEEDS, CellKey, ResultsStore

MODEL_CELL = "model"
GALLERY_CELL = "gallery"
ALL_VARIANTS = "*"


@dataclass
class EvalSet:
    """The evaluation images every method of every model explains: the first N of the test split."""

    images: torch.Tensor  # (N,3,H,W) normalised, on the device
    labels: torch.Tensor  # (N,)
    masks: torch.Tensor | None  # (N,H,W) bool
    boxes: torch.Tensor | None  # (N,K,4) NaN-padded
    mean: tuple[float, ...]
    std: tuple[float, ...]
    classes: list[str]


@dataclass
class ModelJob:
    dataset: Mapping[str, Any]
    backbone: str
    kind: str
    variant: Mapping[str, Any]
    seed: int

    def key(self, method: str) -> CellKey:
        return CellKey(self.dataset["name"], self.backbone, self.kind, self.variant["name"], self.seed, method)

    @property
    def label(self) -> str:
        variant = "" if self.variant["name"] == "default" else f"/{self.variant['name']}"
        return f"{self.dataset['name']}/{self.backbone}/{self.kind}{variant}/seed{self.seed}"


def _load_split(dataset: Mapping[str, Any], split: str):
    from .. import data

    options = {k: v for k, v in dataset["options"].items() if k not in ("train", "test")}
    options.update(dataset["options"].get(split, {}))
    return data.load(dataset["name"], split, root=dataset["root"] or None, image_size=dataset["image_size"], **options)


def load_eval_set(test_split, count: int, device: torch.device) -> EvalSet:
    from ..data import loader

    subset = torch.utils.data.Subset(test_split, range(min(count, len(test_split))))
    images, labels, targets = next(iter(loader(subset, batch_size=len(subset), shuffle=False, device=device)))
    return EvalSet(
        images=images, labels=labels, masks=targets.get("mask"), boxes=targets.get("boxes"),
        mean=tuple(test_split.mean), std=tuple(test_split.std), classes=list(test_split.classes),
    )


def fingerprint(*tensors: torch.Tensor) -> str:
    """Short hash of tensors' bytes: proves two runs scored the very same evaluation images."""
    digest = hashlib.sha256()
    for tensor in tensors:
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def explain_all(model, eval_set: EvalSet, method: str, batch_size: int, device: torch.device) -> tuple[torch.Tensor, float]:
    """Maps of every evaluation image for its true class, and the median seconds per image.

    The method class is called directly: the evaluation images are already a validated,
    normalised batch on the device, so ``camzoo.explain``'s input handling would only repeat work.
    Timing: one untimed call on the first batch's shape (layer detection, lazy initialisation and
    allocator warm-up are not per-image costs), then the median over batches of seconds per image,
    so a small evaluation set is not dominated by one slow call.
    """
    from ..methods import get_method

    explainer = get_method(method)(model)
    truth = {"mask": eval_set.masks, "boxes": eval_set.boxes}

    def chunk(start: int, stop: int):
        ground_truth = {k: v[start:stop] for k, v in truth.items() if v is not None}
        return explainer(eval_set.images[start:stop], eval_set.labels[start:stop], ground_truth=ground_truth or None)

    chunk(0, batch_size)
    maps, per_image_seconds = [], []
    for start in range(0, eval_set.images.shape[0], batch_size):
        synchronize(device)
        begin = time.perf_counter()
        result = chunk(start, start + batch_size)
        synchronize(device)
        per_image_seconds.append((time.perf_counter() - begin) / result.maps.shape[0])
        maps.append(result.maps)
    return torch.cat(maps), float(np.median(per_image_seconds))


class BenchRunner:
    """Drives one config into one results directory; safe to rerun (finished cells are skipped)."""

    def __init__(self, config: Mapping[str, Any], out_dir: str | Path, device: str | None = None,
                 progress: bool = True, echo: Callable[[str], None] = print):
        self.config = dict(config)
        self.out_dir = Path(out_dir)
        self.device = resolve_device(device or config["device"])
        self.run_id = run_id(config)
        self.progress = progress
        self.echo = echo
        self.store = ResultsStore(self.out_dir)
        self.device_label = describe_device(self.device)

    # --- the grid -------------------------------------------------------------------------------
    def jobs(self) -> Iterator[ModelJob]:
        for dataset in self.config["datasets"]:
            for backbone in self.config["backbones"]:
                for kind in self.config["kinds"]:
                    for variant in variants(self.config):
                        for seed in self.config["seeds"]:
                            yield ModelJob(dataset, backbone, kind, variant, seed)

    def stability_groups(self) -> list[tuple[Mapping[str, Any], str, str]]:
        return [(d, b, k) for d in self.config["datasets"] for b in self.config["backbones"] for k in self.config["kinds"]]

    def run(self) -> None:
        from tqdm.auto import tqdm

        jobs = list(self.jobs())
        groups = self.stability_groups()
        self.store.record_run(self.run_id, self.config, self._provenance())
        bar = tqdm(total=len(jobs) + len(groups), desc="camzoo bench", unit="job", disable=not self.progress,
                   dynamic_ncols=True)
        try:
            splits: dict[str, tuple[Any, Any, EvalSet]] = {}
            for job in jobs:
                bar.set_postfix_str(job.label)
                name = job.dataset["name"]
                if not self._job_done(job):
                    if name not in splits:
                        splits[name] = self._load_dataset(job.dataset)
                    self._run_model_job(job, *splits[name])
                bar.update(1)
            for dataset, backbone, kind in groups:
                bar.set_postfix_str(f"{dataset['name']}/{backbone}/{kind}: stability")
                self._run_stability(dataset, backbone, kind)
                bar.update(1)
        finally:
            bar.close()

    def _methods(self, job: ModelJob) -> list[str]:
        """The config's methods that apply to this model kind and this dataset (the oracle control
        needs ground truth: masks or boxes)."""
        from ..data import info
        from ..methods import get_method

        annotated = bool(info(job.dataset["name"]).annotations)
        return [m for m in applicable_methods(self.config, job.kind) if annotated or not get_method(m).needs_ground_truth]

    def _job_done(self, job: ModelJob) -> bool:
        needed = [MODEL_CELL, *self._methods(job)]
        return all(self.store.is_done(self.run_id, job.key(m)) for m in needed)

    def _provenance(self) -> dict[str, Any]:
        import timm

        return {
            "camzoo": __version__, "torch": torch.__version__, "timm": timm.__version__,
            "python": platform.python_version(), "device": self.device_label, "host": socket.gethostname(),
            "run_id": self.run_id,
        }

    def _write(self, key: CellKey, metrics: Mapping[str, tuple[float | None, np.ndarray | None]],
               arrays: Mapping[str, np.ndarray] | None = None) -> None:
        self.store.write_cell(self.run_id, key, metrics, arrays, code_version=__version__, device=self.device_label)

    # --- one dataset ----------------------------------------------------------------------------
    def _load_dataset(self, dataset: Mapping[str, Any]):
        train_split = _load_split(dataset, "train")
        test_split = _load_split(dataset, "test")
        eval_set = load_eval_set(test_split, self.config["eval"]["images"], self.device)
        gallery_key = CellKey(dataset["name"], "-", "-", "-", ALL_SEEDS, GALLERY_CELL)
        if not self.store.is_done(self.run_id, gallery_key):
            from ..inputs import to_display_images

            count = self.config["eval"]["gallery_images"]
            arrays = {
                "images": to_display_images(eval_set.images[:count], eval_set.mean, eval_set.std),
                "labels": eval_set.labels[:count].cpu().numpy(),
                "class_names": np.array(eval_set.classes),
                "fingerprint": np.array(fingerprint(eval_set.images, eval_set.labels)),
            }
            metrics = {"eval_images": (float(eval_set.images.shape[0]), None)}
            self._write(gallery_key, metrics, arrays)
        return train_split, test_split, eval_set

    # --- one model ------------------------------------------------------------------------------
    def _checkpoint_dir(self, job: ModelJob, train_config) -> Path:
        digest = hashlib.sha256(repr(sorted(train_config.fingerprint().items())).encode()).hexdigest()[:10]
        return self.out_dir / "models" / f"{job.label.replace('/', '-')}-{digest}"

    def _train(self, job: ModelJob, train_split):
        from ..train import TrainConfig, train

        settings = {**self.config["train"], **job.variant.get("train", {})}
        model_options = {**settings.pop("model_options", {}), **job.variant.get("model", {})}
        if "milestones" in settings:
            settings["milestones"] = tuple(settings["milestones"])
        try:
            train_config = TrainConfig(kind=job.kind, backbone=job.backbone, seed=job.seed, device=str(self.device),
                                       model_options=model_options, progress=False, **settings)
        except TypeError as err:
            raise ValueError(f"[train] in the benchmark config: {err}") from err
        return train(train_config, train_split, self._checkpoint_dir(job, train_config))

    def _run_model_job(self, job: ModelJob, train_split, test_split, eval_set: EvalSet) -> None:
        from .. import metrics
        from ..inference import predict

        result = self._train(job, train_split)
        model = result.model
        if not self.store.is_done(self.run_id, job.key(MODEL_CELL)):
            logits, labels = predict(model, test_split, self.config["eval"]["batch_size"], self.device)
            scores = metrics.accuracy(logits, labels)
            cell = {name: (float(scores[name]), None) for name in ("top1", "top5") if name in scores}
            cell["top1"] = (float(scores["top1"]), scores["correct"].float().cpu().numpy())
            cell["train_seconds"] = (result.total_train_time_s, None)
            cell["train_loss"] = (result.train_loss, None)
            self._write(job.key(MODEL_CELL), cell)
        for method in self._methods(job):
            key = job.key(method)
            if self.store.is_done(self.run_id, key):
                continue
            maps, seconds = explain_all(model, eval_set, method, self.config["eval"]["batch_size"], self.device)
            cell = metrics.score_maps(model, eval_set.images, maps, eval_set.labels, eval_set.masks, eval_set.boxes,
                                      self._settings(method))
            cell["ms_per_image"] = (1000.0 * seconds, None)
            self._write(key, cell, {"maps": maps.half().cpu().numpy()})

    def _settings(self, method: str) -> dict[str, Any]:
        """The eval settings a method's cell is scored with. Controls skip the MoRF/LeRF substrates:
        those columns exist to rank explanation methods across substrates (Kendall's tau), and on
        the quick preset they were two thirds of a cell's cost."""
        from ..methods import get_method

        settings = dict(self.config["eval"])
        if get_method(method).reference:
            settings["substrates"] = []
        return settings

    # --- across seeds ---------------------------------------------------------------------------
    def _run_stability(self, dataset: Mapping[str, Any], backbone: str, kind: str) -> None:
        from .. import metrics

        for method in applicable_methods(self.config, kind):
            key = CellKey(dataset["name"], backbone, kind, ALL_VARIANTS, ALL_SEEDS, method)
            if self.store.is_done(self.run_id, key):
                continue
            map_sets = [
                maps for _, maps in self.store.arrays(
                    self.run_id, "maps", dataset=dataset["name"], backbone=backbone, kind=kind, method=method)
            ]
            if len(map_sets) < 2:
                continue  # one model only: nothing to compare
            sets = [torch.from_numpy(m.astype(np.float32)).to(self.device) for m in map_sets]
            standard = metrics.pairwise_stability(sets)
            compat = metrics.pairwise_stability(sets, lfi_compat=True)
            # per-image values of every pair (pairs, images): CIs resample pairs, then images
            cell = {
                f"stability_{name}": (float(standard["mean"][name]), standard["per_image"][name].cpu().numpy())
                for name in standard["mean"]
            }
            cell["stability_iou_lfi_compat"] = (float(compat["mean"]["iou"]), compat["per_image"]["iou"].cpu().numpy())
            cell["stability_pairs"] = (float(len(standard["pairs"])), None)
            self._write(key, cell)
