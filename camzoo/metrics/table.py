"""The one table of metrics: what every reported number means and how a benchmark cell computes it.

Each :class:`MetricInfo` says a metric's name, direction, range, what it needs (``model``, ``masks``,
``boxes``, ``annotations`` = masks or boxes), its scope (``model``: once per trained model;
``map``: once per (model, method) from the maps; ``stability``: across seeds; ``cost``: timing),
the table column it fills (if any), and — for map metrics — ``compute(context) -> (value,
per-image values)``. :func:`score_maps` and the report's columns are generated from this table, so
adding a metric is one entry here (docs/contributing.md shows one).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from ..modelutil import eval_mode, model_normalisation
from . import causal, confidence, faithfulness, localization, wsol
from ._model import unperturbed_scores

Row = tuple[float, np.ndarray | None]


@dataclass
class ScoringContext:
    """Everything a map metric may read, plus a memo so that metrics sharing one computation (deletion
    and insertion, MaxBoxAccV1 and V2) run it once."""

    model: nn.Module
    images: torch.Tensor  # (N,3,H,W) normalised, on the model's device
    maps: torch.Tensor  # (N,H,W) in [0,1]
    labels: torch.Tensor  # (N,): the class every map explains
    masks: torch.Tensor | None  # (N,H,W) bool
    boxes: torch.Tensor | None  # (N,K,4) NaN-padded
    settings: Mapping[str, Any]  # the benchmark's eval settings (steps, chunk size, tolerances)
    # map-only results shared by the cells of one image set, by the maps' content (see score_maps)
    map_memo: dict | None = None
    # results that depend on the model and images only, shared by the cells of one model (see score_maps)
    model_memo: dict | None = None
    _memo: dict[str, Any] = field(default_factory=dict)

    def cached(self, key: str, compute: Callable[[], Any]) -> Any:
        if key not in self._memo:
            self._memo[key] = compute()
        return self._memo[key]

    def shared(self, key: str, compute: Callable[[], Any]) -> Any:
        """``compute()`` once per cell, and once per identical maps across the cells that share
        ``map_memo`` (for metrics that read nothing but the maps and the image set's ground truth)."""
        if self.map_memo is None:
            return self.cached(key, compute)
        memo, entry = self.map_memo, (key, self.cached("digest", lambda: _digest(self.maps)))

        def lookup() -> Any:
            if entry not in memo:
                memo[entry] = compute()
            return memo[entry]

        return self.cached(key, lookup)

    def unperturbed_scores(self) -> torch.Tensor:
        """Softmax scores (N, classes) of the unperturbed images, which deletion, MoRF and Average
        Drop all start from: once per cell, or once per model when the cells share ``model_memo``.
        Like every forward of a cell, under autocast on CUDA."""
        memo = self._memo if self.model_memo is None else self.model_memo
        if "unperturbed_scores" not in memo:
            with torch.no_grad(), eval_mode(self.model):
                memo["unperturbed_scores"] = unperturbed_scores(
                    self.model, self.images, True, self.images.device.type == "cuda", self.settings["chunk_size"])
        return memo["unperturbed_scores"]

    @property
    def games(self) -> slice:
        """The images the perturbation games play on: the first ``settings["game_images"]`` ("all" or
        absent: every image). Why: a game costs dozens of forwards per image, the other metrics one
        or none, so a CPU budget may cap the games alone; every row of a column gets the same images."""
        count = self.settings.get("game_images", "all")
        return slice(None) if count == "all" else slice(0, int(count))

    def has(self, need: str) -> bool:
        if need == "model":
            return True
        if need == "masks":
            return self.masks is not None
        if need == "boxes":
            return self.boxes is not None
        if need == "annotations":
            return self.masks is not None or self.boxes is not None
        raise ValueError(f"unknown metric requirement {need!r}")


@dataclass(frozen=True)
class MetricInfo:
    """What a reported number means: its direction, range and the function that computes it."""

    name: str
    higher_is_better: bool
    low: float
    high: float
    function: str  # the public camzoo.metrics function behind it ("" for timings)
    description: str
    scope: str = "map"  # "model" | "map" | "stability" | "cost"
    needs: tuple[str, ...] = ()
    column: str | None = None  # header in the summary tables; None: stored but not tabulated
    digits: int = 3
    compute: Callable[[ScoringContext], Row | None] | None = None  # map metrics: (value, per-image values)
    group: str = "main"  # which summary table shows the column ("main", "faithfulness")
    # Dataset-level metrics keep a table per image (not one number): ``pooled`` computes the metric
    # from the mean of those tables, batched over resamples ((R, ...) -> (R,)), so that a bootstrap
    # CI resamples the very statistic the table shows; ``per_image_score`` turns one model's tables
    # (N, ...) into one paired-test value per image (N,).
    pooled: Callable[[np.ndarray], np.ndarray] | None = None
    per_image_score: Callable[[np.ndarray], np.ndarray] | None = None

    @property
    def arrow(self) -> str:
        return "↑" if self.higher_is_better else "↓"

    def best(self, values: Sequence[float]) -> int:
        """Index of the best of ``values`` (NaNs never win); -1 when all are NaN."""
        candidates = [(v, i) for i, v in enumerate(values) if v == v]
        if not candidates:
            return -1
        pick = max if self.higher_is_better else min
        return pick(candidates, key=lambda item: item[0])[1]


def _digest(tensor: torch.Tensor) -> str:
    """A content key: the tensor's shape and bytes."""
    digest = hashlib.blake2b(tensor.detach().contiguous().cpu().numpy().tobytes(), digest_size=16)
    digest.update(str(tuple(tensor.shape)).encode())
    return digest.hexdigest()


def _row(value: Any, per_image: torch.Tensor | np.ndarray) -> Row:
    array = per_image.detach().float().cpu().numpy() if isinstance(per_image, torch.Tensor) else per_image
    return float(value), array


# --- the shared computations ------------------------------------------------------------------
def causal_settings(settings: Mapping[str, Any]) -> dict[str, Any]:
    """deletion_insertion's arguments from the benchmark's eval settings: RISE's protocol exactly, or
    the "default" game with the configured steps, pixel fraction and target rule."""
    if settings.get("protocol", "default") == "rise":
        return {"protocol": "rise"}
    return {"protocol": "default", "steps": settings["deletion_steps"],
            "fraction": settings.get("deletion_fraction", 1.0),
            "predicted": settings.get("deletion_target", "label") == "prediction"}


def _causal(ctx: ScoringContext) -> dict[str, torch.Tensor]:
    def play() -> dict[str, torch.Tensor]:
        options = causal_settings(ctx.settings)
        games = ctx.games
        targets = None if options.pop("predicted", True) else ctx.labels[games]
        softmax = causal.causal_protocol(options["protocol"]).softmax
        return causal.deletion_insertion(ctx.model, ctx.images[games], ctx.maps[games], targets,
                                         chunk_size=ctx.settings["chunk_size"],
                                         autocast=ctx.images.device.type == "cuda",
                                         original_scores=ctx.unperturbed_scores()[games] if softmax else None,
                                         **options)

    return ctx.cached("causal", play)


def _drop(ctx: ScoringContext) -> dict[str, torch.Tensor]:
    return ctx.cached("drop", lambda: confidence.average_drop_increase(
        ctx.model, ctx.images, ctx.maps, ctx.labels, chunk_size=ctx.settings["chunk_size"],
        autocast=ctx.images.device.type == "cuda", original_scores=ctx.unperturbed_scores()))


def _boxes(ctx: ScoringContext) -> dict[str, torch.Tensor]:
    return ctx.shared("max_box_acc", lambda: wsol.max_box_acc(ctx.maps, boxes=ctx.boxes, masks=ctx.masks))


def _srg(substrate: str) -> Callable[[ScoringContext], Row | None]:
    """SRG = AUC(LeRF) - AUC(MoRF) with one substrate, when the settings ask for it (eval.substrates)."""

    def compute(ctx: ScoringContext) -> Row | None:
        if substrate not in ctx.settings.get("substrates", ()):
            return None
        # ROAD's noise is 0.01 in [0,1] pixel units: in the normalised space the model sees, 0.01 / std
        road_noise = [0.01 / s for s in model_normalisation(ctx.model)[1]]
        games = ctx.games
        result = faithfulness.morf_lerf(
            ctx.model, ctx.images[games], ctx.maps[games], ctx.labels[games], substrate=substrate,
            steps=ctx.settings["deletion_steps"], fraction=ctx.settings.get("deletion_fraction", 1.0),
            chunk_size=ctx.settings["chunk_size"], autocast=ctx.images.device.type == "cuda", road_noise=road_noise,
            morf_curve=_deletion_as_morf(ctx) if substrate == "zeros" else None,
            original_scores=ctx.unperturbed_scores()[games])
        return _row(result["srg"].mean(), result["srg"])

    return compute


def _deletion_as_morf(ctx: ScoringContext) -> torch.Tensor | None:
    """The deletion curve when it *is* the zero substrate's MoRF curve (the default protocol scoring the
    labels: same images, targets, order, steps, pixel span and substrate), so that it is not played
    twice; None otherwise (RISE's protocol scores the prediction)."""
    options = causal_settings(ctx.settings)
    if options["protocol"] != "default" or options["predicted"]:
        return None
    return _causal(ctx)["deletion_curve"]


def _pointing(ctx: ScoringContext) -> dict[str, torch.Tensor]:
    return ctx.cached("pointing", lambda: localization.pointing_game(
        ctx.maps, masks=ctx.masks, boxes=ctx.boxes, tolerance=ctx.settings["pointing_tolerance"],
        original_size=ctx.settings["pointing_reference_size"], labels=ctx.labels))


def _energy(variant: str) -> Callable[[ScoringContext], Row]:
    def compute(ctx: ScoringContext) -> Row:
        result = localization.energy_pointing_game(ctx.maps, masks=ctx.masks, boxes=ctx.boxes, variant=variant)
        return _row(result["energy_pointing_game"], result["per_image"])

    return compute


def _best_threshold_accuracy(mean_hits: np.ndarray) -> np.ndarray:
    """MaxBoxAcc from mean hit tables (R, IoU thresholds, CAM thresholds): the best CAM threshold per
    IoU threshold, then the mean over IoU thresholds (wsolevaluation's BoxEvaluator.compute)."""
    return mean_hits.max(-1).mean(-1)


def _hits_at_best_threshold(hits: np.ndarray) -> np.ndarray:
    """One model's per-image hits (N, IoU thresholds, CAM thresholds) at its own best CAM threshold per
    IoU threshold, averaged over IoU thresholds: (N,)."""
    best = hits.mean(0).argmax(-1)  # (IoU thresholds,)
    return np.take_along_axis(hits, best[None, :, None], axis=2)[..., 0].mean(-1)


def _pooled_pxap(mean_histograms: np.ndarray) -> np.ndarray:
    """PxAP from mean per-image histograms (R, 2, bins): positives and negatives pooled over images."""
    table = torch.from_numpy(np.ascontiguousarray(mean_histograms))
    return localization.pxap_from_histograms(table[:, 0], table[:, 1]).numpy()


def _pxap(ctx: ScoringContext) -> Row:
    result = localization.pxap(ctx.maps, masks=ctx.masks)
    return _row(result["pxap"], torch.stack([result["hist_positive"], result["hist_negative"]], 1))


def _info(name: str, higher: bool, low: float, high: float, function: str, description: str, **rest: Any) -> MetricInfo:
    return MetricInfo(name, higher, low, high, function, description, **rest)


_ENTRIES = (
    # -- once per trained model
    _info("top1", True, 0, 1, "accuracy", "top-1 accuracy", scope="model", column="Accuracy"),
    _info("top5", True, 0, 1, "accuracy", "top-5 accuracy (datasets with more than 5 classes)", scope="model"),
    # -- from each method's maps
    _info("deletion", False, 0, 1, "deletion_insertion",
          "AUC of the target's probability as salient pixels are deleted", needs=("model",), column="Deletion AUC",
          compute=lambda c: _row(_causal(c)["deletion"].mean(), _causal(c)["deletion"])),
    _info("insertion", True, 0, 1, "deletion_insertion",
          "AUC of the target's probability as salient pixels are restored on a blurred image", needs=("model",),
          column="Insertion AUC", compute=lambda c: _row(_causal(c)["insertion"].mean(), _causal(c)["insertion"])),
    _info("deletion_curve", False, 0, 1, "deletion_insertion",
          "the deletion curve (per image: the probability at each step)", needs=("model",),
          compute=lambda c: _row(_causal(c)["deletion_curve"].mean(), _causal(c)["deletion_curve"])),
    _info("insertion_curve", True, 0, 1, "deletion_insertion",
          "the insertion curve (per image: the probability at each step)", needs=("model",),
          compute=lambda c: _row(_causal(c)["insertion_curve"].mean(), _causal(c)["insertion_curve"])),
    _info("average_drop", False, 0, 100, "average_drop_increase",
          "mean relative drop (%) of the target's score on image x map", needs=("model",),
          compute=lambda c: _row(_drop(c)["average_drop"], _drop(c)["drop"] * 100)),
    _info("increase_in_confidence", True, 0, 100, "average_drop_increase",
          "share (%) of images whose score rises on image x map", needs=("model",),
          compute=lambda c: _row(_drop(c)["increase_in_confidence"], _drop(c)["increase"].float() * 100)),
    _info("average_gain", True, 0, 100, "average_drop_increase",
          "mean relative gain (%) of the target's score on image x map, of the room left (Opti-CAM's)",
          needs=("model",), compute=lambda c: _row(_drop(c)["average_gain"], _drop(c)["gain"] * 100)),
    _info("pointing_game", True, 0, 1, "pointing_game",
          "share of maps whose maximum lies within the tolerance of the object", needs=("annotations",),
          column="Pointing game", compute=lambda c: _row(_pointing(c)["pointing_game"], _pointing(c)["hits"].float())),
    _info("pointing_game_class_mean", True, 0, 1, "pointing_game",
          "the pointing game as TorchRay's benchmark reports it: the mean of per-class hit rates",
          needs=("annotations",), column="PG class-mean",
          compute=lambda c: (float(_pointing(c)["pointing_game_class_mean"]), None)),
    _info("energy_pointing_game_mask", True, 0, 1, "energy_pointing_game",
          "share of map mass inside the object's mask (Quantus' RelevanceMassAccuracy)", needs=("masks",),
          column="Energy PG (mask)", compute=_energy("mask")),
    _info("energy_pointing_game_box", True, 0, 1, "energy_pointing_game",
          "share of map mass inside the object's bounding box (the Score-CAM paper's)", needs=("annotations",),
          column="Energy PG (box)", compute=_energy("box")),
    _info("relevance_rank_accuracy", True, 0, 1, "relevance_rank_accuracy",
          "share of the K most salient pixels on the object (K = object size)", needs=("annotations",)),
    _info("max_box_acc_v1", True, 0, 1, "max_box_acc",
          "box accuracy at IoU 0.5, largest region, best CAM threshold", needs=("annotations",),
          compute=lambda c: _row(_boxes(c)["max_box_acc_v1"], _boxes(c)["hits_v1"].float())),
    _info("max_box_acc_v2", True, 0, 1, "max_box_acc",
          "box accuracy averaged over IoU 0.3/0.5/0.7, best region, best CAM threshold", needs=("annotations",),
          column="MaxBoxAccV2", pooled=_best_threshold_accuracy, per_image_score=_hits_at_best_threshold,
          # per image: (IoU thresholds, CAM thresholds) hits
          compute=lambda c: _row(_boxes(c)["max_box_acc_v2"], _boxes(c)["hits_v2"].float().permute(1, 0, 2))),
    _info("pxap", True, 0, 1, "pxap", "pixel-wise average precision against object masks", needs=("masks",),
          # per image: (positive, negative) histograms; each image's own AP is its paired-test value
          column="PxAP", compute=_pxap, pooled=_pooled_pxap, per_image_score=_pooled_pxap),
    # -- faithfulness with headroom: the symmetric MoRF/LeRF gain over several substrates
    *(_info(f"srg_{name}", True, -1, 1, "morf_lerf",
            f"SRG = AUC(LeRF) - AUC(MoRF), removed pixels replaced by the {name!r} substrate", needs=("model",),
            column=f"SRG {name}", group="faithfulness", compute=_srg(name))
      for name in faithfulness.SUBSTRATES),
    # -- across seeds (the stability cell)
    _info("stability_iou", True, 0, 1, "stability", "IoU of two seeds' maps binarised at map*255 > 100",
          scope="stability", column="Stability IoU"),
    _info("stability_dice", True, 0, 1, "stability", "Dice of two seeds' maps binarised at map*255 > 100",
          scope="stability"),
    _info("stability_spearman", True, -1, 1, "stability", "Spearman rank correlation of two seeds' maps",
          scope="stability", column="Stability Spearman"),
    _info("stability_pearson", True, -1, 1, "stability", "Pearson correlation of two seeds' maps", scope="stability"),
    _info("stability_ssim", True, -1, 1, "stability", "SSIM of two seeds' maps (scikit-image defaults)",
          scope="stability"),
    _info("stability_iou_lfi_compat", True, 0, 1, "stability",
          "the LFI-CAM script's row-wise IoU of two seeds' maps", scope="stability"),
    # -- cost
    _info("ms_per_image", False, 0, float("inf"), "", "milliseconds per image to explain", scope="cost",
          column="ms/image", digits=2),
)

METRICS: dict[str, MetricInfo] = {}
SCOPES = ("model", "map", "stability", "cost")
NEEDS = ("model", "masks", "boxes", "annotations")


def register_metric(info: MetricInfo) -> MetricInfo:
    """Add a metric to the table (``compute`` makes the benchmark score it; ``column`` tabulates it)."""
    if not info.name or info.name in METRICS:
        raise ValueError(f"a metric needs a new, non-empty name; {info.name!r} is taken or empty")
    if info.scope not in SCOPES:
        raise ValueError(f"metric {info.name!r}: scope must be one of {SCOPES}, got {info.scope!r}")
    if set(info.needs) - set(NEEDS):
        raise ValueError(f"metric {info.name!r}: needs must be among {NEEDS}, got {info.needs!r}")
    if info.scope == "map" and info.compute is None and info.column:
        raise ValueError(f"metric {info.name!r} has a table column but no compute(context) to fill it")
    METRICS[info.name] = info
    return info


for _entry in _ENTRIES:
    register_metric(_entry)


def table_columns() -> list[MetricInfo]:
    """The metrics the summary tables show, in column order."""
    return [info for info in METRICS.values() if info.column]


def score_maps(model: nn.Module, images: torch.Tensor, maps: torch.Tensor, labels: torch.Tensor,
               masks: torch.Tensor | None, boxes: torch.Tensor | None, settings: Mapping[str, Any],
               map_memo: dict | None = None, model_memo: dict | None = None) -> dict[str, Row]:
    """Every map metric of the table that the data allows: name -> (value, per-image values).

    ``map_memo`` (the benchmark passes one dict per image set: same images, labels and ground truth,
    never reused for another) returns MaxBoxAcc, the costliest metric that reads only the maps, for
    maps identical to earlier ones: the centre, edges and oracle controls' maps do not depend on the
    model, so nine models share three computations. Exact (tested against computing afresh).
    ``model_memo`` (one dict per model and image set) returns the model's scores on the unperturbed
    images, which every cell of that model needs: one forward over the images per model, not per cell.
    """
    ctx = ScoringContext(model, images, maps, labels, masks, boxes, settings, map_memo, model_memo)
    scored = {info.name: info.compute(ctx) for info in METRICS.values()
              if info.compute is not None and all(ctx.has(need) for need in info.needs)}
    return {name: row for name, row in scored.items() if row is not None}  # None: not asked for by the settings
