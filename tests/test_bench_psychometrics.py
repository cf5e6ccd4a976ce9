"""camzoo.bench.psychometrics and camzoo.bench.metaquantus against independent references: the
`krippendorff` package, scipy, textbook loops and published values (Shrout & Fleiss 1979), and
MetaQuantus' self-tests of an estimator that never reacts and of one that always does.
"""

from __future__ import annotations

import math
from itertools import combinations

import krippendorff
import numpy as np
import pytest
from scipy import stats as scipy_stats

from camzoo.bench import metaquantus, psychometrics
from camzoo.bench.metaquantus import iac, iec_ar, iec_nr, meta_consistency
from camzoo.bench.psychometrics import (
    cliffs_delta,
    cliffs_delta_many,
    cronbach_alpha,
    icc_2_1,
    kendall_tau_ci,
    krippendorff_alpha_ci,
    krippendorff_alpha_ordinal,
    mean_offdiagonal_spearman,
    within_image_ranks,
)


def with_missing(array: np.ndarray, share: float, rng: np.random.Generator) -> np.ndarray:
    array = np.asarray(array, dtype=float).copy()
    array[rng.random(array.shape) < share] = np.nan
    return array


# ----------------------------------------------------------------------------- within-image ranks


@pytest.mark.parametrize("higher_is_better", [True, False])
def test_within_image_ranks_match_rankdata_per_row(higher_is_better):
    rng = np.random.default_rng(0)
    values = with_missing(rng.integers(0, 4, size=(40, 7)), 0.2, rng)  # many ties
    values[3] = np.nan
    values[5, :6] = np.nan
    ranks = within_image_ranks(values, higher_is_better)
    for row, got in zip(values, ranks):
        present = ~np.isnan(row)
        assert np.isnan(got[~present]).all()
        key = -row[present] if higher_is_better else row[present]
        np.testing.assert_array_equal(got[present], scipy_stats.rankdata(key, method="average"))


def test_within_image_ranks_direction_and_shape_errors():
    np.testing.assert_array_equal(within_image_ranks([[0.9, 0.1, 0.5, 0.5]], True), [[1, 4, 2.5, 2.5]])
    np.testing.assert_array_equal(within_image_ranks([[0.9, 0.1, 0.5, 0.5]], False), [[4, 1, 2.5, 2.5]])
    with pytest.raises(ValueError, match=r"\(images, methods\)"):
        within_image_ranks(np.zeros(5), True)


# ----------------------------------------------------------------------------- Krippendorff's alpha


def package_alpha(ratings: np.ndarray) -> float:
    # The package's categories are the sorted distinct values (np.unique), ours too; pass them explicitly
    # so that the comparison does not hang on that default.
    domain = np.unique(ratings[~np.isnan(ratings)])
    return float(krippendorff.alpha(reliability_data=ratings, value_domain=domain, level_of_measurement="ordinal"))


@pytest.mark.parametrize("shape", [(2, 5), (3, 12), (10, 4), (25, 9), (60, 3)])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_krippendorff_matches_package_with_ties_and_missing(shape, seed):
    rng = np.random.default_rng(seed)
    truth = rng.integers(1, 6, size=shape[1])
    integers = np.clip(truth + rng.integers(-1, 2, size=shape), 1, 5).astype(float)  # agreement above chance
    halves = rng.integers(2, 12, size=shape) / 2.0  # mean ranks such as 2.5
    for ratings in (with_missing(integers, 0.15, rng), with_missing(halves, 0.25, rng)):
        if ((~np.isnan(ratings)).sum(axis=0) < 2).all() or np.unique(ratings[~np.isnan(ratings)]).size < 2:
            continue  # undefined for the package too (it raises)
        assert krippendorff_alpha_ordinal(ratings) == pytest.approx(package_alpha(ratings), abs=1e-9)


def test_krippendorff_package_docstring_example():
    ratings = np.array([[1, 2, 3, 3, 2, 1, 4, 1, 2, np.nan, np.nan, np.nan],
                        [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, np.nan, 3],
                        [np.nan, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, np.nan],
                        [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, np.nan]])
    assert krippendorff_alpha_ordinal(ratings) == pytest.approx(0.815, abs=5e-4)
    # only the order of the values matters for ordinal data
    assert krippendorff_alpha_ordinal(np.exp(ratings)) == pytest.approx(krippendorff_alpha_ordinal(ratings), abs=1e-12)


@pytest.mark.parametrize("higher_is_better", [True, False])
def test_krippendorff_on_within_image_rank_tables(higher_is_better):
    rng = np.random.default_rng(7)
    quality = np.array([0.0, 0.3, 0.3, 1.0, 1.5, 2.0])  # two methods tied on average
    values = quality + rng.normal(scale=1.0, size=(80, 6))
    values[rng.random(values.shape) < 0.1] = np.nan
    values[:10, 2] = values[:10, 1]  # exact ties -> half ranks
    ranks = within_image_ranks(values if higher_is_better else -values, higher_is_better)
    alpha = krippendorff_alpha_ordinal(ranks)
    assert alpha == pytest.approx(package_alpha(ranks), abs=1e-9)
    assert 0.1 < alpha < 0.9
    identical = within_image_ranks(np.tile(quality, (5, 1)), True)
    assert krippendorff_alpha_ordinal(identical) == pytest.approx(1.0)


def test_krippendorff_undefined_cases_are_nan():
    assert math.isnan(krippendorff_alpha_ordinal(np.full((4, 3), 2.0)))  # one category
    assert math.isnan(krippendorff_alpha_ordinal([[1.0, np.nan], [np.nan, 2.0]]))  # nothing pairable
    assert math.isnan(krippendorff_alpha_ordinal(np.full((3, 3), np.nan)))
    with pytest.raises(ValueError, match=r"\(raters, units\)"):
        krippendorff_alpha_ordinal(np.zeros((2, 3, 4)))


def loop_alpha_ci(ratings: np.ndarray, resamples: int, level: float, seed: int) -> tuple[float, float]:
    """The definition: one resample of raters at a time, drawn like the module (one request)."""
    rng = np.random.default_rng(seed)
    drawn = rng.integers(0, ratings.shape[0], size=(resamples, ratings.shape[0]))
    alphas = np.array([krippendorff_alpha_ordinal(ratings[rows]) for rows in drawn])
    tail = (1 - level) / 2
    low, high = np.nanquantile(alphas, [tail, 1 - tail])
    return float(low), float(high)


def test_krippendorff_ci_matches_loop_and_is_deterministic(monkeypatch):
    rng = np.random.default_rng(3)
    values = np.array([0.0, 0.5, 1.0, 1.2]) + rng.normal(size=(12, 4))
    ranks = within_image_ranks(with_missing(values, 0.1, rng), True)
    ours = krippendorff_alpha_ci(ranks, resamples=300, level=0.9, seed=5)
    assert ours == pytest.approx(loop_alpha_ci(ranks, 300, 0.9, 5), abs=1e-9)
    assert ours[0] < krippendorff_alpha_ordinal(ranks) < ours[1]
    assert krippendorff_alpha_ci(ranks, resamples=300, level=0.9, seed=5) == ours
    assert krippendorff_alpha_ci(ranks, resamples=300, level=0.9, seed=6) != ours
    monkeypatch.setattr(psychometrics, "_CHUNK_BYTES", 2000)  # many chunks: the same draws
    monkeypatch.setattr(psychometrics, "_DENSE_ONEHOT_BYTES", 0)  # the sparse one-hot path
    assert krippendorff_alpha_ci(ranks, resamples=300, level=0.9, seed=5) == pytest.approx(ours, abs=1e-12)


def test_krippendorff_ci_argument_errors():
    with pytest.raises(ValueError, match="resamples"):
        krippendorff_alpha_ci(np.ones((3, 3)), resamples=0)
    with pytest.raises(ValueError, match="level"):
        krippendorff_alpha_ci(np.ones((3, 3)), level=95)
    assert all(math.isnan(x) for x in krippendorff_alpha_ci(np.ones((3, 3))))


# ----------------------------------------------------------------------------- ICC(2,1) and Cronbach's alpha


def loop_icc_2_1(table: np.ndarray) -> float:
    """Shrout & Fleiss (1979) from the textbook sums of squares, one cell at a time."""
    rows = [list(row) for row in table if not any(math.isnan(x) for x in row)]
    n, k = len(rows), len(rows[0])
    grand = sum(sum(row) for row in rows) / (n * k)
    row_means = [sum(row) / k for row in rows]
    column_means = [sum(rows[i][j] for i in range(n)) / n for j in range(k)]
    ss_total = sum((rows[i][j] - grand) ** 2 for i in range(n) for j in range(k))
    ss_rows = k * sum((mean - grand) ** 2 for mean in row_means)
    ss_columns = n * sum((mean - grand) ** 2 for mean in column_means)
    ss_error = ss_total - ss_rows - ss_columns
    bms, jms, ems = ss_rows / (n - 1), ss_columns / (k - 1), ss_error / ((n - 1) * (k - 1))
    return (bms - ems) / (bms + (k - 1) * ems + k * (jms - ems) / n)


def test_icc_shrout_fleiss_table_2():
    # Shrout & Fleiss (1979), Table 2: 6 targets x 4 judges; Table 4 gives ICC(2,1) = .29
    table = np.array([[9, 2, 5, 8], [6, 1, 3, 2], [8, 4, 6, 8], [7, 1, 2, 6], [10, 5, 6, 9], [6, 2, 4, 7]], float)
    assert round(icc_2_1(table), 2) == 0.29
    assert icc_2_1(table) == pytest.approx(loop_icc_2_1(table), abs=1e-12)


@pytest.mark.parametrize("seed", range(4))
def test_icc_matches_loop_with_listwise_deletion(seed):
    rng = np.random.default_rng(seed)
    n, k = rng.integers(5, 40), rng.integers(2, 6)
    table = rng.normal(size=(n, 1)) * 2 + rng.normal(size=(1, k)) + rng.normal(size=(n, k))
    table = with_missing(table, 0.05, rng)
    assert icc_2_1(table) == pytest.approx(loop_icc_2_1(table), abs=1e-9)


def test_icc_undefined_cases():
    assert math.isnan(icc_2_1([[1.0, 2.0], [np.nan, 3.0]]))  # one complete subject
    assert math.isnan(icc_2_1(np.ones((5, 1))))
    assert math.isnan(icc_2_1(np.full((4, 3), 7.0)))  # zero denominator
    assert icc_2_1(np.tile(np.arange(5.0)[:, None], (1, 3))) == pytest.approx(1.0)


@pytest.mark.parametrize("seed", range(4))
def test_cronbach_matches_covariance_form(seed):
    rng = np.random.default_rng(seed)
    table = rng.normal(size=(60, 1)) + rng.normal(scale=1.5, size=(60, 2 + seed))
    table = with_missing(table, 0.05, rng)
    complete = table[~np.isnan(table).any(axis=1)]
    covariance = np.cov(complete, rowvar=False)
    k = complete.shape[1]
    expected = k / (k - 1) * (1 - np.trace(covariance) / covariance.sum())
    assert cronbach_alpha(table) == pytest.approx(expected, abs=1e-9)


def test_cronbach_perfect_and_undefined():
    base = np.random.default_rng(0).normal(size=(20, 1))
    assert cronbach_alpha(base + np.array([0.0, 1.0, -3.0])) == pytest.approx(1.0, abs=1e-12)
    assert math.isnan(cronbach_alpha(base))  # one item
    assert math.isnan(cronbach_alpha(np.ones((5, 3))))  # zero total variance


# ----------------------------------------------------------------------------- Spearman between methods


def test_mean_offdiagonal_spearman_matches_scipy_pairs():
    rng = np.random.default_rng(4)
    values = rng.normal(size=(30, 6))
    values[:, 1] += values[:, 0]
    values[:, 2] = np.round(values[:, 2])  # ties
    values[:, 4] = 1.0  # constant: its pairs are left out
    values = with_missing(values, 0.15, rng)
    expected = []
    for i, j in combinations(range(values.shape[1]), 2):
        keep = ~(np.isnan(values[:, i]) | np.isnan(values[:, j]))
        x, y = values[keep, i], values[keep, j]
        if np.ptp(x) == 0 or np.ptp(y) == 0:
            continue
        expected.append(scipy_stats.spearmanr(x, y).statistic)
    assert len(expected) == 10
    assert mean_offdiagonal_spearman(values) == pytest.approx(np.mean(expected), abs=1e-12)
    assert math.isnan(mean_offdiagonal_spearman(np.ones((5, 3))))
    assert mean_offdiagonal_spearman(np.tile(np.arange(6.0)[:, None], (1, 3)) ** [1, 2, 3]) == pytest.approx(1.0)


# ----------------------------------------------------------------------------- Cliff's delta


def brute_cliffs(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a[~np.isnan(a)], b[~np.isnan(b)]
    return float(np.sign(a[:, None] - b[None, :]).mean())


@pytest.mark.parametrize("seed", range(5))
def test_cliffs_delta_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    a = with_missing(rng.integers(0, 6, size=rng.integers(1, 40)), 0.1, rng)
    b = with_missing(rng.integers(1, 7, size=rng.integers(1, 40)), 0.1, rng)
    if np.isnan(a).all() or np.isnan(b).all():
        a, b = np.array([1.0]), np.array([1.0, 2.0])
    assert cliffs_delta(a, b) == pytest.approx(brute_cliffs(a, b), abs=1e-12)
    assert cliffs_delta(b, a) == pytest.approx(-brute_cliffs(a, b), abs=1e-12)


def test_cliffs_delta_extremes_and_many():
    assert cliffs_delta([3, 4, 5], [0, 1, 2]) == 1.0
    assert cliffs_delta([[1.0, 2.0], [3.0, np.nan]], [1, 2, 3]) == pytest.approx(brute_cliffs(
        np.array([1.0, 2.0, 3.0]), np.array([1.0, 2.0, 3.0])))
    assert math.isnan(cliffs_delta([np.nan], [1.0]))
    rng = np.random.default_rng(9)
    rows = rng.integers(0, 5, size=(50, 25)).astype(float)
    others = rng.integers(0, 5, size=(50, 25)) + rng.random((50, 1))
    many = cliffs_delta_many(rows, others)
    assert many.shape == (50,)
    np.testing.assert_allclose(many, [cliffs_delta(r, o) for r, o in zip(rows, others)], atol=1e-12)
    with pytest.raises(ValueError, match="NaN"):
        cliffs_delta_many(with_missing(rows, 0.5, rng), others)
    with pytest.raises(ValueError, match="same number of pairs"):
        cliffs_delta_many(rows, others[:3])


# ----------------------------------------------------------------------------- Kendall's tau with a CI


def test_kendall_tau_matches_scipy_with_orientation():
    rng = np.random.default_rng(11)
    quality = np.array([0.1, 0.4, 0.2, 0.9, 0.6, 0.5])
    a = with_missing(quality + rng.normal(scale=0.3, size=(60, 6)), 0.1, rng)  # higher is better
    b = -(quality[[0, 2, 1, 3, 4, 5]] + rng.normal(scale=0.3, size=(25, 6)))  # lower is better
    tau, low, high = kendall_tau_ci(a, b, a_higher=True, b_higher=False, resamples=400)
    expected = scipy_stats.kendalltau(np.nanmean(a, axis=0), -np.nanmean(b, axis=0)).statistic
    assert tau == pytest.approx(expected, abs=1e-12)
    assert tau > 0
    assert low <= tau <= high and low < high
    assert kendall_tau_ci(a, b, True, False, resamples=400) == (tau, low, high)
    flipped = kendall_tau_ci(a, b, True, True, resamples=400)
    assert flipped[0] == pytest.approx(-tau)
    # ties in a ranking: tau-b, as scipy
    tied = np.array([[1.0, 1.0, 2.0, 3.0]])
    assert kendall_tau_ci(tied, np.array([[4.0, 3.0, 2.0, 1.0]]), True, False, resamples=10)[0] == pytest.approx(
        scipy_stats.kendalltau([1, 1, 2, 3], [-4, -3, -2, -1]).statistic)


def test_kendall_tau_bootstrap_matches_loop():
    rng = np.random.default_rng(12)
    a = with_missing(rng.normal(size=(15, 5)) + np.arange(5), 0.1, rng)
    b = rng.normal(size=(9, 5)) + np.arange(5) * 0.5
    _, low, high = kendall_tau_ci(a, b, True, True, resamples=200, level=0.8, seed=3)
    seed_a, seed_b = np.random.SeedSequence(3).spawn(2)
    rows_a = np.random.default_rng(seed_a).integers(0, 15, size=(200, 15))
    rows_b = np.random.default_rng(seed_b).integers(0, 9, size=(200, 9))
    taus = []
    for ra, rb in zip(rows_a, rows_b):
        means_a, means_b = np.nanmean(a[ra], axis=0), b[rb].mean(axis=0)
        taus.append(math.nan if np.isnan(means_a).any() else scipy_stats.kendalltau(means_a, means_b).statistic)
    assert (low, high) == pytest.approx(tuple(np.nanquantile(taus, [0.1, 0.9])), abs=1e-12)


def test_kendall_tau_undefined_and_errors():
    assert all(math.isnan(x) for x in kendall_tau_ci(np.ones((4, 2)), np.ones((3, 2)), True, True, resamples=5))
    with pytest.raises(ValueError, match="same methods"):
        kendall_tau_ci(np.ones((4, 3)), np.ones((4, 4)), True, True)


# ----------------------------------------------------------------------------- MetaQuantus


def loop_iac_p_values(original: np.ndarray, perturbed: np.ndarray) -> list[float]:
    """scipy's wilcoxon on each (draw, method) cell alone, NaN pairs dropped, all-zero -> 1."""
    p_values = []
    for k in range(perturbed.shape[0]):
        for m in range(original.shape[0]):
            keep = ~(np.isnan(original[m]) | np.isnan(perturbed[k, m]))
            x, y = original[m, keep], perturbed[k, m, keep]
            p_values.append(1.0 if not np.any(x - y) else scipy_stats.wilcoxon(x, y, zero_method="wilcox").pvalue)
    return p_values


@pytest.mark.parametrize("samples", [8, 20, 60])  # permutation / exact / normal approximation in scipy
def test_iac_matches_scipy_wilcoxon_per_cell(samples):
    rng = np.random.default_rng(13)
    original = rng.normal(size=(4, samples))
    perturbed = original + rng.normal(scale=0.3, size=(3, 4, samples)) + np.array([0.0, 0.2, 0.5])[:, None, None]
    perturbed[0, 0, :5] = original[0, :5]  # zero differences
    perturbed[1, 1] = np.round(perturbed[1, 1], 1)  # tied differences
    original[1] = np.round(original[1], 1)
    perturbed[2, 2] = original[2]  # all zero: p = 1
    perturbed[0, 3, 3] = np.nan  # a NaN pair: one pair fewer
    # (cells without zeros or ties get scipy's exact test below 51 pairs; one scipy call over every
    # cell would use the approximation for all of them as soon as one cell has a zero)
    expected = loop_iac_p_values(original, perturbed)
    assert iac(original, perturbed, disruptive=False) == pytest.approx(np.mean(expected), abs=1e-12)
    assert iac(original, perturbed, disruptive=True) == pytest.approx(1 - np.mean(expected), abs=1e-12)


@pytest.mark.parametrize("pairs", [2, 5, 7])
def test_wilcoxon_rows_match_scipy_on_tiny_samples(pairs):
    # scipy's exact sign-flip permutation test (<= 13 pairs with zeros or ties), done here as one product
    rng = np.random.default_rng(pairs)
    differences = np.round(rng.normal(size=(5, pairs)), 1)
    differences[0, :2] = 0.0
    differences[1, -1] = np.nan
    differences[2] = np.abs(differences[2]) + 0.1
    differences[3, 1:] = 0.3
    expected = []
    for row in differences:
        row = row[~np.isnan(row)]
        expected.append(1.0 if not np.any(row) else scipy_stats.wilcoxon(row, zero_method="wilcox").pvalue)
    np.testing.assert_allclose(metaquantus._wilcoxon_p_rows(differences), expected, rtol=0, atol=1e-12)


def test_iec_nr_matches_loop():
    rng = np.random.default_rng(14)
    original = rng.integers(0, 4, size=(4, 30)).astype(float)  # ties: stable by method index
    perturbed = original + rng.integers(-1, 2, size=(3, 4, 30))
    perturbed[1, 2, 5] = np.nan
    for higher in (True, False):
        same = total = 0
        for k in range(3):
            for n in range(30):
                if np.isnan(perturbed[k, :, n]).any():
                    continue
                key = (lambda s: -s) if higher else (lambda s: s)
                before = sorted(range(4), key=lambda m: (key(original[m, n]), m))
                after = sorted(range(4), key=lambda m: (key(perturbed[k, m, n]), m))
                same += sum(x == y for x, y in zip(before, after))
                total += 4
        assert iec_nr(original, perturbed, higher) == pytest.approx(same / total, abs=1e-12)


def test_iec_ar_honours_direction():
    original = np.array([[1.0, 2.0, 3.0, 4.0]])
    perturbed = np.array([[[0.5, 2.0, 3.5, np.nan]]])  # lower, equal, higher, missing
    assert iec_ar(original, perturbed, higher_is_better=True) == pytest.approx(1 / 3)
    assert iec_ar(original, perturbed, higher_is_better=False) == pytest.approx(1 / 3)
    lower = original[None] - 1.0
    assert iec_ar(original, lower, higher_is_better=True) == 1.0
    assert iec_ar(original, lower, higher_is_better=False) == 0.0


def test_meta_consistency_of_an_estimator_that_never_reacts():
    original = np.random.default_rng(15).random((4, 50))
    repeated = np.repeat(original[None], 3, axis=0)
    for higher in (True, False):
        result = meta_consistency(original, repeated, repeated, higher)
        assert result == {"iac_nr": 1.0, "iac_ar": 0.0, "iec_nr": 1.0, "iec_ar": 0.0, "mc": 0.5}


@pytest.mark.parametrize("higher_is_better", [True, False])
def test_meta_consistency_of_an_estimator_that_always_reacts(higher_is_better):
    original = np.random.default_rng(16).random((4, 200))  # even M: a reversed ranking moves every method
    # every score worse in the metric's direction, every per-sample ranking reversed
    perturbed = np.repeat((-original - 10.0 if higher_is_better else -original + 10.0)[None], 2, axis=0)
    result = meta_consistency(original, perturbed, perturbed, higher_is_better)
    assert result["iac_nr"] < 1e-3
    assert result["iac_ar"] > 1 - 1e-3
    assert result["iec_nr"] == 0.0
    assert result["iec_ar"] == 1.0
    assert result["mc"] == pytest.approx(np.mean([result[key] for key in ("iac_nr", "iac_ar", "iec_nr", "iec_ar")]))
    # the same scores read with the wrong direction: every score "better", so no adversarial reactivity
    assert iec_ar(original, perturbed, not higher_is_better) == 0.0


def test_metaquantus_shape_errors_and_missing():
    with pytest.raises(ValueError, match="draws, methods, samples"):
        iac(np.zeros((3, 5)), np.zeros((3, 5)), disruptive=False)
    with pytest.raises(ValueError, match="large"):
        meta_consistency(np.zeros((3, 5)), np.zeros((2, 3, 5)), np.zeros((2, 3, 4)), True)
    assert math.isnan(iac(np.full((2, 3), np.nan), np.zeros((1, 2, 3)), disruptive=True))
    assert math.isnan(iec_nr(np.full((2, 3), np.nan), np.zeros((1, 2, 3)), True))
