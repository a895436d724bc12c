"""Paired comparison of two variants on the same users (t-test, Wilcoxon, bootstrap CI) and Holm."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import polars as pl
from scipy import stats

_BOOT_ELEMENTS = 2**22  # resampled values held at once by the bootstrap (~32 MB of float64)


@dataclass(frozen=True)
class PairedResult:
    """Variant ``b`` against reference ``a`` on the same users (difference = ``b - a``).

    Attributes:
        n: Users (pairs).
        mean_a: Mean of ``a`` (the reference).
        mean_b: Mean of ``b`` (the variant).
        mean_diff: Mean of ``b - a`` (= ``mean_b - mean_a``).
        ci_low: Lower end of the bootstrap confidence interval of ``mean_diff``.
        ci_high: Upper end of it.
        confidence: Confidence level of the interval (e.g. 0.95).
        t_pvalue: Two-sided paired t-test p-value (``scipy.stats.ttest_rel``).
        wilcoxon_pvalue: Two-sided Wilcoxon signed-rank p-value (``scipy.stats.wilcoxon``,
            users with a zero difference dropped).
    """

    n: int
    mean_a: float
    mean_b: float
    mean_diff: float
    ci_low: float
    ci_high: float
    confidence: float
    t_pvalue: float
    wilcoxon_pvalue: float


def _values(x: np.ndarray | Sequence[float], name: str) -> np.ndarray:
    v = np.asarray(x, dtype=np.float64)
    if v.ndim != 1:
        raise ValueError(f"{name} must be 1-D per-user values, got shape {v.shape}")
    if not np.all(np.isfinite(v)):
        raise ValueError(f"{name} holds NaN or infinite values")
    return v


def paired_test(
    a: np.ndarray | Sequence[float],
    b: np.ndarray | Sequence[float],
    *,
    n_boot: int = 10_000,
    seed: int = 0,
    confidence: float = 0.95,
    method: str = "BCa",
) -> PairedResult:
    """Compare per-user values of a variant ``b`` with those of a reference ``a``.

    Degenerate cases, where scipy would return NaN: when every difference is 0 both p-values are
    1.0 (no evidence of a difference) and the interval is ``(0, 0)``; when every difference is
    the same non-zero value ``c`` the t-test p-value is 0.0 (an infinite t statistic), the
    Wilcoxon p-value is scipy's, and the interval is ``(c, c)``. The Wilcoxon test drops users
    with a zero difference (``zero_method="wilcox"``) and lets scipy choose the exact or the
    normal-approximation null distribution (``method="auto"``).

    Args:
        a: ``[U]`` per-user values of the reference.
        b: ``[U]`` per-user values of the variant, same users in the same order.
        n_boot: Bootstrap resamples of the users.
        seed: Seed of the bootstrap (the same seed gives the same interval).
        confidence: Confidence level of the interval.
        method: ``scipy.stats.bootstrap`` interval method: ``"BCa"`` (bias-corrected and
            accelerated), ``"percentile"`` or ``"basic"``.

    Returns:
        The :class:`PairedResult`. The interval resamples users with replacement, each keeping
        its pair of values, i.e. it resamples the ``[U]`` differences ``b - a``.
    """
    a, b = _values(a, "a"), _values(b, "b")
    if a.shape != b.shape:
        raise ValueError(
            f"a and b must hold the same users in the same order: got {a.shape[0]} and "
            f"{b.shape[0]} values"
        )
    if a.shape[0] < 2:
        raise ValueError(f"need at least 2 users for a paired test, got {a.shape[0]}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    d = b - a  # [U]
    mean = float(d.mean())
    if np.all(d == d[0]):
        t_p = 1.0 if d[0] == 0 else 0.0
        w_p = 1.0 if d[0] == 0 else float(stats.wilcoxon(d).pvalue)
        low = high = float(d[0])
    else:
        t_p = float(stats.ttest_rel(b, a).pvalue)
        w_p = float(stats.wilcoxon(d, zero_method="wilcox").pvalue)
        boot = stats.bootstrap(
            (d,),
            np.mean,
            n_resamples=n_boot,
            batch=max(1, _BOOT_ELEMENTS // d.shape[0]),
            confidence_level=confidence,
            method=method,
            rng=np.random.default_rng(seed),
        )
        low, high = float(boot.confidence_interval.low), float(boot.confidence_interval.high)
    return PairedResult(
        n=int(d.shape[0]),
        mean_a=float(a.mean()),
        mean_b=float(b.mean()),
        mean_diff=mean,
        ci_low=low,
        ci_high=high,
        confidence=confidence,
        t_pvalue=t_p,
        wilcoxon_pvalue=w_p,
    )


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values, in the input order.

    With the ``m`` p-values sorted ascending, ``p_(1) <= ... <= p_(m)``, the adjusted value of
    ``p_(i)`` is ``max_{j <= i} min(1, (m - j + 1) p_(j))`` (step-down, so never smaller than
    the adjusted value of a smaller p-value, and capped at 1). Rejecting where the adjusted
    value is <= alpha controls the family-wise error rate at alpha.

    Args:
        p_values: Raw p-values in [0, 1].

    Returns:
        The adjusted p-values, ``out[i]`` for ``p_values[i]``.
    """
    p = np.asarray(p_values, dtype=np.float64).reshape(-1)
    if np.any(~np.isfinite(p)) or np.any((p < 0) | (p > 1)):
        raise ValueError(f"p-values must be in [0, 1], got {list(p_values)}")
    m = p.shape[0]
    order = np.argsort(p, kind="stable")
    stepped = np.minimum(1.0, (m - np.arange(m)) * p[order])
    out = np.empty(m)
    out[order] = np.maximum.accumulate(stepped)
    return out.tolist()


def paired_values(
    a: pl.DataFrame, b: pl.DataFrame, column: str, key: str = "user_idx"
) -> tuple[np.ndarray, np.ndarray]:
    """One metric's per-user values of two evaluations, aligned user by user.

    Args:
        a: Per-user values of the reference (one row per user, e.g.
            ``BaselineEvaluation.per_user``).
        b: Per-user values of the variant.
        column: The metric column, e.g. ``"ndcg@10"``.
        key: The user column.

    Returns:
        ``a[column]`` and ``b[column]`` as ``[U]`` float64 arrays, both sorted by ``key``.
    """
    for name, frame in (("a", a), ("b", b)):
        if column not in frame.columns or key not in frame.columns:
            raise ValueError(f"{name} lacks column {column!r} or {key!r}: {frame.columns}")
        if frame[key].n_unique() != frame.height:
            raise ValueError(f"{name} has repeated {key} values")
    a, b = a.select(key, column).sort(key), b.select(key, column).sort(key)
    if not a[key].equals(b[key]):
        missing = a.height + b.height - 2 * a.join(b, on=key).height
        raise ValueError(
            f"a and b were evaluated on different users ({missing} users in only one of them)"
        )
    return a[column].to_numpy().astype(np.float64), b[column].to_numpy().astype(np.float64)
