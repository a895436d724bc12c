"""Interaction cleaning with polars: dense id codes, duplicates, repeats, iterative k-core, ids,
splits."""

from __future__ import annotations

import numpy as np
import polars as pl

from mmrec.data.errors import DataError


def encode_ids(frame: pl.DataFrame, column: str, code: str) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Replaces the string id ``column`` by a dense uint32 ``code``, so later work is on integers.

    The codes come from a 64-bit hash of the id; collisions are ruled out, not assumed away
    (every hash's smallest and largest string must be equal; otherwise another seed is tried).

    Returns:
        The frame with ``code`` instead of ``column``, and the table ``code -> column``.
    """
    for seed in (0, 1, 2):
        hashed = pl.col(column).hash(seed)
        table = frame.group_by(hashed.alias("_h")).agg(
            pl.col(column).min().alias("lo"), pl.col(column).max().alias("hi")
        )
        if table.select((pl.col("lo") == pl.col("hi")).all()).item():
            table = table.with_row_index(code).select(code, "_h", pl.col("lo").alias(column))
            keyed = (
                frame.with_columns(hashed.alias("_h"))
                .drop(column)
                .join(table.select("_h", code), on="_h", how="left", maintain_order="left")
            )
            return keyed.drop("_h"), table.drop("_h")
    raise DataError(
        f"hash collision between {column} values with three seeds; please report this input"
    )


def kcore_mask(users: np.ndarray, items: np.ndarray, k: int) -> np.ndarray:
    """Rows kept by iterative k-core: until stable, drop rows whose user or item has < ``k`` rows.

    Args:
        users: Dense user codes ``[R]``.
        items: Dense item codes ``[R]``.
        k: Minimum number of interactions of every kept user and item.
    """
    alive = np.ones(len(users), dtype=bool)
    while True:
        u_count = np.bincount(users[alive], minlength=int(users.max(initial=0)) + 1)
        i_count = np.bincount(items[alive], minlength=int(items.max(initial=0)) + 1)
        keep = alive & (u_count[users] >= k) & (i_count[items] >= k)
        if keep.sum() == alive.sum():
            return keep
        alive = keep


def clean_interactions(
    frame: pl.DataFrame, *, kcore: int, keep_repeats: bool, dropped: dict[str, int]
) -> pl.DataFrame:
    """Drops exact duplicates, repeats (unless kept) and k-core misses; sorts by (timestamp, row).

    ``frame`` has ``row`` (file order), ``u``/``i`` dense id codes, ``timestamp``, ``rating`` and
    ``review``. Exact duplicates are rows equal in user, item, timestamp, rating and review: the
    first is kept (``duplicate``). With ``keep_repeats=False`` only the earliest (timestamp,
    then file order) row of each (user, item) pair stays (``repeat``). Then the iterative k-core
    (``kcore``). Every dropped row is counted in ``dropped``.
    """
    frame = frame.sort("timestamp", maintain_order=True)  # stable: equal timestamps keep file order
    pair = pl.col("u").cast(pl.UInt64) * (1 << 32) + pl.col("i").cast(pl.UInt64)
    frame = frame.with_columns(pair.alias("_pair"))
    frame = frame.with_columns(pl.col("_pair").is_first_distinct().alias("_first"))
    # exact duplicates can only be among rows of repeated pairs: compare full rows there only
    repeated = frame.filter(pl.col("_pair").is_duplicated())
    dup_rows = repeated.filter(
        ~pl.struct("_pair", "timestamp", "rating", "review").is_first_distinct()
    ).select("row")
    dropped["duplicate"] = dup_rows.height
    if keep_repeats:
        frame = frame.join(dup_rows, on="row", how="anti", maintain_order="left")
    else:
        dropped["repeat"] = frame.height - int(frame["_first"].sum()) - dup_rows.height
        frame = frame.filter(pl.col("_first"))
    frame = frame.drop("_first", "_pair")
    if kcore:
        n = frame.height
        frame = frame.filter(
            pl.Series(kcore_mask(frame["u"].to_numpy(), frame["i"].to_numpy(), kcore))
        )
        dropped["kcore"] = n - frame.height
    if frame.height == 0:
        raise DataError(
            f"no interactions left after cleaning (dropped: {dropped}); "
            f"lower --kcore (now {kcore}) or check the input files"
        )
    return frame


def assign_ids(
    frame: pl.DataFrame, users: pl.DataFrame, items: pl.DataFrame
) -> tuple[pl.DataFrame, ...]:
    """Users 0..U-1 and items 1..N in order of first appearance in the input files, then sorts by
    (user_idx, timestamp, file row): ties keep the file's order, never the item id.

    Args:
        frame: Cleaned interactions sorted by (timestamp, row), with ``u``/``i`` codes.
        users: ``u`` -> ``user_id`` (from ``encode_ids``).
        items: ``i`` -> ``item_id``.

    Returns:
        The frame with ``user_idx``/``item_idx`` (int32), the user table and the item table.
    """

    def order(key: str, name: str, offset: int) -> tuple[pl.DataFrame, pl.Series]:
        first = frame.group_by(key).agg(pl.col("row").min()).sort("row")
        codes = first[key].to_numpy()
        lookup = np.zeros(int(codes.max()) + 1, dtype=np.int32)
        lookup[codes] = np.arange(offset, offset + len(codes), dtype=np.int32)
        table = pl.DataFrame({name: lookup[codes], key: first[key]})
        return table, pl.Series(name, lookup[frame[key].to_numpy()])

    (u_idx, user_col), (i_idx, item_col) = order("u", "user_idx", 0), order("i", "item_idx", 1)
    frame = frame.with_columns(user_col, item_col)
    frame = frame.sort("user_idx", maintain_order=True)  # stable on the (timestamp, row) order
    users = u_idx.join(users, on="u", how="left").sort("user_idx").select("user_idx", "user_id")
    items = i_idx.join(items, on="i", how="left").sort("item_idx").select("item_idx", "item_id")
    return frame, users, items


def split_column(protocol: str, valid_ts: int | None, test_ts: int | None) -> pl.Expr:
    """The ``split`` column (train/valid/test) for a frame sorted by (user_idx, timestamp, row).

    ``loo``: per user the last event is test, the second last valid, the rest train (users with
    fewer than 3 events: all train). ``temporal``: events at/after ``test_ts`` are test,
    [``valid_ts``, ``test_ts``) valid, earlier ones train.
    """
    if protocol == "temporal":
        return (
            pl.when(pl.col("timestamp") >= test_ts)
            .then(pl.lit("test"))
            .when(pl.col("timestamp") >= valid_ts)
            .then(pl.lit("valid"))
            .otherwise(pl.lit("train"))
        )
    u = pl.col("user_idx")
    last = u != u.shift(-1, fill_value=-1)
    second = ~last & (u != u.shift(-2, fill_value=-1))
    # a row's user has >= 3 events iff some window of 3 consecutive rows around it has one user
    many = ((u == u.shift(2)) | (u.shift(1) == u.shift(-1)) | (u == u.shift(-2))).fill_null(False)
    return (
        pl.when(~many)
        .then(pl.lit("train"))
        .when(last)
        .then(pl.lit("test"))
        .when(second)
        .then(pl.lit("valid"))
        .otherwise(pl.lit("train"))
    )
