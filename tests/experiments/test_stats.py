"""Paired tests and Holm correction: hand-computed values, scipy directly, degenerate cases."""

from __future__ import annotations

import itertools
import math

import numpy as np
import polars as pl
import pytest
from scipy import stats

from mmrec.experiments.stats import PairedResult, holm, paired_test, paired_values

# 8 users; differences b - a = [0.5, -0.1, 0.3, 0.2, 0.4, -0.05, 0.15, 0.25] (no ties, no zeros)
A = np.array([0.1, 0.5, 0.0, 0.2, 0.3, 0.6, 0.05, 0.4])
D = np.array([0.5, -0.1, 0.3, 0.2, 0.4, -0.05, 0.15, 0.25])
B = A + D


def test_hand_computed_mean_t_and_wilcoxon():
    r = paired_test(A, B, n_boot=2000)
    assert isinstance(r, PairedResult) and r.n == 8 and r.confidence == 0.95
    assert r.mean_diff == pytest.approx(1.65 / 8)  # sum of D = 1.65
    assert r.mean_a == pytest.approx(A.mean()) and r.mean_b == pytest.approx(B.mean())
    # t = mean / (sd / sqrt(n)), sd with n - 1; two-sided p from Student's t with 7 dof
    sd = math.sqrt(sum((x - 1.65 / 8) ** 2 for x in D) / 7)
    t = (1.65 / 8) / (sd / math.sqrt(8))
    assert r.t_pvalue == pytest.approx(2 * stats.t.sf(t, df=7), rel=1e-10)
    # Wilcoxon exact: |D| ranks 1..8, negatives have ranks 1 (0.05) and 2 (0.1) -> W- = 3;
    # two-sided p = 2 * P(W- <= 3) over the 2**8 equally likely sign patterns
    w_minus = [sum(r for r, neg in zip(range(1, 9), s, strict=True) if neg) for s in
               itertools.product([False, True], repeat=8)]  # fmt: skip
    p_exact = 2 * sum(w <= 3 for w in w_minus) / 2**8
    assert p_exact == pytest.approx(2 * 5 / 256)  # {}, {1}, {2}, {3}, {1,2}
    assert r.wilcoxon_pvalue == pytest.approx(p_exact, rel=1e-12)


def test_equals_scipy_called_directly():
    rng = np.random.default_rng(3)
    a = rng.random(40)
    b = np.clip(a + rng.normal(0.05, 0.2, 40), 0, 1)
    r = paired_test(a, b, n_boot=3000, seed=7, confidence=0.9)
    assert r.t_pvalue == stats.ttest_rel(b, a).pvalue
    assert r.wilcoxon_pvalue == stats.wilcoxon(b - a).pvalue
    ci = stats.bootstrap(
        (b - a,), np.mean, n_resamples=3000, confidence_level=0.9, rng=np.random.default_rng(7)
    ).confidence_interval
    assert (r.ci_low, r.ci_high) == pytest.approx((ci.low, ci.high), rel=1e-12)
    assert r.confidence == 0.9


def test_bootstrap_interval_contains_mean_and_is_seeded():
    r1 = paired_test(A, B, n_boot=5000, seed=1)
    r2 = paired_test(A, B, n_boot=5000, seed=1)
    r3 = paired_test(A, B, n_boot=5000, seed=2)
    assert r1 == r2  # frozen dataclass equality: every field, bit for bit
    assert (r3.ci_low, r3.ci_high) != (r1.ci_low, r1.ci_high)
    assert D.min() < r1.ci_low < r1.mean_diff < r1.ci_high < D.max()
    # percentile interval: the 2.5% and 97.5% quantiles of the bootstrap means
    p = paired_test(A, B, n_boot=5000, seed=1, method="percentile")
    rng = np.random.default_rng(1)
    means = D[rng.integers(0, 8, (5000, 8))].mean(1)
    assert p.ci_low == pytest.approx(np.percentile(means, 2.5), abs=0.02)
    assert p.ci_high == pytest.approx(np.percentile(means, 97.5), abs=0.02)


def test_large_samples_are_batched_and_a_clear_effect_is_found():
    rng = np.random.default_rng(0)
    a = rng.random(20_000)
    b = a + 0.01 + rng.normal(0, 0.05, 20_000)
    r = paired_test(a, b, n_boot=1000)
    assert r.t_pvalue < 1e-100 and r.wilcoxon_pvalue < 1e-100
    assert r.ci_low < r.mean_diff < r.ci_high
    assert 0.0085 < r.ci_low and r.ci_high < 0.0115  # se = 0.05 / sqrt(20000) = 3.5e-4


def test_all_zero_differences_give_p_one():
    a = np.array([0.0, 1.0, 0.5, 0.5])
    r = paired_test(a, a.copy())
    assert (r.mean_diff, r.t_pvalue, r.wilcoxon_pvalue, r.ci_low, r.ci_high) == (0, 1, 1, 0, 0)
    c = paired_test(a, a + 0.25)  # constant non-zero difference: infinite t
    assert c.t_pvalue == 0.0 and (c.ci_low, c.ci_high) == (0.25, 0.25)
    assert c.wilcoxon_pvalue == stats.wilcoxon(np.full(4, 0.25)).pvalue


def test_zero_differences_are_dropped_by_wilcoxon():
    d = np.array([0.0, 0.0, 0.0, 0.3, -0.1, 0.2, 0.4, 0.5])
    r = paired_test(np.zeros(8), d)
    assert r.wilcoxon_pvalue == pytest.approx(stats.wilcoxon(d[3:]).pvalue)


def test_errors():
    with pytest.raises(ValueError, match="same users in the same order: got 3 and 4"):
        paired_test([0.1, 0.2, 0.3], [0.1, 0.2, 0.3, 0.4])
    with pytest.raises(ValueError, match="at least 2 users"):
        paired_test([0.1], [0.2])
    with pytest.raises(ValueError, match="b holds NaN"):
        paired_test([0.1, 0.2], [0.1, float("nan")])
    with pytest.raises(ValueError, match="confidence"):
        paired_test(A, B, confidence=95)


def test_holm():
    assert holm([0.01, 0.04, 0.03, 0.2]) == pytest.approx([0.04, 0.09, 0.09, 0.2])
    assert holm([0.5, 0.6, 0.001]) == pytest.approx([1.0, 1.0, 0.003])  # capped at 1
    assert holm([0.02]) == [0.02] and holm([]) == []
    assert holm([0.03, 0.03]) == pytest.approx([0.06, 0.06])  # ties
    p = np.random.default_rng(0).random(12)
    adj = np.array(holm(p.tolist()))
    order = np.argsort(p)
    assert np.all(np.diff(adj[order]) >= 0) and np.all(adj >= p) and np.all(adj <= 1)
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        holm([0.1, 1.5])


def test_paired_values_aligns_users():
    a = pl.DataFrame({"user_idx": [3, 1, 2], "ndcg@10": [0.3, 0.1, 0.2]})
    b = pl.DataFrame({"user_idx": [1, 2, 3], "ndcg@10": [0.5, 0.6, 0.7]})
    x, y = paired_values(a, b, "ndcg@10")
    assert x.tolist() == [0.1, 0.2, 0.3] and y.tolist() == [0.5, 0.6, 0.7]
    with pytest.raises(ValueError, match="different users \\(2 users in only one"):
        paired_values(a, b.with_columns(user_idx=pl.Series([1, 2, 4])), "ndcg@10")
    with pytest.raises(ValueError, match="lacks column 'hr@10'"):
        paired_values(a, b, "hr@10")
