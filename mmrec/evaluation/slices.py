"""Ranking metrics per slice (target month, holiday window, history length, item popularity), CSV
and plot."""

from __future__ import annotations

import csv
import datetime as dt
import math
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor
from torchmetrics import Metric

from mmrec.calendar import DAY
from mmrec.evaluation.metrics import (
    FIXED_POINT_SCALE,
    check_ks,
    metric_names,
    per_user_metrics,
    to_fixed_point,
)

POPULARITY = ("head", "torso", "tail", "unseen")


def _month_index(ym: str) -> int:
    y, m = (int(x) for x in ym.split("-"))
    return y * 12 + m - 1


def popularity_buckets(item_train_counts: Tensor, head: float = 0.2, torso: float = 0.3) -> Tensor:
    """``[N + 1]`` bucket per item: 0 head, 1 torso, 2 tail, 3 unseen (no training event).

    Items seen in training are ordered by training count; the top ``head`` fraction is head,
    the next ``torso`` fraction torso, the rest tail. Items tied at a boundary go to the more
    popular bucket. Item 0 (padding) is "unseen".
    """
    counts = torch.as_tensor(item_train_counts).long().reshape(-1)
    out = torch.full(counts.shape, 3, dtype=torch.long)
    seen = counts > 0
    seen[0] = False
    n = int(seen.sum())
    if n == 0:
        return out
    desc = counts[seen].sort(descending=True).values
    head_min = desc[max(1, math.ceil(head * n)) - 1]
    torso_min = desc[max(1, math.ceil((head + torso) * n)) - 1]
    out[seen] = 2
    out[seen & (counts >= torso_min)] = 1
    out[seen & (counts >= head_min)] = 0
    return out


class SlicedRankingMetrics(Metric):
    """:class:`~mmrec.evaluation.metrics.RankingMetrics` per slice of users, DDP-safe (fixed-size
    sum states).

    Slices: ``month=YYYY-MM`` of the target time (``month=unknown`` outside the configured range
    or for timestamp <= 0); ``holiday=in|out`` (target day inside the window, inclusive, the
    window may wrap the new year); ``history=1-4`` etc. by full history length; and
    ``popularity=head|torso|tail|unseen`` of the target items. For popularity a user counts in
    every bucket holding one of the targets, with relevance restricted to those targets and
    positions taken from the full ranking (other targets keep their places as non-relevant);
    without item counts (see :meth:`set_item_train_counts`) the popularity slices are empty.

    Args:
        ks: Cut-offs K.
        prefix: Put in front of every key, e.g. ``"test/"``.
        sampled: Ranks come from sampled candidates: metric names read ``sampled_<metric>``.
        first_month: First month (``"YYYY-MM"``) with its own slice.
        last_month: Last month with its own slice.
        holiday_start: ``(month, day)`` the holiday window opens.
        holiday_end: ``(month, day)`` it closes (inclusive).
        history_edges: Lower edges of the history-length buckets.
        head_fraction: Fraction of training-seen items that are "head".
        torso_fraction: Next fraction that is "torso" (the rest is "tail").
    """

    full_state_update = False
    is_differentiable = False
    higher_is_better = True

    def __init__(
        self,
        ks: Sequence[int] = (10, 20),
        prefix: str = "",
        sampled: bool = False,
        first_month: str = "1996-01",
        last_month: str = "2030-12",
        holiday_start: tuple[int, int] = (11, 15),
        holiday_end: tuple[int, int] = (12, 31),
        history_edges: Sequence[int] = (1, 5, 10, 20, 50),
        head_fraction: float = 0.2,
        torso_fraction: float = 0.3,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.ks, self.prefix, self.sampled = check_ks(ks), prefix, sampled
        self.names = metric_names(self.ks)
        self.first_idx, last_idx = _month_index(first_month), _month_index(last_month)
        if last_idx < self.first_idx:
            raise ValueError(f"last_month {last_month} is before first_month {first_month}")
        dt.date(2000, *holiday_start), dt.date(2000, *holiday_end)  # validates
        self.holiday = (tuple(holiday_start), tuple(holiday_end))
        edges = [int(e) for e in history_edges]
        if edges != sorted(set(edges)) or not edges or edges[0] < 1:
            raise ValueError(f"history_edges must be increasing positive ints, got {history_edges}")
        self.head_fraction, self.torso_fraction = head_fraction, torso_fraction
        months = [f"{i // 12}-{i % 12 + 1:02d}" for i in range(self.first_idx, last_idx + 1)]
        hist = ["0" if edges[0] == 1 else f"0-{edges[0] - 1}"]
        hist += [
            f"{a}-{b - 1}" if b - 1 > a else f"{a}" for a, b in zip(edges, edges[1:], strict=False)
        ] + [f"{edges[-1]}+"]
        self.labels = (
            [f"month={m}" for m in months]
            + ["month=unknown", "holiday=in", "holiday=out"]
            + [f"history={h}" for h in hist]
            + [f"popularity={p}" for p in POPULARITY]
        )
        self._n_months = len(months)
        self._hol0 = self._n_months + 1
        self._hist0 = self._hol0 + 2
        self._pop0 = self._hist0 + len(hist)
        self.register_buffer("history_edges", torch.tensor(edges), persistent=False)
        self.register_buffer("item_bucket", torch.zeros(0, dtype=torch.long), persistent=False)
        self.add_state(
            "sums",
            torch.zeros(len(self.labels), len(self.names), dtype=torch.int64),
            dist_reduce_fx="sum",
        )
        self.add_state(
            "users", torch.zeros(len(self.labels), dtype=torch.int64), dist_reduce_fx="sum"
        )

    def set_item_train_counts(self, item_train_counts: Tensor) -> None:
        """``[N + 1]`` training events per item (0 = never seen); enables the popularity slices."""
        self.item_bucket = popularity_buckets(
            item_train_counts, self.head_fraction, self.torso_fraction
        ).to(self.sums.device)

    def _month_slot(self, target_time: Tensor) -> tuple[Tensor, Tensor]:
        days = torch.div(target_time.long(), DAY, rounding_mode="floor").cpu().tolist()
        secs = target_time.long().cpu().tolist()
        month, hol = [], []
        (m0, d0), (m1, d1) = self.holiday
        for s, d in zip(secs, days, strict=True):
            if s <= 0:
                month.append(self._n_months)
                hol.append(1)
                continue
            date = dt.date(1970, 1, 1) + dt.timedelta(days=d)
            idx = date.year * 12 + date.month - 1 - self.first_idx
            month.append(idx if 0 <= idx < self._n_months else self._n_months)
            md = (date.month, date.day)
            inside = (
                (m0, d0) <= md <= (m1, d1)
                if (m0, d0) <= (m1, d1)
                else md >= (m0, d0) or md <= (m1, d1)
            )
            hol.append(0 if inside else 1)
        return torch.tensor(month), torch.tensor(hol)

    def _add(self, slots: Tensor, values: Tensor, keep: Tensor) -> None:
        slots, fixed = (
            slots[keep.cpu()].to(self.sums.device),
            to_fixed_point(values[keep]).to(self.sums.device),
        )
        self.sums.index_add_(0, slots, fixed)
        self.users.index_add_(0, slots, torch.ones_like(slots))

    def update(
        self, ranks: Tensor, target_time: Tensor, history_len: Tensor, target_items: Tensor
    ) -> None:
        """Add a batch: ``ranks [B, T]`` (as for RankingMetrics), ``target_time [B]`` unix seconds,
        ``history_len [B]`` full history lengths, ``target_items [B, T]`` (0-padded)."""
        values, keep = per_user_metrics(ranks, None, self.ks)
        values, keep = values.cpu(), keep.cpu()
        month, hol = self._month_slot(target_time)
        self._add(month, values, keep)
        self._add(self._hol0 + hol, values, keep)
        hist = torch.searchsorted(
            self.history_edges.cpu(), history_len.long().cpu().contiguous(), right=True
        )
        self._add(self._hist0 + hist, values, keep)
        if self.item_bucket.numel():
            bucket = self.item_bucket.to(target_items.device)[target_items.long()]  # [B, T]
            for b in range(len(POPULARITY)):
                rb = ranks.masked_fill(bucket != b, float("inf"))
                vb, kb = per_user_metrics(rb, None, self.ks)
                self._add(torch.full((rb.shape[0],), self._pop0 + b), vb.cpu(), kb.cpu())

    def compute(self) -> dict[str, Tensor]:
        """``{prefix}slice/<slice>/<metric>`` means and ``{prefix}slice/<slice>/users`` counts,
        for non-empty slices only."""
        tag = "sampled_" if self.sampled else ""
        out: dict[str, Tensor] = {}
        for i, label in enumerate(self.labels):
            n = int(self.users[i])
            if n == 0:
                continue
            means = self.sums[i].double() / FIXED_POINT_SCALE / n
            for name, v in zip(self.names, means.unbind(0), strict=True):
                out[f"{self.prefix}slice/{label}/{tag}{name}"] = v
            out[f"{self.prefix}slice/{label}/users"] = self.users[i].double()
        return out


def slice_rows(results: dict[str, Tensor | float]) -> list[dict[str, str | float]]:
    """Flat ``.../slice/<kind>=<value>/<metric>`` keys -> one row per slice (``slice``, ``value``,
    metrics)."""
    rows: dict[tuple[str, str], dict[str, str | float]] = {}
    for key, v in results.items():
        head, sep, rest = key.partition("slice/")
        if not sep:
            continue
        label, _, metric = rest.partition("/")
        kind, _, value = label.partition("=")
        rows.setdefault((kind, value), {"slice": kind, "value": value})[metric] = float(v)
    return list(rows.values())


def write_slices_csv(results: dict[str, Tensor | float], path: str | Path) -> Path:
    """Write :meth:`SlicedRankingMetrics.compute` output as CSV, one row per slice."""
    rows = slice_rows(results)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    cols = ["slice", "value"] + sorted({k for r in rows for k in r} - {"slice", "value"})
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=cols)
        writer.writeheader()
        writer.writerows(rows)
    return path


def plot_metric_by_month(
    results: dict[str, Tensor | float], path: str | Path, metric: str = "ndcg@10"
) -> Path:
    """Draw ``metric`` per target month (bars; users per month as a thin line) to a PNG.

    Uses matplotlib's object API with the Agg canvas: no pyplot, no backend switch, nothing
    changed for the rest of the process.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = sorted(
        (r for r in slice_rows(results) if r["slice"] == "month" and r["value"] != "unknown"),
        key=lambda r: r["value"],
    )
    name = next((k for k in (rows[0] if rows else {}) if k.endswith(metric)), metric)
    if not rows or name not in rows[0]:
        raise ValueError(
            f"no month slices with {metric!r} in the results; was SlicedRankingMetrics updated?"
        )
    fig = Figure(figsize=(max(6, 0.25 * len(rows)), 4))
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    ax.bar(range(len(rows)), [r[name] for r in rows], color="tab:blue")
    ax.set_xticks(range(len(rows)), [r["value"] for r in rows], rotation=90, fontsize=7)
    ax.set_ylabel(name)
    ax.set_title(f"{name} by target month")
    twin = ax.twinx()
    twin.plot(range(len(rows)), [r.get("users", 0) for r in rows], color="tab:gray", lw=1)
    twin.set_ylabel("users")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    return path
