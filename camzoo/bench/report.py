"""Tables (Markdown, CSV, LaTeX) and plots built from a results store alone.

Why from the store alone: `camzoo report DIR` must reproduce every output of a run without the
models or the data, and a new aggregation must never need a rerun.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..io import atomic_write, atomic_write_text
from .store import ALL_SEEDS, ResultsStore


@dataclass(frozen=True)
class Column:
    metric: str  # name in the store
    header: str
    higher_is_better: bool
    source: str  # "model": the model cell; "method": the method cell; "stability": across seeds
    digits: int = 3


def _direction(name: str) -> bool:
    from ..metrics import METRICS

    return METRICS[name].higher_is_better


COLUMNS = (
    Column("top1", "Accuracy", _direction("top1"), "model"),
    Column("deletion", "Deletion AUC", _direction("deletion"), "method"),
    Column("insertion", "Insertion AUC", _direction("insertion"), "method"),
    Column("pointing_game", "Pointing game", _direction("pointing_game"), "method"),
    Column("energy_pointing_game", "Energy PG", _direction("energy_pointing_game"), "method"),
    Column("max_box_acc_v2", "MaxBoxAccV2", _direction("max_box_acc_v2"), "method"),
    Column("pxap", "PxAP", _direction("pxap"), "method"),
    Column("stability_iou", "Stability IoU", _direction("iou"), "stability"),
    Column("stability_spearman", "Stability Spearman", _direction("spearman"), "stability"),
    Column("ms_per_image", "ms/image", False, "method", digits=2),
)
KIND_ORDER = {"baseline": 0, "abn": 1, "lfi": 2}
METHOD_ORDER = {"gradcam": 0, "eigencam": 1, "attention": 2}


def _row_order(kind: str, method: str) -> tuple[int, int, str]:
    return KIND_ORDER.get(kind, 9), METHOD_ORDER.get(method, 9), method


def latest_run(store: ResultsStore) -> dict[str, Any]:
    runs = store.runs()
    if not runs:
        raise ValueError(f"{store.path} holds no benchmark run yet; run `camzoo bench --out {store.directory}` first")
    return runs[-1]


def summary_frame(store: ResultsStore, run_id: str) -> pd.DataFrame:
    """One row per (dataset, backbone, kind, method); mean and std over seeds for each column."""
    rows = pd.DataFrame(store.results(run_id))
    if rows.empty:
        return pd.DataFrame()
    per_seed = rows[rows["seed"] != ALL_SEEDS]
    stability = rows[rows["seed"] == ALL_SEEDS]
    methods = per_seed[~per_seed["method"].isin(["model"])][["dataset", "backbone", "kind", "method"]].drop_duplicates()
    records = []
    for _, cell in methods.iterrows():
        record: dict[str, Any] = {k: cell[k] for k in ("dataset", "backbone", "kind", "method")}
        same_model = (per_seed["dataset"] == cell["dataset"]) & (per_seed["backbone"] == cell["backbone"]) & (
            per_seed["kind"] == cell["kind"])
        for column in COLUMNS:
            if column.source == "stability":
                chosen = stability[(stability["dataset"] == cell["dataset"]) & (stability["backbone"] == cell["backbone"])
                                   & (stability["kind"] == cell["kind"]) & (stability["method"] == cell["method"])]
                mean = chosen[chosen["metric"] == column.metric]["value"]
                std = chosen[chosen["metric"] == f"{column.metric}_std"]["value"]
                record[f"{column.metric}_mean"] = float(mean.iloc[0]) if len(mean) else math.nan
                record[f"{column.metric}_std"] = float(std.iloc[0]) if len(std) else math.nan
                continue
            method = "model" if column.source == "model" else cell["method"]
            values = per_seed[same_model & (per_seed["method"] == method) & (per_seed["metric"] == column.metric)]["value"]
            record[f"{column.metric}_mean"] = float(values.mean()) if len(values) else math.nan
            record[f"{column.metric}_std"] = float(values.std(ddof=0)) if len(values) else math.nan
            record["seeds"] = max(record.get("seeds", 0), len(values))
        records.append(record)
    frame = pd.DataFrame(records)
    frame["_order"] = frame["kind"].map(KIND_ORDER).fillna(9) * 10 + frame["method"].map(METHOD_ORDER).fillna(9)
    frame = frame.sort_values(["dataset", "backbone", "_order", "method"]).drop(columns="_order").reset_index(drop=True)
    for column in COLUMNS:
        best = pd.Series(False, index=frame.index)
        for _, group in frame.groupby(["dataset", "backbone"]):
            values = group[f"{column.metric}_mean"]
            if values.notna().any():
                target = values.max() if column.higher_is_better else values.min()
                best.loc[group.index[values == target]] = True
        frame[f"{column.metric}_best"] = best
    return frame


def _present_columns(frame: pd.DataFrame) -> list[Column]:
    return [c for c in COLUMNS if f"{c.metric}_mean" in frame and frame[f"{c.metric}_mean"].notna().any()]


def _cell_text(row: pd.Series, column: Column, bold: tuple[str, str], pm: str) -> str:
    mean, std = row[f"{column.metric}_mean"], row[f"{column.metric}_std"]
    if mean != mean:
        return "–"
    text = f"{mean:.{column.digits}f}" + (f" {pm} {std:.{column.digits}f}" if std == std else "")
    return f"{bold[0]}{text}{bold[1]}" if row[f"{column.metric}_best"] else text


def markdown_tables(frame: pd.DataFrame) -> str:
    parts = []
    columns = _present_columns(frame)
    for (dataset, backbone), group in frame.groupby(["dataset", "backbone"], sort=False):
        header = ["Kind", "Method"] + [f"{c.header} {'↑' if c.higher_is_better else '↓'}" for c in columns]
        lines = [f"### {dataset} / {backbone}", "", "| " + " | ".join(header) + " |",
                 "|" + "|".join(["---"] * 2 + ["---:"] * len(columns)) + "|"]
        for _, row in group.iterrows():
            cells = [row["kind"], row["method"]] + [_cell_text(row, c, ("**", "**"), "±") for c in columns]
            lines.append("| " + " | ".join(cells) + " |")
        parts.append("\n".join(lines))
    return "\n\n".join(parts)


def latex_tables(frame: pd.DataFrame) -> str:
    columns = _present_columns(frame)
    parts = []
    for (dataset, backbone), group in frame.groupby(["dataset", "backbone"], sort=False):
        arrows = [f"{c.header} " + ("$\\uparrow$" if c.higher_is_better else "$\\downarrow$") for c in columns]
        lines = [
            "\\begin{table}[t]", "\\centering", "\\small",
            f"\\caption{{{dataset} / {backbone}: mean $\\pm$ std over seeds (stability: over seed pairs).}}",
            "\\begin{tabular}{ll" + "r" * len(columns) + "}", "\\toprule",
            "Kind & Method & " + " & ".join(arrows) + " \\\\", "\\midrule",
        ]
        for _, row in group.iterrows():
            cells = [row["kind"], row["method"]] + [_cell_text(row, c, ("\\textbf{", "}"), "$\\pm$") for c in columns]
            lines.append(" & ".join(cells).replace("_", "\\_").replace("–", "--") + " \\\\")
        lines += ["\\bottomrule", "\\end{tabular}", "\\end{table}"]
        parts.append("\n".join(lines))
    return "\n\n".join(parts) + "\n"


def _provenance_lines(store: ResultsStore, run: dict[str, Any]) -> list[str]:
    config, provenance = run["config"], run["provenance"]
    seeds = len(config["seeds"]) * max(1, len(config["variants"]))
    prints = ", ".join(f"{cell.dataset} `{array.item()}`" for cell, array in store.arrays(run["run_id"], "fingerprint"))
    return [
        f"- run `{run['run_id']}` (preset `{config['preset']}`), {run['created_at']}; device: {provenance['device']}",
        f"- camzoo {provenance['camzoo']}, torch {provenance['torch']}, timm {provenance['timm']}, Python {provenance['python']}",
        f"- {seeds} models per kind (seeds {config['seeds']}" + (f" x {len(config['variants'])} variants" if config["variants"] else "")
        + f"); {config['eval']['images']} evaluation images; deletion/insertion with {config['eval']['deletion_steps']} steps",
        f"- evaluation images' fingerprint (sha256 of pixels and labels): {prints or 'not recorded'}",
        "- maps explain the true class; ↑/↓: higher/lower is better; bold: best in the column",
        "- stability: whole-image IoU of maps binarised at map*255 > 100 (not the LFI-CAM script's row-wise "
        "`lfi_compat` IoU, stored as `stability_iou_lfi_compat`) and Spearman, mean ± std over seed pairs",
    ]


def curves_plot(store: ResultsStore, run_id: str, dataset: str, backbone: str, path: Path) -> Path | None:
    """Mean deletion and insertion curves per (kind, method), averaged over images and seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in store.results(run_id, with_per_image=True)
            if r["dataset"] == dataset and r["backbone"] == backbone and r["metric"] in ("deletion_curve", "insertion_curve")]
    if not rows:
        return None
    figure, axes = plt.subplots(1, 2, figsize=(10, 4))
    for axis, metric, title in zip(axes, ("deletion_curve", "insertion_curve"), ("Deletion (lower is better)", "Insertion (higher is better)")):
        series: dict[tuple[str, str], list[np.ndarray]] = {}
        for row in rows:
            if row["metric"] == metric and row["per_image"] is not None:
                series.setdefault((row["kind"], row["method"]), []).append(row["per_image"].mean(0))
        for (kind, method), curves in sorted(series.items(), key=lambda item: _row_order(*item[0])):
            curve = np.mean(curves, axis=0)
            axis.plot(np.linspace(0, 1, len(curve)), curve, label=f"{kind} / {method}")
        axis.set_title(title)
        axis.set_xlabel("fraction of pixels changed")
        axis.set_ylabel("probability of the true class")
        axis.grid(alpha=0.3)
    axes[1].legend(fontsize=8)
    figure.suptitle(f"{dataset} / {backbone}")
    figure.tight_layout()
    atomic_write(path, lambda tmp: figure.savefig(tmp, format="png", dpi=110))
    plt.close(figure)
    return path


def gallery_plot(store: ResultsStore, run_id: str, dataset: str, backbone: str, path: Path) -> Path | None:
    """The same test images explained by every (kind, method) and every seed, side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..explanation import jet_colormap

    gallery: dict[str, np.ndarray] = {}
    for name in ("images", "labels", "class_names"):
        for cell, array in store.arrays(run_id, name, dataset=dataset, method="gallery"):
            gallery[name] = array
    images, labels, names = gallery.get("images"), gallery.get("labels"), gallery.get("class_names")
    if images is None or len(images) == 0:
        return None
    maps = {(cell.kind, cell.method, cell.variant, cell.seed): array[: len(images)]
            for cell, array in store.arrays(run_id, "maps", dataset=dataset, backbone=backbone)}
    if not maps:
        return None
    rows = sorted({(k, m) for k, m, _, _ in maps}, key=lambda km: _row_order(*km))
    models = sorted({(v, s) for _, _, v, s in maps})
    count = len(images)
    figure, axes = plt.subplots(len(rows) + 1, count * len(models),
                                figsize=(1.3 * count * len(models), 1.35 * (len(rows) + 1)), squeeze=False)
    for axis in axes.ravel():
        axis.axis("off")
    for g in range(count):
        axes[0, g * len(models)].imshow(images[g])
        axes[0, g * len(models)].set_title(str(names[labels[g]]) if names is not None else str(labels[g]), fontsize=7)
    for r, (kind, method) in enumerate(rows, start=1):
        axes[r, 0].text(-0.1, 0.5, f"{kind}\n{method}", transform=axes[r, 0].transAxes, ha="right", va="center", fontsize=7)
        for g in range(count):
            for m, (variant, seed) in enumerate(models):
                array = maps.get((kind, method, variant, seed))
                if array is None:
                    continue
                heat = jet_colormap(array[g].astype(np.float32))
                blend = (0.5 * images[g].astype(np.float32) + 0.5 * heat.astype(np.float32)).astype(np.uint8)
                axis = axes[r, g * len(models) + m]
                axis.imshow(blend)
                if r == 1:
                    axis.set_title(f"seed {seed}" + ("" if variant == "default" else f"\n{variant}"), fontsize=6)
    figure.suptitle(f"{dataset} / {backbone}: the same test images, every method and seed", fontsize=9)
    figure.tight_layout()
    atomic_write(path, lambda tmp: figure.savefig(tmp, format="png", dpi=100))
    plt.close(figure)
    return path


def write_report(directory: str | Path, run_id: str | None = None) -> dict[str, Path]:
    """Write summary.md/.csv/.tex and the plots for a run (default: the latest) into the directory."""
    directory = Path(directory)
    if not (directory / "results.sqlite").is_file():
        raise FileNotFoundError(f"{directory} holds no results store (results.sqlite); run `camzoo bench --out {directory}`")
    with ResultsStore(directory) as store:
        run = next((r for r in store.runs() if r["run_id"] == run_id), None) if run_id else latest_run(store)
        if run is None:
            raise ValueError(f"no run {run_id!r} in {store.path}; runs: {', '.join(r['run_id'] for r in store.runs())}")
        frame = summary_frame(store, run["run_id"])
        if frame.empty:
            raise ValueError(f"run {run['run_id']} in {store.path} has no finished method cells yet")
        files: dict[str, Path] = {}
        markdown = "# camzoo benchmark\n\n" + "\n".join(_provenance_lines(store, run)) + "\n\n" + markdown_tables(frame) + "\n"
        files["summary.md"] = atomic_write_text(directory / "summary.md", markdown)
        files["summary.csv"] = atomic_write_text(directory / "summary.csv", frame.to_csv(index=False))
        files["summary.tex"] = atomic_write_text(directory / "summary.tex", latex_tables(frame))
        for (dataset, backbone), _ in frame.groupby(["dataset", "backbone"], sort=False):
            stem = f"{dataset}_{backbone}"
            for kind, plot in (("curves", curves_plot), ("gallery", gallery_plot)):
                written = plot(store, run["run_id"], dataset, backbone, directory / f"{kind}_{stem}.png")
                if written is not None:
                    files[written.name] = written
        return files
