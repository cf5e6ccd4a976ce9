"""Uncertainty and significance for benchmark tables: how a summary cell earns its "± " and its bold.

Why hierarchical: a benchmark cell averages per-image values of S trained models (seeds) on the
same N images. The seed is the unit of replication for a *training procedure*: a second run of
the same recipe draws a new seed, not just new images, and the images scored by one model are
correlated (they share its weights). Resampling all S*N values as if independent would ignore the
between-seed variance and give intervals that are far too narrow when seeds disagree. So the
bootstrap resamples seeds first, then images within each drawn seed (Davison & Hinkley 1997, two-
stage sampling; Saravanan et al. 2020 for the neuroscience version of the same problem).

Significance: per-image values of two rows of the same column are paired (same images, same seed
models), so the rows are compared with a two-sided Wilcoxon signed-rank test on the paired values,
and all pairs of a column are Holm-corrected together. A row is "best" only when it is
significantly better than every other row; otherwise the column is a tie and nothing is bold.

Everything here is a pure function of numpy arrays; nothing reads the store or knows the metrics.
"""

from __future__ import annotations

import functools
import math
import string
import warnings
from itertools import combinations
from typing import Any
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np
from numpy.typing import ArrayLike

__all__ = [
    "hierarchical_bootstrap_ci",
    "seed_std",
    "paired_wilcoxon",
    "holm",
    "significant_best",
    "normalised_score",
]

# Bytes of temporaries per chunk of resamples: indices (int64), gathered values and counts for
# (chunk, S, N) draws. Bounded so that S*N*R never needs all its draws in memory at once.
_CHUNK_BYTES = 200_000_000
_BYTES_PER_DRAW = 32  # int64 image index + int64 flat index + float64 value + float64 count
_CACHE_BYTES = 16_000_000  # largest set of draws kept for reuse (the quick preset's: 7.7 MB)


def _as_seed_image(values: ArrayLike, name: str = "values") -> np.ndarray:
    """(S, N) float64 view of per-image values; 1-D means one seed."""
    array = np.asarray(values, dtype=np.float64)
    if array.ndim == 1:
        array = array[None, :]
    if array.ndim != 2:
        raise ValueError(f"{name} must be 1-D (images) or 2-D (seeds, images); got shape {array.shape}")
    if array.size == 0:
        raise ValueError(f"{name} is empty (shape {array.shape}); need at least one seed and one image")
    return array


def _draw_chunks(n_seeds: int, n_images: int, resamples: int, seed: int | None,
                 chunk: int) -> Iterator[tuple[int, np.ndarray]]:
    """(first resample, (r, S, N) flat indices into the raveled (S, N) array) per chunk of resamples:
    the seed draws of all resamples first (R, S), then the image draws chunk by chunk from the same
    Generator (numpy's integer draws do not depend on how a request is split into chunks).

    Why cached: a seeded bootstrap draws the same indices for every array of the same shape, and a
    report bootstraps hundreds of cells of a few shapes; drawing them once per shape took the quick
    preset's bootstrap from 8 s to about 3 s. ``seed=None`` (fresh entropy) is never cached, nor are
    draws larger than ``_CACHE_BYTES`` (a GPU preset's 1,000 images x 5 seeds would hold 80 MB each).
    """
    if seed is None or resamples * n_seeds * n_images * 8 > _CACHE_BYTES:
        yield from _draws(n_seeds, n_images, resamples, seed, chunk)
    else:
        yield from _cached_draws(n_seeds, n_images, resamples, seed, chunk)


def _draws(n_seeds: int, n_images: int, resamples: int, seed: int | None, chunk: int):
    rng = np.random.default_rng(seed)
    seed_draws = rng.integers(0, n_seeds, size=(resamples, n_seeds))
    for start in range(0, resamples, chunk):  # loops over memory chunks, not over resamples
        stop = min(resamples, start + chunk)
        image_draws = rng.integers(0, n_images, size=(stop - start, n_seeds, n_images))
        yield start, seed_draws[start:stop, :, None] * n_images + image_draws


@functools.lru_cache(maxsize=6)
def _cached_draws(n_seeds: int, n_images: int, resamples: int, seed: int, chunk: int
                  ) -> tuple[tuple[int, np.ndarray], ...]:
    drawn = tuple(_draws(n_seeds, n_images, resamples, seed, chunk))
    for _, flat in drawn:
        flat.setflags(write=False)  # shared by every caller
    return drawn


def hierarchical_bootstrap_ci(
    values: ArrayLike, resamples: int = 2000, level: float = 0.95, seed: int | None = 0
) -> tuple[float, float]:
    """Percentile confidence interval of the grand mean, resampling seeds then images within seeds.

    values: (S, N) per-image values of one (method, model kind) for S seed-models on the same N
    images; a 1-D array is one seed (S=1: only images are resampled) and (S, 1) holds one value per
    seed (only seeds are resampled). NaN marks a missing value and is left out of every mean.
    One resample draws S seeds with replacement, then, independently for each drawn seed, N images
    with replacement, and averages every non-NaN value drawn. The seed draws of all resamples come
    first (R, S), then the image draws (R, S, N) chunk by chunk from the same Generator, so the
    result depends only on the inputs and ``seed`` (numpy's integer draws do not depend on how a
    request is split into chunks). Returns (low, high); (nan, nan) when every value is NaN.
    """
    array = _as_seed_image(values)
    if isinstance(resamples, bool) or not isinstance(resamples, (int, np.integer)) or resamples < 1:
        raise ValueError(f"resamples must be a positive integer; got {resamples!r}")
    if not 0.0 < float(level) < 1.0:
        raise ValueError(f"level must lie strictly between 0 and 1 (e.g. 0.95); got {level!r}")
    valid = ~np.isnan(array)
    if not valid.any():
        return math.nan, math.nan
    n_seeds, n_images = array.shape
    filled = np.where(valid, array, 0.0).ravel()
    counts = None if valid.all() else valid.ravel().astype(np.float64)

    means = np.empty(resamples, dtype=np.float64)
    chunk = max(1, _CHUNK_BYTES // (_BYTES_PER_DRAW * n_seeds * n_images))
    for start, flat in _draw_chunks(n_seeds, n_images, resamples, seed, chunk):
        stop = start + flat.shape[0]
        total = filled[flat].sum(axis=(1, 2))
        count = np.full(stop - start, float(n_seeds * n_images)) if counts is None else counts[flat].sum(axis=(1, 2))
        with np.errstate(invalid="ignore", divide="ignore"):
            means[start:stop] = np.where(count > 0, total / count, np.nan)
    tail = (1.0 - float(level)) / 2.0
    if np.isnan(means).all():  # only when no resample drew a single non-NaN value
        return math.nan, math.nan
    low, high = np.nanquantile(means, [tail, 1.0 - tail])
    return float(low), float(high)


def hierarchical_bootstrap_ci_of(
    values: ArrayLike, statistic: Callable[[np.ndarray], np.ndarray], resamples: int = 2000,
    level: float = 0.95, seed: int | None = 0,
) -> tuple[float, float]:
    """The same resampling as :func:`hierarchical_bootstrap_ci` (seeds, then images; the same draws)
    for a dataset-level statistic of per-image tables: ``values`` (S, N, ...) hold one table per
    image (e.g. MaxBoxAcc's hits per IoU and CAM threshold, PxAP's histograms), and ``statistic``
    maps the resamples' mean tables (R, ...) to (R,) values — the metric computed on each resample
    exactly as on the whole set (best threshold chosen on the set, histograms pooled). No NaN allowed.
    """
    array = np.asarray(values, dtype=np.float64)
    if array.ndim < 3 or 0 in array.shape:
        raise ValueError(f"values must be (seeds, images, ...) tables with no empty axis; got shape {array.shape}")
    if np.isnan(array).any():
        raise ValueError("values contain NaN; a pooled statistic needs complete per-image tables")
    if isinstance(resamples, bool) or not isinstance(resamples, (int, np.integer)) or resamples < 1:
        raise ValueError(f"resamples must be a positive integer; got {resamples!r}")
    if not 0.0 < float(level) < 1.0:
        raise ValueError(f"level must lie strictly between 0 and 1 (e.g. 0.95); got {level!r}")
    n_seeds, n_images = array.shape[:2]
    cells, table_shape = n_seeds * n_images, array.shape[2:]
    flat_values = array.reshape(cells, -1)
    results = np.empty(resamples, dtype=np.float64)
    # A resample's mean table is (how often it drew each (seed, image)) @ (the tables) / (S*N): one
    # matrix product per chunk instead of gathering S*N tables per resample (measured: 0.5 s -> 0.02 s
    # for 2,000 resamples of 480 MaxBoxAcc tables of 300 cells).
    chunk = max(1, _CHUNK_BYTES // (8 * (2 * cells + flat_values.shape[1]) + _BYTES_PER_DRAW * cells))
    for start, flat in _draw_chunks(n_seeds, n_images, resamples, seed, chunk):
        stop = start + flat.shape[0]
        flat = flat.reshape(stop - start, cells)
        rows = (np.arange(stop - start)[:, None] * cells + flat).ravel()
        counts = np.bincount(rows, minlength=(stop - start) * cells).reshape(stop - start, cells)
        means = (counts.astype(np.float64) @ flat_values) / cells
        results[start:stop] = statistic(means.reshape(stop - start, *table_shape))
    tail = (1.0 - float(level)) / 2.0
    low, high = np.quantile(results, [tail, 1.0 - tail])
    return float(low), float(high)


def seed_std(values_per_seed: ArrayLike) -> float:
    """Sample standard deviation over seeds (ddof=1): the spread a new training run should expect.

    values_per_seed: 1-D, one value per seed; a 2-D (seeds, images) array is first averaged over
    images (ignoring NaN). NaN seeds are left out. Returns NaN with fewer than two seeds left.
    """
    array = np.asarray(values_per_seed, dtype=np.float64)
    if array.ndim == 2:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # an all-NaN seed -> NaN -> dropped below
            array = np.nanmean(array, axis=1)
    if array.ndim != 1:
        raise ValueError(f"values_per_seed must be 1-D (seeds) or 2-D (seeds, images); got shape {array.shape}")
    array = array[~np.isnan(array)]
    if array.size < 2:
        return math.nan
    return float(np.std(array, ddof=1))


def paired_wilcoxon(a: ArrayLike, b: ArrayLike) -> tuple[float, float]:
    """Two-sided Wilcoxon signed-rank test of paired per-image values; returns (p, median of a - b).

    a, b: same shape, e.g. (S, N) from the same seed-models and images, flattened in the same order;
    a pair with NaN on either side is dropped. Zero differences are dropped by the test
    (scipy's zero_method="wilcox") but count in the median. All differences zero -> (1.0, 0.0); no
    pair left -> (1.0, nan); when scipy cannot test (too few pairs) the p-value is 1.0, so a missing
    test never reads as evidence. Note that the S*N pairs are treated as independent, although an
    image appears once per seed.
    """
    a_arr, b_arr = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a_arr.shape != b_arr.shape:
        raise ValueError(
            f"a {a_arr.shape} and b {b_arr.shape} must have the same shape: paired values of the same images"
        )
    a_flat, b_flat = a_arr.ravel(), b_arr.ravel()
    keep = ~(np.isnan(a_flat) | np.isnan(b_flat))
    differences = a_flat[keep] - b_flat[keep]
    if differences.size == 0:
        return 1.0, math.nan
    median = float(np.median(differences))
    if not np.any(differences):
        return 1.0, 0.0
    from scipy.stats import wilcoxon  # here, not at import: scipy.stats adds ~1.5 s to every process start

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # scipy warns on tiny samples; the NaN check below covers it
            p_value = float(wilcoxon(a_flat[keep], b_flat[keep], zero_method="wilcox", alternative="two-sided").pvalue)
    except ValueError:
        return 1.0, median
    return (1.0 if math.isnan(p_value) else p_value), median


def holm(p_values: ArrayLike) -> np.ndarray:
    """Holm-Bonferroni step-down adjusted p-values (same shape; NaN passed through, not counted).

    Holm controls the family-wise error over all comparisons of a column without assuming
    independence, and is uniformly more powerful than plain Bonferroni. adjusted_(i) =
    max_{j<=i} min(1, (m - j + 1) p_(j)) over the m non-NaN p-values sorted ascending, so adjusted
    p-values keep the order of the raw ones and ``adjusted <= alpha`` is exactly Holm's rejection set.
    """
    p = np.asarray(p_values, dtype=np.float64)
    flat = p.ravel()
    finite = ~np.isnan(flat)
    if np.any((flat[finite] < 0) | (flat[finite] > 1)):
        bad = flat[finite][(flat[finite] < 0) | (flat[finite] > 1)]
        raise ValueError(f"p-values must lie in [0, 1] (or be NaN); got {bad}")
    present = flat[finite]
    m = present.size
    if m == 0:
        return p.copy()
    order = np.argsort(present, kind="stable")
    scaled = (m - np.arange(m)) * present[order]
    adjusted_sorted = np.minimum(np.maximum.accumulate(scaled), 1.0)
    adjusted = np.empty(m)
    adjusted[order] = adjusted_sorted
    out = flat.copy()
    out[finite] = adjusted
    return out.reshape(p.shape)


def _direction(differences: np.ndarray, median: float) -> float:
    """Sign of a - b: the median difference, or the mean when the median is exactly zero."""
    if median != 0 and not math.isnan(median):
        return float(np.sign(median))
    if differences.size == 0:
        return 0.0
    return float(np.sign(differences.mean()))


# Above this many pairs scipy's wilcoxon uses its normal approximation whatever the data (method
# "auto"), so one call along an axis gives each row what a call per row would give.
_ASYMPTOTIC_FROM = 51


def _batched_p_values(rows: Mapping[str, np.ndarray]) -> dict[tuple[str, str], float]:
    """:func:`paired_wilcoxon`'s p-value of every pair of rows with more than 50 pairs of values and a
    non-zero difference: one vectorised scipy call per set of pairs that keep the same images (NaN
    dropped, as there). Why: a call per pair costs ~1 ms of scipy's checks, seconds per report (the quick
    preset: ~8 s of ~26 s); rows that skip images (the parts columns) share their pattern per model."""
    missing = {name: np.isnan(values) for name, values in rows.items()}
    groups: dict[bytes, tuple[np.ndarray, list[tuple[str, str]]]] = {}  # the images kept -> those pairs
    for name_a, name_b in combinations(rows, 2):
        keep = ~(missing[name_a] | missing[name_b])
        if keep.sum() >= _ASYMPTOTIC_FROM and np.any(rows[name_a][keep] != rows[name_b][keep]):
            groups.setdefault(np.packbits(keep).tobytes(), (keep, []))[1].append((name_a, name_b))
    from scipy.stats import wilcoxon

    found: dict[tuple[str, str], float] = {}
    for keep, pairs in groups.values():
        a = np.stack([rows[name_a][keep] for name_a, _ in pairs])
        b = np.stack([rows[name_b][keep] for _, name_b in pairs])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            p_values = np.asarray(wilcoxon(a, b, zero_method="wilcox", alternative="two-sided", axis=-1).pvalue)
        found.update({pair: (1.0 if math.isnan(p) else float(p)) for pair, p in zip(pairs, np.atleast_1d(p_values))})
    return found


def significant_best(
    per_image: Mapping[str, ArrayLike], higher_is_better: bool, alpha: float = 0.05,
    separates: Callable[[dict[str, Any]], bool] | None = None,
) -> tuple[str | None, list[dict[str, Any]]]:
    """The row significantly better than every other row of a column, or None (a tie).

    per_image: row name -> (S, N) per-image values, all on the same seeds and images (same shape).
    Every pair of rows is tested with :func:`paired_wilcoxon`, and all those p-values are Holm-
    corrected together. A row wins against another when the Holm p-value is below ``alpha`` and
    the median difference (the mean when the median is 0) points its way. Pass only the rows that
    compete (not reference controls such as random/oracle), since every row must be beaten.
    ``separates(record)`` (optional) may veto a significant difference, e.g. one too small to matter
    (camzoo.bench.summary asks for a non-negligible effect size): only a pair that is significant and
    that it accepts counts as a win.
    Returns (best or None, records) with one record per pair, in ``combinations`` order of the
    mapping: {"a", "b", "median_difference" (of a - b), "p", "p_holm", "n_pairs", "significant"
    (Holm p < alpha, a direction, and ``separates``)}.
    """
    if not 0.0 < float(alpha) < 1.0:
        raise ValueError(f"alpha must lie strictly between 0 and 1; got {alpha!r}")
    names = list(per_image)
    if not names:
        raise ValueError("per_image is empty: need at least one row to pick a best from")
    arrays = {name: np.asarray(per_image[name], dtype=np.float64) for name in names}
    reference_shape = arrays[names[0]].shape
    mismatched = [name for name in names if arrays[name].shape != reference_shape]
    if mismatched:
        shapes = ", ".join(f"{name!r} {arrays[name].shape}" for name in [names[0], *mismatched])
        raise ValueError(f"rows must share one shape (same seeds and images) to be paired; got {shapes}")
    if len(names) == 1:
        return names[0], []

    records: list[dict[str, Any]] = []
    signs: list[float] = []
    flat = {name: arrays[name].ravel() for name in names}
    batched = _batched_p_values(flat)
    for name_a, name_b in combinations(names, 2):
        a_flat, b_flat = flat[name_a], flat[name_b]
        keep = ~(np.isnan(a_flat) | np.isnan(b_flat))
        if (name_a, name_b) in batched:
            p_value, median = batched[name_a, name_b], float(np.median(a_flat[keep] - b_flat[keep]))
        else:
            p_value, median = paired_wilcoxon(a_flat, b_flat)
        signs.append(_direction(a_flat[keep] - b_flat[keep], median))
        records.append({"a": name_a, "b": name_b, "median_difference": median, "p": p_value,
                        "p_holm": math.nan, "n_pairs": int(keep.sum())})
    adjusted = holm([record["p"] for record in records])
    for record, p_holm in zip(records, adjusted):
        record["p_holm"] = float(p_holm)

    better = 1.0 if higher_is_better else -1.0
    wins = {name: 0 for name in names}
    for record, sign in zip(records, signs):
        accepted = True if separates is None else separates(record)  # every pair: it may annotate the record
        record["significant"] = bool(record["p_holm"] < alpha and sign != 0 and accepted)
        if record["significant"]:
            wins[record["a"] if sign == better else record["b"]] += 1
    winners = [name for name in names if wins[name] == len(names) - 1]
    return (winners[0] if winners else None), records


def normalised_score(value: ArrayLike, random_value: ArrayLike, oracle_value: ArrayLike) -> float | np.ndarray:
    """(value - random) / (oracle - random): 0 = no better than noise, 1 = as good as the ground truth.

    Puts metrics of different scales and directions on one axis against the control rows. The
    formula is sign-agnostic, so it also holds for lower-is-better metrics (e.g. deletion AUC, where
    oracle < random: a value between them still lands in [0, 1]). Below 0 means worse than noise, above
    1 better than the oracle. NaN when oracle == random or any input is NaN. Arrays broadcast; scalar
    inputs give a float.
    """
    v, r, o = (np.asarray(x, dtype=np.float64) for x in (value, random_value, oracle_value))
    span = o - r
    with np.errstate(invalid="ignore", divide="ignore"):
        score = np.where(span == 0, np.nan, (v - r) / np.where(span == 0, 1.0, span))
    return float(score) if score.ndim == 0 else score


def compact_letters(rows_best_first: Sequence[str], significant: Iterable[tuple[str, str]]) -> dict[str, str]:
    """A compact letter display (Piepho 2004, insert-absorb): one string of letters per row such that
    two rows share a letter exactly when no test separates them.

    rows_best_first: the rows, best mean first (letter "a" goes to the best row's group).
    significant: the pairs of rows whose paired test is significant.
    Returns {row: letters}. Why letters: a table of p-values for every pair is exact but unreadable;
    shared letters say at a glance which differences are real.
    """
    rows = list(rows_best_first)
    position = {row: index for index, row in enumerate(rows)}
    groups: list[set[str]] = [set(rows)] if rows else []
    for a, b in significant:
        if a not in position or b not in position:
            continue
        split: list[set[str]] = []
        for group in groups:
            if a in group and b in group:
                split += [group - {a}, group - {b}]
            else:
                split.append(group)
        # absorb: a group inside another adds no information
        split = [g for i, g in enumerate(split) if g and not any(
            g < other or (g == other and j < i) for j, other in enumerate(split) if j != i)]
        groups = split
    groups.sort(key=lambda group: sorted(position[row] for row in group))
    alphabet = string.ascii_lowercase + string.ascii_uppercase
    names = [alphabet[i] if i < len(alphabet) else f"{alphabet[i % len(alphabet)]}{i // len(alphabet)}"
             for i in range(len(groups))]
    return {row: "".join(name for name, group in zip(names, groups) if row in group) for row in rows}
