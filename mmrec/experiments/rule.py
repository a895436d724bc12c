"""The rule by which a setting becomes a shipped default (``docs/defaults.md``), applied to the
per-seed results of the setting and of the current default on every category.

Validation decides: per category, the change of the mean best validation NDCG@10 in units of
the default's seed spread there, clipped to ``[-CLIP, +CLIP]`` so that one small category cannot
decide alone; the setting wins when the mean of these changes is above zero. Test may only
veto: a loss on test beyond ``2 x`` the default's spread, or a paired interval on test wholly
below zero, on any category. Every category needs at least ``MIN_SEEDS`` seeds on both sides.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

#: Smallest seed spread (standard deviation over seeds) a change is measured in: three seeds
#: that happen to agree must not turn a tiny difference into many "spreads".
MIN_SPREAD = 0.002
#: A category's standardised validation change counts at most this many spreads either way.
CLIP = 2.0
#: Seeds each side needs on each category.
MIN_SEEDS = 3
#: A test loss beyond this many spreads of the default vetoes the setting.
VETO_SPREADS = 2.0


@dataclass(frozen=True)
class Side:
    """One setting on one category: best validation and test NDCG@10, one value per seed."""

    val: tuple[float, ...]
    test: tuple[float, ...]

    def __post_init__(self) -> None:
        if len(self.val) != len(self.test):
            raise ValueError(
                f"{len(self.val)} validation figures against {len(self.test)} test figures: "
                "one of each per seed"
            )
        if not all(np.isfinite(v) for v in (*self.val, *self.test)):
            raise ValueError("a validation or test figure is missing (NaN) or infinite")


@dataclass(frozen=True)
class Paired:
    """The setting minus the default on the same test users: mean and 95% interval."""

    difference: float
    low: float
    high: float


@dataclass(frozen=True)
class CategoryVerdict:
    """What one category says: its standardised validation change and any veto."""

    category: str
    seeds: int
    val_default: float
    val_setting: float
    spread: float
    change: float  # (val_setting - val_default) / spread, clipped to [-CLIP, CLIP]
    test_default: float
    test_setting: float
    test_spread: float
    paired: Paired | None
    veto: str | None
    missing: str | None


@dataclass(frozen=True)
class Verdict:
    """The rule's answer for one setting against the current default."""

    categories: tuple[CategoryVerdict, ...]
    score: float | None  # mean standardised validation change over the categories
    wins: bool
    reason: str


def spread(values: Sequence[float]) -> float:
    """Seed spread: the standard deviation over seeds (ddof 1), at least :data:`MIN_SPREAD`."""
    a = np.asarray(values, dtype=float)
    std = float(a.std(ddof=1)) if len(a) > 1 else 0.0
    return max(std, MIN_SPREAD)


def _mean(values: tuple[float, ...]) -> float:
    """The mean, NaN for no values (a side with no run yet: evidence missing)."""
    return float(np.mean(values)) if len(values) else float("nan")


def judge_category(
    category: str, default: Side, setting: Side, paired: Paired | None = None
) -> CategoryVerdict:
    """The standardised validation change and the test veto of one category."""
    seeds = min(len(default.val), len(setting.val))
    missing = None
    if seeds < MIN_SEEDS:
        missing = f"{category}: {seeds} seed(s), the rule needs {MIN_SEEDS} on both sides"
    s = spread(default.val)
    val_d, val_s = _mean(default.val), _mean(setting.val)
    change = float(np.clip((val_s - val_d) / s, -CLIP, CLIP))
    ts = spread(default.test)
    test_d, test_s = _mean(default.test), _mean(setting.test)
    veto = None
    if test_s < test_d - VETO_SPREADS * ts:
        veto = (
            f"{category}: test {test_s:.4f} against {test_d:.4f}, a loss beyond "
            f"{VETO_SPREADS:g} x the default's spread ({ts:.4f})"
        )
    elif paired is not None and paired.high < 0:
        veto = (
            f"{category}: paired test interval [{paired.low:+.4f}, {paired.high:+.4f}] lies "
            "wholly below zero"
        )
    return CategoryVerdict(
        category, seeds, val_d, val_s, s, change, test_d, test_s, ts, paired, veto,
        missing,
    )  # fmt: skip


def judge(
    evidence: Mapping[str, tuple[Side, Side, Paired | None]], required: Sequence[str]
) -> Verdict:
    """Apply the rule: ``evidence`` maps a category to (default, setting, paired or None);
    ``required`` names every category the project has (a missing one means no decision)."""
    absent = [c for c in required if c not in evidence]
    verdicts = tuple(judge_category(c, *evidence[c]) for c in evidence)
    missing = [f"{c}: no results" for c in absent] + [v.missing for v in verdicts if v.missing]
    vetoes = [v.veto for v in verdicts if v.veto]
    score = float(np.mean([v.change for v in verdicts])) if verdicts else None
    if missing:
        return Verdict(verdicts, score, False, "evidence missing: " + "; ".join(missing))
    if score is None:
        return Verdict(verdicts, None, False, "no categories given")
    if score <= 0:
        return Verdict(verdicts, score, False, f"validation does not favour it (mean {score:+.2f})")
    if vetoes:
        return Verdict(verdicts, score, False, "vetoed on test: " + "; ".join(vetoes))
    return Verdict(verdicts, score, True, f"wins: mean standardised validation change {score:+.2f}")
