"""report.html: one self-contained page to explore a run (tables, curves, every map of every image).

Why one file: a reader opens it from ``file://``, mails it or attaches it to a paper's supplement;
nothing is fetched when it is viewed (no CDN, no server). The data goes in as JSON, the maps as
PNG sprite sheets (one grayscale sheet per model and method: the page colours and blends them, so
a quick-preset report stays a few MB), and the page itself (report_template.html, shipped with the
package) is plain HTML, CSS and vanilla JS. Every number comes from the report's own summary
(camzoo.bench.summary / tables) and from camzoo.bench.load, never recomputed differently here.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import re
from importlib import resources
from pathlib import Path
from typing import Any
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from ..io import atomic_write_text
from .explore import Results, read_results
from .grid_status import GridPlay
from .labels import model_namer
from .record import RunRecord
from .store import ALL_SEEDS, ResultsStore
from .leaderboard import Board, group_pairwise, leaderboard, letters, note
from .reliability import CARD_COLUMNS, card_line, reported_reasons
from .summary import Column, Summary, row_rank
from .tables import (agreement_text, cell_parts, description, format_number, full_tables, method_label, table_header,
                     table_rows)

TEMPLATE = "report_template.html"
PLACEHOLDER = "/*CAMZOO_DATA*/null"
MAX_IMAGES = 256  # evaluation images in the per-image browser (the first N)
THUMB = 48  # longest side of a map thumbnail, in pixels


def write_html(directory: str | Path, store: ResultsStore, record: RunRecord, summary: Summary,
               provenance: list[str], max_images: int = MAX_IMAGES, thumb: int = THUMB,
               out: str | Path | None = None, pictures: Mapping[tuple[str, str], Mapping[str, Path]] | None = None,
               results: Results | None = None, boards: Mapping[tuple[str, str], Board] | None = None,
               notices: list[str] | None = None) -> Path:
    """Write ``report.html`` for the run ``record`` of the store in ``directory`` into ``out`` (default: the
    directory; elsewhere for a store in a read-only place) and return its path. ``pictures``: the PNGs
    of camzoo.bench.plots per (dataset, backbone), embedded at the top of each group; ``results``: the
    run as camzoo.bench.load reads it, when the caller has it already (else it is read here); ``boards``:
    the leaderboards summary.md shows, per (dataset, backbone) (else they are built here); ``notices``:
    lines the page shows above everything (an incomplete run's missing cells, inputs changed since)."""
    results = read_results(store, record, directory) if results is None else results
    data = page_data(store, record, summary, provenance, results, max_images, thumb, pictures, boards)
    data["notices"] = list(notices or [])
    template = resources.files(__package__).joinpath(TEMPLATE).read_text(encoding="utf-8")
    if template.count(PLACEHOLDER) != 1:
        raise RuntimeError(f"{TEMPLATE} must hold the data placeholder {PLACEHOLDER!r} exactly once")
    target = Path(out) if out is not None else Path(directory)
    return atomic_write_text(target / "report.html", template.replace(PLACEHOLDER, _script_json(data)))


def _script_json(data: Any) -> str:
    """JSON that is safe inside <script>: no NaN (not JSON), no '</' (would close the tag)."""
    return json.dumps(_finite(data), separators=(",", ":"), allow_nan=False).replace("</", "<\\/")


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    if isinstance(value, (np.floating, np.integer, np.bool_)):
        return _finite(value.item())
    return value


def inline_markdown(text: str) -> str:
    """The report's provenance lines (Markdown) as HTML: escaped, with **bold**, *italic* and `code`."""
    text = html.escape(text, quote=False)
    text = re.sub(r"`([^`]+)`", r"<code>\1</code>", text)
    text = re.sub(r"\*\*([^*]+)\*\*", r"<b>\1</b>", text)
    return re.sub(r"\*([^*]+)\*", r"<i>\1</i>", text)


def page_data(store: ResultsStore, record: RunRecord, summary: Summary, provenance: list[str],
              results: Results, max_images: int = MAX_IMAGES, thumb: int = THUMB,
              pictures: Mapping[tuple[str, str], Mapping[str, Path]] | None = None,
              boards: Mapping[tuple[str, str], Board] | None = None) -> dict[str, Any]:
    """Everything the page shows, as plain JSON-able data."""
    groups = []
    for (dataset, backbone), frame in summary.frame.groupby(["dataset", "backbone"], sort=False):
        cards = group_pairwise(summary.reliability, dataset, backbone)
        board = (boards or {}).get((dataset, backbone))
        if board is None:
            board = leaderboard(frame, group_pairwise(summary.pairwise, dataset, backbone), cards)
        groups.append({
            "dataset": dataset, "backbone": backbone, "leaderboard": board_data(board, record),
            "pictures": picture_uris((pictures or {}).get((dataset, backbone), {})),
            "cards": card_data(cards),
            "tables": summary_tables(frame, record, summary.agreement.get((dataset, backbone)),
                                     reported_reasons(cards), summary.grids.get((dataset, backbone), ())),
            "curves": curve_data(results, dataset, backbone),
            "browser": browser_data(store, record, results, dataset, backbone, max_images, thumb),
        })
    from ..methods import reference_method_names

    return {"run_id": record.run_id, "created_at": record.created_at, "preset": record.config.get("preset"),
            "controls": reference_method_names(),  # the registry's control rows (dashed curves, "(control)")
            "provenance_html": [inline_markdown(line[2:] if line.startswith("- ") else line) for line in provenance],
            "provenance": dict(record.provenance), "config": record.config, "groups": groups}


# --- tables ---------------------------------------------------------------------------------------
def board_data(board: Board, record: RunRecord) -> dict[str, Any]:
    """The leaderboard: summary.md's, with separate kind, method and rank cells (the page has no column limit)."""
    def cells(row: pd.Series) -> list[dict[str, Any]]:
        return [{"text": format_number(row[f"{c.metric}_mean"], c.digits), "letters": letters(row, c),
                 "value": float(row[f"{c.metric}_mean"])} for c in board.columns]

    return {"note": note(board, record), "columns": _columns(board.columns, record),
            "rows": [{"kind": r["kind"], "method": r["method"], "rank": float(r["mean_rank"]), "cells": cells(r)}
                     for _, r in board.ranked.iterrows()],
            "controls": [{"kind": r["kind"], "method": r["method"], "cells": cells(r)} for _, r in board.controls.iterrows()]}


def _columns(columns: list[Column], record: RunRecord, reported: Mapping[str, str] | None = None
             ) -> list[dict[str, str]]:
    """Short headers (marked † where the column does not rank); the full description and protocol on hover."""
    reported = reported or {}
    return [{"metric": c.metric, "header": table_header(c, reported),
             "title": description(c, record) + (f" — not ranked: {reported[c.metric]}" if c.metric in reported else "")}
            for c in columns]


def card_data(cards: pd.DataFrame) -> list[dict[str, Any]]:
    """"Which columns to believe": each card's line, and every field of it (shown on click)."""
    return [{"metric": card["metric"], "verdict": card["verdict"], "line_html": inline_markdown(card_line(card)),
             "fields": [[key, _finite(card[key])] for key in CARD_COLUMNS if key not in ("dataset", "backbone")]}
            for _, card in cards.iterrows()]


def summary_tables(frame: pd.DataFrame, record: RunRecord, agreement: Mapping[str, Any] | None,
                   reported: Mapping[str, str] | None = None, plays: Sequence[GridPlay] = ()) -> list[dict[str, Any]]:
    """The full tables of summary.md for one (dataset, backbone), cell for cell, with sortable values;
    each cell also in parts (mean, "± std [CI]", mark), so that the page can fold the CIs away; ``plays``:
    each model's grids (Summary.grids), for the discrimination table's line on grids not played."""
    tables = []
    for table in full_tables(frame, record, reported, plays):
        rows = []
        for _, row in table_rows(frame, table).iterrows():
            cells = []
            for c in table.columns:
                value = row[f"{c.metric}_norm" if table.normalised else f"{c.metric}_mean"]
                parts = (format_number(value, 2), "", "") if table.normalised else cell_parts(row, c)
                best = bool(not table.normalised and row.get(f"{c.metric}_best", False))
                cells.append({"text": "".join(parts), "parts": list(parts), "value": float(value), "best": best,
                              "tie": bool(not table.normalised and row.get(f"{c.metric}_tie", False))})
            rows.append({"kind": row["kind"], "method": row["method"], "label": method_label(row, ("", "")),
                         "reference": bool(row.get("reference", False)), "cells": cells})
        text = agreement_text(agreement) if table.name == "faithfulness" and agreement else ""
        tables.append({"name": table.name, "title": table.title, "notes": table.notes, "note": text, "rows": rows,
                       "columns": _columns(table.columns, record, {} if table.normalised else reported)})
    return tables


def picture_uris(pictures: Mapping[str, Path]) -> list[dict[str, str]]:
    """The leaderboard's PNGs (camzoo.bench.plots) as data: URIs, the heat-map first."""
    return [{"name": name, "uri": "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")}
            for name, path in pictures.items()]


# --- curves ---------------------------------------------------------------------------------------
def curve_data(results: Results, dataset: str, backbone: str) -> list[dict[str, Any]]:
    """Deletion and insertion curves (mean over images) of every model, grouped by (kind, method)."""
    rank = row_rank(results.config)
    curves = results.curves[(results.curves["dataset"] == dataset) & (results.curves["backbone"] == backbone)]
    found = []
    for metric, title in (("deletion_curve", "Deletion (lower is better)"), ("insertion_curve", "Insertion (higher is better)")):
        chosen = curves[curves["metric"] == metric]
        if chosen.empty:
            continue
        series = []
        for (kind, method), rows in sorted(chosen.groupby(["kind", "method"]), key=lambda item: rank(*item[0])):
            models = [group.sort_values("step")["value"].round(5).tolist()
                      for _, group in rows.groupby(["variant", "seed"])]
            series.append({"kind": kind, "method": method, "models": models})
        x = chosen.drop_duplicates("step").sort_values("step")["fraction"].round(5).tolist()
        found.append({"metric": metric, "title": title, "x": x, "series": series})
    return found


# --- the per-image browser ------------------------------------------------------------------------
def sprite(frames: np.ndarray, columns: int) -> str:
    """(N,h,w) or (N,h,w,3) uint8 frames tiled row-major into one PNG, as a data: URI."""
    from PIL import Image

    count, height, width = frames.shape[:3]
    rows = max(1, math.ceil(count / columns))
    padded = np.zeros((rows * columns, *frames.shape[1:]), dtype=np.uint8)
    padded[:count] = frames
    grid = padded.reshape(rows, columns, height, width, *frames.shape[3:]).swapaxes(1, 2)
    grid = grid.reshape(rows * height, columns * width, *frames.shape[3:])
    buffer = io.BytesIO()
    Image.fromarray(grid).save(buffer, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def thumbnails(frames: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize (N,H,W[,C]) frames in [0,1] or uint8 to ``size`` (one batched, antialiased resize) as uint8."""
    array = torch.from_numpy(np.ascontiguousarray(frames)).float()
    scale = 255.0 if frames.dtype != np.uint8 else 1.0
    channels_last = array.ndim == 4
    array = array.permute(0, 3, 1, 2) if channels_last else array[:, None]
    if tuple(array.shape[-2:]) != tuple(size):
        array = torch.nn.functional.interpolate(array, size=size, mode="bilinear", antialias=True, align_corners=False)
    array = (array * scale).round().clamp(0, 255).to(torch.uint8)
    return (array.permute(0, 2, 3, 1) if channels_last else array[:, 0]).numpy()


def _thumb_size(height: int, width: int, thumb: int) -> tuple[int, int]:
    scale = min(1.0, thumb / max(height, width))
    return max(1, round(height * scale)), max(1, round(width * scale))


def _model_key(kind: str, variant: str, seed: int) -> str:
    return f"{kind}|{variant}|{seed}"


def browser_data(store: ResultsStore, record: RunRecord, results: Results, dataset: str, backbone: str,
                 max_images: int, thumb: int) -> dict[str, Any] | None:
    """Maps (sprites), images, ground truth, predictions and per-image metric values of one group."""
    from ..metrics import METRICS

    run_id, rank = record.run_id, row_rank(record.config)
    maps = {(c.kind, c.method, c.variant, c.seed): a
            for c, a in store.arrays(run_id, "maps", dataset=dataset, backbone=backbone)}
    if not maps:
        return None
    gallery = {name: array for name in ("eval_images", "eval_labels", "eval_masks", "eval_boxes", "class_names")
               for _, array in store.arrays(run_id, name, dataset=dataset, method="gallery")}
    count = min(max_images, min(len(a) for a in maps.values()))
    height, width = next(iter(maps.values())).shape[1:]
    size = _thumb_size(height, width, thumb)
    columns = max(1, math.ceil(math.sqrt(count)))
    images = gallery.get("eval_images")
    truth: dict[str, Any] = {}
    if images is not None and len(images) >= count:
        truth["images"] = sprite(thumbnails(images[:count], size), columns)
        truth["labels"] = gallery["eval_labels"][:count].tolist()
        if "eval_masks" in gallery:
            truth["masks"] = sprite(thumbnails(gallery["eval_masks"][:count].astype(np.float32), size), columns)
        if "eval_boxes" in gallery:  # (N,K,4) x0, y0, x1, y1 in image pixels -> thumbnail pixels
            boxes = gallery["eval_boxes"][:count] * np.array([size[1] / images.shape[2], size[0] / images.shape[1]] * 2)
            truth["boxes"] = [[[round(float(v), 2) for v in box] for box in image if not np.isnan(box).any()]
                              for image in boxes]
    predictions = {}
    for cell, logits in store.arrays(run_id, "eval_logits", dataset=dataset, backbone=backbone, method="model"):
        probabilities = torch.from_numpy(logits[:count].astype(np.float32)).softmax(1)
        confidence, predicted = probabilities.max(1)
        predictions[_model_key(cell.kind, cell.variant, cell.seed)] = {
            "class": predicted.tolist(), "p": confidence.round(decimals=3).tolist()}
    rows = sorted({(k, m) for k, m, _, _ in maps}, key=lambda km: rank(*km))
    models = sorted({(k, v, s) for k, _, v, s in maps})
    name = model_namer(record.config)  # a [[models]] checkpoint by its file, else "seed N"
    sprites = {f"{k}|{m}|{v}|{s}": sprite(thumbnails(a[:count].astype(np.float32), size), columns)
               for (k, m, v, s), a in sorted(maps.items())}
    return {
        "count": count, "total": min(len(a) for a in maps.values()), "size": list(size), "columns": columns,
        "classes": [str(c) for c in gallery.get("class_names", [])], "truth": truth, "predictions": predictions,
        "rows": [{"kind": k, "method": m} for k, m in rows],
        "models": [{"kind": k, "variant": v, "seed": int(s), "key": _model_key(k, v, s), "label": name(backbone, k, v, s)}
                   for k, v, s in models],
        "labels": {_model_key(k, v, s): name(backbone, k, v, s) for k, v, s in models},
        "maps": sprites, "metrics": per_image_metrics(results, dataset, backbone, count, METRICS),
    }


def per_image_metrics(results: Results, dataset: str, backbone: str, count: int,
                      metrics: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Per metric: its header and direction, and per (kind, method) the per-image values of every model
    (stability: one entry, the mean over seed pairs), for the first ``count`` images."""
    long = results.long
    chosen = long[(long["dataset"] == dataset) & (long["backbone"] == backbone) & (long["method"] != "model")
                  & (long["image"] < count)]
    found = []
    order = {name: i for i, name in enumerate(metrics)}  # the metrics table's order, as in the summary
    for metric, rows in sorted(chosen.groupby("metric"), key=lambda item: (order.get(item[0], len(order)), item[0])):
        info = metrics.get(metric)
        table: dict[str, dict[str, list]] = {}
        for (kind, method, variant, seed), values in rows.groupby(["kind", "method", "variant", "seed"]):
            per_image = values.groupby("image")["value"].mean().reindex(range(count))
            model = "stability" if seed == ALL_SEEDS else _model_key(kind, variant, seed)
            table.setdefault(f"{kind}|{method}", {})[model] = per_image.round(4).tolist()
        found.append({"metric": metric, "header": (info.column or metric) if info else metric,
                      "higher": bool(info.higher_is_better) if info else True, "values": table})
    return found
