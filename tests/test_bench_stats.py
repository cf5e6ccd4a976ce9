"""camzoo.bench.stats against independent references: explicit loops, scipy, hand-computed values.

The bootstrap is checked two ways: exactly, against a slow per-resample loop fed the same RNG
draws, and statistically, by the coverage of a known mean in repeated simulation (where the naive
all-values-independent bootstrap must visibly fail, or the test would not tell the two apart).
"""

from __future__ import annotations

import math
import statistics
from itertools import combinations

import numpy as np
import pytest
from scipy import stats as scipy_stats

from camzoo.bench import stats
from camzoo.bench.stats import (
    hierarchical_bootstrap_ci,
    holm,
    normalised_score,
    paired_wilcoxon,
    seed_std,
    significant_best,
)


# ----------------------------------------------------------------------------- bootstrap


def loop_bootstrap(values: np.ndarray, resamples: int, level: float, seed: int) -> tuple[float, float]:
    """The definition, one resample and one drawn seed at a time (draws requested like the module)."""
    values = np.atleast_2d(np.asarray(values, dtype=float))
    n_seeds, n_images = values.shape
    rng = np.random.default_rng(seed)
    seed_draws = rng.integers(0, n_seeds, size=(resamples, n_seeds))
    image_draws = rng.integers(0, n_images, size=(resamples, n_seeds, n_images))
    means = []
    for r in range(resamples):
        drawn = []
        for k in range(n_seeds):
            for j in range(n_images):
                x = values[seed_draws[r, k], image_draws[r, k, j]]
                if not math.isnan(x):
                    drawn.append(x)
        means.append(sum(drawn) / len(drawn) if drawn else math.nan)
    tail = (1 - level) / 2
    low, high = np.nanquantile(np.array(means), [tail, 1 - tail])
    return float(low), float(high)


def test_bootstrap_matches_explicit_loop_with_nans():
    values = np.random.default_rng(3).normal(size=(3, 7))
    values[0, 2] = values[2, 5] = values[1, 0] = np.nan
    ours = hierarchical_bootstrap_ci(values, resamples=300, level=0.9, seed=11)
    assert ours == pytest.approx(loop_bootstrap(values, 300, 0.9, 11), abs=1e-12)
    assert ours[0] < np.nanmean(values) < ours[1]


def test_bootstrap_chunking_does_not_change_the_result(monkeypatch):
    values = np.random.default_rng(4).normal(size=(4, 9))
    whole = hierarchical_bootstrap_ci(values, resamples=101, seed=5)
    monkeypatch.setattr(stats, "_CHUNK_BYTES", stats._BYTES_PER_DRAW * 4 * 9 * 7)  # 7 resamples per chunk
    assert hierarchical_bootstrap_ci(values, resamples=101, seed=5) == whole
    assert whole == pytest.approx(loop_bootstrap(values, 101, 0.95, 5), abs=1e-12)


def test_bootstrap_is_deterministic_and_seeded():
    values = np.random.default_rng(5).normal(size=(3, 20))
    assert hierarchical_bootstrap_ci(values, seed=1) == hierarchical_bootstrap_ci(values, seed=1)
    assert hierarchical_bootstrap_ci(values, seed=1) != hierarchical_bootstrap_ci(values, seed=2)


def test_bootstrap_one_seed_and_per_seed_only_shapes():
    images = np.random.default_rng(6).normal(size=25)
    one_d = hierarchical_bootstrap_ci(images, resamples=200, seed=2)
    assert one_d == hierarchical_bootstrap_ci(images[None, :], resamples=200, seed=2)
    assert one_d == pytest.approx(loop_bootstrap(images, 200, 0.95, 2), abs=1e-12)
    per_seed = np.array([[0.91], [0.93], [0.90], [0.95], [0.92]])  # e.g. accuracy per seed
    ci = hierarchical_bootstrap_ci(per_seed, resamples=500, seed=0)
    assert ci == pytest.approx(loop_bootstrap(per_seed, 500, 0.95, 0), abs=1e-12)
    assert 0.90 <= ci[0] < per_seed.mean() < ci[1] <= 0.95
    assert hierarchical_bootstrap_ci(np.full((4, 1), 0.5)) == (0.5, 0.5)


def test_bootstrap_width_matches_normal_theory_and_shrinks_with_n():
    rng = np.random.default_rng(7)
    small, large = rng.normal(size=100), rng.normal(size=1600)
    width = {}
    for name, x in (("small", small), ("large", large)):
        low, high = hierarchical_bootstrap_ci(x, resamples=3000, seed=0)
        width[name] = high - low
        theory = 2 * 1.959964 * x.std() / math.sqrt(x.size)  # S=1: the plain bootstrap of a mean
        assert width[name] == pytest.approx(theory, rel=0.1)
    assert width["small"] / width["large"] == pytest.approx(4.0, rel=0.2)


def test_bootstrap_coverage_hierarchical_vs_naive():
    """Seeds disagree (sd 1) more than images vary around their seed (sd 1, but 20 of them)."""
    true_mean, n_seeds, n_images, trials = 0.3, 10, 20, 200
    rng = np.random.default_rng(8)
    hits_hier = hits_naive = 0
    for t in range(trials):
        seed_effects = rng.normal(0, 1.0, size=(n_seeds, 1))
        values = true_mean + seed_effects + rng.normal(0, 1.0, size=(n_seeds, n_images))
        low, high = hierarchical_bootstrap_ci(values, resamples=400, level=0.9, seed=t)
        hits_hier += low <= true_mean <= high
        low, high = hierarchical_bootstrap_ci(values.ravel(), resamples=400, level=0.9, seed=t)  # one pool
        hits_naive += low <= true_mean <= high
    # the hierarchical interval is slightly anti-conservative with 10 clusters, but close to 0.9;
    # the naive one has about a third of the right width (coverage near 0.4)
    assert 0.78 <= hits_hier / trials <= 0.97
    assert hits_naive / trials <= 0.6


def test_bootstrap_all_nan_and_bad_input():
    assert all(math.isnan(x) for x in hierarchical_bootstrap_ci(np.full((2, 3), np.nan)))
    with pytest.raises(ValueError, match="2-D"):
        hierarchical_bootstrap_ci(np.zeros((2, 3, 4)))
    with pytest.raises(ValueError, match="empty"):
        hierarchical_bootstrap_ci(np.zeros((2, 0)))
    with pytest.raises(ValueError, match="level"):
        hierarchical_bootstrap_ci(np.zeros((2, 3)), level=1.5)
    with pytest.raises(ValueError, match="resamples"):
        hierarchical_bootstrap_ci(np.zeros((2, 3)), resamples=0)


# ----------------------------------------------------------------------------- seed std


def test_seed_std():
    x = [0.71, 0.74, 0.69, 0.80]
    assert seed_std(x) == pytest.approx(statistics.stdev(x), abs=1e-15)
    assert seed_std([0.71, np.nan, 0.74, 0.69, 0.80]) == pytest.approx(statistics.stdev(x), abs=1e-15)
    assert math.isnan(seed_std([0.5])) and math.isnan(seed_std([0.5, np.nan])) and math.isnan(seed_std([]))
    per_image = np.array([[1.0, 3.0, np.nan], [2.0, 2.0, 5.0], [0.0, 0.0, 0.0]])  # seed means 2, 3, 0
    assert seed_std(per_image) == pytest.approx(statistics.stdev([2.0, 3.0, 0.0]))
    with pytest.raises(ValueError, match="1-D"):
        seed_std(np.zeros((2, 2, 2)))


# ----------------------------------------------------------------------------- wilcoxon


def test_paired_wilcoxon_matches_scipy_after_dropping_nan_pairs():
    rng = np.random.default_rng(9)
    a = rng.normal(size=(3, 15))
    b = a + rng.normal(0.8, 1.0, size=(3, 15))
    a[0, 1] = np.nan
    b[2, 4] = np.nan
    b[1, 3] = a[1, 3]  # one zero difference, dropped by the test but kept in the median
    p, effect = paired_wilcoxon(a, b)
    keep = ~(np.isnan(a) | np.isnan(b)).ravel()
    x, y = a.ravel()[keep], b.ravel()[keep]
    assert p == pytest.approx(scipy_stats.wilcoxon(x, y).pvalue, rel=1e-12)
    assert effect == pytest.approx(np.median(x - y), abs=1e-15)
    assert p < 0.05 and effect < 0
    assert paired_wilcoxon(b, a) == pytest.approx((p, -effect))


def test_paired_wilcoxon_degenerate_cases():
    x = np.arange(6.0)
    assert paired_wilcoxon(x, x) == (1.0, 0.0)
    p, effect = paired_wilcoxon([np.nan, 1.0], [2.0, np.nan])
    assert p == 1.0 and math.isnan(effect)
    assert paired_wilcoxon([1.0], [0.0]) == (1.0, 1.0)
    p, effect = paired_wilcoxon([1.0, 2.0, 3.0], [0.0, 0.0, 0.0])  # exact test, n=3: p = 2/8
    assert p == pytest.approx(0.25) and effect == 2.0
    with pytest.raises(ValueError, match="same shape"):
        paired_wilcoxon(np.zeros((2, 3)), np.zeros((3, 2)))


# ----------------------------------------------------------------------------- holm


def test_holm_hand_computed():
    # sorted: 0.005*4=0.02, 0.01*3=0.03, 0.03*2=0.06, 0.04*1=0.04 -> running max 0.06
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    adjusted = holm([0.01, np.nan, 0.04, 0.03, 0.005])
    assert math.isnan(adjusted[1])
    assert adjusted[[0, 2, 3, 4]] == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, 0.6]) == pytest.approx([1.0, 1.0])
    assert holm([0.3, 0.2]) == pytest.approx([0.4, 0.4])
    assert holm([0.02]) == pytest.approx([0.02])
    assert holm(np.array([[0.01, 0.02], [0.03, 0.04]])).shape == (2, 2)
    assert np.isnan(holm([np.nan, np.nan])).all()
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        holm([0.1, 1.2])


def test_holm_equals_the_step_down_procedure():
    rng = np.random.default_rng(10)
    for _ in range(20):
        p = rng.uniform(0, 0.2, size=rng.integers(1, 12))
        adjusted = holm(p)
        assert np.all(adjusted >= p) and np.all(adjusted <= 1)
        order = np.argsort(p)
        assert np.all(np.diff(adjusted[order]) >= 0)  # monotone in the raw p-values
        for alpha in (0.01, 0.037, 0.05, 0.1):
            rejected = np.zeros(p.size, dtype=bool)
            for k, index in enumerate(order):  # Holm (1979): stop at the first non-rejection
                if p[index] > alpha / (p.size - k):
                    break
                rejected[index] = True
            np.testing.assert_array_equal(adjusted <= alpha, rejected)


def test_holm_matches_statsmodels():
    from statsmodels.stats import multitest

    p = np.random.default_rng(11).uniform(0, 0.3, size=9)
    np.testing.assert_allclose(holm(p), multitest.multipletests(p, method="holm")[1], rtol=1e-12)


# ----------------------------------------------------------------------------- significant best


def rows(shift_a: float, shift_b: float, shift_c: float, seed: int = 12) -> dict[str, np.ndarray]:
    """Three methods scored on the same (2 seeds, 60 images): shared image difficulty + small noise."""
    rng = np.random.default_rng(seed)
    base = rng.uniform(0.2, 0.8, size=(2, 60))
    return {name: base + shift + rng.normal(0, 0.05, size=base.shape)
            for name, shift in (("a", shift_a), ("b", shift_b), ("c", shift_c))}


def test_significant_best_picks_the_clear_winner_in_both_directions():
    table = rows(0.3, 0.0, -0.1)
    best, records = significant_best(table, higher_is_better=True)
    assert best == "a"
    best, _ = significant_best(table, higher_is_better=False)
    assert best == "c"
    assert [(r["a"], r["b"]) for r in records] == list(combinations("abc", 2))
    assert set(records[0]) == {"a", "b", "median_difference", "p", "p_holm", "n_pairs", "significant"}
    raw = [paired_wilcoxon(table[r["a"]], table[r["b"]]) for r in records]
    assert [r["p"] for r in records] == [p for p, _ in raw]
    assert [r["median_difference"] for r in records] == [m for _, m in raw]
    np.testing.assert_allclose([r["p_holm"] for r in records], holm([p for p, _ in raw]))
    assert all(r["n_pairs"] == 120 for r in records)


def test_significant_best_tests_many_pairs_at_once_exactly_as_one_pair_at_a_time():
    """Rows of more than 50 values go through one vectorised scipy call; each record must equal
    paired_wilcoxon of its pair (ties, zero differences, identical rows, NaN rows, short rows)."""
    rng = np.random.default_rng(0)
    vectorised = 0
    for trial in range(24):
        n = (20, 48, 51, 96, 200, 60)[trial % 6]
        rows = {f"r{i}": np.round(rng.random((2, n)) * (2, 5, 100)[i % 3], (0, 1, 3)[trial % 3]) for i in range(6)}
        rows["r1"] = rows["r0"].copy() if trial % 4 == 0 else rows["r1"]  # identical: all differences zero
        if trial % 5 == 0:
            rows["r2"][0, 0] = np.nan
        if trial % 3 == 1:  # rows that skip the same images (one model's parts columns): batched by that pattern
            for name in ("r3", "r4", "r5"):
                rows[name][:, :4] = np.nan
        vectorised += len(stats._batched_p_values({k: v.ravel() for k, v in rows.items()}))
        _, records = stats.significant_best(rows, True)
        for record in records:
            p_value, median = stats.paired_wilcoxon(rows[record["a"]], rows[record["b"]])
            assert record["p"] == p_value and record["median_difference"] == median, record
    assert vectorised > 100  # the vectorised path was taken, not only the one-pair path


def test_significant_best_ties():
    # a and c share one distribution and lead b clearly: nothing beats every other row
    for higher, worse in ((True, -0.2), (False, 0.2)):
        best, records = significant_best(rows(0.0, worse, 0.0), higher_is_better=higher)
        assert best is None
        p_holm = {(r["a"], r["b"]): r["p_holm"] for r in records}
        assert p_holm[("a", "c")] >= 0.05
        assert p_holm[("a", "b")] < 0.05 and p_holm[("b", "c")] < 0.05  # powered enough to see b lose
    # two rows share the lead over a clearly worse third: still a tie
    assert significant_best(rows(0.3, 0.3, 0.0), higher_is_better=True)[0] is None
    # identical rows: p = 1, no winner
    x = np.random.default_rng(13).uniform(size=(2, 10))
    assert significant_best({"p": x, "q": x.copy()}, higher_is_better=True)[0] is None


def test_significant_best_requires_the_right_direction_and_significance():
    table = rows(0.0, 0.3, 0.1)
    assert significant_best(table, higher_is_better=True)[0] == "b"
    assert significant_best(table, higher_is_better=False)[0] == "a"
    # a difference too small for 6 pairs: not significant, so no best although b's mean is higher
    small = {"a": np.array([[0.1, 0.5, 0.9]] * 2), "b": np.array([[0.12, 0.49, 0.93]] * 2)}
    best, records = significant_best(small, higher_is_better=True)
    assert best is None and records[0]["p_holm"] > 0.05


def test_significant_best_edge_cases():
    x = np.zeros((2, 3))
    assert significant_best({"only": x}, higher_is_better=True) == ("only", [])
    with pytest.raises(ValueError, match="'b' .*'c'"):
        significant_best({"a": x, "b": np.zeros((3, 3)), "c": np.zeros(3)}, higher_is_better=True)
    with pytest.raises(ValueError, match="empty"):
        significant_best({}, higher_is_better=True)
    with pytest.raises(ValueError, match="alpha"):
        significant_best({"a": x, "b": x}, higher_is_better=True, alpha=0)


# ----------------------------------------------------------------------------- normalised score


def test_normalised_score():
    assert normalised_score(0.5, 0.0, 1.0) == pytest.approx(0.5)
    # deletion AUC, lower is better: random 0.30, oracle 0.10
    assert normalised_score(0.20, 0.30, 0.10) == pytest.approx(0.5)
    assert normalised_score(0.30, 0.30, 0.10) == pytest.approx(0.0)
    assert normalised_score(0.10, 0.30, 0.10) == pytest.approx(1.0)
    assert normalised_score(0.40, 0.30, 0.10) == pytest.approx(-0.5)  # worse than noise
    assert isinstance(normalised_score(0.5, 0.0, 1.0), float)
    assert math.isnan(normalised_score(0.5, 0.2, 0.2))
    assert math.isnan(normalised_score(np.nan, 0.0, 1.0)) and math.isnan(normalised_score(0.5, 0.0, np.nan))
    np.testing.assert_allclose(normalised_score(np.array([0.0, 0.25, 1.0]), 0.0, np.array([1.0, 0.5, 1.0])),
                               [0.0, 0.5, 1.0])


def test_pooled_bootstrap_uses_the_same_draws_and_recomputes_the_statistic():
    rng = np.random.default_rng(5)
    values = rng.normal(size=(3, 40))
    # a (S, N, 1) table whose statistic is its mean is exactly the plain hierarchical bootstrap
    plain = stats.hierarchical_bootstrap_ci(values, resamples=500, seed=2)
    pooled = stats.hierarchical_bootstrap_ci_of(values[..., None], lambda m: m[:, 0], resamples=500, seed=2)
    assert pooled == pytest.approx(plain, abs=1e-12)
    # a best-threshold statistic (max over the last axis of mean hits): the CI brackets the full-set value
    hits = (rng.random((3, 60, 5)) < np.linspace(0.2, 0.8, 5)).astype(float)
    low, high = stats.hierarchical_bootstrap_ci_of(hits, lambda m: m.max(-1), resamples=800, seed=0)
    assert low <= hits.mean((0, 1)).max() <= high and high - low < 0.3
    with pytest.raises(ValueError, match="NaN"):
        stats.hierarchical_bootstrap_ci_of(np.full((2, 3, 2), np.nan), lambda m: m.max(-1))


def test_reused_draws_give_the_bootstrap_of_fresh_draws(monkeypatch):
    """The seeded draws kept per shape give exactly the CIs of drawing afresh, for both bootstraps."""
    rng = np.random.default_rng(5)
    values, tables = rng.random((3, 40)), (rng.random((3, 40, 2, 7)) < 0.5).astype(float)
    pooled = lambda means: means.max(-1).mean(-1)  # noqa: E731
    kept = [stats.hierarchical_bootstrap_ci(values, 500), stats.hierarchical_bootstrap_ci(values * 2, 500),
            stats.hierarchical_bootstrap_ci_of(tables, pooled, 500)]
    monkeypatch.setattr(stats, "_CACHE_BYTES", 0)
    fresh = [stats.hierarchical_bootstrap_ci(values, 500), stats.hierarchical_bootstrap_ci(values * 2, 500),
             stats.hierarchical_bootstrap_ci_of(tables, pooled, 500)]
    assert kept == fresh
    assert kept[1] == (2 * kept[0][0], 2 * kept[0][1])  # the same draws for every array of one shape
