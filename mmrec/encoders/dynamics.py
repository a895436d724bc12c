"""Item dynamics: (item, query time) -> an additive score term for the whole catalogue, read
from the event log strictly before the query time (recent counts, trend, age, recency)."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from mmrec.calendar import DAY
from mmrec.data.eventlog import EventLog
from mmrec.encoders.base import BuildContext, Encoder
from mmrec.encoders.dynamics_sweep import FeatureSweep, sweep_features

#: Entries (time, item) per matmul of the MLP, bounding its ``[H, block]`` hidden units: in
#: training (the block count orders the sum of the weights' gradients, so it stays what the
#: stored runs were trained with), and outside autograd where the fused compiled pass does not
#: apply (an accelerator, times off whole days): smaller blocks stay in cache (2.4x faster on
#: Beauty than 2**17, bitwise the same scores).
_MLP_BLOCK = 2**17
_EVAL_MLP_BLOCK = 2**15


class ItemDynamics(Encoder):
    """Base of ``MMRecModule``'s ``dynamics`` slot: ``forward(log, t [Q]) -> [Q, N + 1]``.

    Row ``q`` of the result is added to the scores of every item for a query asked at time
    ``t[q]`` (training targets at their own time, evaluation rows at the target's time,
    serving at ``at``). A member cuts ``log`` only where :class:`EventLog` does (its queries
    and ``position``: events strictly before ``t``), so an event at or after the query time
    never changes the term. Column 0 (padding) is never scored. The log is handed in by the
    model (it is data, not a weight: never saved in checkpoints).
    """

    num_items: int = 0
    #: Learning rate of this member's parameters, as a multiple of the model's ``lr``.
    lr_scale: float = 1.0
    #: False: the term depends on the query time only (``forward(log, t)``, computed once per
    #: distinct time and cached). True: on each row's last history item too
    #: (``forward(log, t, last)``, added by :meth:`add_to`; :class:`TransitionDynamics`),
    #: computed per row.
    per_row: bool = False

    def build(self, ctx: BuildContext) -> None:
        super().build(ctx)
        self.num_items = ctx.num_items

    def forward(self, log: EventLog, t: Tensor) -> Tensor:  # [Q] -> [Q, N + 1]
        raise NotImplementedError

    def add_to(self, term: Tensor, log: EventLog, t: Tensor, last: Tensor) -> Tensor:
        """A ``per_row`` member's term added to ``term [Q, N + 1]`` in place, for rows asked at
        ``t [Q]`` whose last history item is ``last [Q]``. This default adds
        ``forward(log, t, last)``; a sparse member adds only its nonzero entries."""
        return term.add_(self(log, t, last).to(term.dtype))


class RecentDynamics(ItemDynamics):
    """What is being bought now, by a small learned function of each item's recent events.

    Features of (query time ``t``, item), all from events with ``timestamp < t``:
    ``log1p`` of the item's events in each window ``[t - w, t)`` of ``windows_days``; the
    trend ``log((c_s + 1) / (c_l * s / l + 1))`` (the rate over the short window ``s``
    against the long one ``l`` of ``trend_days``: 0 when steady); the item's age
    ``log1p(days since its first event)``; the time since its last event ``log1p(days)``;
    and a flag for an item with no event yet (age and recency are 0 then).
    A 2-layer MLP (``features -> hidden -> 1``, ReLU) turns them into the score term; its last
    layer starts at zero, so training starts from the model without dynamics.

    Cost: the features are ``len(windows_days) + 4`` numbers per (time, item), computed per
    distinct query time in chunks of at most ``memory_budget_mb`` of temporaries; in training
    each chunk is recomputed in the backward pass (activation checkpointing) instead of being
    kept, so memory stays at the ``[times, N + 1]`` term, unless the batch's features and hidden
    units fit in ``keep_features_mb`` (then they are kept, and nothing is computed twice).
    Outside autograd on the CPU with whole-day times, one compiled pass computes the term
    without chunks: features and MLP a tile of items at a time, in cache (the MLP's function,
    float32 sums in another order: scores within ~1e-6 of the training term's).
    State per item: the event log's
    (``EventLog.nbytes_per_item``); no feature is stored (the model keeps computed terms for
    evaluation, up to ``MMRecModule.dynamics_cache_mb``). Features are computed on the CPU,
    where the log is; only the MLP runs on the model's device.

    Args:
        windows_days: Lengths of the count windows, in days.
        trend_days: ``(short, long)`` windows of the trend feature, both in ``windows_days``;
            None: no trend feature.
        hidden: Hidden units of the MLP.
        memory_budget_mb: Bound on the temporaries of one chunk of query times (does not
            change the result).
        lr_scale: Learning rate of the MLP as a multiple of the model's ``lr``: the term
            starts at zero and must grow to the scale of the model's scores, in however few
            steps a small category gives it.
    """

    #: Training batches whose features and hidden units fit in this many MB keep them for the
    #: backward pass; larger ones compute them again there, chunk by chunk (activation
    #: checkpointing). Speed only: the scores are the same either way.
    keep_features_mb: float = 1024.0

    def __init__(
        self,
        windows_days: Sequence[float] = (1.0, 7.0, 30.0, 365.0),
        trend_days: tuple[float, float] | None = (7.0, 30.0),
        hidden: int = 8,
        memory_budget_mb: float = 64.0,
        lr_scale: float = 1.0,
    ) -> None:
        super().__init__()
        self.windows_days = [float(w) for w in windows_days]
        if not self.windows_days or min(self.windows_days) <= 0:
            raise ValueError(f"windows_days must be positive lengths, got {list(windows_days)}")
        self.trend = None
        if trend_days is not None:
            short, long = (float(w) for w in trend_days)
            if short not in self.windows_days or long not in self.windows_days or short >= long:
                raise ValueError(
                    f"trend_days {tuple(trend_days)} must be (short, long), short < long, both "
                    f"in windows_days {self.windows_days}"
                )
            self.trend = (self.windows_days.index(short), self.windows_days.index(long))
        if hidden < 1:
            raise ValueError(f"hidden must be >= 1, got {hidden}")
        self.hidden = hidden
        self.memory_budget_mb = memory_budget_mb
        if not lr_scale > 0:
            raise ValueError(f"lr_scale must be > 0, got {lr_scale}")
        self.lr_scale = float(lr_scale)
        self.num_features = len(self.windows_days) + (self.trend is not None) + 3

    def build(self, ctx: BuildContext) -> None:
        super().build(ctx)
        self.mlp = nn.Sequential(
            nn.Linear(self.num_features, self.hidden), nn.ReLU(), nn.Linear(self.hidden, 1)
        )
        nn.init.zeros_(self.mlp[2].weight)
        nn.init.zeros_(self.mlp[2].bias)

    # ------------------------------------------------------------------ features
    @torch.no_grad()
    def features(self, log: EventLog, t: Tensor) -> Tensor:
        """``[F, Q, N + 1]`` float32 features at query times ``t [Q]``, in the order of the
        class docstring (on the CPU, where the log is)."""
        t = t.detach().long().cpu().contiguous()
        if len(t) > 1 and not bool((t[1:] >= t[:-1]).all()):  # the counts sweep time upwards
            order = torch.argsort(t)
            return self.features(log, t[order])[:, torch.argsort(order)]
        fast = sweep_features(log, t, *self._sweep_spec(), self.num_features, _days_then_log1p)
        if fast is not None:  # whole-day times: one compiled pass, bitwise the same features
            return fast
        q, w, cols = len(t), len(self.windows_days), log.num_items + 1
        windows = torch.empty(w, q, cols, dtype=torch.int32)  # [W, Q, N + 1]
        for i, days in enumerate(self.windows_days):  # events in [t - w, t)
            log.window_counts_ascending(t, round(days * DAY), windows[i])
        x = torch.empty(self.num_features, q, cols)  # [F, Q, N + 1]
        for i in range(w):
            _log1p_by_table(windows[i], lambda c: torch.log1p(c), x[i])
        j = w
        if self.trend is not None:  # log((c_s + 1) / (c_l * s / l + 1))
            s, lng = self.trend
            ratio = self.windows_days[s] / self.windows_days[lng]
            long_rate = _log1p_by_table(windows[lng], lambda c: torch.log1p(c * ratio))
            torch.sub(x[s], long_rate, out=x[j])
            j += 1
        unseen = log.first_time[None, :] >= t[:, None]  # no event before t: no first, no last
        for k, edge in ((j, log.first_time[None, :]), (j + 1, log.last_before(t))):
            _log1p_days(t[:, None] - edge, unseen, x[k])
        x[j + 2].copy_(unseen)
        return x

    def _sweep_spec(self) -> tuple[list[int], tuple[int, int, float] | None]:
        """The compiled pass's windows (seconds) and trend ``(short, long, short / long)``."""
        trend = None
        if self.trend is not None:
            s, lng = self.trend
            trend = (s, lng, self.windows_days[s] / self.windows_days[lng])
        return [round(days * DAY) for days in self.windows_days], trend

    # ------------------------------------------------------------------ term
    def _mlp(self, x: Tensor, block: int) -> Tensor:
        """``[q, N + 1]`` MLP of features ``x [F, q, N + 1]``, ``block`` columns at a time."""
        first, last = self.mlp[0], self.mlp[2]
        f, q, cols = x.shape
        flat, outs = x.view(f, -1), []
        for lo in range(0, flat.shape[1], block):  # hidden units of a block stay in cache
            h = torch.addmm(first.bias[:, None], first.weight, flat[:, lo : lo + block])
            outs.append(torch.addmm(last.bias[:, None], last.weight, h.relu_()))  # [1, block]
        return torch.cat(outs, 1).view(q, cols)

    def _fused(self, log: EventLog, t: Tensor) -> Tensor | None:
        """Outside autograd on the CPU: the term in one compiled pass that feeds each tile of
        items' features through the MLP while they are in cache (:class:`FeatureSweep`); the
        torch MLP's function, its float32 sums in another order. None where the compiled pass
        does not apply."""
        t = t.detach().long().cpu().contiguous()
        order = None
        if len(t) > 1 and not bool((t[1:] >= t[:-1]).all()):
            order = torch.argsort(t)
            t = t[order]
        sweep = FeatureSweep.start(log, t, *self._sweep_spec(), self.num_features, _days_then_log1p)
        if sweep is None:
            return None
        out = sweep.take_term(len(t), self.mlp)
        return out if order is None else out[torch.argsort(order)]

    def _chunk(self, log: EventLog, t: Tensor) -> Tensor:
        """``[q, N + 1]`` term of one chunk of query times."""
        x = self.features(log, t).to(self.mlp[0].weight.device)  # [F, q, N + 1]
        out = self._mlp(x, _MLP_BLOCK if torch.is_grad_enabled() else _EVAL_MLP_BLOCK)
        out[:, 0] = 0.0  # the padding item (a new tensor: cat made it)
        return out

    def forward(self, log: EventLog, t: Tensor) -> Tensor:
        if log.num_items != self.num_items:
            raise ValueError(
                f"the event log has {log.num_items} items, the model {self.num_items}: the log of "
                "another dataset?"
            )
        cols = self.num_items + 1
        # bytes of temporaries per query time: counts, features, int64 times, hidden units
        per_time = cols * 4 * (len(self.windows_days) + self.num_features + 8 + self.hidden)
        step = max(1, int(self.memory_budget_mb * 2**20) // per_time)
        grad = torch.is_grad_enabled() and any(p.requires_grad for p in self.parameters())
        kept = len(t) * cols * 4 * (self.num_features + self.hidden + 1)  # features, hidden
        if not grad and self.mlp[0].weight.device.type == "cpu" and len(t):
            out = self._fused(log, t)  # no temporaries but the term: no chunks
            if out is not None:
                out[:, 0] = 0.0  # the padding item (a new tensor: cat or indexing made it)
                return out
        if grad and kept <= self.keep_features_mb * 2**20:  # no recomputation in backward
            return torch.cat([self._chunk(log, t[lo : lo + step]) for lo in range(0, len(t), step)])
        part = functools.partial(self._chunk, log)
        outs = [
            checkpoint(part, t[lo : lo + step], use_reentrant=False)
            if grad
            else part(t[lo : lo + step])
            for lo in range(0, len(t), step)
        ]
        if not outs:
            return torch.zeros(0, cols, device=self.mlp[0].weight.device)
        return torch.cat(outs) if len(outs) > 1 else outs[0]


class TransitionDynamics(ItemDynamics):
    """What followed the user's last item, up to the query time: a score term per row.

    For a row whose last history item is ``i``, asked at time ``t``, item ``j`` gets
    ``f(features)`` when some user went ``i -> j`` (consecutive events) with the ``j`` event
    strictly before ``t`` (:meth:`EventLog.transitions_before`: the log's cut), and 0
    otherwise. Features of ``(i, j, t)``: ``log1p`` of all such transitions, ``log1p`` of
    those in ``[t - recent_days, t)``, and ``log1p`` of the days since the latest one. A
    2-layer MLP (ReLU) turns them into the term; its last layer starts at zero, so training
    starts from the model without it. Training targets read the transitions before their own
    time (a user's own ``i -> target`` is at the target's time: never counted), evaluation rows
    before the target's, serving before ``at``: what other shoppers did until then, validation
    and earlier test events included, with the weights frozen.

    The model-side form of :class:`~mmrec.experiments.baselines.CausalCoOccurrence`. Cost: a
    row reads its last item's transitions only (a CSR by item in time order, 24 bytes per
    event); the MLP runs on the (row, item) pairs that have one. Needs an event log that knows
    its users (``EventLog.from_folder`` reads them; a serving folder's events hold them).

    Args:
        recent_days: Window of the recent-transition count, in days.
        hidden: Hidden units of the MLP.
        lr_scale: Learning rate of the MLP as a multiple of the model's ``lr``.
    """

    per_row = True

    def __init__(self, recent_days: float = 30.0, hidden: int = 8, lr_scale: float = 1.0) -> None:
        super().__init__()
        if not recent_days > 0:
            raise ValueError(f"recent_days must be > 0, got {recent_days}")
        if hidden < 1:
            raise ValueError(f"hidden must be >= 1, got {hidden}")
        if not lr_scale > 0:
            raise ValueError(f"lr_scale must be > 0, got {lr_scale}")
        self.recent_days, self.hidden, self.lr_scale = float(recent_days), hidden, float(lr_scale)

    def build(self, ctx: BuildContext) -> None:
        super().build(ctx)
        self.mlp = nn.Sequential(nn.Linear(3, self.hidden), nn.ReLU(), nn.Linear(self.hidden, 1))
        nn.init.zeros_(self.mlp[2].weight)
        nn.init.zeros_(self.mlp[2].bias)

    @torch.no_grad()
    def features(self, log: EventLog, t: Tensor, last: Tensor) -> tuple[Tensor, Tensor]:
        """``(flat [K], x [K, 3])``: the (row, item) pairs with a transition before the row's
        time, as ``row * (N + 1) + item`` (ascending), and their features (CPU, float32)."""
        t, last = t.detach().long().cpu().reshape(-1), last.detach().long().cpu().reshape(-1)
        row, nxt, when = log.transitions_before(last, t)  # [M] each
        flat, inverse = torch.unique(row * (self.num_items + 1) + nxt, return_inverse=True)
        age = (t[row] - when).double()  # [M] seconds > 0
        k = len(flat)
        count = torch.bincount(inverse, minlength=k).double()
        recent = torch.bincount(inverse, (age < self.recent_days * DAY).double(), minlength=k)
        newest = torch.full((k,), float("inf"), dtype=torch.float64)
        newest = newest.scatter_reduce(0, inverse, age, "amin")
        x = torch.stack([count.log1p(), recent.log1p(), (newest / DAY).log1p()], 1).float()
        return flat, x

    def sparse_term(self, log: EventLog, t: Tensor, last: Tensor) -> tuple[Tensor, Tensor]:
        """``(flat [K], term [K])``: the term of the (row, item) pairs that have one, as
        ``row * (N + 1) + item``; every other pair's term is 0."""
        if log.num_items != self.num_items:
            raise ValueError(
                f"the event log has {log.num_items} items, the model {self.num_items}: the log of "
                "another dataset?"
            )
        weight = self.mlp[0].weight
        flat, x = self.features(log, t, last)
        return flat.to(weight.device), self.mlp(x.to(weight.device))[:, 0]

    def add_to(self, term: Tensor, log: EventLog, t: Tensor, last: Tensor) -> Tensor:
        """``term [Q, N + 1]`` plus this member's term, in place (no second dense tensor)."""
        flat, values = self.sparse_term(log, t, last)
        term.view(-1).index_add_(0, flat, values.to(term.dtype))
        return term

    def forward(self, log: EventLog, t: Tensor, last: Tensor) -> Tensor:  # [Q] x2 -> [Q, N + 1]
        weight = self.mlp[0].weight
        out = torch.zeros(len(t), self.num_items + 1, device=weight.device)
        return self.add_to(out, log, t.reshape(-1), last.reshape(-1))


#: Largest value read from a table of ``log1p`` results instead of computed element by element.
_TABLE_MAX = 2**20


def _log1p_by_table(
    counts: Tensor, fn: Callable[[Tensor], Tensor], out: Tensor | None = None
) -> Tensor:
    """``fn(counts)`` (an elementwise function of int counts >= 0, e.g. ``torch.log1p``) as a
    float32 tensor, read from a table of ``fn(0..max)``: the same op on the same values, so
    bitwise the result of ``fn(counts)``, without a transcendental per element (``log1p`` is
    not vectorised on the CPU: the table is ~20x faster); computed directly above
    ``_TABLE_MAX``."""
    top = int(counts.max()) if counts.numel() else 0
    if top > _TABLE_MAX:
        result = fn(counts).float()
        return result if out is None else out.copy_(result)
    table = fn(torch.arange(top + 1, dtype=counts.dtype, device=counts.device)).float()
    flat = counts.reshape(-1)
    if out is None:
        return table.index_select(0, flat).view(counts.shape)
    torch.index_select(table, 0, flat, out=out.view(-1))
    return out


def _days_then_log1p(seconds: Tensor) -> Tensor:
    """``log1p(seconds / DAY)`` in float32, as the features compute it (float32 seconds)."""
    return torch.empty(seconds.shape).copy_(seconds).div_(DAY).log1p_()


def _log1p_days(seconds: Tensor, unseen: Tensor, out: Tensor) -> Tensor:
    """``out = log1p(seconds / DAY)``, 0 where ``unseen``, for int64 ``seconds`` (>= 0 where
    seen). Day-granular data (every seen value a whole number of days, as in the Amazon 2014
    and 2018 files) reads a table of whole days (bitwise the same values); otherwise each
    element is computed."""
    days = torch.div(seconds, DAY, rounding_mode="floor").masked_fill_(unseen, 0)
    whole = bool((days * DAY == seconds.masked_fill(unseen, 0)).all())
    if whole and (days.numel() == 0 or int(days.max()) <= _TABLE_MAX):
        _log1p_by_table(days, lambda d: _days_then_log1p(d * DAY), out)
    else:
        out.copy_(_days_then_log1p(seconds))
    return out.masked_fill_(unseen, 0.0)
