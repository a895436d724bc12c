"""The review lines of :func:`mmrec.synthetic.raw.write_raw_files`: the plan of the whole file
(heavy-tailed items and users, dates, ratings, planted quirks) and each release's review lines
built from it with polars column expressions."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

from mmrec.calendar import DAY


def _item_counts(rng: np.random.Generator, n_rows: int, n_items: int) -> np.ndarray:
    """Reviews per item, heavy-tailed, summing to ``n_rows``, each >= 1."""
    w = rng.pareto(1.2, n_items) + 1.0
    counts = np.maximum(1, np.floor(w / w.sum() * (n_rows - n_items)).astype(np.int64) + 1)
    diff = n_rows - int(counts.sum())
    counts[np.argsort(-w)[: abs(diff)]] += int(np.sign(diff))
    return counts


@dataclass
class _Plan:
    """The review rows of the whole file in emission order (item-grouped), as arrays."""

    item: np.ndarray  # [R] item index
    user: np.ndarray  # [R] user index
    day: np.ndarray  # [R] days since 1970
    secs: np.ndarray  # [R] seconds within the day (2023 only)
    rating: np.ndarray  # [R] 1..5
    text: np.ndarray  # [R] index into the text pool
    kind: np.ndarray  # [R] 0 normal, 1 broken, 2 no user, 3 no text, 4 no rating, 5 bad time


def _plan(rng: np.random.Generator, n: int, n_users: int, n_items: int, first_day: int,
          last_day: int, n_texts: int, planted: dict[str, int]) -> _Plan:  # fmt: skip
    counts = _item_counts(rng, n, n_items)
    item = np.repeat(np.arange(n_items, dtype=np.int32), counts)
    # users: a Zipf-like activity (many one-review users, a few heavy ones)
    weights = 1.0 / np.arange(1, n_users + 1) ** 0.8
    cdf = np.cumsum(weights / weights.sum())
    user = np.minimum(np.searchsorted(cdf, rng.random(n)), n_users - 1)
    user = rng.permutation(n_users).astype(np.int32)[user]
    span = last_day - first_day
    day = last_day - np.minimum((rng.exponential(0.35, n) * span).astype(np.int32), span)
    rating = rng.choice(np.arange(1, 6, dtype=np.int8), n, p=[0.07, 0.05, 0.09, 0.19, 0.60])
    text = rng.integers(0, n_texts, n, dtype=np.int32)
    secs = rng.integers(0, DAY, n, dtype=np.int32)
    # exact duplicates (the next line repeats this one) and repeats (same user and item later)
    dup = np.flatnonzero(rng.random(n - 1) < 0.004)
    dup = dup[item[dup] == item[dup + 1]]
    for arr in (user, day, secs, rating, text):
        arr[dup + 1] = arr[dup]
    planted["duplicate"] = len(dup)
    rep = np.flatnonzero(rng.random(n - 1) < 0.006)
    rep = rep[(item[rep] == item[rep + 1]) & ~np.isin(rep, dup) & ~np.isin(rep + 1, dup + 1)]
    user[rep + 1] = user[rep]
    kind = np.zeros(n, np.int8)
    for code, name, rate in ((1, "broken", 2e-6), (2, "no_user", 1e-6), (3, "no_text", 1e-3),
                             (4, "no_rating", 5e-4), (5, "time_out_of_range", 1e-6)):  # fmt: skip
        hit = np.flatnonzero((rng.random(n) < rate) & (kind == 0))
        hit = hit[~np.isin(hit, dup) & ~np.isin(hit, dup + 1)]
        kind[hit] = code
        planted[name] = len(hit)
    order = np.lexsort((np.arange(n), -day, item))  # real files: by item, newest first
    return _Plan(
        item[order], user[order], day[order], secs[order], rating[order],
        text[order], kind[order],
    )  # fmt: skip


def _review_frame(release: str, plan: _Plan, lo: int, hi: int, users: pl.Series,
                  items: pl.Series, pool: pl.Series, summaries: pl.Series,
                  broken: bool) -> pl.Series:  # fmt: skip
    """Lines ``lo:hi`` of the review file as a String series (no newline)."""
    sl = slice(lo, hi)
    kind = plan.kind[sl]
    day = plan.day[sl].astype(np.int64)
    frame = pl.DataFrame(
        {
            "user": users.gather(plan.user[sl]),
            "item": items.gather(plan.item[sl]),
            "day": day,
            "secs": plan.secs[sl].astype(np.int64),
            "rating": plan.rating[sl].astype(np.float64),
            "text": pool.gather(plan.text[sl]),
            "summary": summaries.gather(plan.text[sl] % len(summaries)),
            "kind": kind,
            "k": np.arange(lo, hi),
        }
    )
    k = pl.col("k")
    kind_c = pl.col("kind")

    def opt(cond: pl.Expr, *parts) -> pl.Expr:
        return pl.when(cond).then(pl.concat_str(list(parts))).otherwise(pl.lit(""))

    q = pl.lit('"')
    when = pl.from_epoch(pl.col("day") * DAY, time_unit="s")
    if release == "amazon2023":
        ts = (pl.col("day") * DAY + pl.col("secs")) * 1000 + pl.col("secs") * 7 % 1000
        ts = pl.when(kind_c == 5).then(pl.lit(0)).otherwise(ts).cast(pl.String)
        line = pl.concat_str(
            [
                pl.lit("{"),
                opt(kind_c != 4, pl.lit('"rating": '), pl.col("rating").cast(pl.String),
                    pl.lit(", ")),  # fmt: skip
                pl.lit('"title": '), pl.col("summary"),
                opt(kind_c != 3, pl.lit(', "text": '), pl.col("text")),
                pl.lit(', "images": [], "asin": "'), pl.col("item"), q,
                pl.lit(', "parent_asin": "'), pl.col("item"), q,
                opt(kind_c != 2, pl.lit(', "user_id": "'), pl.col("user"), q),
                pl.lit(', "timestamp": '), ts,
                pl.lit(', "helpful_vote": '), (k % 7 // 5).cast(pl.String),
                pl.lit(', "verified_purchase": '),
                pl.when(k % 10 < 8).then(pl.lit("true")).otherwise(pl.lit("false")),
                pl.lit("}"),
            ]
        )  # fmt: skip
    else:
        ts = pl.when(kind_c == 5).then(pl.lit(0)).otherwise(pl.col("day") * DAY)
        review_time = pl.format(
            "{} {}, {}",
            when.dt.month().cast(pl.String).str.zfill(2),
            when.dt.day().cast(pl.String).str.zfill(2),
            when.dt.year().cast(pl.String),
        )
        if release == "amazon2014":
            line = pl.concat_str(
                [
                    pl.lit("{"),
                    opt(kind_c != 2, pl.lit('"reviewerID": "'), pl.col("user"), pl.lit('", ')),
                    pl.lit('"asin": "'), pl.col("item"),
                    pl.lit('", "reviewerName": "J. Doe", "helpful": ['),
                    (k % 3).cast(pl.String), pl.lit(", "), (k % 5).cast(pl.String), pl.lit("]"),
                    opt(kind_c != 3, pl.lit(', "reviewText": '), pl.col("text")),
                    opt(kind_c != 4, pl.lit(', "overall": '), pl.col("rating").cast(pl.String)),
                    pl.lit(', "summary": '), pl.col("summary"),
                    pl.lit(', "unixReviewTime": '), ts.cast(pl.String),
                    pl.lit(', "reviewTime": "'), review_time, pl.lit('"}'),
                ]
            )  # fmt: skip
        else:
            line = pl.concat_str(
                [
                    pl.lit("{"),
                    opt(kind_c != 4, pl.lit('"overall": '), pl.col("rating").cast(pl.String),
                        pl.lit(", ")),  # fmt: skip
                    opt(k % 7 == 0, pl.lit('"vote": "'), (k % 13 + 2).cast(pl.String),
                        pl.lit('", ')),  # fmt: skip
                    pl.lit('"verified": '),
                    pl.when(k % 10 < 8).then(pl.lit("true")).otherwise(pl.lit("false")),
                    pl.lit(', "reviewTime": "'), review_time, q,
                    opt(kind_c != 2, pl.lit(', "reviewerID": "'), pl.col("user"), q),
                    pl.lit(', "asin": "'), pl.col("item"), q,
                    opt(k % 5 < 2, pl.lit(', "style": {"Size:": " '),
                        (k % 4 + 5).cast(pl.String), pl.lit(' oz"}')),  # fmt: skip
                    pl.lit(', "reviewerName": "Amazon Customer"'),
                    opt(kind_c != 3, pl.lit(', "reviewText": '), pl.col("text")),
                    pl.lit(', "summary": '), pl.col("summary"),
                    pl.lit(', "unixReviewTime": '), ts.cast(pl.String),
                    opt(k % 97 == 0, pl.lit(', "image": ["https://images-na.ssl-images-amazon.com/'
                                            'images/I/71'), (k % 1000).cast(pl.String),
                        pl.lit('.jpg"]')),  # fmt: skip
                    pl.lit("}"),
                ]
            )  # fmt: skip
    # a broken line: the JSON cut off in the middle (as in a damaged copy)
    line = pl.when(kind_c == 1).then(line.str.slice(0, 40)).otherwise(line) if broken else line
    return frame.select(line.alias("line")).to_series()
