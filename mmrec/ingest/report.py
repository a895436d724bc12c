"""Trend report of a prepared dataset: interactions per month/weekday (PNG), top items per month."""

from __future__ import annotations

from pathlib import Path

import polars as pl

WEEKDAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = 1_000_000  # above any year * 100 + month


def trend_tables(
    interactions: pl.DataFrame | pl.LazyFrame, items: pl.DataFrame, top_k: int = 5
) -> dict[str, pl.DataFrame]:
    """Counts per month, per weekday and the ``top_k`` items of every month, in bounded memory
    (a LazyFrame, e.g. a scan of interactions.parquet, is streamed).

    Args:
        interactions: ``item_idx``, ``timestamp`` (unix seconds) at least.
        items: ``item_idx``, ``item_id``, ``title``.
        top_k: Items listed per month.
    """
    when = pl.from_epoch(pl.col("timestamp"), time_unit="s")
    events = interactions.lazy().select(
        "item_idx",
        (when.dt.year() * 100 + when.dt.month()).alias("month"),
        when.dt.weekday().alias("weekday"),
    )
    month_text = pl.format(
        "{}-{}", pl.col("month") // 100, (pl.col("month") % 100).cast(pl.String).str.zfill(2)
    )
    per_month = events.group_by("month").agg(pl.len().alias("interactions"))
    per_weekday = events.group_by("weekday").agg(pl.len().alias("interactions"))
    # (item, month) counted on one integer key: the streaming group-by stays small
    key = pl.col("item_idx").cast(pl.Int64) * _MONTHS + pl.col("month")
    counts = events.group_by(key.alias("key")).agg(pl.len().alias("interactions"))
    month, weekday, counts = pl.collect_all([per_month, per_weekday, counts], engine="streaming")
    month = month.sort("month").with_columns(month_text.alias("month"))
    weekday = (
        pl.DataFrame({"weekday": range(1, 8)}, schema={"weekday": pl.Int8})
        .join(weekday, on="weekday", how="left")
        .select(
            pl.col("weekday").replace_strict(dict(enumerate(WEEKDAYS, 1)), return_dtype=pl.String),
            pl.col("interactions").fill_null(0),
        )
    )
    counts = counts.select(
        (pl.col("key") % _MONTHS).cast(pl.Int32).alias("month"),
        (pl.col("key") // _MONTHS).cast(pl.Int32).alias("item_idx"),
        "interactions",
    )
    # the top_k of a month are at or above its k-th largest count: sort those only
    cut = counts.group_by("month").agg(pl.col("interactions").top_k(top_k).min().alias("_cut"))
    top = (
        counts.join(cut, on="month")
        .filter(pl.col("interactions") >= pl.col("_cut"))
        .sort(["month", "interactions", "item_idx"], descending=[False, True, False])
        .group_by("month", maintain_order=True)
        .head(top_k)
        .with_columns(pl.int_range(pl.len()).over("month").add(1).alias("rank"))
        .join(items.select("item_idx", "item_id", "title"), on="item_idx", how="left")
        .select("month", "rank", "item_idx", "item_id", "title", "interactions")
        .sort("month", "rank")
        .with_columns(month_text.alias("month"))
    )
    del counts
    if month.height:  # every calendar month between the first and the last, empty ones as 0
        first, last = (
            int(v[:4]) * 12 + int(v[5:]) - 1 for v in (month["month"][0], month["month"][-1])
        )
        every = pl.DataFrame(
            {"month": [f"{m // 12}-{m % 12 + 1:02d}" for m in range(first, last + 1)]}
        )
        month = every.join(month, on="month", how="left").with_columns(
            pl.col("interactions").fill_null(0)
        )
    return {"per_month": month, "per_weekday": weekday, "top_items": top}


def preload() -> None:
    """Imports matplotlib's Agg canvas (about 0.6 s): ``mmrec prepare`` runs this in a thread
    while it reads the input, so the report does not wait for it."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: F401
    from matplotlib.figure import Figure  # noqa: F401


def write_trend_report(
    interactions: pl.DataFrame | pl.LazyFrame,
    items: pl.DataFrame,
    out_dir: str | Path,
    top_k: int = 5,
    markdown_months: int = 24,
) -> list[Path]:
    """Writes ``trends.png``, ``top_items_per_month.csv`` and ``top_items_per_month.md`` to
    ``out_dir``.

    Args:
        interactions: The prepared interactions (``item_idx``, ``timestamp``).
        items: The prepared item table.
        out_dir: Folder for the report files (created).
        top_k: Items listed per month.
        markdown_months: The markdown lists the latest months only (the CSV has them all).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure  # no pyplot: no global state, faster import

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tables = trend_tables(interactions, items, top_k)
    fig = Figure(figsize=(13, 4))
    FigureCanvasAgg(fig)
    ax_m, ax_w = fig.subplots(1, 2, gridspec_kw={"width_ratios": [3, 1]})
    months = tables["per_month"]
    ax_m.plot(range(months.height), months["interactions"].to_list(), lw=1.2)
    step = max(1, months.height // 12)
    ax_m.set_xticks(
        range(0, months.height, step), months["month"].to_list()[::step], rotation=45, ha="right"
    )
    ax_m.set_title("Interactions per month")
    ax_m.set_ylabel("interactions")
    ax_w.bar(
        tables["per_weekday"]["weekday"].to_list(), tables["per_weekday"]["interactions"].to_list()
    )
    ax_w.set_title("Interactions per weekday (UTC)")
    fig.tight_layout()
    png = out_dir / "trends.png"
    fig.savefig(png, dpi=90)
    top = tables["top_items"]
    csv = out_dir / "top_items_per_month.csv"
    top.write_csv(csv)
    recent = top.filter(pl.col("month").is_in(months["month"].tail(markdown_months).implode()))
    lines = [
        f"# Top {top_k} items per month "
        f"(latest {markdown_months} months; all months in {csv.name})",
        "",
        "| month | rank | item_idx | item_id | title | interactions |",
        "|---|---|---|---|---|---|",
    ]
    for r in recent.iter_rows(named=True):
        title = (r["title"] or "").replace("|", "/")[:60]
        lines.append(
            f"| {r['month']} | {r['rank']} | {r['item_idx']} | {r['item_id']} | {title} "
            f"| {r['interactions']} |"
        )
    md = out_dir / "top_items_per_month.md"
    md.write_text("\n".join(lines) + "\n")
    return [png, csv, md]
