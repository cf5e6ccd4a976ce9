"""Psychometrics of benchmark metrics: the numbers of each metric's "reliability card".

Why: a saliency metric is a measuring instrument, and an instrument must be reliable before its
readings can rank methods. Tomsett et al. (AAAI 2020, "Sanity checks for saliency metrics") borrow the
psychometrician's checks: do the images (raters) agree on the order of the methods (inter-rater
reliability: Krippendorff's alpha of the within-image ranks), does a second training run give the same
per-image readings (test-retest: ICC(2,1) over seeds), do the per-image scores of the methods move
together (internal consistency: Cronbach's alpha, mean Spearman between methods)? MetaQuantus
(Hedström et al., TMLR 2023; camzoo.bench.metaquantus) adds the two properties of a good estimator:
it should stay put under perturbations that do not change the explained behaviour (noise resilience,
NR) and react to those that do (adversarial reactivity, AR). Effect sizes (Cliff's delta) and the agreement of two rankings
(Kendall's tau with a bootstrap interval) sit here too, for the same cards.

Conventions: every function takes numpy arrays, NaN marks a missing cell, and "higher_is_better" says
which way a metric points (rank 1 / "best" / "worse" follow it). Everything is vectorised: no Python
loop runs over images, samples or resamples (only over a handful of groups or chunks). Like
camzoo.bench.stats, nothing here reads the store, knows the metrics or imports torch/pandas, and scipy
is imported inside the functions that need it (scipy.stats costs ~1.5 s at import).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator

import numpy as np
from numpy.typing import ArrayLike

__all__ = [
    "within_image_ranks",
    "krippendorff_alpha_ordinal",
    "krippendorff_alpha_ci",
    "icc_2_1",
    "cronbach_alpha",
    "mean_offdiagonal_spearman",
    "cliffs_delta",
    "cliffs_delta_many",
    "kendall_tau_ci",
]

# Bytes of temporaries per chunk of bootstrap resamples (as camzoo.bench.stats): bounds the memory of a
# vectorised bootstrap whatever the number of resamples.
_CHUNK_BYTES = 200_000_000
# Largest dense one-hot (raters, units x categories) table of Krippendorff's bootstrap; above it the
# table is a scipy.sparse matrix (real-valued ratings can have as many categories as cells).
_DENSE_ONEHOT_BYTES = 50_000_000


def _as_2d(values: ArrayLike, name: str, axes: str) -> np.ndarray:
    """float64 2-D array, or a ValueError naming ``axes`` (e.g. "(images, methods)")."""
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 2:
        raise ValueError(f"{name} must be 2-D {axes}; got shape {array.shape}")
    return array


def _check_bootstrap(resamples: int, level: float) -> None:
    if isinstance(resamples, bool) or not isinstance(resamples, (int, np.integer)) or resamples < 1:
        raise ValueError(f"resamples must be a positive integer; got {resamples!r}")
    if not 0.0 < float(level) < 1.0:
        raise ValueError(f"level must lie strictly between 0 and 1 (e.g. 0.95); got {level!r}")


def _percentile_interval(draws: np.ndarray, level: float) -> tuple[float, float]:
    """Percentile interval of the non-NaN bootstrap draws; (nan, nan) when all are NaN."""
    draws = draws[~np.isnan(draws)]
    if draws.size == 0:
        return math.nan, math.nan
    tail = (1.0 - float(level)) / 2.0
    low, high = np.quantile(draws, [tail, 1.0 - tail])
    return float(low), float(high)


def _chunks(resamples: int, bytes_per_resample: int) -> Iterator[tuple[int, int]]:
    """(start, stop) of each chunk of resamples that keeps the temporaries under ``_CHUNK_BYTES``."""
    size = max(1, _CHUNK_BYTES // max(1, bytes_per_resample))
    for start in range(0, resamples, size):  # loops over memory chunks, not over resamples
        yield start, min(resamples, start + size)


def _resample_weights(rng: np.random.Generator, count: int, n: int) -> np.ndarray:
    """(count, n) float64: how often each of n rows is drawn by each of ``count`` resamples
    (n draws with replacement each). numpy's integer draws do not depend on how a request is split
    into chunks, so the weights depend only on the seed, not on the chunk size."""
    drawn = rng.integers(0, n, size=(count, n))
    flat = (np.arange(count)[:, None] * n + drawn).ravel()
    return np.bincount(flat, minlength=count * n).reshape(count, n).astype(np.float64)


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """Ascending ranks along the last axis (1 = smallest), ties get their mean rank; NaN stays NaN and
    is not ranked (the other values of the row are ranked among themselves). Vectorised: one argsort."""
    x = np.asarray(values, dtype=np.float64)
    n = x.shape[-1]
    if x.size == 0:
        return x.copy()
    order = np.argsort(x, axis=-1, kind="stable")  # NaN sorts last
    ordered = np.take_along_axis(x, order, axis=-1)
    position = np.arange(n)
    starts = np.ones(ordered.shape, dtype=bool)
    starts[..., 1:] = ordered[..., 1:] != ordered[..., :-1]  # NaN != NaN: each NaN alone (masked below)
    ends = np.ones(ordered.shape, dtype=bool)
    ends[..., :-1] = starts[..., 1:]
    first = np.maximum.accumulate(np.where(starts, position, 0), axis=-1)
    last = np.flip(np.minimum.accumulate(np.flip(np.where(ends, position, n - 1), axis=-1), axis=-1), axis=-1)
    ranked = (first + last) / 2.0 + 1.0
    ranked[np.isnan(ordered)] = np.nan
    out = np.empty_like(ranked)
    np.put_along_axis(out, order, ranked, axis=-1)
    return out


def within_image_ranks(values: ArrayLike, higher_is_better: bool) -> np.ndarray:
    """(N images, M methods) -> (N, M) rank of each method within each image: 1 = best in the metric's
    direction, ties get their mean rank (e.g. 2.5), NaN cells stay NaN and are not ranked (the other
    methods of that image are ranked among themselves, 1..number present)."""
    array = _as_2d(values, "values", "(images, methods)")
    return _average_ranks(-array if higher_is_better else array)


def _ordinal_alpha_from_counts(counts: np.ndarray) -> np.ndarray:
    """Krippendorff's ordinal alpha of each (U units, V ordered categories) count table in (B, U, V).

    The coincidence matrix o_ck = sum_u n_uc (n_uk - [c == k]) / (m_u - 1) over the pairable units
    (m_u >= 2 values), its marginals n_c and the ordinal distance delta_ck = (sum_{g=c..k} n_g -
    (n_c + n_k)/2)^2 = (mid_k - mid_c)^2 with mid_c = sum_{g<=c} n_g - n_c/2, give alpha = 1 - (n - 1)
    sum(o * delta) / sum(n_c n_k delta). Because delta is a squared difference of the mids, both sums
    are contracted without forming the V x V matrices: sum(o * delta) = sum_u 2 m_u/(m_u - 1) sum_c n_uc
    (mid_c - mean of unit u)^2 and sum(n_c n_k delta) = 2 n sum_c n_c (mid_c - mean)^2 (centred, so
    no cancellation). NaN where fewer than two categories are pairable.
    """
    totals = counts.sum(axis=-1)  # (B, U) values per unit
    pairable = totals >= 2
    counts = np.where(pairable[..., None], counts, 0.0)
    totals = np.where(pairable, totals, 0.0)
    n_c = counts.sum(axis=1)  # (B, V) the coincidence matrix's marginals
    n = n_c.sum(axis=-1)
    defined = np.count_nonzero(n_c > 0, axis=-1) >= 2
    safe_n = np.where(defined, n, 1.0)
    mids = (np.cumsum(n_c, axis=-1) - n_c / 2.0) / safe_n[:, None]  # scaled by 1/n: alpha is scale-free
    grand = (n_c * mids).sum(axis=-1) / safe_n
    expected = 2.0 * n * (n_c * (mids - grand[:, None]) ** 2).sum(axis=-1)
    safe_totals = np.where(pairable, totals, 1.0)
    unit_means = np.einsum("buv,bv->bu", counts, mids) / safe_totals
    spread = np.einsum("buv,buv->bu", counts, (mids[:, None, :] - unit_means[..., None]) ** 2)
    weight = np.where(pairable, 2.0 * totals / np.where(pairable, totals - 1.0, 1.0), 0.0)
    observed = (weight * spread).sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        alpha = 1.0 - (n - 1.0) * observed / np.where(defined, expected, 1.0)
    return np.where(defined & (expected > 0), alpha, np.nan)


def _ratings_codes(ratings: ArrayLike) -> tuple[np.ndarray, int]:
    """(R, U) int64 category of each cell (-1 = missing) and the number V of distinct values."""
    array = _as_2d(ratings, "ratings", "(raters, units)")
    valid = ~np.isnan(array)
    codes = np.full(array.shape, -1, dtype=np.int64)
    categories, inverse = np.unique(array[valid], return_inverse=True)
    codes[valid] = inverse.ravel()
    return codes, categories.size


def krippendorff_alpha_ordinal(ratings: ArrayLike) -> float:
    """Krippendorff's alpha with the ordinal difference function (Krippendorff 2011, "Computing
    Krippendorff's alpha-reliability").

    ratings: (R raters, U units); NaN = missing. Each distinct value is an ordered category (so mean
    ranks such as 2.5 work, and only the order of the values matters). Units with fewer than two values
    are not pairable and drop out. Computed from the coincidence matrix of one-hot counts (see
    ``_ordinal_alpha_from_counts``). 1 = perfect agreement, 0 = chance, < 0 = systematic disagreement.
    NaN when undefined: no pairable values or fewer than two categories among them.
    Here the raters are images and the units the methods, each row an image's ``within_image_ranks``.
    """
    codes, n_categories = _ratings_codes(ratings)
    n_units = codes.shape[1]
    if n_categories < 2:
        return math.nan
    valid = codes >= 0
    cells = (np.broadcast_to(np.arange(n_units), codes.shape)[valid]) * n_categories + codes[valid]
    counts = np.bincount(cells, minlength=n_units * n_categories).astype(np.float64)
    return float(_ordinal_alpha_from_counts(counts.reshape(1, n_units, n_categories))[0])


def krippendorff_alpha_ci(
    ratings: ArrayLike, resamples: int = 1000, level: float = 0.95, seed: int | None = 0
) -> tuple[float, float]:
    """Percentile bootstrap interval of :func:`krippendorff_alpha_ordinal`, resampling raters (rows)
    with replacement; the units stay fixed. Vectorised: a resample's count table is (how often it drew
    each rater) @ (the raters' one-hot counts), one matrix product per chunk of resamples. Resamples
    whose alpha is NaN are ignored; (nan, nan) when all are. Depends only on the inputs and ``seed``.
    """
    _check_bootstrap(resamples, level)
    codes, n_categories = _ratings_codes(ratings)
    n_raters, n_units = codes.shape
    if n_categories < 2 or n_raters == 0:
        return math.nan, math.nan
    valid = codes >= 0
    rows = np.nonzero(valid)[0]
    columns = np.nonzero(valid)[1] * n_categories + codes[valid]
    width = n_units * n_categories
    if n_raters * width * 8 <= _DENSE_ONEHOT_BYTES:
        onehot = np.zeros((n_raters, width), dtype=np.float64)
        onehot[rows, columns] = 1.0

        def resampled_counts(weights: np.ndarray) -> np.ndarray:
            return weights @ onehot
    else:
        from scipy import sparse

        onehot_t = sparse.csr_matrix((np.ones(rows.size), (columns, rows)), shape=(width, n_raters))

        def resampled_counts(weights: np.ndarray) -> np.ndarray:
            return np.asarray(onehot_t @ weights.T).T

    rng = np.random.default_rng(seed)
    alphas = np.empty(resamples, dtype=np.float64)
    for start, stop in _chunks(resamples, 32 * n_raters + 48 * width):
        weights = _resample_weights(rng, stop - start, n_raters)
        counts = resampled_counts(weights).reshape(stop - start, n_units, n_categories)
        alphas[start:stop] = _ordinal_alpha_from_counts(counts)
    return _percentile_interval(alphas, level)


def icc_2_1(table: ArrayLike) -> float:
    """ICC(2,1) of Shrout & Fleiss (1979) = ICC(A,1) of McGraw & Wong (1996): two-way random effects,
    absolute agreement, single rater: (MSR - MSE) / (MSR + (k - 1) MSE + k (MSC - MSE) / n) from the
    two-way ANOVA mean squares of rows (subjects), columns (raters) and residual.

    table: (n subjects, k raters), e.g. images x training seeds (test-retest of a metric). Subjects with
    any NaN are dropped (listwise deletion: the two-way ANOVA needs a complete table). NaN with fewer
    than 2 subjects or 2 raters left, or a zero denominator (e.g. a constant table).
    """
    array = _as_2d(table, "table", "(subjects, raters)")
    array = array[~np.isnan(array).any(axis=1)]
    n, k = array.shape
    if n < 2 or k < 2:
        return math.nan
    grand = array.mean()
    row_means, column_means = array.mean(axis=1), array.mean(axis=0)
    ms_rows = k * ((row_means - grand) ** 2).sum() / (n - 1)
    ms_columns = n * ((column_means - grand) ** 2).sum() / (k - 1)
    residual = array - row_means[:, None] - column_means[None, :] + grand
    ms_error = (residual**2).sum() / ((n - 1) * (k - 1))
    denominator = ms_rows + (k - 1) * ms_error + k * (ms_columns - ms_error) / n
    if denominator == 0:
        return math.nan
    return float((ms_rows - ms_error) / denominator)


def cronbach_alpha(table: ArrayLike) -> float:
    """Cronbach's alpha k/(k - 1) (1 - sum of item variances / variance of the row sums), ddof=1.

    table: (n subjects, k items), e.g. images x methods. Rows with any NaN are dropped (listwise
    deletion: item and total variances must come from the same subjects). NaN when k < 2, fewer than
    2 rows are left, or the row sums have zero variance.
    """
    array = _as_2d(table, "table", "(subjects, items)")
    array = array[~np.isnan(array).any(axis=1)]
    n, k = array.shape
    if n < 2 or k < 2:
        return math.nan
    total_variance = float(np.var(array.sum(axis=1), ddof=1))
    if total_variance == 0:
        return math.nan
    return float(k / (k - 1) * (1.0 - np.var(array, axis=0, ddof=1).sum() / total_variance))


def mean_offdiagonal_spearman(values: ArrayLike) -> float:
    """Mean of the off-diagonal Spearman correlations between the method columns of (N images, M
    methods), each pair over the images where both are present (pairwise-complete). Pairs where a
    column is constant on those images (or fewer than 2 are shared) have no correlation and are left
    out; NaN when no pair is left. Vectorised over all M (M - 1) / 2 pairs at once.
    """
    array = _as_2d(values, "values", "(images, methods)")
    first, second = np.triu_indices(array.shape[1], k=1)
    if first.size == 0 or array.shape[0] == 0:
        return math.nan
    a, b = array[:, first].T, array[:, second].T  # (P, N)
    missing = np.isnan(a) | np.isnan(b)
    ranks_a = _average_ranks(np.where(missing, np.nan, a))
    ranks_b = _average_ranks(np.where(missing, np.nan, b))
    present = ~missing
    counts = present.sum(axis=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN pairs: left out below
        constant = (np.nanmax(ranks_a, axis=1) == np.nanmin(ranks_a, axis=1)) | (
            np.nanmax(ranks_b, axis=1) == np.nanmin(ranks_b, axis=1))
    defined = (counts >= 2) & ~constant
    if not defined.any():
        return math.nan
    ranks_a, ranks_b, present = ranks_a[defined], ranks_b[defined], present[defined]
    safe_counts = counts[defined]
    centred_a = np.where(present, ranks_a - np.nansum(ranks_a, axis=1, keepdims=True) / safe_counts[:, None], 0.0)
    centred_b = np.where(present, ranks_b - np.nansum(ranks_b, axis=1, keepdims=True) / safe_counts[:, None], 0.0)
    rho = (centred_a * centred_b).sum(axis=1) / np.sqrt((centred_a**2).sum(axis=1) * (centred_b**2).sum(axis=1))
    return float(np.clip(rho, -1.0, 1.0).mean())


def cliffs_delta(a: ArrayLike, b: ArrayLike) -> float:
    """Cliff's delta = P(a > b) - P(a < b) over all cross pairs (a_i, b_j) of two samples (any shape,
    flattened; NaN dropped): +1 = every a above every b, 0 = stochastic equality. O(n log n) through the
    Mann-Whitney U of the pooled ranks (U_a = #(a > b) + #(a = b)/2, delta = 2 U_a / (n m) - 1), not an
    n x m matrix. NaN when a sample is empty.
    """
    a_flat = np.asarray(a, dtype=np.float64).ravel()
    b_flat = np.asarray(b, dtype=np.float64).ravel()
    a_flat, b_flat = a_flat[~np.isnan(a_flat)], b_flat[~np.isnan(b_flat)]
    if a_flat.size == 0 or b_flat.size == 0:
        return math.nan
    return float(cliffs_delta_many(a_flat[None, :], b_flat[None, :])[0])


def cliffs_delta_many(rows: ArrayLike, others: ArrayLike) -> np.ndarray:
    """(P,) Cliff's delta of rows[p] against others[p], vectorised over P pairs of samples.

    rows: (P, Na) and others: (P, Nb), no NaN (drop missing values first, or use :func:`cliffs_delta`
    per pair); usually Na == Nb (two rows of the same column). One argsort of the (P, Na + Nb) pooled
    samples gives every pair's Mann-Whitney U.
    """
    a = _as_2d(rows, "rows", "(pairs, samples)")
    b = _as_2d(others, "others", "(pairs, samples)")
    if a.shape[0] != b.shape[0]:
        raise ValueError(f"rows {a.shape} and others {b.shape} must hold the same number of pairs (first axis)")
    if a.shape[1] == 0 or b.shape[1] == 0:
        raise ValueError(f"rows {a.shape} and others {b.shape} need at least one value per sample")
    if np.isnan(a).any() or np.isnan(b).any():
        raise ValueError("rows and others must not contain NaN; use cliffs_delta per pair to drop missing values")
    n_a, n_b = a.shape[1], b.shape[1]
    ranks = _average_ranks(np.concatenate([a, b], axis=1))
    u_a = ranks[:, :n_a].sum(axis=1) - n_a * (n_a + 1) / 2.0
    return 2.0 * u_a / (n_a * n_b) - 1.0


def _kendall_tau_b(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """(B,) Kendall's tau-b between the rows of two (B, M) arrays; NaN where a row has NaN or a ranking
    is all ties (as scipy.stats.kendalltau: (concordant - discordant) / sqrt((n0 - n1)(n0 - n2)))."""
    first, second = np.triu_indices(x.shape[1], k=1)
    sign_x = np.sign(x[:, first] - x[:, second])
    sign_y = np.sign(y[:, first] - y[:, second])
    pairs = float(first.size)
    untied = (pairs - np.count_nonzero(sign_x == 0, axis=1)) * (pairs - np.count_nonzero(sign_y == 0, axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        tau = (sign_x * sign_y).sum(axis=1) / np.sqrt(untied)
    bad = np.isnan(x).any(axis=1) | np.isnan(y).any(axis=1) | (untied == 0)
    return np.where(bad, np.nan, tau)


def _column_means(array: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """NaN-ignoring column means of (N, M), or of each resample's weighted rows ((B, N) weights) as (B, M)."""
    valid = ~np.isnan(array)
    filled = np.where(valid, array, 0.0)
    if weights is None:
        totals, counts = filled.sum(axis=0), valid.sum(axis=0).astype(np.float64)
    else:
        totals, counts = weights @ filled, weights @ valid.astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, totals / np.where(counts > 0, counts, 1.0), np.nan)


def kendall_tau_ci(
    a: ArrayLike, b: ArrayLike, a_higher: bool, b_higher: bool, resamples: int = 1000, level: float = 0.95,
    seed: int | None = 0,
) -> tuple[float, float, float]:
    """Kendall's tau-b between two rankings of the same M methods, with a percentile bootstrap interval.

    a: (Na, M) and b: (Nb, M) per-sample values of the M methods (e.g. per-image values of one metric
    and per-grid values of another); each ranking is by the NaN-ignoring column means, oriented by
    ``a_higher`` / ``b_higher`` so that tau > 0 means both put the same methods first. Methods whose
    column is all NaN in a or b are left out. The bootstrap resamples the rows of a and of b
    independently (they are different samples), vectorised as weights @ values per chunk; resamples
    with an undefined tau (a method never drawn, all ties) are ignored. Returns (tau, low, high); tau
    is NaN with fewer than 3 methods.
    """
    _check_bootstrap(resamples, level)
    array_a = _as_2d(a, "a", "(samples, methods)")
    array_b = _as_2d(b, "b", "(samples, methods)")
    if array_a.shape[1] != array_b.shape[1]:
        raise ValueError(f"a {array_a.shape} and b {array_b.shape} must have the same methods (columns)")
    sign_a, sign_b = (1.0 if a_higher else -1.0), (1.0 if b_higher else -1.0)
    keep = ~(np.isnan(array_a).all(axis=0) | np.isnan(array_b).all(axis=0))
    array_a, array_b = array_a[:, keep], array_b[:, keep]
    n_a, n_b, n_methods = array_a.shape[0], array_b.shape[0], array_a.shape[1]
    if n_methods < 3:
        return math.nan, math.nan, math.nan
    tau = float(_kendall_tau_b(sign_a * _column_means(array_a)[None], sign_b * _column_means(array_b)[None])[0])
    seed_a, seed_b = np.random.SeedSequence(seed).spawn(2)
    rng_a, rng_b = np.random.default_rng(seed_a), np.random.default_rng(seed_b)
    taus = np.empty(resamples, dtype=np.float64)
    pairs = n_methods * (n_methods - 1) // 2
    for start, stop in _chunks(resamples, 32 * (n_a + n_b) + 32 * n_methods + 24 * pairs):
        means_a = _column_means(array_a, _resample_weights(rng_a, stop - start, n_a))
        means_b = _column_means(array_b, _resample_weights(rng_b, stop - start, n_b))
        taus[start:stop] = _kendall_tau_b(sign_a * means_a, sign_b * means_b)
    low, high = _percentile_interval(taus, level)
    return tau, low, high
