"""Interaction cleaning on the narrow columns (numpy arrays of every input row): duplicates,
repeats, iterative k-core, ids in order of first appearance, output order, splits."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import polars as pl

from mmrec.ingest.errors import DataError
from mmrec.ingest.stream import Ingested

SPLIT_NAMES = ("train", "valid", "test")


def kcore_mask(users: np.ndarray, items: np.ndarray, k: int) -> np.ndarray:
    """Rows kept by iterative k-core: until stable, drop rows whose user or item has < ``k`` rows.

    Args:
        users: Dense user codes ``[R]``.
        items: Dense item codes ``[R]``.
        k: Minimum number of interactions of every kept user and item.
    """
    u_len, i_len = int(users.max(initial=0)) + 1, int(items.max(initial=0)) + 1
    mask = np.zeros(len(users), dtype=bool)
    rows = np.arange(len(users), dtype=np.uint32 if len(users) < 2**32 else np.int64)
    while True:  # each round works on the rows still alive only
        keep = (np.bincount(users, minlength=u_len)[users] >= k) & (
            np.bincount(items, minlength=i_len)[items] >= k
        )
        if keep.all():
            mask[rows] = True
            return mask
        rows, users, items = rows[keep], users[keep], items[keep]


def drop_duplicates(
    u: np.ndarray,
    i: np.ndarray,
    fetch: Callable[[str, np.ndarray], np.ndarray],
    *,
    keep_repeats: bool,
    dropped: dict[str, int],
) -> np.ndarray:
    """Rows ``[R]`` (bool) that survive the duplicate and repeat rules.

    Exact duplicates are rows equal in user, item, timestamp, rating and review text (compared
    by a 64-bit hash): the earliest (time, then file order) stays (``duplicate``). With
    ``keep_repeats=False`` only the earliest row of each (user, item) pair stays (the others:
    ``repeat``). Works on sorted values, never on a hash table of all rows, and reads time,
    rating and review hash for the rows of repeated (user, item) pairs only: memory stays a few
    bytes per row.

    Args:
        u: User codes ``[R]`` in file order.
        i: Item codes ``[R]``.
        fetch: (column, ascending rows) -> the values of ``ts`` (unix seconds), ``rating``
            (float32, NaN where absent) and ``rh`` (review hash) of those rows.
        keep_repeats: Keep repeated (user, item) pairs that are not exact duplicates.
        dropped: Counts per reason, updated.
    """
    pair = (u.astype(np.uint64) << np.uint64(32)) | i.astype(np.uint64)
    ordered = pl.Series(pair).sort().to_numpy()
    twice = ordered[1:][ordered[1:] == ordered[:-1]]
    del ordered
    in_twice = pl.Series(pair).is_in(pl.Series(np.unique(twice)).implode())
    repeated = np.flatnonzero(in_twice.to_numpy())
    sub = pl.DataFrame(
        {
            "row": repeated,
            "pair": pair[repeated],
            "ts": fetch("ts", repeated),
            "rating": pl.Series(fetch("rating", repeated)).fill_nan(None),
            "rh": fetch("rh", repeated),
        }
    ).sort("pair", "ts", "row")
    first = sub["pair"].is_first_distinct()
    dup = ~sub.select(pl.struct("pair", "ts", "rating", "rh").is_first_distinct()).to_series()
    dropped["duplicate"] = int(dup.sum())
    gone = sub.filter(dup if keep_repeats else ~first)["row"].to_numpy()
    if not keep_repeats:
        dropped["repeat"] = len(gone) - dropped["duplicate"]
    keep = np.ones(len(pair), dtype=bool)
    keep[gone] = False
    return keep


def apply_kcore(
    keep: np.ndarray, u: np.ndarray, i: np.ndarray, k: int, dropped: dict[str, int]
) -> None:
    """Iterative k-core over the rows still in ``keep`` (updated in place; ``kcore`` counted)."""
    if not k:
        return
    mask = kcore_mask(u[keep], i[keep], k)
    dropped["kcore"] = int(len(mask) - mask.sum())
    keep[keep] = mask


def require_rows(keep: np.ndarray, kcore: int, dropped: dict[str, int]) -> None:
    if not keep.any():
        raise DataError(
            f"no interactions left after cleaning (dropped: {dropped}); "
            f"lower --kcore (now {kcore}) or check the input files"
        )


def first_appearance_ids(
    codes: np.ndarray, rows: np.ndarray, num_codes: int, offset: int
) -> tuple[np.ndarray, np.ndarray]:
    """Ids numbered in order of first appearance among the kept rows.

    Args:
        codes: The kept rows' codes ``[K]``.
        rows: The kept rows' input positions ``[K]`` (file order).
        num_codes: Number of codes.
        offset: First id (0 for users, 1 for items).

    Returns:
        The id of each kept row ``[K]`` (int32) and the code of each id ``[n]``.
    """
    first = np.full(num_codes, np.iinfo(np.int64).max, dtype=np.int64)
    np.minimum.at(first, codes, rows)
    present = np.flatnonzero(first < np.iinfo(np.int64).max)
    by_id = present[np.argsort(first[present], kind="stable")]
    lookup = np.zeros(num_codes, dtype=np.int32)
    lookup[by_id] = np.arange(offset, offset + len(by_id), dtype=np.int32)
    return lookup[codes], by_id


def output_order(user_idx: np.ndarray, ts: np.ndarray) -> np.ndarray:
    """The permutation ``[K]`` that sorts rows (given in file order) by (user_idx, timestamp),
    ties in file order (a stable sort: never by item id)."""
    lo, hi = (int(ts.min()), int(ts.max())) if len(ts) else (0, 0)
    if hi - lo < 2**32:  # one 64-bit key: user in the high half, time in the low half
        key = (user_idx.astype(np.uint64) << np.uint64(32)) | (ts - lo).astype(np.uint64)
        frame = pl.DataFrame({"key": key}).with_row_index("row")
        del key
        return frame.sort("key", maintain_order=True)["row"].to_numpy()  # polars: threaded
    return np.lexsort((ts, user_idx))  # lexsort is stable too


def split_codes(
    protocol: str, user_idx: np.ndarray, ts: np.ndarray, valid_ts: int | None, test_ts: int | None
) -> np.ndarray:
    """The split of each row ``[K]`` (uint8 index into ``SPLIT_NAMES``) of rows sorted by
    (user_idx, timestamp, file order).

    ``loo``: per user the last event is test, the second last valid, the rest train (users with
    fewer than 3 events: all train). ``temporal``: events at/after ``test_ts`` are test,
    [``valid_ts``, ``test_ts``) valid, earlier ones train.
    """
    if protocol == "temporal":
        return (ts >= valid_ts).astype(np.uint8) + (ts >= test_ts).astype(np.uint8)
    n = len(user_idx)
    last = np.ones(n, dtype=bool)
    last[:-1] = user_idx[1:] != user_idx[:-1]
    second = np.zeros(n, dtype=bool)
    second[:-1] = last[1:] & ~last[:-1]
    many = np.bincount(user_idx)[user_idx] >= 3
    return (second & many).astype(np.uint8) + 2 * (last & many).astype(np.uint8)


@dataclass
class Cleaned:
    """The kept rows in output order (sorted by user_idx, timestamp, file order).

    Attributes:
        rows: Input row of each output row ``[K]`` (int64).
        user_idx: ``[K]`` int32, users 0..U-1 in order of first appearance.
        item_idx: ``[K]`` int32, items 1..N in order of first appearance.
        ts: ``[K]`` int64 unix seconds.
        rating: ``[K]`` float32, NaN where absent.
        user_codes: The user code of each user_idx ``[U]``.
        item_codes: The item code of each item_idx - 1 ``[N]``.
    """

    rows: np.ndarray
    user_idx: np.ndarray
    item_idx: np.ndarray
    ts: np.ndarray
    rating: np.ndarray
    user_codes: np.ndarray
    item_codes: np.ndarray


def clean_ingested(
    data: Ingested,
    *,
    kcore: int,
    keep_repeats: bool,
    dropped: dict[str, int],
    before: int | None = None,
) -> Cleaned:
    """Duplicates, repeats, the end of time and k-core on the ingested rows; ids; the output
    order.

    Memory: user and item codes of every input row (8 bytes a row) plus sort buffers; time and
    rating are read back for repeated pairs and kept rows only (with ``before``: the time of
    every row), the review text never (its hash, for repeated pairs only).

    Args:
        before: Unix seconds: rows at/after it are dropped (``after_test_end``) once the
            duplicate and repeat rules have run, before the k-core.
    """
    u, i = data.column("u"), data.column("i")
    keep = drop_duplicates(u, i, data.take, keep_repeats=keep_repeats, dropped=dropped)
    if before is not None:
        late = keep & (data.column("ts") >= before)
        dropped["after_test_end"] = int(late.sum())
        keep &= ~late
        del late
    apply_kcore(keep, u, i, kcore, dropped)
    require_rows(keep, kcore, dropped)
    rows = np.flatnonzero(keep)
    del keep
    user_idx, user_codes = first_appearance_ids(u[rows], rows, data.users, 0)
    del u
    item_idx, item_codes = first_appearance_ids(i[rows], rows, data.items, 1)
    del i
    ts, rating = data.take("ts", rows), data.take("rating", rows)
    order = output_order(user_idx, ts)
    return Cleaned(
        rows[order], user_idx[order], item_idx[order], ts[order], rating[order], user_codes,
        item_codes,
    )  # fmt: skip
