"""Rows of a score term by query time, kept while the weights and log that made them stay the
same: the evaluation cache of item dynamics (``MMRecModule``, serving folders)."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable

import torch
from torch import Tensor


class TermCache:
    """Rows of a score term by query time, reused while a key (the weights, device and log
    that made them) stays the same; at most ``capacity`` rows, least recently used go first.

    Rows live in one ``[capacity, N + 1]`` table, so a batch's rows are one gather.
    """

    def __init__(self) -> None:
        self.clear()

    def clear(self) -> None:
        self._key: Hashable | None = None
        self._slots: OrderedDict[int, int] = OrderedDict()  # time -> row of the table
        self._free: list[int] = []
        self._table: Tensor | None = None

    def __len__(self) -> int:
        return len(self._slots)

    @torch.no_grad()
    def slots(
        self,
        key: Hashable,
        times: list[int],
        capacity: int,
        compute: Callable[[Tensor], Tensor],
    ) -> Tensor:
        """``[T]`` rows holding the term at each of ``times`` (distinct, at most
        ``capacity``), from ``compute(missing times [M]) -> [M, N + 1]`` where not held."""
        if key != self._key or self._table is not None and len(self._table) != capacity:
            self.clear()
            self._key, self._free = key, list(range(capacity - 1, -1, -1))
        slots, free = self._slots, self._free
        missing = [s for s in times if s not in slots]
        for s in times:
            if s in slots:
                slots.move_to_end(s)  # the least recently used first
        if missing:
            fresh = compute(torch.tensor(missing, dtype=torch.long))  # [M, N + 1]
            if self._table is None:
                self._table = fresh.new_empty(capacity, fresh.shape[1])
            while len(free) < len(missing):  # evicts no wanted time: they were moved last
                free.append(slots.popitem(last=False)[1])
            at = [free.pop() for _ in missing]
            self._table[torch.tensor(at, device=fresh.device)] = fresh
            slots.update(zip(missing, at, strict=True))
        return torch.tensor([slots[s] for s in times], dtype=torch.long)

    def rows(self, slots: Tensor) -> Tensor:
        """``[Q, N + 1]`` (a new tensor): the table's rows ``slots [Q]``."""
        return self._table.index_select(0, slots.to(self._table.device))
