"""The FunnyBirds protocol's numbers as entries of the metrics table: what a benchmark cell on the
``parts`` dataset reports for each method row (camzoo.metrics.parts computes them).

Why a module of its own: the protocol explains *new* targets with the row's method (the predicted
class, two other classes for target sensitivity) and reads the row's attribution before min-max
normalisation, so its entries need more than the cell's maps; keeping them here keeps the main
table (camzoo.metrics.table) to the metrics every classification cell shares.
"""

from __future__ import annotations

from dataclasses import replace
from collections.abc import Callable

import torch
import torch.nn.functional as F

from .context import MethodSpec, ScoringContext
from .table import MetricInfo, Row, register_metric

# name -> (higher is better, low, high, table header, description)
PARTS_METRICS: dict[str, tuple[bool, float, float, str, str]] = {
    "parts_csdc": (True, 0, 1, "CSDC", "controlled synthetic data check: overlap of the important parts with the "
                   "class's closest minimal sufficient part set (correctly classified images)"),
    "parts_pc": (True, 0, 1, "PC", "preservation check: the prediction stays when the parts not marked important "
                 "are removed"),
    "parts_dc": (True, 0, 1, "DC", "deletion check: the prediction changes when the important parts are removed"),
    "parts_d": (True, 0, 1, "D", "distractibility: parts and distractors whose removal lowers the logit by < 5 % are "
                "not marked important"),
    "parts_bi": (True, 0, 1, "BI", "background independence of the model: distractors whose removal lowers the "
                 "logit by < 5 % (the same in every row of a model)"),
    "parts_sd": (True, 0, 1, "SD", "single deletion: Spearman of part importance and the logit drop of removing "
                 "the part, x 0.5 + 0.5"),
    "parts_ts": (True, 0, 1, "TS", "target sensitivity: the parts shared with a class get more importance when "
                 "that class is explained than when another is"),
    "parts_com": (True, 0, 1, "Com", "completeness: ((CSDC + PC + DC) / 3 + D) / 2"),
    "parts_cor": (True, 0, 1, "Cor", "correctness: SD"),
    "parts_con": (True, 0, 1, "Con", "contrastivity: TS"),
    "parts_mx": (True, 0, 1, "mX", "FunnyBirds' summary: the mean of Com, Cor and Con, at the threshold chosen on "
                 "the calibration split"),
    "parts_threshold": (True, 0, 1, "t (calibration)", "the importance threshold chosen on the calibration split "
                        "(share of the map's sum a part must exceed)"),
    "parts_threshold_test": (True, 0, 1, "t (test)", "the threshold FunnyBirds' code would choose: on the test "
                             "images themselves"),
    "parts_mx_test": (True, 0, 1, "mX (test t)", "mX at the threshold chosen on the test images: the optimistic "
                      "figure FunnyBirds' code reports"),
}


Attribute = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (images, targets) -> (B,H,W) attribution


def attribution(spec: MethodSpec, model: torch.nn.Module, batch_size: int) -> Attribute:
    """What a method row's part importances read: its attribution at input size *before* min-max
    normalisation (FunnyBirds sums raw attributions; a shifted map would pass its threshold test
    differently). A CAM's raw map is upsampled bilinearly, as its maps are; a Captum attribution is
    summed over colour channels with its sign, as FunnyBirds' Captum wrapper does (``reduce="sum"``)."""
    if spec.name.lower().startswith("captum:"):
        spec = replace(spec, options={**dict(spec.options or {}), "reduce": "sum"})

    def attribute(images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        raw = spec.explain(model, images, targets, batch_size=batch_size).raw.float()
        raw = raw.flatten(0, -3) if raw.ndim > 3 else raw  # (B,1,h,w) -> (B,h,w)
        if raw.shape[-2:] != images.shape[-2:]:
            raw = F.interpolate(raw[:, None], size=tuple(images.shape[-2:]), mode="bilinear", align_corners=False)[:, 0]
        return raw

    return attribute


def _scores(ctx: ScoringContext) -> dict[str, Row] | None:
    """Every parts number of the cell, computed once (the first metric asks, the others read it). A
    control that needs the ground truth (``oracle``) has no parts row: which parts a model uses is
    what the protocol measures, not something it is given."""
    from .parts import score_parts

    if ctx.method is None or ctx.method.method_class.needs_ground_truth:
        return None
    memo = ctx.per_model("parts_probes", dict)  # the interventions' logits: once per model, every row shares them
    batch = ctx.settings.chunk_for(ctx.images)
    return ctx.cached("parts", lambda: score_parts(ctx.model, attribution(ctx.method, ctx.model, batch),
                                                   ctx.parts.test, ctx.parts.calibration, batch, memo=memo))


def _compute(name: str) -> Callable[[ScoringContext], Row | None]:
    def compute(ctx: ScoringContext) -> Row | None:
        found = _scores(ctx)
        return None if found is None else found.get(name)

    return compute


def _entry(name: str, spec: tuple[bool, float, float, str, str]) -> MetricInfo:
    higher, low, high, header, description = spec
    return MetricInfo(name, higher, low, high, "score_parts", description, needs=("model", "method", "parts"),
                      column=f"Parts {header}", group="parts", reads="inputs", compute=_compute(name))


for _name, _spec in PARTS_METRICS.items():
    register_metric(_entry(_name, _spec))

