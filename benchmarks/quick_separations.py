"""The separations docs/results.md reports for the quick preset, checked on a finished run.

    python benchmarks/quick_separations.py results/quick

A cheaper preset keeps its verdict power only if these still hold. Each check says that row A is
better than row B on one metric, within one dataset / backbone / kind:

- the oracle control beats the random control on every localization and game column;
- every one-pass gradient-family row beats random and the centre prior on deletion;
- LFI-CAM's attention is more stable across seeds than ABN's (stability IoU);
- the discrimination columns split rows the single-object columns tie: Eigen-CAM is class-agnostic
  (higher Random Logit similarity than Grad-CAM), and HiResCAM keeps DiFull's attribution in the
  target cell where Grad-CAM does not;
- the object track (scenes, a segmenter): the oracle beats random on the object share too, and
  HiResCAM's maps put more of their mass on the object asked for than class-agnostic Eigen-CAM's
  (which sits at the chance share by construction);
- a planted shortcut (digits+watermark): the oracle beats random on the shortcut share.

A check holds when A's mean is better in the metric's direction and the paired test separates the
rows: the Wilcoxon signed-rank test of per-image values (averaged over seeds; stability: over seed
pairs), Holm-corrected over every check of the run, p < 0.05 (``camzoo.bench.stats``, the tests
behind pairwise.csv). Pooled metrics (MaxBoxAcc, PxAP) keep no number per image: there A must beat
B for every seed. Exit status 1 when a check fails.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from camzoo.bench import load
from camzoo.bench.stats import holm, paired_wilcoxon
from camzoo.methods import get_method
from camzoo.methods.registry import shares_one_pass
from camzoo.metrics import METRICS

ALPHA = 0.05
# columns where the oracle control must beat random (those a run has; controls skip SRG)
ORACLE_COLUMNS = ("deletion", "insertion", "pointing_game", "energy_pointing_game_mask", "energy_pointing_game_box",
                  "max_box_acc_v2", "pxap", "gridpg_2x2", "gridpg_3x3", "difull_2x2", "dipart_2x2", "focus",
                  "object_share", "shortcut_share")


@dataclass
class Check:
    group: str  # dataset / backbone / kind
    better: str
    worse: str
    metric: str
    mean_better: float
    mean_worse: float
    p: float  # the paired test's p (nan: a pooled metric, compared seed by seed)
    right_way: bool
    p_holm: float = float("nan")

    @property
    def holds(self) -> bool:
        return self.right_way and (np.isnan(self.p) or self.p_holm < ALPHA)


def _per_image(long, kind: str, method: str, metric: str) -> np.ndarray | None:
    """Per-image values of one row averaged over seeds (stability: over seed pairs), by image index."""
    rows = long[(long["kind"] == kind) & (long["method"] == method) & (long["metric"] == metric)]
    if rows.empty:
        return None
    return rows.groupby("image")["value"].mean().sort_index().to_numpy()


def _per_seed(cells, kind: str, method: str, metric: str) -> np.ndarray | None:
    rows = cells[(cells["kind"] == kind) & (cells["method"] == method) & (cells["metric"] == metric)]
    return None if rows.empty else rows.sort_values("seed")["value"].to_numpy(dtype=float)


def compare(long, cells, group: str, kind: str, better: str, worse: str, metric: str) -> Check | None:
    """One check, or None when the run lacks either row or the metric; ``long`` and ``cells``: the run's
    frames of the group's dataset and backbone only (two datasets share kinds and method names)."""
    up = METRICS[metric].higher_is_better
    a, b = _per_image(long, kind, better, metric), _per_image(long, kind, worse, metric)
    if a is not None and b is not None and a.shape == b.shape:
        p, _ = paired_wilcoxon(a, b)
        mean_a, mean_b = float(np.nanmean(a)), float(np.nanmean(b))
        return Check(group, better, worse, metric, mean_a, mean_b, p, (mean_a > mean_b) if up else (mean_a < mean_b))
    a, b = _per_seed(cells, kind, better, metric), _per_seed(cells, kind, worse, metric)
    if a is None or b is None or a.shape != b.shape or np.isnan(a).all():
        return None
    right_way = bool(np.all(a > b) if up else np.all(a < b))
    return Check(group, better, worse, metric, float(a.mean()), float(b.mean()), float("nan"), right_way)


def checks(results) -> list[Check]:
    found: list[Check] = []
    cells = results.cells
    scopes: dict[tuple[str, str], tuple] = {}  # (dataset, backbone) -> its long and cells frames, filtered once
    for (dataset, backbone, kind), rows in cells.groupby(["dataset", "backbone", "kind"]):
        group = f"{dataset} / {backbone} / {kind}"
        if (dataset, backbone) not in scopes:
            scopes[dataset, backbone] = tuple(frame[(frame["dataset"] == dataset) & (frame["backbone"] == backbone)]
                                              for frame in (results.long, cells))
        methods = set(rows["method"])
        wanted = [("oracle", "random", metric) for metric in ORACLE_COLUMNS]
        one_pass = sorted(m for m in methods if m not in ("model", "gallery") and not get_method(m).reference
                          and shares_one_pass(get_method(m)))
        wanted += [(method, control, "deletion") for method in one_pass for control in ("random", "centre")]
        # Grad-CAM's map changes with the class, class-agnostic Eigen-CAM's does not (lower is better)
        wanted += [("gradcam", "eigencam", "random_logit_similarity"), ("hirescam", "gradcam", "difull_2x2")]
        # the object track: a class-specific map finds the object asked for, class-agnostic Eigen-CAM cannot
        wanted += [("hirescam", "eigencam", "object_share")]
        for better, worse, metric in wanted:
            if better in methods and worse in methods:
                check = compare(*scopes[dataset, backbone], group, kind, better, worse, metric)
                if check is not None:
                    found.append(check)
        if kind == "lfi":  # across kinds: LFI-CAM's attention against ABN's, on stability
            check = _across_kinds(results, dataset, backbone)
            if check is not None:
                found.append(check)
    tested = [c for c in found if not np.isnan(c.p)]
    for check, adjusted in zip(tested, holm([c.p for c in tested])):
        check.p_holm = float(adjusted)
    return found


def _across_kinds(results, dataset: str, backbone: str) -> Check | None:
    long = results.long[(results.long["dataset"] == dataset) & (results.long["backbone"] == backbone)]
    a = _per_image(long, "lfi", "attention", "stability_iou")
    b = _per_image(long, "abn", "attention", "stability_iou")
    if a is None or b is None or a.shape != b.shape:
        return None
    p, _ = paired_wilcoxon(a, b)
    return Check(f"{dataset} / {backbone}", "lfi/attention", "abn/attention", "stability_iou", float(a.mean()),
                 float(b.mean()), p, float(a.mean()) > float(b.mean()))


def table(found: list[Check]) -> str:
    lines = ["| group | better | worse | metric | means | p (Holm) | holds |", "|---|---|---|---|---|---|---|"]
    for c in found:
        p = "every seed" if np.isnan(c.p) else f"{c.p_holm:.1e}"
        lines.append(f"| {c.group} | {c.better} | {c.worse} | {c.metric} | {c.mean_better:.3f} vs {c.mean_worse:.3f} "
                     f"| {p} | {'yes' if c.holds else '**no**'} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("directory", type=Path)
    args = parser.parse_args(argv)
    results = load(args.directory)
    found = checks(results)
    print(f"run {results.run_id}: {sum(c.holds for c in found)} of {len(found)} separations hold")
    print(table(found))
    return 0 if found and all(c.holds for c in found) else 1


if __name__ == "__main__":
    sys.exit(main())
