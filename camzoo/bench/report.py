"""Tables (Markdown, CSV, LaTeX) and plots built from a results store alone.

Why from the store alone: `camzoo report DIR` must reproduce every output of a run without the
models or the data, and a new aggregation must never need a rerun.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..io import atomic_write, atomic_write_text, remove_stale_temporaries
from .explore import Results, read_results
from .fingerprint import changed_files
from .missing import Missing, find_missing
from .record import RunRecord
from .shards import merge_shards, shard_paths
from .store import ResultsStore
from .summary import ALPHA, RESAMPLES, row_rank, summarise
from .leaderboard import Board, group_pairwise, latex_board, leaderboard
from .leaderboard import markdown as board_markdown
from .labels import checkpoint_line, model_namer
from .plots import pyplot, gallery_figure, write_pictures
from .reliability import believe_markdown, reported_reasons
from .tables import causal_description, latex_tables, markdown_tables


def _provenance_lines(store: ResultsStore, record: RunRecord) -> list[str]:
    config, provenance, settings = record.config, record.provenance, record.settings
    seeds = record.replicates
    prints = ", ".join(f"{cell.dataset} `{array.item()}`" for cell, array in store.arrays(record.run_id, "fingerprint"))
    return [
        f"- run `{record.run_id}` (preset `{config['preset']}`), {record.created_at}; device: {provenance['device']} "
        "(runs are deterministic on one machine, not bit-identical across CPUs)",
        f"- camzoo {provenance['camzoo']}, torch {provenance['torch']}, timm {provenance['timm']}, Python {provenance['python']}",
        (f"- {seeds} checkpoint(s) per model entry" if config.get("models") else
         f"- {seeds} models per kind (seeds {list(record.seeds)}"
         + (f" x {len(config['variants'])} variants" if config["variants"] else "") + ")")
        + f"; {_images_used(record)} evaluation images"
        + (f"; deletion/insertion: {causal_description(record)}" if "classification" in record.tasks else ""),
        *filter(None, [checkpoint_line(config)]),
        f"- evaluation images' fingerprint (sha256 of pixels and labels): {prints or 'not recorded'}",
        *_input_lines(provenance.get("inputs")),
        *(f"- {cell.dataset}: {note}" for cell, notes in store.arrays(record.run_id, "notes") for note in notes.tolist()),
        f"- maps explain {_explained(record.tasks)}; ↑/↓: higher/lower is better; cells: mean ± sample std over seeds "
        f"[95 % CI: hierarchical bootstrap over seeds, then images, {RESAMPLES} resamples]",
        f"- **bold**: separated from and better than every other non-control row of the column (Wilcoxon signed-rank "
        f"on per-image values averaged over seeds, Holm-corrected within the column, p < {ALPHA}, and an effect that "
        f"is not negligible: Cliff's |δ| ≥ {settings.negligible_delta:g} and a median difference ≥ "
        f"{settings.negligible_span:.0%} of the random–oracle span); ≈: tied for the top (nothing separates them); "
        "ms/image and rows without per-image values are never marked; every tested pair is in pairwise.csv",
        "- significance groups: summary.csv's `<metric>_group` holds compact letters (Piepho 2004) from the same "
        "tests: two rows that share a letter are not separated, two with none in common are"
        + ("" if seeds >= 2 else "; none in this run: one model per kind, and one model's images say nothing "
           "about another training run"),
        "- controls (*random*, *centre*, *edges*, *oracle*) go through the same pipeline as the methods and are "
        "never marked; normalised scores: (value − random) / (oracle − random) of the same model kind",
        "- stability: whole-image IoU of maps binarised at map*255 > 100 (not the LFI-CAM script's row-wise "
        "`lfi_compat` IoU, stored as `stability_iou_lfi_compat`) and Spearman; ± and CI over seed pairs",
    ]


def _input_lines(inputs: dict[str, str] | None) -> list[str]:
    """The provenance line of the files the run read (the content digests in its run id), if any."""
    if not inputs:
        return []
    listed = ", ".join(f"{what} `{digest[:8]}`" for what, digest in inputs.items())
    return [f"- inputs (content sha256, part of the run id: other content is another run): {listed}"]
def _images_used(record: RunRecord) -> str:
    """The evaluation images the run scored: one count, or each dataset's where they differ."""
    counts = record.used_images
    if len(set(counts.values())) <= 1:
        return str(record.images)
    return ", ".join(f"{count} ({dataset})" for dataset, count in counts.items())


def _explained(tasks: tuple[str, ...]) -> str:
    """What the maps of a run's tracks explain, for the run's header."""
    said = {"classification": "the true class",
            "segmentation": "each object of a scene in turn (a segmenter: its class over its mask; the other "
                            "objects are distractors)",
            "detection": "each object of a scene in turn (a detector: its box of its class; the other objects "
                         "are distractors)"}
    return "; ".join(said[task] for task in tasks)


def curves_plot(store: ResultsStore, record: RunRecord, dataset: str, backbone: str, path: Path) -> Path | None:
    """Mean deletion and insertion curves per (kind, method), averaged over images and seeds."""
    rank, run_id = row_rank(record.config), record.run_id
    plt = pyplot()
    rows = [r for r in store.results(run_id, with_per_image=True)
            if r["dataset"] == dataset and r["backbone"] == backbone and r["metric"] in ("deletion_curve", "insertion_curve")]
    if not rows:
        return None
    figure, axes = plt.subplots(1, 2, figsize=(10, 4))
    titles = ("Deletion (lower is better)", "Insertion (higher is better)")
    for axis, metric, title in zip(axes, ("deletion_curve", "insertion_curve"), titles):
        series: dict[tuple[str, str], list[np.ndarray]] = {}
        for row in rows:
            if row["metric"] == metric and row["per_image"] is not None:
                series.setdefault((row["kind"], row["method"]), []).append(row["per_image"].mean(0))
        for (kind, method), curves in sorted(series.items(), key=lambda item: rank(*item[0])):
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


def gallery_plot(store: ResultsStore, record: RunRecord, dataset: str, backbone: str, path: Path) -> Path | None:
    """The same test images explained by every (kind, method) and every model, side by side; a model's
    column is titled as the report names it (a ``[[models]]`` checkpoint by its file, else its seed)."""
    rank, run_id = row_rank(record.config), record.run_id
    gallery: dict[str, np.ndarray] = {}
    for name in ("images", "labels", "class_names"):
        for _cell, array in store.arrays(run_id, name, dataset=dataset, method="gallery"):
            gallery[name] = array
    images, labels, names = gallery.get("images"), gallery.get("labels"), gallery.get("class_names")
    if images is None or len(images) == 0:
        return None
    from .html import thumbnails  # a [[models]] entry with its own image_size: its maps at the images' size

    maps = {(cell.kind, cell.method, cell.variant, cell.seed): array[: len(images)] if array.shape[1:] == images.shape[1:3]
            else thumbnails(array[: len(images)].astype(np.float32), images.shape[1:3]) / np.float32(255)
            for cell, array in store.arrays(run_id, "maps", dataset=dataset, backbone=backbone)}
    if not maps:
        return None
    rows = sorted({(k, m) for k, m, _, _ in maps}, key=lambda km: rank(*km))
    kinds = {(v, s): k for k, _, v, s in maps}  # a column's kind: a [[models]] run has one ("checkpoint")
    columns = sorted(kinds)
    name = model_namer(record.config)
    figure = gallery_figure(images, [str(names[label]) if names is not None else str(label) for label in labels],
                            rows, columns, [name(backbone, kinds[v, s], v, s) for v, s in columns], maps,
                            f"{dataset} / {backbone}: the same test images, every method and model")
    atomic_write(path, lambda tmp: figure.savefig(tmp, format="png", dpi=100, bbox_inches="tight"))
    pyplot().close(figure)
    return path


def summary_markdown(boards: dict[tuple[str, str], Board], pictures: dict[tuple[str, str], dict[str, Path]],
                     provenance: list[str], tables: str, record: RunRecord, believe: str = "",
                     missing: Missing | None = None, changed: list[str] | None = None) -> str:
    """summary.md: what is missing from an incomplete run and which of its input files changed since
    first, then the leaderboards and their pictures, then which columns to believe, then how the run was
    made, then the full tables."""
    parts = ["# camzoo benchmark"] + ([f"> **Incomplete:** {missing.line()}"] if missing else [])
    parts += [f"> **{changed_line(changed)}**"] if changed else []
    for key, board in boards.items():
        parts.append(board_markdown(board, record))
        if pictures.get(key):
            parts.append(" ".join(f"![{name}]({png.name})" for name, png in pictures[key].items()))
    parts += [believe] if believe else []
    parts += ["## The run", "\n".join(provenance), "## Full tables", tables]
    return "\n\n".join(parts) + "\n"


FORMATS = ("md", "csv", "tex")


class ReportFiles(dict):
    """What :func:`write_report` wrote (file name -> path); ``missing``: the run's planned cells the store
    lacks (falsy when the run is complete); ``changed``: the run's input files that now hold other content."""

    missing: Missing | None = None
    changed: list[str] | None = None


def changed_line(changed: list[str]) -> str:
    """One line: the run's input files that changed since it read them, and what to do."""
    return (f"Inputs changed since this run: {'; '.join(changed)}. These numbers are of the content the run "
            "read: rerun the same `camzoo bench` command for the current files (a new run).")


def write_report(directory: str | Path, run_id: str | None = None, formats: tuple[str, ...] = FORMATS,
                 html: bool = False, out: str | Path | None = None) -> ReportFiles:
    """Write summary.md/.csv/.tex (``formats``; csv adds pairwise.csv and long.csv.gz, the
    per-image table of camzoo.bench.load) and the plots for a run (default: the latest) into ``out``
    (default: the directory itself); ``html``: also report.html (camzoo.bench.html).

    A store in a read-only place is read as it is (a distributed run's unmerged shards cannot be
    merged into it); its tables then need ``out``, else an OSError says the place is read-only.
    An incomplete run is reported as far as it goes, saying at the top what is missing (the returned
    files' ``missing``)."""
    directory = Path(directory)
    target = Path(out) if out is not None else directory
    unknown = set(formats) - set(FORMATS)
    if unknown:
        raise ValueError(f"unknown report format(s) {sorted(unknown)}; valid: {', '.join(FORMATS)}")
    if not (directory / "results.sqlite").is_file() and not shard_paths(directory):
        raise FileNotFoundError(f"{directory} holds no results store (results.sqlite); run `camzoo bench --out {directory}`")
    with ResultsStore(directory) as store:
        if store.read_only_reason is not None and out is None:
            raise store.read_only_reason
        if not store.read_only:
            merge_shards(directory, store)  # a distributed run's shards, finished or not (exactly once)
        target.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(target)  # a report killed while writing a file left its hidden temp behind
        record = RunRecord.from_store(store, run_id)  # the run, read once and passed to every part of the report
        if not any(cell.method not in ("model", "gallery") for cell in store.cells(record.run_id)):
            raise ValueError(f"run {record.run_id} in {store.path} has no finished method cells yet (it stopped "
                             f"before its first explanation); rerun `camzoo bench --out {directory}` to resume it")
        summary = summarise(store, record)
        frame, pairwise = summary.frame, summary.pairwise
        if frame.empty:
            raise ValueError(f"run {record.run_id} in {store.path} has no finished method cells yet")
        files = ReportFiles()
        files.missing = missing = find_missing(store, record, directory)
        files.changed = changed = changed_files(record.provenance.get("inputs") or {}, directory)
        provenance = _provenance_lines(store, record)
        boards, pictures = {}, {}
        results: Results | None = None  # every number per image (camzoo.bench.load): read once, for long.csv.gz and report.html
        for (dataset, backbone), group in frame.groupby(["dataset", "backbone"], sort=False):
            stem = f"{dataset}_{backbone}"
            for kind, plot in (("curves", curves_plot), ("gallery", gallery_plot)):
                written = plot(store, record, dataset, backbone, target / f"{kind}_{stem}.png")
                if written is not None:
                    files[written.name] = written
            tests = group_pairwise(pairwise, dataset, backbone)
            cards = group_pairwise(summary.reliability, dataset, backbone)
            boards[(dataset, backbone)] = board = leaderboard(group, tests, cards)
            pictures[(dataset, backbone)] = found = write_pictures(board, group, tests, target)
            files.update({p.name: p for png in found.values() for p in (png, png.with_name(png.stem + ".svg"))})
        cards = summary.reliability
        reported = {key: reported_reasons(group_pairwise(cards, *key)) for key in boards}
        if "md" in formats:
            files["summary.md"] = atomic_write_text(target / "summary.md", summary_markdown(
                boards, pictures, provenance, markdown_tables(frame, record, summary.agreement, reported, summary.grids),
                record,
                believe_markdown(cards), missing, changed))
        if "csv" in formats:
            files["summary.csv"] = atomic_write_text(target / "summary.csv", frame.to_csv(index=False))
            files["pairwise.csv"] = atomic_write_text(target / "pairwise.csv", pairwise.to_csv(index=False))
            files["reliability.csv"] = atomic_write_text(target / "reliability.csv", cards.to_csv(index=False))
            results = read_results(store, record, directory) if results is None else results
            long = results.long  # gzip: ~10 MB of text for the quick preset
            files["long.csv.gz"] = atomic_write(
                target / "long.csv.gz", lambda tmp: long.to_csv(tmp, index=False, compression={"method": "gzip", "mtime": 0}))
        if "tex" in formats:
            boards_tex = [latex_board(board, record) for board in boards.values()]
            tables_tex = latex_tables(frame, record, reported, summary.grids)
            files["summary.tex"] = atomic_write_text(target / "summary.tex", "\n\n".join(boards_tex + [tables_tex]))
        if html:
            from .html import write_html

            notices = ([f"Incomplete: {missing.line()}"] if missing else []) + ([changed_line(changed)] if changed else [])
            files["report.html"] = write_html(directory, store, record, summary, provenance, out=target, pictures=pictures,
                                              results=results, boards=boards, notices=notices)
        return files
