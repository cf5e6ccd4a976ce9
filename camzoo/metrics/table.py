"""The one table of metrics: what every reported number means and how a benchmark cell computes it.

Each :class:`MetricInfo` says a metric's name, direction, range, what it needs (``model``, ``masks``,
``boxes``, ``annotations`` = masks or boxes, ``method`` = the method that made the maps, ``objects``,
``shortcut`` = a planted artefact's region), its scope
(``model``: once per trained model;
``map``: once per (model, method) from the maps; ``stability``: across seeds; ``cost``: timing),
the table column it fills (if any), and — for map metrics — ``compute(context) -> (value,
per-image values)``. ``score_maps`` (:mod:`camzoo.metrics.scoring`) and the report's columns are
generated from this table, so adding a metric is one entry here (docs/contributing.md shows one).
Each metric declares which images it ``reads``, for a dataset-level metric how blocks ``combine``, and
for a metric that only some runs want the setting that selects it (``selected_by``: a grid game, a
sensitivity test, an SRG substrate is one entry; the settings accept exactly the names declared here).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from collections.abc import Callable, Sequence


import numpy as np
import torch

from . import confidence, discrimination, faithfulness, game_rows, localization, objects, wsol
from .context import ScoringContext
from .selection import METRICS, SELECTING_FIELDS
from .settings import EvalSettings

Row = tuple[float, np.ndarray | None]


@dataclass(frozen=True)
class MetricInfo:
    """What a reported number means: its direction, range and the function that computes it."""

    name: str
    higher_is_better: bool
    low: float
    high: float
    function: str  # the public camzoo.metrics function behind it ("" for timings)
    description: str
    scope: str = "map"  # "model" | "map" | "stability" | "cost" | "dataset" (once per image set)
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
    aliases: tuple[str, ...] = ()  # names this metric was stored under before (old results stores)
    # Which evaluation images a map metric reads, for block-wise scoring: "images" (every image),
    # "games" (the first EvalSettings.game_images), "inputs" (it builds new inputs from the images —
    # grids, mosaics, other classes — once per model, from the first block only).
    reads: str = "images"
    # How blocks join when the value is not the mean of the per-image values: (per-image values of
    # every metric, concatenated over blocks; labels) -> the value over all images.
    combine: Callable[[dict[str, np.ndarray], np.ndarray], float] | None = None
    # Which setting asks for the metric (score_maps skips it otherwise): an EvalSettings field that lists
    # names (``SELECTING_FIELDS``: "substrates", "grid_games", "sensitivity") and must list ``selected_as``
    # (None: the metric's name) — the names a field accepts are read from these declarations — or a
    # predicate on the settings (a metric that follows others, e.g. the grids' counts); None: always.
    selected_by: str | Callable[[EvalSettings], bool] | None = None
    selected_as: str | None = None

    def selected(self, settings: EvalSettings) -> bool:
        """Whether ``settings`` ask for this metric (see ``selected_by``)."""
        if self.selected_by is None:
            return True
        if callable(self.selected_by):
            return bool(self.selected_by(settings))
        return (self.selected_as or self.name) in getattr(settings, self.selected_by)

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


def _row(value: Any, per_image: torch.Tensor | np.ndarray) -> Row:
    array = per_image.detach().float().cpu().numpy() if isinstance(per_image, torch.Tensor) else per_image
    return float(value), array


# --- the shared computations ------------------------------------------------------------------
def _game(key: str) -> Callable[[ScoringContext], Row]:
    """One output of the deletion/insertion game, which its four metrics share (camzoo.metrics.game_rows)."""

    def compute(ctx: ScoringContext) -> Row:
        played = game_rows.causal_games(ctx)
        return _row(played[key].mean(), played[key])

    return compute


def _drop(ctx: ScoringContext) -> dict[str, torch.Tensor]:
    return ctx.cached("drop", lambda: confidence.average_drop_increase(
        ctx.model, ctx.images, ctx.maps, ctx.labels, chunk_size=ctx.settings.chunk_for(ctx.images),
        autocast=ctx.images.device.type == "cuda", original_scores=ctx.unperturbed_scores()))


def _boxes(ctx: ScoringContext) -> dict[str, torch.Tensor]:
    return ctx.shared("max_box_acc", lambda: wsol.max_box_acc(ctx.maps, boxes=ctx.boxes, masks=ctx.masks))


def _pointing(ctx: ScoringContext) -> dict[str, torch.Tensor]:
    return ctx.cached("pointing", lambda: localization.pointing_game(
        ctx.maps, masks=ctx.masks, boxes=ctx.boxes, tolerance=ctx.settings.pointing_tolerance,
        original_size=ctx.settings.pointing_reference_size, labels=ctx.labels))


def _energy(variant: str) -> Callable[[ScoringContext], Row]:
    def compute(ctx: ScoringContext) -> Row:
        result = localization.energy_pointing_game(ctx.maps, masks=ctx.masks, boxes=ctx.boxes, variant=variant)
        return _row(result["energy_pointing_game"], result["per_image"])

    return compute


def _objects(name: str) -> Callable[[ScoringContext], Row]:
    def compute(ctx: ScoringContext) -> Row:
        result = ctx.cached("objects", lambda: objects.object_share(ctx.maps, ctx.masks, ctx.other_masks))
        return _row(result[name].mean(), result[name])

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


def _combined_max_box_acc(version: str) -> Callable[[dict[str, np.ndarray], np.ndarray], float]:
    """MaxBoxAcc from the hit tables of every image: the best CAM threshold over all images, never per block."""

    def combine(per_image: dict[str, np.ndarray], labels: np.ndarray) -> float:
        hits = torch.from_numpy(per_image[f"max_box_acc_{version}"])
        if version == "v1":  # (N, T)
            return float(hits.mean(0).amax())
        return float(hits.permute(1, 0, 2).contiguous().mean(1).amax(1).mean())  # (N, I, T) -> (I, N, T)

    return combine


def _combined_pxap(per_image: dict[str, np.ndarray], labels: np.ndarray) -> float:
    """PxAP of all pixels of all images: the per-image histograms summed (integer counts, exact)."""
    table = torch.from_numpy(per_image["pxap"]).double().sum(0)
    return float(localization.pxap_from_histograms(table[0], table[1]))


def _combined_class_mean(per_image: dict[str, np.ndarray], labels: np.ndarray) -> float:
    """TorchRay's class-mean pointing game from every image's hit and label."""
    hits = torch.from_numpy(per_image["pointing_game"]).bool()
    return float(localization.pointing_game_class_mean(hits, torch.from_numpy(np.asarray(labels)))
                 ["pointing_game_class_mean"])


def _info(name: str, higher: bool, low: float, high: float, function: str, description: str, **rest: Any) -> MetricInfo:
    return MetricInfo(name, higher, low, high, function, description, **rest)


_ENTRIES = (
    # -- once per trained model
    _info("top1", True, 0, 1, "accuracy", "top-1 accuracy", scope="model", column="Accuracy"),
    _info("top5", True, 0, 1, "accuracy", "top-5 accuracy (datasets with more than 5 classes)", scope="model"),
    _info("pixel_accuracy", True, 0, 1, "", "a segmenter's share of correctly classified pixels (background "
          "included)", scope="model", column="Pixel accuracy"),
    _info("miou", True, 0, 1, "", "a segmenter's mean IoU over the classes present in its prediction or the "
          "truth (background included)", scope="model", column="mIoU"),
    _info("box_ap50", True, 0, 1, "", "a detector's average precision at IoU 0.5, the mean over classes",
          scope="model", column="Box AP50"),
    # -- from each method's maps
    _info("deletion", False, 0, 1, "deletion_insertion",
          "AUC of the target's probability as salient pixels are deleted", needs=("model",), column="Deletion AUC",
          reads="games", compute=_game("deletion")),
    _info("insertion", True, 0, 1, "deletion_insertion",
          "AUC of the target's probability as salient pixels are restored on a blurred image", needs=("model",),
          column="Insertion AUC", reads="games", compute=_game("insertion")),
    _info("deletion_curve", False, 0, 1, "deletion_insertion",
          "the deletion curve (per image: the probability at each step)", needs=("model",), reads="games",
          compute=_game("deletion_curve")),
    _info("insertion_curve", True, 0, 1, "deletion_insertion",
          "the insertion curve (per image: the probability at each step)", needs=("model",), reads="games",
          compute=_game("insertion_curve")),
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
          needs=("annotations",), column="PG class-mean", combine=_combined_class_mean,
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
          combine=_combined_max_box_acc("v1"),
          compute=lambda c: _row(_boxes(c)["max_box_acc_v1"], _boxes(c)["hits_v1"].float())),
    _info("max_box_acc_v2", True, 0, 1, "max_box_acc",
          "box accuracy averaged over IoU 0.3/0.5/0.7, best region, best CAM threshold", needs=("annotations",),
          column="MaxBoxAccV2", pooled=_best_threshold_accuracy, per_image_score=_hits_at_best_threshold,
          combine=_combined_max_box_acc("v2"),
          # per image: (IoU thresholds, CAM thresholds) hits
          compute=lambda c: _row(_boxes(c)["max_box_acc_v2"], _boxes(c)["hits_v2"].float().permute(1, 0, 2))),
    _info("pxap", True, 0, 1, "pxap", "pixel-wise average precision against object masks", needs=("masks",),
          # per image: (positive, negative) histograms; each image's own AP is its paired-test value
          column="PxAP", compute=_pxap, pooled=_pooled_pxap, per_image_score=_pooled_pxap, combine=_combined_pxap),
    # -- one object of a scene of several (the benchmark's object track): the target versus the distractors
    _info("object_share", True, 0, 1, "object_share",
          "share of positive attribution on the explained object, of that on all the scene's objects",
          needs=("objects",), column="Object share", compute=_objects("object_share")),
    _info("object_share_chance", True, 0, 1, "object_share",
          "the object share of a map spread evenly over the objects: the explained object's share of their "
          "area", needs=("objects",), column="Share at chance", compute=_objects("object_share_chance")),
    # -- faithfulness with headroom: the symmetric MoRF/LeRF gain over several substrates
    *(_info(f"srg_{name}", True, -1, 1, "morf_lerf",
            f"SRG = AUC(LeRF) - AUC(MoRF), removed pixels replaced by the {name!r} substrate", needs=("model",),
            column=f"SRG {name}", group="faithfulness", compute=game_rows.srg(name), reads="games", selected_by="substrates",
            selected_as=name)
      for name in faithfulness.SUBSTRATES),
    # -- discrimination: new inputs explained with the cell's method (metrics.discrimination; eval.grid_games
    # and eval.sensitivity ask for them: a game or test is one entry here); a table of their own
    *(_info(f"{game}_{n}x{n}", True, 0, 1, "play_grid_game",
            f"{title}: share of positive attribution in the explained cell of {n}x{n} grids (chance 1/{n * n})",
            needs=("method",), column=f"{header} {n}x{n}", group="discrimination",
            compute=discrimination.grid_game(game, n), reads="inputs", selected_by="grid_games")
      for game, n, title, header in (("gridpg", 2, "Grid Pointing Game", "GridPG"),
                                     ("gridpg", 3, "Grid Pointing Game", "GridPG"),
                                     ("difull", 2, "Grid Pointing Game on the DiFull wrapper", "DiFull"),
                                     ("dipart", 2, "Grid Pointing Game on the DiPart wrapper", "DiPart"))),
    _info("focus", True, 0, 1, "focus", "Focus: share of positive attribution on the two target-class cells of "
          "2x2 mosaics (chance 0.5)", needs=("method",), column="Focus", group="discrimination",
          compute=discrimination.focus_score, reads="inputs", selected_by="grid_games"),
    _info("random_logit_similarity", False, -1, 1, "random_logit_similarity",
          "Spearman of the map for the label and for a random other class (1: class-agnostic)", needs=("method",),
          column="Random logit sim.", group="discrimination", compute=discrimination.random_logit, reads="inputs",
          selected_by="sensitivity"),
    _info("randomisation_spearman", False, -1, 1, "randomisation_spearman",
          "Spearman of the map with the fully randomised model's map (Adebayo et al.)", needs=("method",),
          column="Randomisation ρ", group="discrimination", compute=discrimination.randomisation, reads="inputs",
          selected_by="sensitivity"),
    *(_info(f"grid_count_{n}x{n}", True, 0, float("inf"), "build_grids",
            f"{n}x{n} grids the model's cells played (0: too few confident images of distinct classes)",
            needs=("model",), digits=0, compute=discrimination.grid_count(n), reads="inputs",
            selected_by=discrimination.plays_grids(n))
      for n in (2, 3)),
    _info("grid_qualified", True, 0, float("inf"), "confident_cells",
          "evaluation images classified correctly with confidence >= eval.grid_threshold (grid cells)",
          needs=("model",), digits=0, compute=discrimination.grid_qualified, reads="inputs",
          selected_by=discrimination.plays_grids()),
    _info("grid_best_confidence", True, 0, 1, "confident_cells",
          "the highest softmax confidence of a correctly classified evaluation image (0: none is correct); grid "
          "cells need eval.grid_threshold", needs=("model",), digits=2, compute=discrimination.grid_best_confidence,
          reads="inputs", selected_by=discrimination.plays_grids()),
    # -- across seeds (the stability cell)
    # stability compares the stored maps: those of the first eval.keep_maps images (camzoo.bench.runner)
    _info("stability_iou", True, 0, 1, "stability", "IoU of two seeds' maps binarised at map*255 > 100 (the maps "
          "kept: the first eval.keep_maps images)", scope="stability", column="Stability IoU"),
    _info("stability_dice", True, 0, 1, "stability", "Dice of two seeds' maps binarised at map*255 > 100",
          scope="stability"),
    _info("stability_spearman", True, -1, 1, "stability", "Spearman rank correlation of two seeds' maps",
          scope="stability", column="Stability Spearman"),
    _info("stability_pearson", True, -1, 1, "stability", "Pearson correlation of two seeds' maps", scope="stability"),
    _info("stability_ssim", True, -1, 1, "stability", "SSIM of two seeds' maps (scikit-image defaults)",
          scope="stability"),
    _info("stability_iou_lfi_compat", True, 0, 1, "stability",
          "the LFI-CAM script's row-wise IoU of two seeds' maps", scope="stability"),
    # -- stored with each trained model, each stability cell and each image set
    _info("train_seconds", False, 0, float("inf"), "", "seconds spent training the model (0: reused)",
          scope="model"),
    _info("train_loss", False, 0, float("inf"), "", "training loss over the model's last epoch", scope="model"),
    _info("stability_pairs", True, 0, float("inf"), "", "pairs of models the stability cell compared",
          scope="stability", digits=0),
    _info("eval_images", True, 0, float("inf"), "", "evaluation images every cell of the dataset explains",
          scope="dataset", digits=0),
    # -- cost
    _info("ms_per_image", False, 0, float("inf"), "", "milliseconds per image to explain", scope="cost",
          column="ms/image", digits=2),
    _info("peak_memory_mb", False, 0, float("inf"), "",
          "peak memory while explaining the evaluation images, MB above the cell's start (CUDA: tensors "
          "allocated; CPU: the resident set's peak, reset per cell on Linux)", scope="cost", column="Peak MB",
          digits=1),
)

SCOPES = ("model", "map", "stability", "cost", "dataset")
NEEDS = ("model", "masks", "boxes", "annotations", "method", "objects", "parts", "shortcut")
READS = ("images", "games", "inputs")


def register_metric(info: MetricInfo) -> MetricInfo:
    """Add a metric to the table (``compute`` makes the benchmark score it; ``column`` tabulates it).

    Args:
        info: the metric's name, direction, range, scope, needs and ``compute``; its ``aliases`` let
            results stored under an old name load and report under the new one; its ``selected_by``
            (e.g. "grid_games") makes it a name that settings list may hold (``GRID_GAMES``), scored
            only when listed.

    Returns:
        ``info``, now in ``METRICS``.

    Raises:
        ValueError: a taken or empty name, an unknown scope or need, a column without ``compute``, a
            ``selected_by`` that is no settings list of names nor a predicate.
    """
    if not info.name or info.name in METRICS:
        raise ValueError(f"a metric needs a new, non-empty name; {info.name!r} is taken or empty")
    if info.scope not in SCOPES:
        raise ValueError(f"metric {info.name!r}: scope must be one of {SCOPES}, got {info.scope!r}")
    if set(info.needs) - set(NEEDS):
        raise ValueError(f"metric {info.name!r}: needs must be among {NEEDS}, got {info.needs!r}")
    if info.reads not in READS:
        raise ValueError(f"metric {info.name!r}: reads must be one of {READS}, got {info.reads!r}")
    if info.scope == "map" and info.compute is None and info.column:
        raise ValueError(f"metric {info.name!r} has a table column but no compute(context) to fill it")
    if not (info.selected_by is None or callable(info.selected_by) or info.selected_by in SELECTING_FIELDS):
        raise ValueError(f"metric {info.name!r}: selected_by must be None, a predicate on EvalSettings or one of "
                         f"{SELECTING_FIELDS}, got {info.selected_by!r}")
    if info.selected_as is not None and not isinstance(info.selected_by, str):
        raise ValueError(f"metric {info.name!r}: selected_as names it in a settings list; give selected_by the list")
    return METRICS.add(info.name, info, info.aliases)


for _entry in _ENTRIES:
    register_metric(_entry)


def table_columns() -> list[MetricInfo]:
    """The metrics the summary tables show, in column order.

    Returns:
        The ``MetricInfo`` of every registered metric with a ``column``, in registration order (the
        table's column order).
    """
    return [info for info in METRICS.values() if info.column]
