"""MetaQuantus' meta-evaluation of a metric (Hedström et al., "The meta-evaluation problem in
explainable AI", TMLR 2023): noise resilience (NR) and adversarial reactivity (AR), from a metric's
per-sample scores of M methods before and after K perturbations.

Why: a good estimator stays put under perturbations that keep the explained behaviour (small input
noise, small weight noise: NR) and reacts to those that change it (AR). Re-implemented from the
paper, not copied (the reference code is LGPL, and its IEC_AR tests a direction string that is
always true, so it ignores the metric's direction: ours honours it). The perturbation passes
themselves are camzoo.bench.perturbation's; this module only scores them (numpy and scipy).
"""

from __future__ import annotations

import math
import warnings

import numpy as np
from numpy.typing import ArrayLike

from .psychometrics import _as_2d, _average_ranks, _chunks

__all__ = ["iac", "iec_nr", "iec_ar", "meta_consistency"]

# Above this many pairs scipy's wilcoxon (method "auto") uses its normal approximation whatever the data.
_ASYMPTOTIC_FROM = 51
# Up to this many pairs with zeros or ties, scipy's wilcoxon ("auto") runs an exact sign-flip permutation test.
_PERMUTATION_UP_TO = 13


def _perturbation_shapes(original: ArrayLike, perturbed: ArrayLike, name: str = "perturbed"
                         ) -> tuple[np.ndarray, np.ndarray]:
    """(M, N) original and (K, M, N) perturbed scores, or a ValueError."""
    scores = _as_2d(original, "original", "(methods, samples)")
    draws = np.asarray(perturbed, dtype=np.float64)
    if draws.ndim != 3 or draws.shape[1:] != scores.shape:
        raise ValueError(
            f"{name} must be (draws, methods, samples) = (K, {scores.shape[0]}, {scores.shape[1]}) like original "
            f"{scores.shape}; got shape {draws.shape}"
        )
    return scores, draws


def _sign_flip_p_values(differences: np.ndarray) -> np.ndarray:
    """(G,) two-sided p-values of the Wilcoxon statistic under all 2^n sign flips of each row of (G, n)
    differences: scipy.stats.wilcoxon's exact permutation test (its method "auto" for n <= 13 with
    zeros or ties), enumerated as one matrix product instead of scipy's ~0.3 s per row (its statistic is
    not vectorised). The statistic is the sum of the average ranks of |d| over the positive d, zeros
    dropped; flipping the sign of d_i swaps its rank between the positive and the negative sum. The
    values are exact multiples of 1/2, so the exact comparisons count what scipy's tolerant ones count.
    """
    n = differences.shape[1]
    ranks = np.nan_to_num(_average_ranks(np.where(differences != 0, np.abs(differences), np.nan)))
    up, down = np.where(differences > 0, ranks, 0.0), np.where(differences < 0, ranks, 0.0)
    kept = ((np.arange(2**n)[:, None] >> np.arange(n)) & 1).astype(np.float64)  # (2^n, n) 1 = sign kept
    observed = up.sum(axis=1)
    p_values = np.empty(differences.shape[0])
    for start, stop in _chunks(differences.shape[0], 24 * 2**n):  # memory chunks of rows
        null = kept @ up[start:stop].T + (1.0 - kept) @ down[start:stop].T  # (2^n, rows)
        below = (null <= observed[start:stop]).mean(axis=0)
        above = (null >= observed[start:stop]).mean(axis=0)
        p_values[start:stop] = np.clip(2.0 * np.minimum(below, above), 0.0, 1.0)
    return p_values


def _wilcoxon_p_rows(differences: np.ndarray) -> np.ndarray:
    """(P,) two-sided Wilcoxon signed-rank p-value of each row of (P, N) paired differences, exactly as
    scipy.stats.wilcoxon(row[~isnan(row)], zero_method="wilcox") on that row alone; all differences
    zero -> 1, a test scipy cannot give (NaN) -> 1 (no evidence), no pair left -> NaN.

    Why grouped: with method "auto" scipy picks exact / permutation / normal approximation once for a
    whole batch (from its length and whether any row has zeros or ties), so rows are batched by
    (number of pairs, zeros-or-ties) to get each row's own choice: a loop over a few groups, not rows.
    The permutation groups (<= 13 pairs with zeros or ties) go to :func:`_sign_flip_p_values`.
    """
    from scipy.stats import wilcoxon  # here, not at import: scipy.stats adds ~1.5 s to every process start

    valid = ~np.isnan(differences)
    counts = valid.sum(axis=1)
    nonzero = valid & (differences != 0)
    p_values = np.full(differences.shape[0], np.nan)
    p_values[(counts > 0) & ~nonzero.any(axis=1)] = 1.0
    tested = nonzero.any(axis=1)
    magnitudes = np.sort(np.where(nonzero, np.abs(differences), np.nan), axis=1)
    irregular = (valid & (differences == 0)).any(axis=1) | (magnitudes[:, 1:] == magnitudes[:, :-1]).any(axis=1)
    irregular &= counts < _ASYMPTOTIC_FROM  # from 51 pairs on, scipy approximates whatever the data
    packed = np.take_along_axis(differences, np.argsort(~valid, axis=1, kind="stable"), axis=1)  # pairs first
    for count, flag in np.unique(np.stack([counts, irregular], axis=1)[tested], axis=0):  # a few groups
        rows = tested & (counts == count) & (irregular == bool(flag))
        if flag and count <= _PERMUTATION_UP_TO:
            p_values[rows] = _sign_flip_p_values(packed[rows, :count])
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # scipy warns on tiny samples; NaN -> 1 below
            result = wilcoxon(packed[rows, :count], zero_method="wilcox", alternative="two-sided", axis=-1)
        p_values[rows] = np.asarray(result.pvalue, dtype=np.float64)
    return np.where(tested & np.isnan(p_values), 1.0, p_values)


def iac(original: ArrayLike, perturbed: ArrayLike, disruptive: bool) -> float:
    """MetaQuantus' intra-consistency (IAC): does a perturbation shift the distribution of scores?

    original: (M methods, N samples) scores; perturbed: (K draws, M, N) scores of the same samples
    after a perturbation. For each draw and method, the two-sided Wilcoxon signed-rank p-value of
    original[m] vs perturbed[k, m] (pairs with NaN dropped; all differences zero -> p = 1). IAC_NR
    (disruptive=False, a perturbation that should change nothing) = mean p: 1 = scores unmoved. IAC_AR
    (disruptive=True, one that should change the explanations) = mean (1 - p): 1 = scores moved.
    (draw, method) cells without any pair are left out; NaN when none is left.
    """
    scores, draws = _perturbation_shapes(original, perturbed)
    p_values = _wilcoxon_p_rows((scores[None] - draws).reshape(-1, scores.shape[1]))
    p_values = p_values[~np.isnan(p_values)]
    if p_values.size == 0:
        return math.nan
    return float((1.0 - p_values).mean() if disruptive else p_values.mean())


def iec_nr(original: ArrayLike, perturbed: ArrayLike, higher_is_better: bool) -> float:
    """MetaQuantus' inter-consistency under a non-disruptive perturbation (IEC_NR): does the per-sample
    ranking of the methods survive? Per sample n and draw k the M methods are sorted best first (stable:
    ties by method index) before and after; the share of (k, n, rank slot) triples holding the same
    method. 1 = every ranking unchanged. A (k, n) with any NaN score is left out; NaN when none is left.
    """
    scores, draws = _perturbation_shapes(original, perturbed)
    sign = -1.0 if higher_is_better else 1.0  # ascending sort of sign * score = best first
    before = np.argsort(sign * scores, axis=0, kind="stable")  # (M, N) method in each slot
    after = np.argsort(sign * draws, axis=1, kind="stable")  # (K, M, N)
    complete = ~(np.isnan(scores).any(axis=0)[None] | np.isnan(draws).any(axis=1))  # (K, N)
    if not complete.any():
        return math.nan
    same = (before[None] == after).sum(axis=1)  # (K, N) slots that kept their method
    return float(same[complete].sum() / (complete.sum() * scores.shape[0]))


def iec_ar(original: ArrayLike, perturbed: ArrayLike, higher_is_better: bool) -> float:
    """MetaQuantus' inter-consistency under a disruptive perturbation (IEC_AR): the share of (k, m, n)
    whose perturbed score is strictly worse than the original in the metric's direction (lower when
    ``higher_is_better``, higher otherwise). 1 = every score dropped. Unlike MetaQuantus' own code
    (whose direction test is always true), the direction is honoured. Pairs with NaN are left out.
    """
    scores, draws = _perturbation_shapes(original, perturbed)
    valid = ~(np.isnan(draws) | np.isnan(scores)[None])
    if not valid.any():
        return math.nan
    worse = draws < scores[None] if higher_is_better else draws > scores[None]
    return float(worse[valid].mean())


def meta_consistency(original: ArrayLike, small: ArrayLike, large: ArrayLike, higher_is_better: bool
                     ) -> dict[str, float]:
    """MetaQuantus' meta-consistency of a metric (estimator) from its scores of M methods on N samples.

    original: (M, N); small: (K, M, N) scores under a perturbation that should not change the
    explanations (noise resilience: "iac_nr", "iec_nr"); large: (K', M, N) scores under one that
    should (adversarial reactivity: "iac_ar", "iec_ar"). "mc" is the mean of the four; each lies in
    [0, 1] with 1 ideal, so an estimator blind to everything scores 0.5. NaN parts make "mc" NaN.
    """
    _perturbation_shapes(original, small, "small")
    _perturbation_shapes(original, large, "large")
    parts = {
        "iac_nr": iac(original, small, disruptive=False),
        "iac_ar": iac(original, large, disruptive=True),
        "iec_nr": iec_nr(original, small, higher_is_better),
        "iec_ar": iec_ar(original, large, higher_is_better),
    }
    parts["mc"] = float(np.mean(list(parts.values())))
    return parts
