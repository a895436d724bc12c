"""From ``interactions.parquet`` to the rows of AmazonDataModule: the columns batches need, read
and checked (sorted by user and time, splits in time order), the flat per-event tensors, and
the rows of each split over them as index arrays: training windows or prefixes, one-shot and
successive evaluation rows (DESIGN.md's protocols), predict rows."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import polars as pl
import torch

from mmrec.data.batch import event_columns, flat_events
from mmrec.data.dataset import _Events, _Rows

SPLIT_CODES = {"train": 0, "valid": 1, "test": 2}


def _read_interactions(path: Path) -> pl.DataFrame:
    """The columns of ``interactions.parquet`` that batches need, with ``_row`` (the file's row
    index), sorted by (user_idx, timestamp) (stable; warns when the file was not)."""
    names = set(pl.read_parquet_schema(path))
    need = {"user_idx", "item_idx", "timestamp", "split"}
    if not need <= names:
        raise ValueError(f"{path} lacks columns {sorted(need - names)}; re-run `mmrec prepare`")
    cols = sorted(need | (set(event_columns()) & names))  # absent optional fields: padding
    df = pl.read_parquet(path, columns=cols).with_row_index("_row")
    u = df["user_idx"].to_numpy().astype(np.int64)
    ts = df["timestamp"].to_numpy().astype(np.int64)
    du, dt = np.diff(u), np.diff(ts)
    if np.any((du < 0) | ((du == 0) & (dt < 0))):
        warnings.warn(
            f"{path} is not sorted by (user_idx, timestamp); sorting it (stable)", stacklevel=3
        )
        df = df.sort(["user_idx", "timestamp"], maintain_order=True)
    return df


def _split_codes(path: Path, split: pl.Series, u: np.ndarray) -> np.ndarray:
    """``[N]`` int8 split code of each event (``SPLIT_CODES``); checks the splits' order."""
    try:
        code = split.replace_strict(SPLIT_CODES, return_dtype=pl.Int8).to_numpy()
    except Exception as e:  # polars raises InvalidOperationError on unknown values
        bad = sorted(set(split.unique().to_list()) - set(SPLIT_CODES))
        raise ValueError(f"{path}: unknown split values {bad}; expected {list(SPLIT_CODES)}") from e
    if np.any((np.diff(code) < 0) & (np.diff(u) == 0)):
        raise ValueError(
            f"{path}: a user's events go back from a later split to an earlier one "
            "(train, valid, test must follow each other in time); re-run `mmrec prepare`"
        )
    return code


def _flat_events(df: pl.DataFrame, items: np.ndarray, key: np.ndarray) -> _Events:
    """The per-event fields of ``df`` as flat tensors, plus each user's distinct items in
    first-seen order (``exclude_items``) as offsets into one flat list."""
    first = pl.Series(key).is_first_distinct().to_numpy()  # user's first event with an item
    ex_cum = np.zeros(len(items) + 1, np.int64)
    np.cumsum(first, out=ex_cum[1:])
    return _Events(
        fields=flat_events(df, df["_row"].to_numpy()),
        ex_items=torch.from_numpy(np.append(items[first], 0)),
        ex_cum=torch.from_numpy(ex_cum),
    )


def _train_rows(start, n_fit, ts, prefix_samples: bool) -> _Rows:
    """Training rows over ``n_fit [U]`` training (+ valid) events per user from ``start [U]``:
    inputs = the first ``n_fit - 1`` events (the last one is only a target), one row per user
    with at least 2; with ``prefix_samples`` one row per target instead, its prefix."""
    users = np.flatnonzero(n_fit >= 2)
    end = start[users] + n_fit[users] - 1
    if prefix_samples:  # one row per target: the prefixes of 1..n_fit - 1 events
        per = n_fit[users] - 1
        first = np.cumsum(per) - per
        users = np.repeat(users, per)
        end = start[users] + 1 + np.arange(int(per.sum())) - np.repeat(first, per)
    return _make_rows(users, start[users], end, ts[end])


def _one_shot_rows(c, sel, n, u, items, ts, start) -> tuple[_Rows, dict[str, int]]:
    """One row per user with targets in split ``c``: history = the earlier splits' events,
    query time = the first target's time, targets = the user's targets ``sel``; and the users
    skipped for having no history."""
    num_users = len(n[0])
    hist = n[0] + (n[1] if c == 2 else 0)  # [U]
    skipped = {"no_history": int(np.sum((n[c] > 0) & (hist == 0)))}
    users = np.flatnonzero((n[c] > 0) & (hist > 0))
    end = start[users] + hist[users]
    per_user = np.bincount(u[sel], minlength=num_users)  # [U] targets
    off = np.concatenate([[0], np.cumsum(per_user)])  # [U+1]
    targets = (off[users], off[users + 1] - off[users], items[sel])
    return _make_rows(users, start[users], end, ts[end], targets), skipped


def _successive_rows(sel, u, items, ts, start) -> tuple[_Rows, dict[str, int]]:
    """One row per target event ``j`` of ``sel``: history = the user's events before ``j``
    in the flat (user, time, file) order, query time = ``ts[j]``, target = ``items[j]``; and
    the targets skipped for having no history."""
    j = np.flatnonzero(sel)  # [R] flat index of each target event
    has = j > start[u[j]]  # a target at the user's first event has no history
    skipped = {"no_history": int(np.sum(~has))}
    j = j[has]
    users = u[j]
    one = np.ones(len(j), np.int64)
    targets = (np.arange(len(j)), one, items[j])
    return _make_rows(users, start[users], j, ts[j], targets), skipped


def _make_rows(users, begin, end, qlast, targets=None) -> _Rows:
    """``_Rows`` of ``[R]`` arrays; ``targets``: ``(start [R], count [R], flat items)``,
    each row's targets being ``flat[start : start + count]`` (None: no targets)."""
    t = torch.from_numpy
    if targets is None:
        zero = torch.zeros(len(users), dtype=torch.long)
        tgt_start, tgt_cnt, tgt_items = zero, zero, torch.zeros(1, dtype=torch.long)
    else:
        first, cnt, flat = targets
        tgt_start = t(np.asarray(first, np.int64))
        tgt_cnt = t(np.asarray(cnt, np.int64))
        tgt_items = t(np.append(flat, 0).astype(np.int64))
    return _Rows(
        user=t(users.astype(np.int64)),
        begin=t(np.asarray(begin, np.int64)),
        end=t(np.asarray(end, np.int64)),
        qlast=t(np.asarray(qlast, np.int64)),
        tgt_start=tgt_start,
        tgt_cnt=tgt_cnt,
        tgt_items=tgt_items,
    )
