"""Item dynamics in :class:`~mmrec.module.MMRecModule`: the event log they read, their summed
score term as of each query time (computed once per distinct time, cached outside autograd),
and ranking with that term added to every item's score."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from mmrec.config import ConfigError
from mmrec.data.batch import last_items
from mmrec.data.eventlog import EventLog


class DynamicsTerms:
    """The item-dynamics part of :class:`~mmrec.module.MMRecModule` (a mixin: it reads the
    module's ``dynamics``, ``num_items``, ``hparams``, ``dynamics_cache_mb`` and its event-log
    and term-cache attributes, set in ``MMRecModule.__init__``)."""

    @property
    def event_log(self) -> EventLog:
        """The event log the item dynamics read: the one given to :meth:`set_event_log`, else
        that of the datamodule's folder (``setup``) or of ``data_dir`` (read on first use)."""
        if self._event_log is None:
            data_dir = self.hparams.get("data_dir")
            if not data_dir:
                raise ConfigError(
                    "this model's item dynamics need an event log: build it with data_dir (the "
                    "dataset folder) or hand one in with set_event_log(EventLog(...))"
                )
            self._event_log, self._event_log_dir = EventLog.from_folder(data_dir), str(data_dir)
        return self._event_log

    def set_event_log(self, log: EventLog) -> None:
        """Read item dynamics from ``log`` from now on (e.g. a newer log of the shop's events,
        without retraining); ``setup`` keeps it instead of reading the datamodule's."""
        if log.num_items != self.num_items:
            raise ConfigError(
                f"the event log has {log.num_items} items, the model {self.num_items}: map the "
                "events to this model's item indices"
            )
        self._event_log, self._event_log_dir = log, None
        self._term_cache.clear()  # rows of the old log's terms are stale

    def dynamics_term(self, t: Tensor, last: Tensor | None = None) -> Tensor | None:
        """The dynamics' summed score term at query times ``t [Q]``: ``[Q, N + 1]``, from
        events strictly before each time; None without dynamics. ``last [Q]`` (each row's last
        history item, 0: none) is needed by members that read it (``per_row``, e.g.
        :class:`~mmrec.encoders.dynamics.TransitionDynamics`).

        The time-only members' term is computed once per distinct time. Outside autograd
        (evaluation, prediction, serving) its rows are reused while the dynamics' weights,
        device and event log stay the same, up to ``dynamics_cache_mb`` (least recently used
        rows go first): an evaluation epoch then computes each distinct query time about once,
        however its rows are batched. Per-row members are computed for every call.
        """
        if not len(self.dynamics):
            return None
        term = self._time_term(t) if self._time_members() else None
        rows = [m for m in self.dynamics if m.per_row]
        if rows:
            if last is None:
                raise ValueError(
                    f"{type(rows[0]).__name__} scores by each row's last history item: pass last="
                )
            flat_t, flat_last = t.reshape(-1), last.reshape(-1)
            cols = self.num_items + 1
            if term is None:
                term = torch.zeros(*t.shape, cols, device=self.device)
            flat_term = term.view(-1, cols)
            for member in rows:  # in place (the time term is a new tensor): no second one
                member.add_to(flat_term, self.event_log, flat_t, flat_last)
        return term

    def _time_members(self) -> list:
        """The members whose term depends on the query time only (cached by time)."""
        return [m for m in self.dynamics if not m.per_row]

    def _time_term(self, t: Tensor) -> Tensor:
        """``[*t.shape, N + 1]``: the time-only members' summed term (see dynamics_term)."""
        times, inverse = torch.unique(t, return_inverse=True)  # [T], [Q]
        inverse = inverse.reshape(-1)
        cols = self.num_items + 1
        if torch.is_grad_enabled() or len(times) > self._cache_capacity():
            term = self._term_of(times)  # [T, N + 1]
            return term.index_select(0, inverse.to(term.device)).view(*t.shape, cols)
        slots = self._cached_slots(times.tolist())  # [T] rows of the cache
        return self._term_cache.rows(slots[inverse.cpu()]).view(*t.shape, cols)

    @torch.no_grad()
    def prefetch_dynamics(self, times: Tensor) -> int:
        """Compute the dynamics' term at every distinct time of ``times`` in one call and keep
        it in the evaluation cache, when they all fit (``dynamics_cache_mb``); returns how many
        times were prefetched (0: no dynamics, or too many times). Evaluation epochs call it
        with all their rows' query times: one pass over the log instead of one per batch."""
        if not self._time_members() or not len(times):
            return 0
        distinct = torch.unique(torch.as_tensor(times).reshape(-1)).tolist()
        if len(distinct) > self._cache_capacity():
            return 0
        self._cached_slots(distinct)
        return len(distinct)

    def _prefetch_loaders(self, loaders: Any) -> None:
        """:meth:`prefetch_dynamics` for the query times of every row of ``loaders`` (an
        evaluation dataloader or a list of them, over :class:`~mmrec.data.dataset.SequenceDataset`);
        other datasets are left to compute per batch."""
        if not self._time_members() or loaders is None:
            return
        times = []
        for loader in loaders if isinstance(loaders, (list, tuple)) else [loaders]:
            rows = getattr(getattr(loader, "dataset", None), "rows", None)
            qlast = getattr(rows, "qlast", None)
            if not isinstance(qlast, Tensor):
                return
            times.append(qlast)
        if times:
            self.prefetch_dynamics(torch.cat(times))

    def _cache_capacity(self) -> int:
        """Rows of the evaluation cache of dynamics terms (``dynamics_cache_mb``)."""
        return min(2**16, int(self.dynamics_cache_mb * 2**20) // (4 * (self.num_items + 1)))

    def _cached_slots(self, times: list[int]) -> Tensor:
        """Rows of the evaluation cache holding the term at ``times`` (distinct), computing
        the missing ones; the cache starts afresh when the dynamics' weights (an in-place
        update bumps a tensor's version), their device, the log or the inference mode change."""
        log, params = self.event_log, list(self.dynamics.parameters())
        key = (id(log), torch.is_inference_mode_enabled())
        key += tuple((p.device, p.data_ptr(), p._version) for p in params)
        return self._term_cache.slots(key, times, self._cache_capacity(), self._term_of)

    def _term_of(self, times: Tensor) -> Tensor:
        """``[T, N + 1]``: the time-only members' summed term at distinct times ``times [T]``."""
        log, members = self.event_log, self._time_members()
        term = members[0](log, times)
        for member in members[1:]:
            term = term + member(log, times)
        return term

    @staticmethod
    def _row_times(batch: dict[str, Tensor]) -> Tensor:
        """``[B]`` query time of each evaluation / prediction row (its last slot's)."""
        t = batch.get("target_time")
        return batch["query_time"][:, -1] if t is None else t

    def _rank_call(self, fn: Any, batch: dict[str, Tensor], user_vecs: Tensor, *args: Any, **kw):
        """``fn(user_vecs, item_vecs, *rows, **kw)`` (``rank_targets`` / ``topk_items``) with
        the dynamics' term as of each row's query time added to its scores, chunk by chunk.
        The batch's distinct times are computed first, in one go (when they fit the cache),
        and rows go in query-time order, so that a chunk of users shares few of them; results
        come back in the batch's order."""
        if not len(self.dynamics):
            return fn(user_vecs, *args, **kw)
        times = self._row_times(batch)
        order = torch.argsort(times, stable=True)  # [B]
        ordered = times[order]
        last = last_items(batch)[order] if any(m.per_row for m in self.dynamics) else None
        distinct = torch.unique(times).tolist()
        timed = self._time_members()
        if timed and not torch.is_grad_enabled() and len(distinct) <= self._cache_capacity():
            self._cached_slots(distinct)  # the batch's times in one go

        def bias(lo: int, hi: int) -> Tensor:  # [hi - lo, N + 1]
            rows = None if last is None else last[lo:hi]
            return self.dynamics_term(ordered[lo:hi], rows).float()

        item_vecs, rows = args[0], [a[order] if isinstance(a, Tensor) else a for a in args[1:]]
        out = fn(user_vecs[order], item_vecs, *rows, bias=bias, **kw)
        back = torch.argsort(order)
        return tuple(o[back] for o in out) if isinstance(out, tuple) else out[back]
