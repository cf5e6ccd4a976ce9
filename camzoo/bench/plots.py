"""The leaderboard's pictures: a heat-map of normalised scores and, per metric family, a rank plot.

Why pictures: a reader who wants "which method is best here, and which differences are real" should
not have to decode a table column by column. The heat-map shows every ranked row's normalised score
(value − random) / (oracle − random) in every column that has one (0 = the random control, 1 = the
oracle; summary.py's ``<metric>_norm``), rows in leaderboard order. A rank plot is a critical-difference
diagram (Demšar 2006): each row's mean rank over one family's tested columns on one axis, and a bar
joining rows that no test separates, i.e. no significant paired test of pairwise.csv in any of those
columns. Nothing is tested here: the bars read the summary's own tests, and where the run shows no
significance letters (one seed) it draws no bars and says why. Written with matplotlib's Agg backend
as PNG (report.html embeds it) and SVG (for a paper), the SVG without a date so that reruns match.

The gallery (:func:`gallery_figure`) shows the same test images explained by every method and model;
its labels are placed in points measured against the tiles' size on the page, not in image pixels,
so that they stack above the tiles without overprinting one another or the title at any size.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..io import atomic_write
from .leaderboard import Board, column_ranks, joined_runs, label, letters, rank_families, separated_pairs
from .tables import normalised_columns, short_header


def pyplot() -> Any:
    """matplotlib.pyplot on the Agg backend (files only: a report never opens a window)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save(figure: Any, directory: Path, name: str) -> Path:
    """Write ``name``.png and ``name``.svg into ``directory``; return the PNG's path."""
    plt = pyplot()
    # the labels lie outside the axes: crop to everything drawn, measured once for both files ("tight" draws twice)
    bounds = figure.get_tightbbox(figure.canvas.get_renderer()).padded(0.1)
    # SVG: text as text (a third of the size, and faster), ids that do not change from run to run, no date
    with plt.rc_context({"svg.hashsalt": "camzoo", "svg.fonttype": "none"}):
        for suffix, options in (("svg", {"metadata": {"Date": None}}), ("png", {"dpi": 110})):
            atomic_write(directory / f"{name}.{suffix}",
                         lambda tmp, suffix=suffix, options=options: figure.savefig(
                             tmp, format=suffix, bbox_inches=bounds, **options))
    plt.close(figure)
    return directory / f"{name}.png"


def heatmap(board: Board, group: pd.DataFrame) -> Any | None:
    """The ranked rows' normalised scores, rows x columns; None where no column has them (no oracle)."""
    columns = normalised_columns(group)
    values = board.ranked[[f"{c.metric}_norm" for c in columns]].to_numpy(dtype=float) if columns else np.empty((0, 0))
    if values.size == 0 or np.isnan(values).all():
        return None
    plt = pyplot()
    rows, count = values.shape
    figure, axis = plt.subplots(figsize=(2.2 + 0.9 * count, 1.2 + 0.3 * rows))
    from matplotlib import colormaps

    colours = colormaps["viridis"].with_extremes(bad="#e6e6e6")  # grey: no normalised score
    image = axis.imshow(np.ma.masked_invalid(values), cmap=colours, vmin=0, vmax=1, aspect="auto")
    for (r, c), value in np.ndenumerate(values):  # a few hundred cells: the numbers, on the colour
        axis.text(c, r, "–" if value != value else f"{value:.2f}", ha="center", va="center", fontsize=8,
                  color="white" if value == value and value < 0.55 else "black")
    axis.set_xticks(range(count), [short_header(c) for c in columns], rotation=30, ha="right", fontsize=8)
    axis.set_yticks(range(rows), [label(row) for _, row in board.ranked.iterrows()], fontsize=8)
    figure.colorbar(image, ax=axis, fraction=0.04, pad=0.02).set_label("0 = random control, 1 = oracle", fontsize=8)
    axis.set_title(f"{board.dataset} / {board.backbone}: normalised scores, best rows first", fontsize=9)
    return figure


def rank_plot(title: str, labels: list[str], ranks: list[float], runs: list[tuple[int, int]]) -> Any:
    """A critical-difference diagram: ``ranks`` (ascending) on one axis, labels to either side, a bar per run."""
    plt = pyplot()
    count = len(labels)
    levels: list[float] = []  # where each level's last bar ends
    bars = []
    for i, j in runs:  # stack the bars, each on the first level free at its start
        level = next((k for k, end in enumerate(levels) if end < ranks[i] - 0.02 * count), len(levels))
        levels[level:level + 1] = [ranks[j]]
        bars.append((ranks[i], ranks[j], 0.6 + 0.45 * level))
    top = 1.2 + 0.45 * len(levels)  # the first label line, below the bars
    half = (count + 1) // 2
    figure, axis = plt.subplots(figsize=(7.5, 0.9 + 0.25 * (top + half)))
    low, high = 1 - 0.02 * count, count + 0.02 * count
    for index, (name, rank) in enumerate(zip(labels, ranks)):  # best half on the left, the rest on the right
        left = index < half
        y = top + (index if left else count - 1 - index)
        edge = low if left else high
        axis.plot([rank, rank, edge], [0, y, y], color="#555555", linewidth=0.8, clip_on=False)
        axis.text(edge, y, f" {name} ({rank:.2f}) ", fontsize=8, ha="right" if left else "left", va="center")
    for start, end, y in bars:
        axis.plot([start - 0.03, end + 0.03], [y, y], color="black", linewidth=3, solid_capstyle="round")
    axis.set_xlim(low, high)
    axis.set_ylim(top + half - 0.4, -0.2)
    axis.xaxis.tick_top()
    axis.set_xticks(np.arange(1, count + 1, max(1, count // 12)))
    axis.tick_params(axis="x", labelsize=8)
    axis.set_yticks([])
    for side in ("left", "right", "bottom"):
        axis.spines[side].set_visible(False)
    axis.set_title(title, fontsize=9, pad=22)
    return figure


def write_pictures(board: Board, group: pd.DataFrame, pairwise: pd.DataFrame, directory: Path) -> dict[str, Path]:
    """The heat-map and the rank plots of one (dataset, backbone) as PNG and SVG in ``directory``:
    ``heatmap_<dataset>_<backbone>`` and ``ranks_<dataset>_<backbone>_<family>``. Returns {name: PNG path}."""
    stem = f"{board.dataset}_{board.backbone}"
    written = {}
    figure = heatmap(board, group)
    if figure is not None:
        written[f"heatmap_{stem}"] = save(figure, directory, f"heatmap_{stem}")
    competing = group[~group["reference"].astype(bool)]
    for name, columns in rank_families(group, pairwise).items():
        ranks = column_ranks(competing, columns).mean(axis=1).dropna().sort_values(kind="stable")
        if len(ranks) < 2:
            continue
        rows = competing.loc[ranks.index]
        keys = [f"{row['kind']}/{row['method']}" for _, row in rows.iterrows()]  # pairwise.csv's names
        headers = ", ".join(short_header(c) for c in columns)
        if not any(letters(row, c) for _, row in rows.iterrows() for c in columns):  # as the tables: no letters, no bars
            runs, how = [], f"no bars: {board.why_no_letters or 'no significance letters'}"
        else:
            runs = joined_runs(keys, separated_pairs(pairwise, [c.metric for c in columns]))
            how = "bars: no paired test (Wilcoxon, Holm, p < 0.05) separates the rows"
        title = f"{board.dataset} / {board.backbone}: mean rank (1 = best) over {headers}\n{how}"
        figure = rank_plot(title, [label(row) for _, row in rows.iterrows()], ranks.tolist(), runs)
        written[f"ranks_{stem}_{name}"] = save(figure, directory, f"ranks_{stem}_{name}")
    return written


# --- the gallery: the same test images explained by every (kind, method) and model -------------------
LABEL_CHARACTERS = 40  # a longer column label keeps its end ("…/run2/model.pt": what tells two files apart)


def gallery_figure(images: np.ndarray, group_titles: Sequence[str], rows: Sequence[tuple[str, str]],
                   columns: Sequence[tuple[str, int]], column_titles: Sequence[str],
                   maps: Mapping[tuple[str, str, str, int], np.ndarray], title: str) -> Any:
    """The gallery: a first row of the images, each above its own ``columns`` (a model each: (variant,
    seed), titled ``column_titles``, the images titled ``group_titles``), then one row per (kind, method)
    of ``rows`` with each model's map (``maps``: (kind, method, variant, seed) -> (N,H,W) in [0,1])
    blended over the image. The labels are laid out in points, measured: the column titles above the
    tiles (turned upright when wider than a column), the image titles above them (wrapped to their
    group's width) and the title above all, so that no two texts overlap at any size."""
    from ..explanation import jet_colormap

    plt = pyplot()
    count, height, width = images.shape[:3]
    per_group = len(columns)
    # One mosaic drawn by one imshow: a grid of hundreds of matplotlib axes took 12 s for the quick
    # preset's 38 rows x 12 columns; the mosaic draws the same tiles in about a second.
    pitch_y, pitch_x = height + max(2, height // 8), width + max(2, width // 8)
    canvas = np.full(((len(rows) + 1) * pitch_y, count * per_group * pitch_x, 3), 255, dtype=np.uint8)

    def place(row: int, column: int, tile: np.ndarray) -> None:
        canvas[row * pitch_y:row * pitch_y + height, column * pitch_x:column * pitch_x + width] = tile

    for g in range(count):
        for m in range(per_group):
            place(0, g * per_group + m, images[g])
    for r, (kind, method) in enumerate(rows, start=1):
        for g in range(count):
            for m, (variant, seed) in enumerate(columns):
                array = maps.get((kind, method, variant, seed))
                if array is not None:
                    heat = jet_colormap(array[g].astype(np.float32)).astype(np.float32)
                    place(r, g * per_group + m, (0.5 * images[g].astype(np.float32) + 0.5 * heat).astype(np.uint8))
    figure, axis = plt.subplots(figsize=(max(2.5, 1.3 * count * per_group), 1.35 * (len(rows) + 1)))
    axis.axis("off")
    axis.imshow(canvas, interpolation="nearest")
    for r, (kind, method) in enumerate(rows, start=1):  # left of the tiles, a few points away at any scale
        axis.annotate(f"{kind}\n{method}", (0, r * pitch_y + height / 2), xytext=(-4, 0), textcoords="offset points",
                      ha="right", va="center", fontsize=7)
    axis.apply_aspect()  # the tiles' final size on the page: the labels are measured against it
    renderer = figure.canvas.get_renderer()
    points = 72 / figure.dpi
    column_points = (axis.transData.transform((pitch_x, 0)) - axis.transData.transform((0, 0)))[0] * points

    def above(x: float, text: str, offset: float, size: float) -> Any:
        return axis.annotate(text, (x, 1.0), xycoords=("data", "axes fraction"), xytext=(0, offset),
                             textcoords="offset points", ha="center", va="bottom", fontsize=size)

    def extent(texts: list[Any], side: int) -> float:  # the widest (side 0) or tallest (1), in points
        return max((text.get_window_extent(renderer).size[side] * points for text in texts), default=0.0)

    gap = 2.0
    heads = [above((g * per_group + m) * pitch_x + width / 2, _shortened(column_titles[m]), gap, 6)
             for g in range(count) for m in range(per_group)]
    if extent(heads, 0) > column_points - gap:  # wider than a column: upright, one column wide
        for head in heads:
            head.set_rotation(90)
    groups = [above((g * per_group + per_group / 2) * pitch_x - (pitch_x - width) / 2, str(group_titles[g]),
                    gap + extent(heads, 1) + 3, 7) for g in range(count)]
    for group in groups:
        _wrap_to(group, per_group * column_points - gap, renderer, points)
    axis.set_title(title, fontsize=9, pad=gap + extent(heads, 1) + 3 + extent(groups, 1) + 4)
    return figure


def _shortened(text: str) -> str:
    return text if len(text) <= LABEL_CHARACTERS else "…" + text[-(LABEL_CHARACTERS - 1):]


def _wrap_to(text: Any, room: float, renderer: Any, points: float) -> None:
    """Wrap ``text`` (a matplotlib Text) onto lines at most ``room`` points wide (a word longer than
    that is broken)."""
    import textwrap

    words = text.get_text()
    for _ in range(8):
        wide = text.get_window_extent(renderer).width * points
        if wide <= room:
            return
        longest = max(len(line) for line in text.get_text().split("\n"))
        characters = max(1, int(longest * room / wide))
        text.set_text(textwrap.fill(words, characters, break_long_words=True))
