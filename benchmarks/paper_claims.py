"""The LFI-CAM paper's two claims, answered from a benchmark store, with CIs and paired tests.

1. Stability: is LFI-CAM's attention map more stable across seeds than ABN's attention map and than
   the baseline's post-hoc maps (Grad-CAM, Eigen-CAM)? Unit: per-image IoU of two seeds' maps
   (binarised at map*255 > 100), averaged over seed pairs; rows are compared on the same images.
2. Accuracy: is LFI-CAM's top-1 accuracy at least the baseline's? Unit: per-test-image correctness
   averaged over seeds, compared on the same test images.

Differences come with a 95 % bootstrap CI (images resampled jointly for both rows, seeds or seed
pairs resampled independently per row) and a two-sided Wilcoxon signed-rank p-value, Holm-corrected
within each claim. Reported whatever the answer.

    python benchmarks/paper_claims.py results/quick [--out claims.md]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from camzoo.bench import stats
from camzoo.bench.record import find_run, latest_run
from camzoo.bench.store import ALL_SEEDS, ResultsStore

RESAMPLES = 2000
STABILITY_ROWS = (("lfi", "attention"), ("abn", "attention"), ("baseline", "gradcam"), ("baseline", "eigencam"))
# The LFI-CAM paper's figure (5 models per kind, different hyper-parameters; its row-wise IoU script):
PAPER_IOU = {"Cat&Dog": (0.30, 0.73), "CIFAR-10": (0.29, 0.60), "STL-10": (0.32, 0.64)}  # (ABN, LFI-CAM)


def paired_difference_ci(a: np.ndarray, b: np.ndarray, resamples: int = RESAMPLES, seed: int = 0) -> tuple[float, float]:
    """95 % CI of mean(a) - mean(b) for (units, images) tables of the same images: images are drawn once
    per resample for both rows (they are paired), units (seeds / seed pairs) independently per row."""
    rng = np.random.default_rng(seed)
    n = a.shape[1]
    images = rng.integers(0, n, size=(resamples, n))
    draws_a = rng.integers(0, a.shape[0], size=(resamples, a.shape[0]))
    draws_b = rng.integers(0, b.shape[0], size=(resamples, b.shape[0]))
    mean_a = a[draws_a].mean(1)  # (R, N): the drawn units' average per image
    mean_b = b[draws_b].mean(1)
    diff = np.take_along_axis(mean_a, images, 1).mean(1) - np.take_along_axis(mean_b, images, 1).mean(1)
    low, high = np.quantile(diff, [0.025, 0.975])
    return float(low), float(high)


def _table(rows: list[dict], kind: str, method: str, metric: str, seed_level: bool) -> np.ndarray | None:
    chosen = [r for r in rows if r["kind"] == kind and r["method"] == method and r["metric"] == metric
              and (r["seed"] != ALL_SEEDS) == seed_level and r["per_image"] is not None]
    if not chosen:
        return None
    if not seed_level:  # stability: (pairs, images)
        table = np.asarray(chosen[0]["per_image"], dtype=np.float64)
        return table if table.ndim == 2 else None
    return np.stack([np.asarray(r["per_image"], dtype=np.float64) for r in sorted(chosen, key=lambda r: r["seed"])])


def _comparisons(reference: np.ndarray, others: dict[str, np.ndarray], higher: bool) -> list[dict]:
    records = []
    for name, other in others.items():
        p, _ = stats.paired_wilcoxon(reference.mean(0), other.mean(0))
        low, high = paired_difference_ci(reference, other)
        records.append({"other": name, "difference": float(reference.mean() - other.mean()), "low": low, "high": high,
                        "p": p})
    for record, adjusted in zip(records, stats.holm([r["p"] for r in records])):
        record["p_holm"] = float(adjusted)
        record["verdict"] = _verdict(record, higher)
    return records


def _verdict(record: dict, higher: bool) -> str:
    """A direction only when both agree: the Wilcoxon test (images as units: the same images for both
    rows) and the bootstrap CI (which also resamples seeds, i.e. the model-to-model spread)."""
    sign = 1 if higher else -1
    excludes_zero = record["low"] > 0 or record["high"] < 0
    if record["p_holm"] < 0.05 and excludes_zero:
        return "better" if sign * record["difference"] > 0 else "worse"
    if record["p_holm"] < 0.05:
        return "not established: the images differ (Wilcoxon), but the CI over seeds includes 0"
    return "no significant difference"


def claims(directory: str | Path, run_id: str | None = None) -> str:
    """The study as Markdown, from ``directory``'s results store alone."""
    with ResultsStore(directory) as store:
        run = find_run(store, run_id) if run_id else latest_run(store)
        rows = [r for r in store.results(run["run_id"], with_per_image=True)]
    lines = [f"Run `{run['run_id']}` (preset `{run['config']['preset']}`, seeds {run['config']['seeds']}), "
             f"device: {run['provenance']['device']}.", ""]

    stability = {f"{k}/{m}": t for k, m in STABILITY_ROWS if (t := _table(rows, k, m, "stability_iou", False)) is not None}
    compat = {f"{k}/{m}": t for k, m in STABILITY_ROWS
              if (t := _table(rows, k, m, "stability_iou_lfi_compat", False)) is not None}
    lines += ["**Claim 1: LFI-CAM's attention is more stable across seeds.**", "",
              "| row | stability IoU [95 % CI] | row-wise IoU (LFI-CAM script) |", "|---|---:|---:|"]
    for name, table in stability.items():
        low, high = stats.hierarchical_bootstrap_ci(table, RESAMPLES)
        compat_mean = compat[name].mean() if name in compat else float("nan")
        lines.append(f"| {name} | {table.mean():.3f} [{low:.3f}, {high:.3f}] | {compat_mean:.3f} |")
    if "lfi/attention" in stability and len(stability) > 1:
        others = {k: v for k, v in stability.items() if k != "lfi/attention"}
        lines += ["", "| LFI-CAM attention minus | difference [95 % CI] | Wilcoxon p (Holm) | verdict |", "|---|---:|---:|---|"]
        for r in _comparisons(stability["lfi/attention"], others, higher=True):
            lines.append(f"| {r['other']} | {r['difference']:+.3f} [{r['low']:+.3f}, {r['high']:+.3f}] | "
                         f"{r['p_holm']:.2g} | {r['verdict']} |")
    else:
        lines.append("\n(LFI-CAM attention, or every row to compare it with, is missing from this run.)")
    paper = "; ".join(f"{d}: ABN {a:.2f}, LFI-CAM {b:.2f}" for d, (a, b) in PAPER_IOU.items())
    lines += ["", f"The paper's mean IoU (its row-wise script, 5 models per kind with different hyper-parameters, "
                  f"not seeds): {paper}. Compare with the row-wise column above.", ""]

    lines += ["**Claim 2: LFI-CAM's accuracy is at least the baseline's.**", ""]
    lfi, base = _table(rows, "lfi", "model", "top1", True), _table(rows, "baseline", "model", "top1", True)
    if lfi is None or base is None:
        lines.append("(LFI-CAM or the baseline is missing from this run.)")
    else:
        (record,) = _comparisons(lfi, {"baseline": base}, higher=True)
        lines += ["| kind | top-1 [95 % CI] |", "|---|---:|"]
        for name, table in (("lfi", lfi), ("baseline", base)):
            low, high = stats.hierarchical_bootstrap_ci(table, RESAMPLES)
            lines.append(f"| {name} | {table.mean():.4f} [{low:.4f}, {high:.4f}] |")
        bound = ("the whole 95 % CI lies above 0" if record["low"] > 0 else
                 f"the 95 % CI cannot exclude a deficit of up to {-record['low']:.4f}")
        lines += ["", f"LFI-CAM minus baseline: {record['difference']:+.4f} [{record['low']:+.4f}, {record['high']:+.4f}], "
                      f"Wilcoxon p = {record['p']:.2g}: {record['verdict']}; {bound}."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("directory", type=Path)
    parser.add_argument("--run", dest="run_id")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    text = claims(args.directory, args.run_id)
    if args.out:
        args.out.write_text(text, encoding="utf-8")
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
