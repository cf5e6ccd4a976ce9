"""A model's method cells: every block of evaluation images explained with every one-pass group, scored,
and the blocks joined into one cell per method.

Why a function of its own: what a method cell holds (its numbers, the kept maps, the cost of each
metric, MetaQuantus' perturbed passes) is the benchmark's definition of a score, and it must not
depend on where cells are written; it runs on a model and its blocks alone, without a store. It is
not in camzoo.bench.evaluation because the perturbed passes (camzoo.bench.perturbation) are built on
that module's explain and score steps.
"""

from __future__ import annotations

from typing import Any
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np
import torch

from .cost import PEAK_METRIC, PeakMemory
from .evaluation import EvalSet, explain_block, score_block

Cell = dict[str, tuple[float | None, np.ndarray | None]]


def score_model(model: torch.nn.Module, scorer: torch.nn.Module, blocks: Iterable[EvalSet],
                groups: Sequence[Sequence[str]], settings_for: Callable[[str], Any], *,
                layers: Mapping[str, str | None], reshape: Callable | None, batch_size: int,
                device: torch.device, keep_maps: int, last_start: int | None = None,
                progress: Callable[[str], None] | None = None) -> Iterator[tuple[str, Cell, dict[str, np.ndarray]]]:
    """Explain and score every block with every group, and yield each method's cell as soon as it is
    complete (on the last block, right after the method is scored): the blocks' rows joined
    (``metrics.combine_blocks``), the maps of the first ``keep_maps`` images, each metric's time.

    Args:
        model: the classifier the methods explain; scorer: its BatchNorm-folded copy, which the games
            query (``fold_batchnorm``; docs/benchmark.md).
        blocks: the evaluation images in order (``EvalStream.blocks()``); the first block's memo lives
            for the whole run and shares the controls' map-only results across models.
        groups: the methods in one-pass groups (``ModelJob.groups``, finished methods left out).
        settings_for: how a method row is scored (``BenchPlan.settings_for``).
        layers, reshape: each row's layer and a ``[[models]]`` entry's reshape rule (the job's source).
        batch_size, device: images per explain call, and where the blocks live.
        keep_maps: maps are kept for the first N evaluation images (gallery, report.html, stability).
        last_start: the first image of the last block (``EvalStream.last_start``): there, each method's
            cell is yielded as soon as the method is scored, so that a run stopped midway keeps it
            (None, or ``eval.reliability = "full"``, whose perturbed passes follow the last group: after
            the last block).
        progress: called with what is being done ("explaining gradcam, ...", "scoring gradcam"), so a
            progress bar moves within a model.

    Yields:
        ``(method, numbers, arrays)`` per method, group by group, ready to be written as one cell.
    """
    parts: dict[str, list[dict]] = {m: [] for group in groups for m in group}
    kept: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {m: [] for m in parts}
    seconds: list[list[float]] = [[] for _ in groups]
    peaks = [0.0 for _ in groups]
    metric_seconds: dict[str, dict[str, float]] = {m: {} for m in parts}  # the reliability card's cost
    labels: list[torch.Tensor] = []
    say = progress or (lambda _text: None)
    # eval.reliability = "full": every method also explained and scored under MetaQuantus' perturbations
    full = [g for g in ([m for m in group if settings_for(m).reliability == "full"] for group in groups) if g]
    perturbed: list = []  # one camzoo.bench.perturbation.PerturbedBlock per block

    def finished(index: int, method: str) -> tuple[str, Cell, dict[str, np.ndarray]]:
        return method, *_method_cell(method, parts.pop(method), torch.cat(labels), seconds[index], peaks[index],
                                     kept.pop(method), metric_seconds.pop(method), perturbed)

    for block in blocks:
        labels.append(block.labels.cpu())
        final = last_start is not None and block.start >= last_start and not full
        model_memo: dict = {}  # what every cell of this model shares on this block (unperturbed scores, grids)
        for index, group in enumerate(groups):
            # a shared pass's time and peak memory are recorded for each of its methods: its forward
            # and backward dominate, so they are close to what each method costs alone (docs/benchmark.md)
            say(f"explaining {', '.join(group)}")
            with PeakMemory(device) as peak:
                explained, timed = explain_block(model, block, group, batch_size, device, layers, reshape,
                                                 warm_up=block.start == 0)
            seconds[index] += timed
            peaks[index] = max(peaks[index], peak.megabytes)
            for method in group:
                say(f"scoring {method}")
                maps, raw = explained.pop(method)
                # the controls share the block's memo (only the first block's memo lives for the whole run)
                parts[method].append(score_block(scorer, block, method, maps, settings_for(method), model_memo,
                                                 block.memo, layers.get(method), reshape, metric_seconds[method]))
                keep = min(keep_maps - block.start, maps.shape[0])
                if keep > 0:
                    kept[method].append((maps[:keep].half().cpu(), raw[:keep].float().cpu().clone()))
                if final:  # the method's cell is complete: hand it over now
                    yield finished(index, method)
        if full:  # after every method: the passes replay the grids the unperturbed cells played
            from .perturbation import perturbed_block

            say("perturbed passes")
            perturbed.append(perturbed_block(model, scorer, block, full, settings_for, layers=layers, reshape=reshape,
                                             batch_size=batch_size, device=device, model_memo=model_memo))
    for index, group in enumerate(groups):
        for method in group:
            if method in parts:  # not yet handed over
                yield finished(index, method)


def _method_cell(method: str, blocks: list[dict], labels: torch.Tensor, seconds: list[float], peak: float,
                 maps: list[tuple[torch.Tensor, torch.Tensor]], timed: dict[str, float],
                 perturbed: list) -> tuple[Cell, dict[str, np.ndarray]]:
    """One method's cell from its blocks' rows: the joined numbers, the kept maps, each metric's seconds
    per evaluation image and the perturbed passes' arrays."""
    from .. import metrics

    cell = metrics.combine_blocks(blocks, labels)
    cell["ms_per_image"] = (1000.0 * float(np.median(seconds)), None)
    cell[PEAK_METRIC] = (peak, None)
    arrays = {"maps": torch.cat([m for m, _ in maps]).numpy(),
              "raw_maps": torch.cat([r for _, r in maps]).numpy()} if maps else {}
    arrays["metric_names"] = np.array(list(timed), dtype=str)
    arrays["metric_seconds"] = np.array(list(timed.values()), dtype=np.float64) / max(len(labels), 1)
    if perturbed:
        from .perturbation import perturbed_arrays

        arrays.update(perturbed_arrays(perturbed, method, reference=cell))
    return cell, arrays
