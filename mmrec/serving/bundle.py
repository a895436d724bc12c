"""An exported model folder (`mmrec export`) loaded for serving: histories as of a query time,
batches of many requests, user vectors (ONNX Runtime or PyTorch), item dynamics and top-K."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl
import torch
from torch import Tensor

from mmrec.config import ConfigError
from mmrec.data.batch import EVENT_FIELDS, Batch, flat_field, left_padded
from mmrec.evaluation import topk_items

#: Files of an export folder (``mmrec export``).
MANIFEST = "manifest.json"
TOWER = "user_tower.onnx"
ITEM_VECTORS = "item_vectors.safetensors"
ITEMS = "items.parquet"
USERS = "users.parquet"
EVENTS = "events.parquet"
DYNAMICS = "dynamics.safetensors"
#: Version of the folder's layout, in the manifest; a server refuses others.
FORMAT = 1


@dataclass
class Query:
    """One request as indices: a history in time order, the query time and ``k``.

    Attributes:
        events: Per-event batch field (``EVENT_FIELDS`` keys) -> ``[n]`` values, time order.
        at: Unix seconds at which the items are asked for.
        k: Items wanted.
        user_idx: The dataset's user (-1: a user the model never saw).
        unknown: Raw ids of the request's history that are not in the catalogue (skipped).
    """

    events: dict[str, np.ndarray]
    at: int
    k: int
    user_idx: int = -1
    unknown: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.events["item_ids"])


def serving_batch(queries: Sequence[Query], max_len: int) -> Batch:
    """A batch of requests through the batch contract's gather (``left_padded``): each row's
    last ``max_len`` events, left-padded to the longest row (not to ``max_len``: positions
    come from the mask, so the user vectors are the same, and short histories cost less).

    Returns:
        The per-event fields, ``mask`` and ``query_time`` ``[B, L]``; ``user_idx``,
        ``history_len`` and ``target_time`` ``[B]`` (no ``exclude_items``: see ``exclusions``).
    """
    lens = [min(len(q), max_len) for q in queries]
    if min(lens) < 1:
        raise ValueError("every request needs at least one history event")
    flat = {
        f.key: flat_field(
            f, np.concatenate([q.events[f.key][-n:] for q, n in zip(queries, lens, strict=True)])
        )
        for f in EVENT_FIELDS
    }
    end = torch.tensor(np.cumsum(lens), dtype=torch.long)
    begin = end - torch.tensor(lens, dtype=torch.long)
    at = torch.tensor([q.at for q in queries], dtype=torch.long)
    batch, _ = left_padded(flat, begin, end, at, max(lens))
    batch["user_idx"] = torch.tensor([q.user_idx for q in queries], dtype=torch.long)
    batch["history_len"] = torch.tensor([len(q) for q in queries], dtype=torch.long)
    batch["target_time"] = at
    return batch


def length_groups(lens: Sequence[int], call_tokens: int) -> list[tuple[int, int]]:
    """Consecutive groups ``[lo, hi)`` of ascending history lengths ``lens`` that minimise the
    tower's work: each group costs ``call_tokens`` plus its rows times its longest length
    (exact, by dynamic programming over the ``B <= max_batch_size`` rows)."""
    n = len(lens)
    best, cut = [0.0] + [float("inf")] * n, [0] * (n + 1)
    for hi in range(1, n + 1):
        for lo in range(hi):
            cost = best[lo] + call_tokens + (hi - lo) * lens[hi - 1]
            if cost < best[hi]:
                best[hi], cut[hi] = cost, lo
    groups, hi = [], n
    while hi > 0:
        groups.append((cut[hi], hi))
        hi = cut[hi]
    return groups[::-1]


def exclusions(queries: Sequence[Query]) -> Tensor:
    """``[B, X]`` each row's distinct history items, 0-padded (the whole history, not only its
    last ``max_len``): they are not recommended."""
    items = [np.unique(q.events["item_ids"]) for q in queries]
    out = np.zeros((len(items), max(len(i) for i in items)), dtype=np.int64)
    for row, ids in enumerate(items):
        out[row, : len(ids)] = ids
    return torch.from_numpy(out)


class Dynamics:
    """The model's item dynamics as of a query time, from the exported event log: a
    ``[Q, N + 1]`` score term. The time-only members' rows are computed once per distinct time
    and kept (LRU); members that read each request's last history item (``per_row``, e.g.
    ``TransitionDynamics``) are added per request.

    Args:
        members: Built ``ItemDynamics`` modules with their weights.
        log: The event log (``EventLog``, with its users for per-row members) they read,
            strictly before each query time.
        cache_mb: Memory for kept rows of the term.
    """

    def __init__(self, members: Sequence[torch.nn.Module], log, cache_mb: float = 256.0) -> None:
        from mmrec.encoders.term_cache import TermCache

        self.members = [m.eval() for m in members]
        self.timed = [m for m in self.members if not m.per_row]
        self.per_row = [m for m in self.members if m.per_row]
        self.log = log
        self.cache = TermCache()
        self.capacity = max(1, int(cache_mb * 2**20) // (4 * (log.num_items + 1)))

    def _compute(self, times: Tensor) -> Tensor:  # [T] -> [T, N + 1]
        term = self.timed[0](self.log, times)
        for member in self.timed[1:]:
            term = term + member(self.log, times)
        return term.float()

    def __call__(self, times: Tensor, last: Tensor | None = None) -> Tensor:  # [Q] -> [Q, N + 1]
        """The term at ``times [Q]``; ``last [Q]``: each request's last history item (0: none),
        needed when a member reads it."""
        with torch.inference_mode():
            if not self.timed:
                term = torch.zeros(len(times), self.log.num_items + 1)
            else:
                distinct, inverse = torch.unique(times, return_inverse=True)
                if len(distinct) > self.capacity:
                    term = self._compute(distinct)[inverse]
                else:
                    slots = self.cache.slots("log", distinct.tolist(), self.capacity, self._compute)
                    term = self.cache.rows(slots[inverse])  # a new tensor
            if self.per_row:
                if last is None:
                    name = type(self.per_row[0]).__name__
                    raise ValueError(f"{name} needs each request's last history item (last=)")
                for member in self.per_row:
                    member.add_to(term, self.log, times, last)
            return term


class ServedModel:
    """An export folder ready to answer: user vectors from the exported graph (or PyTorch),
    scores against every item, the dynamics' term as of each query time, history excluded.

    Args:
        folder: The folder ``mmrec export`` wrote.
        tower: What computes user vectors: ``batch -> [B, D]`` (``OnnxTower``, ``TorchTower``);
            None: an ``OnnxTower`` of the folder's graph with ``threads`` threads.
        threads: Intra-op threads of the default ONNX Runtime session.
        trusted_modules: Packages outside mmrec the dynamics' classes may come from.
    """

    def __init__(
        self,
        folder: str | Path,
        tower=None,
        threads: int = 1,
        trusted_modules: Sequence[str] = (),
    ) -> None:
        from safetensors.torch import load_file

        from mmrec.serving.onnx_model import OnnxTower

        folder = Path(folder)
        if not (folder / MANIFEST).is_file():
            raise FileNotFoundError(
                f"{folder} has no {MANIFEST}: pass a folder written by `mmrec export`"
            )
        self.manifest = json.loads((folder / MANIFEST).read_text())
        if self.manifest.get("format") != FORMAT:
            raise ConfigError(
                f"{folder}: export format {self.manifest.get('format')!r}, this mmrec serves "
                f"format {FORMAT}: export the checkpoint again with this version"
            )
        m = self.manifest
        self.folder = folder
        self.max_len = int(m["model"]["max_len"])
        self.num_items = int(m["model"]["num_items"])
        self.granularity = m["dataset"]["time_granularity"]
        self.time_range = tuple(m["dataset"]["time_range"])  # first, last event (unix s)
        self.item_vecs = load_file(folder / ITEM_VECTORS)["item_vectors"].float()  # [N + 1, D]
        items = pl.read_parquet(folder / ITEMS).sort("item_idx")
        self.item_ids: list[str] = ["", *items["item_id"].to_list()]
        self.index = {iid: i for i, iid in enumerate(self.item_ids) if i}
        users = pl.read_parquet(folder / USERS)
        self.users = dict(zip(users["user_id"].to_list(), users["user_idx"].to_list(), strict=True))
        events = pl.read_parquet(folder / EVENTS)  # sorted by user, then time
        self.events = {f.key: events[f.key].to_numpy() for f in EVENT_FIELDS}
        user_col = self._user_col = events["user_idx"].to_numpy()
        self._starts = np.searchsorted(user_col, np.arange(len(users) + 1), side="left")
        self.tower = tower if tower is not None else OnnxTower(folder / TOWER, threads)
        self.dynamics = self._load_dynamics(list(trusted_modules)) if m["dynamics"] else None

    def _load_dynamics(self, trusted: list[str]) -> Dynamics:
        from safetensors.torch import load_file

        from mmrec.config import instantiate
        from mmrec.data.eventlog import EventLog
        from mmrec.encoders.base import BuildContext
        from mmrec.encoders.dynamics import ItemDynamics

        m = self.manifest
        ctx = BuildContext(
            self.num_items, len(self.users), int(m["model"]["d_model"]), None, self.granularity
        )
        state = load_file(self.folder / DYNAMICS)
        members = []
        for i, spec in enumerate(m["dynamics"]):
            member = instantiate(spec, ItemDynamics, f"dynamics[{i}]", trusted)
            member.build(ctx)
            prefix = f"{i}."
            member.load_state_dict(
                {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
            )
            members.append(member)
        items = torch.from_numpy(self.events["item_ids"].astype(np.int64))
        times = torch.from_numpy(self.events["timestamps"].astype(np.int64))
        users = torch.from_numpy(self._user_col.astype(np.int64))  # what followed what
        return Dynamics(members, EventLog(items, times, self.num_items, users=users))

    # ------------------------------------------------------------------ histories
    def user_events(self, user_idx: int, at: int) -> dict[str, np.ndarray]:
        """A known user's events up to and including ``at`` (time order), per event field."""
        lo, hi = int(self._starts[user_idx]), int(self._starts[user_idx + 1])
        cut = lo + int(np.searchsorted(self.events["timestamps"][lo:hi], at, side="right"))
        return {key: values[lo:cut] for key, values in self.events.items()}

    # ------------------------------------------------------------------ answers
    #: What one call of the tower costs beyond its tokens, in padded tokens (Beauty 2014's
    #: 2-block model on one thread: ~0.3 ms a call, ~0.007 ms a token).
    call_tokens: int = 40

    def user_vectors(self, queries: Sequence[Query]) -> Tensor:
        """``[B, D]`` user vectors of the requests: rows of similar length go through the tower
        together (``length_groups``), so a long history does not pad every short one to its
        length (a batch of 32 Beauty requests: 8.8 -> 4.9 ms with two groups)."""
        order = sorted(range(len(queries)), key=lambda i: len(queries[i]))
        lens = [min(len(queries[i]), self.max_len) for i in order]
        parts = []
        for lo, hi in length_groups(lens, self.call_tokens):
            rows = [queries[i] for i in order[lo:hi]]
            parts.append(
                torch.from_numpy(np.asarray(self.tower(serving_batch(rows, self.max_len))))
            )
        return torch.cat(parts)[torch.argsort(torch.tensor(order))]

    def warm_up(self) -> None:
        """Answer one request (imports, first allocations), so the first client waits no longer
        than the others."""
        at = self.time_range[1]
        events = {key: values[:1] for key, values in self.events.items()}
        self.recommend([Query(events, at - at % 86_400 + 86_400, 10)])

    def recommend(self, queries: Sequence[Query]) -> list[list[tuple[str, float]]]:
        """Each request's top ``k`` as ``(item id, score)``, best first: the user vector
        against every item (``topk_items``), plus the dynamics' term as of the request's
        time, history excluded (fewer than ``k`` when the catalogue runs out)."""
        k = min(max(q.k for q in queries), self.num_items)
        with torch.inference_mode():
            users = self.user_vectors(queries).float()  # [B, D]
            bias = None
            if self.dynamics is not None:
                at = torch.tensor([q.at for q in queries], dtype=torch.long)
                last = [int(q.events["item_ids"][-1]) if len(q) else 0 for q in queries]
                bias = self.dynamics(at, torch.tensor(last, dtype=torch.long))
            scores, top = topk_items(users, self.item_vecs, k, exclusions(queries), bias=bias)
        out = []
        for q, vals, idx in zip(queries, scores.tolist(), top.tolist(), strict=True):
            out.append(
                [
                    (self.item_ids[i], s)
                    for i, s in zip(idx[: q.k], vals[: q.k], strict=True)
                    if i > 0
                ]
            )
        return out
