"""What the model uses: the FunnyBirds protocol (Hesse, Schaub-Meyer & Roth, ICCV 2023), batched.

Re-implemented from the reference code (visinf/funnybirds-framework, Apache-2.0; the function names
are cited where each piece is defined). Why batched: the reference runs one image and one threshold
at a time. Here the model sees every intervention of a set once (:func:`probe_parts`, in
camzoo.metrics.parts_probe with the set itself; the class table's structure is in parts_classes),
each map is asked for once per image and class, and every score at every threshold is then a
comparison or a gather into those tables.

Two departures, on purpose (docs/metrics.md): the threshold is chosen on a calibration split (the
reference chooses it on the test set; that choice is reported beside ours), and the minimal sufficient
part sets follow their definition for every class (the reference never finds one for the last class).
The tables are small (images x 32 subsets x classes), so they live on the CPU in float64.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..data.parts_classes import (NUM_SLOTS, SLOT_INDEX, SUBSET_SLOTS, SUBSETS, minimal_sufficient_table,
                                  target_sensitivity_table)
from .parts_probe import PartsProbe, PartsSet, dilated_masks, masked_importance, part_importance, probe_parts
from .stability import average_ranks

__all__ = ["THRESHOLDS", "PartsCurves", "PartsProbe", "PartsSet", "part_importance", "parts_curves", "probe_parts",
           "score_parts"]

THRESHOLDS = torch.linspace(0.01, 0.50, 80, dtype=torch.float64)  # explainer_wrapper.get_p_thresholds
DROP_SHARE = 0.05  # distractibility / background independence: a logit change under 5 % of it is none
Attribute = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class PartsCurves:
    """Per-threshold (rows: THRESHOLDS) per-image tables of one method on one set, plus its label maps."""

    csdc: torch.Tensor  # (T, images classified correctly)
    pc: torch.Tensor  # (T, N)
    dc: torch.Tensor  # (T, N)
    d: torch.Tensor  # (T, images with an irrelevant item): 1 - share of those items marked important
    label_importance: torch.Tensor  # (N, 5 + max_background)
    correct: torch.Tensor  # (N,) bool: the images CSDC reads
    has_irrelevant: torch.Tensor  # (N,) bool: the images D reads

    def selection(self) -> torch.Tensor:
        """evaluate_explainability.main's criterion CSDC/3 + PC/3 + DC/3 + D per threshold (empty = 0)."""
        means = [torch.nan_to_num(table.mean(1), nan=0.0) for table in (self.csdc, self.pc, self.dc, self.d)]
        return (means[0] + means[1] + means[2]) / 3 + means[3]


def _explain(attribute: Attribute, parts: PartsSet, masks: torch.Tensor | None, positions: torch.Tensor,
             targets: torch.Tensor, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Importances (n, 5 + max_background) and total attribution (n,) of the maps of ``targets``.

    ``attribute`` gets the images where the set holds them, and targets on that device."""
    masks = dilated_masks(parts.part_maps, parts.max_background) if masks is None else masks
    importance, total = [], []
    for start in range(0, len(positions), batch_size):
        chosen = positions[start:start + batch_size]
        images = parts.images[chosen]
        maps = attribute(images, targets[start:start + batch_size].to(images.device))
        if not isinstance(maps, torch.Tensor) or maps.shape[0] != len(chosen) or not torch.isfinite(maps).all():
            raise ValueError(f"the attribution must be a finite tensor (B,H,W) with B={len(chosen)}; got "
                             f"{tuple(maps.shape) if isinstance(maps, torch.Tensor) else type(maps).__name__}")
        importance.append(masked_importance(maps, masks[chosen]).cpu())
        total.append(maps.double().flatten(1).sum(1).cpu())
    width = NUM_SLOTS + parts.max_background
    if not importance:
        return torch.empty(0, width, dtype=torch.float64), torch.empty(0, dtype=torch.float64)
    return torch.cat(importance), torch.cat(total)


def important(importance: torch.Tensor, total: torch.Tensor) -> torch.Tensor:
    """(T, N, items) bool: importance > t x the whole map's signed sum (get_important_parts), every t.

    Args:
        importance: (N, items) part importances.
        total: (N,) the sum of each whole map, background included.

    Returns:
        (len(THRESHOLDS), N, items) bool.
    """
    return importance[None] > THRESHOLDS[:, None, None] * total[None, :, None]


def _slot_bits(marked: torch.Tensor) -> torch.Tensor:
    return (marked[..., :NUM_SLOTS].long() << SLOT_INDEX).sum(-1)


def _label_scores(probe: PartsProbe, parts: PartsSet) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The label's logit: unperturbed (N,), with each item removed (N, 5 + B), and which items exist."""
    labels = parts.labels.cpu().long()
    rows = torch.arange(len(labels))
    original = probe.logits[rows, labels]
    singles = probe.subset_logits[rows[:, None], (1 << SLOT_INDEX)[None], labels[:, None]]
    objects = probe.background_logits[rows, :, labels]
    exists = torch.arange(parts.max_background)[None] < parts.background_counts.cpu()[:, None]
    exists = torch.cat([torch.ones(len(labels), NUM_SLOTS, dtype=torch.bool), exists], 1)
    return original, torch.cat([singles, objects], 1), exists


def parts_curves(model_probe: PartsProbe, parts: PartsSet, attribute: Attribute, batch_size: int = 64) -> PartsCurves:
    """CSDC, PC, DC and D of one method on one set, per threshold and image.

    controlled_synthetic_data_check_protocol (label's map, correctly classified images, best overlap
    with a minimal sufficient set); preservation_ / deletion_check_protocol (the predicted class's map,
    keep / remove the important slots, does the argmax stay / change); distractibility_protocol (label's
    map with the background objects: share of the irrelevant items marked important).

    Args:
        model_probe: :func:`probe_parts` of the model on ``parts``.
        parts: the set.
        attribute: ``attribute(images, targets) -> (B,H,W)`` attribution at input size.
        batch_size: images per call of ``attribute``.

    Returns:
        A :class:`PartsCurves`.
    """
    labels = parts.labels.cpu().long()
    n = len(labels)
    predicted = model_probe.logits.argmax(1)
    every = torch.arange(n)
    label_importance, label_total = _explain(attribute, parts, model_probe.masks, every, labels, batch_size)
    other = (predicted != labels).nonzero()[:, 0]
    pred_importance, pred_total = label_importance.clone(), label_total.clone()
    pred_importance[other], pred_total[other] = _explain(attribute, parts, model_probe.masks, other, predicted[other], batch_size)

    marked_label = important(label_importance, label_total)
    label_bits = _slot_bits(marked_label)
    minimal = minimal_sufficient_table(parts.table).double()
    size = SUBSET_SLOTS.sum(1).clamp(min=1)
    overlap = SUBSET_SLOTS[:, None, :].logical_and(SUBSET_SLOTS[None]).sum(-1) / size[:, None]  # (set, marked)
    best = (minimal[:, :, None] * overlap[None]).amax(1)  # (C, marked bits)
    correct = predicted == labels
    csdc = best[labels[None, correct], label_bits[:, correct]]

    pred_bits = _slot_bits(important(pred_importance, pred_total))
    subset_predicted = model_probe.subset_logits.argmax(-1)
    kept = subset_predicted.gather(1, (SUBSETS - 1 - pred_bits).T).T
    removed = subset_predicted.gather(1, pred_bits.T).T
    pc = (kept == predicted[None]).double()
    dc = (removed != predicted[None]).double()

    original, moved, exists = _label_scores(model_probe, parts)
    change = original[:, None] - moved
    irrelevant = exists & ((change.abs() < (DROP_SHARE * original).abs()[:, None]) | (original[:, None] < moved))
    has = irrelevant.any(1)
    hits = (marked_label[:, has] & irrelevant[None, has]).sum(-1)
    d = 1 - hits / irrelevant[has].sum(-1)[None]
    return PartsCurves(csdc.double(), pc, dc, d.double(), label_importance, correct, has)


def background_independence(probe: PartsProbe, parts: PartsSet) -> torch.Tensor:
    """Per background object, 1 unless removing it lowers the label's logit by >= 5 % of it.

    background_independence_protocol: BI = the mean of these (1 - the share of relevant objects).

    Args:
        probe: :func:`probe_parts` of the model on ``parts``.
        parts: the set.

    Returns:
        (objects,) float64 over every background object of every image, in image order.
    """
    original, moved, exists = _label_scores(probe, parts)
    change = original[:, None] - moved
    relevant = (change.abs() >= (DROP_SHARE * original).abs()[:, None]) & (original[:, None] > moved)
    objects = exists[:, NUM_SLOTS:]
    return 1 - relevant[:, NUM_SLOTS:][objects].double()


def single_deletion(probe: PartsProbe, parts: PartsSet, label_importance: torch.Tensor) -> torch.Tensor:
    """single_deletion_protocol: Spearman(slot importances, label-logit drop of removing each slot) x 0.5 + 0.5.

    Args:
        probe: :func:`probe_parts` of the model on ``parts``.
        parts: the set.
        label_importance: (N, items) the label maps' importances (slots first).

    Returns:
        (N,) float64, NaN where either side is constant (SciPy's NaN, which the reference skips).
    """
    original, moved, _ = _label_scores(probe, parts)
    drops = average_ranks(original[:, None] - moved[:, :NUM_SLOTS])
    ranks = average_ranks(label_importance[:, :NUM_SLOTS].double())
    drops, ranks = drops - drops.mean(1, keepdim=True), ranks - ranks.mean(1, keepdim=True)
    spread = (drops.square().sum(1) * ranks.square().sum(1)).sqrt()
    correlation = (drops * ranks).sum(1) / spread
    return torch.where(spread > 0, correlation * 0.5 + 0.5, torch.full_like(spread, float("nan")))


def target_sensitivity(probe: PartsProbe, parts: PartsSet, attribute: Attribute, batch_size: int) -> torch.Tensor:
    """target_sensitivity_protocol's two comparisons per image where its assumption holds.

    The assumption: removing the slots shared with class1 lowers class1's logit more than removing
    those shared with class2, and vice versa (strict). Then (1) class1's map puts more on class1's
    shared slots than class2's map does, (2) class1's map puts less on class2's shared slots.

    Args:
        probe: :func:`probe_parts` of the model on ``parts``.
        parts: the set.
        attribute: ``attribute(images, targets) -> (B,H,W)``.
        batch_size: images per call of ``attribute``.

    Returns:
        (N, 2) float64 of 0/1, NaN rows where the assumption fails (or the class has no pair).
    """
    labels = parts.labels.cpu().long()
    pairs = target_sensitivity_table(parts.table)[labels]
    table = parts.table.cpu()
    rows = torch.arange(len(labels))
    valid = pairs[:, 0] >= 0
    first, second = pairs.clamp(min=0).unbind(1)
    shared = [((table[labels] == table[c]).long() << SLOT_INDEX).sum(-1) for c in (first, second)]
    without = [probe.subset_logits[rows, s] for s in shared]
    drop = [[without[r][rows, c] - probe.logits[rows, c] for r in range(2)] for c in (first, second)]
    holds = (valid & (drop[0][0] < drop[0][1]) & (drop[1][1] < drop[1][0])).nonzero()[:, 0]
    one = _explain(attribute, parts, probe.masks, holds, first[holds], batch_size)[0][:, :NUM_SLOTS]
    two = _explain(attribute, parts, probe.masks, holds, second[holds], batch_size)[0][:, :NUM_SLOTS]
    slots = [SUBSET_SLOTS[s[holds]].double() for s in shared]
    found = torch.full((len(labels), 2), float("nan"), dtype=torch.float64)
    found[holds] = torch.stack([(one * slots[0]).sum(1) > (two * slots[0]).sum(1),
                                (one * slots[1]).sum(1) < (two * slots[1]).sum(1)], 1).double()
    return found


def _probe(memo: dict | None, model: nn.Module, parts: PartsSet, batch_size: int) -> PartsProbe:
    key = ("parts_probe", id(parts))
    if memo is not None and key in memo and memo[key][0] is parts:
        return memo[key][1]
    probe = probe_parts(model, parts, batch_size)
    if memo is not None:
        memo[key] = (parts, probe)
    return probe


def _mean(values: torch.Tensor) -> float:
    """The mean of the defined values (NaN marks an image a score skips); NaN when none is."""
    values = values[~values.isnan()]
    return float(values.mean()) if values.numel() else float("nan")


def _per_image(values: torch.Tensor, where: torch.Tensor) -> torch.Tensor:
    """(N,) values of the images ``where`` selects, NaN elsewhere: every row of a table then holds one
    value per evaluation image, so the paired tests compare rows of different models on the images
    both scored (camzoo.bench.stats drops a pair with a NaN)."""
    found = torch.full((len(where),), float("nan"), dtype=torch.float64)
    found[where.cpu()] = values.double()
    return found


def score_parts(model: nn.Module, attribute: Attribute, test: PartsSet, calibration: PartsSet, batch_size: int,
                memo: dict | None = None) -> dict[str, tuple[float, np.ndarray | None]]:
    """Every FunnyBirds score of one method, at the threshold chosen on ``calibration``.

    The threshold maximises CSDC/3 + PC/3 + DC/3 + D (evaluate_explainability.main, first maximum);
    the choice on ``test`` itself, the reference's, is reported beside it with the mX it gives.
    Com = ((CSDC + PC + DC)/3 + D)/2, Cor = SD, Con = TS, mX = mean(Com, Cor, Con).

    Args:
        model: the classifier.
        attribute: ``attribute(images, targets) -> (B,H,W)`` attribution at input size.
        test: the set scored.
        calibration: the set the threshold is chosen on.
        batch_size: images per forward and per call of ``attribute``.
        memo: a dict kept per model: the probes of each set are computed once and shared by its methods.

    Returns:
        ``parts_<csdc|pc|dc|d|bi|sd|ts|com|cor|con|mx|threshold|threshold_test|mx_test>`` ->
        (value, per-image values or None). One value per test image, NaN where the score skips the
        image (the value is the mean of the rest): CSDC (correctly classified images), PC, DC, D (images
        with an irrelevant item), SD (both sides not constant), TS (the mean of its two comparisons,
        where the assumption holds); BI one value per background object; None for the aggregates.
    """
    probe, calibration_probe = _probe(memo, model, test, batch_size), _probe(memo, model, calibration, batch_size)
    curves = parts_curves(probe, test, attribute, batch_size)
    chosen = int(parts_curves(calibration_probe, calibration, attribute, batch_size).selection().argmax())
    chosen_test = int(curves.selection().argmax())
    sd = single_deletion(probe, test, curves.label_importance)
    ts = target_sensitivity(probe, test, attribute, batch_size)
    per_item = {"parts_bi": background_independence(probe, test), "parts_ts": ts.mean(1)}  # two comparisons per image
    value = {"parts_sd": _mean(sd), "parts_bi": _mean(per_item["parts_bi"]), "parts_ts": _mean(ts)}

    def completeness(index: int) -> tuple[dict[str, torch.Tensor], float]:
        tables = {"parts_csdc": _per_image(curves.csdc[index], curves.correct), "parts_pc": curves.pc[index],
                  "parts_dc": curves.dc[index], "parts_d": _per_image(curves.d[index], curves.has_irrelevant)}
        means = [_mean(t) for t in tables.values()]
        return tables, ((means[0] + means[1] + means[2]) / 3 + means[3]) / 2

    def mx(com: float) -> float:
        return (com + value["parts_sd"] + value["parts_ts"]) / 3

    tables, com = completeness(chosen)
    com_test = completeness(chosen_test)[1]
    rows: dict[str, tuple[float, np.ndarray | None]] = {name: (_mean(t), t.numpy()) for name, t in tables.items()}
    rows.update({name: (value[name], t.numpy()) for name, t in per_item.items()})
    rows["parts_sd"] = (value["parts_sd"], sd.numpy())
    rows.update(parts_com=(com, None), parts_cor=(value["parts_sd"], None), parts_con=(value["parts_ts"], None),
                parts_mx=(mx(com), None), parts_threshold=(float(THRESHOLDS[chosen]), None),
                parts_threshold_test=(float(THRESHOLDS[chosen_test]), None), parts_mx_test=(mx(com_test), None))
    return rows
