"""The batch contract between data and model: keys, shapes, dtypes, padding, and the one gather."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypedDict

import numpy as np
import polars as pl

if TYPE_CHECKING:
    import torch
    from torch import Tensor

# torch is imported inside the functions that build tensors: `mmrec prepare` reads the
# declaration below, and importing torch would cost it ~2 s and ~0.9 GB of resident memory.

__all__ = [
    "Batch",
    "EventField",
    "EVENT_FIELDS",
    "event_columns",
    "stored_fields",
    "flat_field",
    "flat_events",
    "take",
    "gather_events",
    "left_padded",
    "history_batch",
]


class Batch(TypedDict, total=False):
    """One batch dict; which keys are present depends on the loader (see the groups below).

    Sizes: ``B`` rows, ``L`` slots (left-padded: the most recent event sits at ``L - 1``;
    a packed training row holds several users' segments), ``T`` targets, ``X`` excluded
    items, ``S`` users of a packed batch.

    Per-event fields (declared in ``EVENT_FIELDS``; padding slots hold the field's pad):
        item_ids: ``[B, L]`` int64, items ``1..N``; 0 at padding.
        timestamps: ``[B, L]`` int64 unix seconds; 0 at padding.
        ratings: ``[B, L]`` float32; NaN where missing and at padding.
        event_rows: ``[B, L]`` int64, 1 + the event's row index in ``interactions.parquet``;
            0 at padding (and, in serving, for events that are not in the file).

    Every batch:
        mask: ``[B, L]`` bool, True at real events: the only truth about padding.
        query_time: ``[B, L]`` int64, when the next item is asked for: the next event's
            time inside the history, at a row's (segment's) last slot its query time
            (training: the target's time; evaluation: the first target's; predict and
            serving: "now"); 0 at padding.
        user_idx: ``[B]`` int64 (packed training: ``[S]``, segment ``s`` is user
            ``user_idx[s - 1]``; serving: -1 for a user the model never saw).

    Training:
        targets: ``[B, L]`` int64, the next item of each slot; 0 = ignore (padding).
        loss_weight: ``[]`` float32, real slots in this batch / slots of an average batch
            of as many rows (the module scales the batch-mean loss by it).
        segments: ``[B, L]`` int64, packed only: 1-based segment (user) of each slot; 0 at
            padding.
        positions: ``[B, L]`` int64, packed only: slot index inside its segment; 0 at padding.

    Evaluation, predict and serving:
        target_items: ``[B, T]`` int64, deduplicated targets in time order, 0-padded
            (predict: ``[B, 1]`` of 0; absent in serving).
        exclude_items: ``[B, X]`` int64, the distinct items of the whole history, 0-padded
            (a ``[B, 1]`` of 0 when history is not excluded).
        history_len: ``[B]`` int64, events of the whole history (not capped at ``L``).
        target_time: ``[B]`` int64, the query time of the row's last slot.
    """

    item_ids: Tensor
    timestamps: Tensor
    ratings: Tensor
    event_rows: Tensor
    mask: Tensor
    query_time: Tensor
    user_idx: Tensor
    targets: Tensor
    loss_weight: Tensor
    segments: Tensor
    positions: Tensor
    target_items: Tensor
    exclude_items: Tensor
    history_len: Tensor
    target_time: Tensor


@dataclass(frozen=True)
class EventField:
    """A per-event batch field, declared once: ``mmrec prepare`` writes its column, the
    datamodule reads it, and the one gather fills ``[B, L]`` batches with it.

    Attributes:
        key: The batch key (``[B, L]``).
        column: Its ``interactions.parquet`` column; None: ``1 +`` the event's row index
            there (derived from the row position, not stored).
        dtype: Its torch dtype in the batch, by name (``"int64"``, ``"float32"``...).
        pad: Its value at padding slots, and where the column is null or absent.
    """

    key: str
    column: str | None
    dtype: str
    pad: float

    def __post_init__(self) -> None:
        if self.dtype not in _POLARS:
            raise ValueError(f"EventField {self.key!r}: dtype must be one of {list(_POLARS)}")

    @property
    def torch_dtype(self) -> torch.dtype:
        """The dtype in the batch (``torch.int64``...)."""
        import torch

        return getattr(torch, self.dtype)

    @property
    def polars_dtype(self) -> pl.DataType:
        """The polars dtype of the values (the batch dtype's counterpart)."""
        return _POLARS[self.dtype]


_POLARS = {
    "int64": pl.Int64,
    "int32": pl.Int32,
    "float32": pl.Float32,
    "float64": pl.Float64,
    "bool": pl.Boolean,
}

#: The per-event fields of every batch, in this order. A new numeric field declared here is
#: written by ``mmrec prepare`` (readers pass its column through), read by
#: ``AmazonDataModule.setup`` and gathered into padded, packed, evaluation and serving batches.
EVENT_FIELDS: tuple[EventField, ...] = (
    EventField("item_ids", "item_idx", "int64", 0),
    EventField("timestamps", "timestamp", "int64", 0),
    EventField("ratings", "rating", "float32", float("nan")),
    EventField("event_rows", None, "int64", 0),
)


def _fields(fields: Sequence[EventField] | None) -> Sequence[EventField]:
    return EVENT_FIELDS if fields is None else fields  # read at call time, not import time


def stored_fields(fields: Sequence[EventField] | None = None) -> tuple[EventField, ...]:
    """The per-event fields stored as an ``interactions.parquet`` column (not derived).

    Args:
        fields: The declaration; None: ``EVENT_FIELDS``.
    """
    return tuple(f for f in _fields(fields) if f.column is not None)


def event_columns(fields: Sequence[EventField] | None = None) -> tuple[str, ...]:
    """The ``interactions.parquet`` columns of the per-event fields, in declaration order.

    Args:
        fields: The declaration; None: ``EVENT_FIELDS``.
    """
    return tuple(f.column for f in stored_fields(fields))


def flat_field(field: EventField, values: Sequence | np.ndarray | Tensor) -> Tensor:
    """``values`` ``[N]`` as the field's dtype with the padding sentinel appended: ``[N + 1]``."""
    import torch

    return torch.from_numpy(np.append(np.asarray(values), field.pad).astype(field.dtype))


def flat_events(
    frame: pl.DataFrame, rows: np.ndarray, fields: Sequence[EventField] | None = None
) -> dict[str, Tensor]:
    """Every per-event field of ``frame`` as a flat ``[N + 1]`` tensor; index ``N`` is the
    sentinel padding event that padding slots point at.

    Args:
        frame: ``N`` events (rows of ``interactions.parquet``); a field whose column is absent
            is all padding (e.g. ``rating`` of a folder without ratings).
        rows: ``[N]`` row index of each event in ``interactions.parquet``.
        fields: The declaration; None: ``EVENT_FIELDS``.
    """
    flat = {}
    for f in _fields(fields):
        if f.column is None:
            values = np.asarray(rows, np.int64) + 1
        elif f.column in frame.columns:
            values = frame[f.column].cast(f.polars_dtype).fill_null(f.pad).to_numpy()
        else:
            values = np.full(frame.height, f.pad)
        flat[f.key] = flat_field(f, values)
    return flat


def take(flat: Tensor, idx: Tensor) -> Tensor:
    """``flat[idx]`` for any-shaped ``idx`` via ``index_select`` (faster than fancy indexing)."""
    return flat.index_select(0, idx.reshape(-1)).view(idx.shape)


def gather_events(flat: Mapping[str, Tensor], idx: Tensor) -> dict[str, Tensor]:
    """THE gather of the per-event fields: ``{key: [B, L]}`` at flat event positions ``idx``.

    Args:
        flat: Per-event field -> flat ``[N + 1]`` values (``flat_events``; sentinel last).
        idx: ``[B, L]`` flat position of each slot; padding slots point at the sentinel ``N``.
    """
    return {key: take(values, idx) for key, values in flat.items()}


def left_padded(
    flat: Mapping[str, Tensor], begin: Tensor, end: Tensor, query_last: Tensor, width: int
) -> tuple[Batch, Tensor]:
    """Each row's last ``width`` events of ``[begin, end)``, left-padded: fields, mask, query time.

    Args:
        flat: Per-event field -> flat ``[N + 1]`` values (sentinel last); needs ``timestamps``.
        begin: ``[B]`` flat position of each row's first event.
        end: ``[B]`` end of each row's history (exclusive; ``end > begin``).
        query_last: ``[B]`` query time of each row's last slot.
        width: ``L``.

    Returns:
        The batch (per-event fields, ``mask``, ``query_time``) and ``[B, L]`` the flat position
        of each slot's next event (the sentinel at padding; ``end`` after the last slot).
    """
    import torch

    pad = flat["timestamps"].numel() - 1  # the sentinel event
    pos = end[:, None] - width + torch.arange(width)  # [B, L] flat position of each slot
    mask = pos >= begin[:, None]
    nxt = torch.where(mask, pos + 1, pad)  # the event after each slot (<= end)
    batch: Batch = gather_events(flat, torch.where(mask, pos, pad))  # type: ignore[assignment]
    batch["mask"] = mask
    # the next event's time inside the history, the row's query time after its end
    inside = pos + 1 < end[:, None]
    batch["query_time"] = torch.where(inside, take(flat["timestamps"], nxt), query_last[:, None])
    return batch, nxt


def history_batch(
    items: Sequence[int],
    timestamps: Sequence[int],
    ratings: Sequence[float] | None,
    query_time: int,
    max_len: int,
    user_idx: int = -1,
    *,
    event_rows: Sequence[int] | None = None,
    extra: Mapping[str, Sequence[float]] | None = None,
    device: torch.device | str | None = None,
) -> Batch:
    """A one-row batch of a raw history, as the datamodule's predict loader builds it.

    The last ``max_len`` events, left-padded to ``max_len``; each slot's query time is the
    next event's time, the last slot's is ``query_time``; ``exclude_items`` holds the
    distinct items of the whole history (sorted), ``history_len`` its length and
    ``target_time`` the query time.

    Args:
        items: Item indices ``1..N`` in time order (not empty).
        timestamps: Unix seconds of ``items``.
        ratings: Ratings of ``items`` (NaN: none); None: no ratings.
        query_time: Unix seconds at which the next item is asked for.
        max_len: ``L``, the model's history window.
        user_idx: The user (-1: a user the model never saw).
        event_rows: 1 + each event's row index in ``interactions.parquet`` (0: an event not in
            it); None: all 0.
        extra: Values of other declared per-event fields by batch key; absent ones: padding.
        device: Where the tensors go.

    Returns:
        ``item_ids``/``timestamps``/``ratings``/``event_rows`` (and any other declared field),
        ``mask``, ``query_time`` ``[1, L]``; ``user_idx``, ``history_len``, ``target_time``
        ``[1]``; ``exclude_items`` ``[1, X]``.
    """
    import torch

    given = {"item_ids": items, "timestamps": timestamps, "ratings": ratings}
    given |= {"event_rows": event_rows, **(extra or {})}
    unknown = set(extra or {}) - {f.key for f in EVENT_FIELDS}
    if unknown:
        raise ValueError(f"extra names unknown per-event fields {sorted(unknown)}")
    total, n = len(items), min(len(items), max_len)
    flat = {}
    for f in EVENT_FIELDS:
        values = given.get(f.key)
        values = [f.pad] * total if values is None else list(values)
        if len(values) != total:
            raise ValueError(f"{len(values)} {f.key} for {total} history items")
        flat[f.key] = flat_field(f, values[total - n :])
    one = torch.ones(1, dtype=torch.long)
    batch, _ = left_padded(flat, 0 * one, n * one, query_time * one, max_len)
    batch["user_idx"] = user_idx * one
    batch["exclude_items"] = torch.tensor(sorted(set(items)), dtype=torch.long)[None]
    batch["history_len"] = total * one
    batch["target_time"] = query_time * one
    return {k: v.to(device) for k, v in batch.items()}  # type: ignore[return-value]


def last_items(batch: dict[str, Tensor]) -> Tensor:
    """``[B]`` the last real item of each row's (left-padded) history; 0 without history."""
    import torch

    return torch.where(batch["mask"][:, -1], batch["item_ids"][:, -1], 0)
