"""Straightforward NumPy reference for ranks and ranking metrics (explicit sort, tie rule)."""

from __future__ import annotations

import math

import numpy as np


def reference_ranks(scores: np.ndarray, targets: list[int], exclude: list[int]) -> list[float]:
    """Ranks of the (unique, non-zero) targets of one user: sort candidates by score descending,
    relevant after non-relevant among equal scores; item 0 and excluded non-targets are dropped."""
    rel = [t for i, t in enumerate(targets) if t != 0 and t not in targets[:i]]
    cands = [c for c in range(1, len(scores)) if c in rel or c not in exclude]
    order = sorted(cands, key=lambda c: (-float(scores[c]), c in rel))
    return [float(order.index(t) + 1) for t in rel]


def reference_metrics(ranks: list[float], k: int, num_rel: int | None = None) -> dict[str, float]:
    """Every metric for one user, written from the definitions."""
    n = len(ranks) if num_rel is None else num_rel
    hits = sorted(r for r in ranks if r <= k)
    p, rc = len(hits) / k, len(hits) / n
    dcg = sum(1 / math.log2(r + 1) for r in hits)
    idcg = sum(1 / math.log2(i + 1) for i in range(1, min(n, k) + 1))
    first = min(ranks) if ranks else math.inf
    return {
        f"hr@{k}": float(len(hits) > 0),
        f"recall@{k}": rc,
        f"precision@{k}": p,
        f"f1@{k}": 0.0 if p + rc == 0 else 2 * p * rc / (p + rc),
        f"ndcg@{k}": dcg / idcg,
        "mrr": 0.0 if first == math.inf else 1 / first,
        f"mrr@{k}": 1 / first if first <= k else 0.0,
        f"map@{k}": sum((i + 1) / r for i, r in enumerate(hits)) / min(n, k),
    }


def reference_mean(per_user: list[dict[str, float]]) -> dict[str, float]:
    return {key: float(np.mean([u[key] for u in per_user])) for key in per_user[0]}
