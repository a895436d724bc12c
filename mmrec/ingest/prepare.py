"""`mmrec prepare`: raw Amazon review files or tabular files -> the dataset folder of DESIGN.md."""

from __future__ import annotations

import dataclasses
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import polars as pl
from tqdm.auto import tqdm

from mmrec.calendar import DAY
from mmrec.ingest.clean import Cleaned, clean_ingested, split_codes
from mmrec.ingest.errors import BadLines, DataError
from mmrec.ingest.items import (
    ITEM_SCHEMA,
    META_KEYS,
    merge_item_sources,
    read_item_attributes,
    read_item_text,
    read_meta_table,
)
from mmrec.ingest.metalines import read_meta_lines
from mmrec.ingest.outputs import write_interactions, write_parquet
from mmrec.ingest.readers import (
    AMAZON2014_REVIEW_KEYS,
    Amazon2023Reader,
    JsonReviewsReader,
    ReadStats,
    TableReader,
    TimeWindow,
)
from mmrec.ingest.settings import (
    FORMAT_VERSION,
    SPLITS,
    PrepareConfig,
    _fingerprint,
    _log,
    _parse_time,
    _up_to_date,
    _write_meta,
    check_split,
    file_digest,
    input_identity,
    resolve_starts,
    settings,
)
from mmrec.ingest.sources import fetch
from mmrec.ingest.stream import ingest

__all__ = [
    "DataError",
    "PrepareConfig",
    "prepare_dataset",
    "main",
    # moved to mmrec.ingest.settings, still importable here
    "FORMAT_VERSION",
    "SPLITS",
    "file_digest",
    "input_identity",
    "settings",
]

#: Source -> builder of its interaction reader (a table, not a string switch in the pipeline).
#: Amazon reviews were written between 1995 and today: other times are dropped and counted.
READERS: dict[str, Callable[[PrepareConfig], object]] = {
    "amazon2014": lambda cfg: JsonReviewsReader(
        AMAZON2014_REVIEW_KEYS, TimeWindow.amazon(), cfg.allow_truncated
    ),
    "amazon2018": lambda cfg: JsonReviewsReader(
        AMAZON2014_REVIEW_KEYS, TimeWindow.amazon(), cfg.allow_truncated
    ),
    "amazon2023": lambda cfg: Amazon2023Reader(TimeWindow.amazon(), cfg.allow_truncated),
    "tabular": lambda cfg: TableReader(cfg.columns, allow_truncated=cfg.allow_truncated),
}
TABLE_KEYS = {name: (name,) for name in ITEM_SCHEMA}


def _mmrec_version() -> str:
    from mmrec import __version__

    return __version__


def _validate(cfg: PrepareConfig) -> tuple[int | None, int | None, int | None]:
    if cfg.source is None:
        raise DataError(f"--source is required: one of {list(READERS)}")
    if not cfg.out:
        raise DataError("--out is required: the dataset folder to write")
    if cfg.source not in READERS:
        raise DataError(f"--source {cfg.source!r} is unknown; choose one of {list(READERS)}")
    if cfg.kcore < 0:
        raise DataError(f"--kcore must be >= 0 (0 = off), got {cfg.kcore}")
    if not 0 <= cfg.max_bad_fraction <= 1:
        raise DataError(f"--max_bad_fraction must be within [0, 1], got {cfg.max_bad_fraction}")
    if cfg.columns is not None and cfg.source != "tabular":
        raise DataError("--columns applies to --source tabular only")
    return check_split(cfg)


def _inputs(cfg: PrepareConfig, progress: bool) -> tuple[list[Path], Path | None]:
    meta = Path(cfg.meta) if cfg.meta else None
    if cfg.reviews:
        reviews = [cfg.reviews] if isinstance(cfg.reviews, str) else list(cfg.reviews)
        return [Path(p) for p in reviews], meta
    if cfg.source == "tabular":
        raise DataError("--source tabular needs --reviews (the local csv/tsv/parquet file)")
    if not cfg.category:
        raise DataError(
            f"--source {cfg.source} without --reviews downloads the official files: pass --category"
        )
    where = Path(cfg.download_dir or Path("data") / "raw" / cfg.source)
    kind = "benchmark" if cfg.benchmark and cfg.source == "amazon2023" else "reviews"
    reviews = fetch(cfg.source, kind, cfg.category, where, progress=progress)
    if meta is None:
        meta = fetch(cfg.source, "meta", cfg.category, where, progress=progress)[0]
    return reviews, meta


def build_items(
    items: pl.DataFrame, cfg: PrepareConfig, meta: Path | None
) -> tuple[pl.DataFrame, dict]:
    """The item table (one row per item 1..N) joined with cleaned metadata and item text.

    Official metadata files are read for the kept items only (``metalines.read_meta_lines``).
    """
    info: dict = {}
    sources = []
    if meta is not None:
        if cfg.source == "tabular" or any(s in meta.suffixes for s in (".csv", ".tsv", ".parquet")):
            sources.append(read_meta_table(meta, META_KEYS.get(cfg.source, TABLE_KEYS)))
        else:
            bad = BadLines(str(meta))
            keys, kept = META_KEYS[cfg.source], items["item_id"]
            sources.append(
                read_meta_lines(meta, keys, bad, kept, allow_truncated=cfg.allow_truncated)
            )
            bad.check(cfg.max_bad_fraction)
            info["meta_skipped"] = bad.num_bad
            if bad.truncated is not None:
                info["truncated_files"] = [bad.truncation_record()]
    if cfg.item_text:
        sources.append(read_item_text(cfg.item_text))
    quality: dict = {}
    table, info["items_without_meta"] = merge_item_sources(items, sources, quality)
    if cfg.item_attributes:
        attributes = read_item_attributes(cfg.item_attributes)
        table = table.join(attributes, on="item_id", how="left")
        info["items_without_attributes"] = int(table["attributes"].null_count())
    if quality:
        info["meta_duplicate_records"] = quality["duplicate_records"]
        info["item_fields"] = {k: quality[k] for k in ("markup_only", "invalid_utf8")}
    return table, info


def prepare_dataset(cfg: PrepareConfig, *, progress: bool = True) -> Path:
    """Reads, cleans, filters and splits the raw files of ``cfg`` into the folder ``cfg.out``.

    A folder whose meta.json has the same fingerprint (inputs + settings) is returned as is; a
    folder without meta.json is incomplete and is prepared again.

    Args:
        cfg: What to prepare.
        progress: Show progress bars.

    Returns:
        The dataset folder.
    """
    start = time.perf_counter()
    valid_ts, test_ts, end_ts = _validate(cfg)
    out = Path(cfg.out)
    reviews, meta = _inputs(cfg, progress)
    files = _input_files(cfg, reviews, meta)
    identity = input_identity([Path(f) for f in files])
    fingerprint = _fingerprint(cfg, identity)
    if _up_to_date(out, fingerprint, cfg, identity):
        return out
    out.mkdir(parents=True, exist_ok=True)
    (out / "meta.json").unlink(missing_ok=True)
    for stale in out.glob(".scratch-*"):  # left by a run that was killed
        shutil.rmtree(stale, ignore_errors=True)

    if cfg.report:  # import the plotting library while the input is read
        from mmrec.ingest.report import preload

        threading.Thread(target=preload, daemon=True).start()
    bar = tqdm(total=5, desc="prepare", disable=not progress, leave=False)
    bar.set_postfix_str("reading")
    with tempfile.TemporaryDirectory(prefix=".scratch-", dir=out) as scratch:
        stats, reader = ReadStats(), READERS[cfg.source](cfg)
        data = ingest(reader, reviews, cfg.max_bad_fraction, stats, Path(scratch), cfg.review_text)
        input_rows, dropped = stats.input_rows, dict(stats.dropped)
        truncated = stats.truncated
        bar.update()
        bar.set_postfix_str("cleaning")
        kept = clean_ingested(
            data, kcore=cfg.kcore, keep_repeats=cfg.keep_repeats, dropped=dropped, before=end_ts
        )
        split_cfg, fractions = resolve_starts(cfg, kept.ts)  # fractions of the events -> days
        valid_ts, test_ts = (
            _parse_time("valid_start", split_cfg.valid_start),
            _parse_time("test_start", split_cfg.test_start),
        )
        split = split_codes(cfg.split, kept.user_idx, kept.ts, valid_ts, test_ts)
        info = _meta_info(split_cfg, kept, split, input_rows, dropped)
        info["split"] |= fractions
        bar.update()
        bar.set_postfix_str("writing")
        users = pl.DataFrame(
            {
                "user_idx": np.arange(len(kept.user_codes), dtype=np.int32),
                "user_id": data.user_ids(kept.user_codes),
            }
        )
        items = pl.DataFrame(
            {
                "item_idx": np.arange(1, len(kept.item_codes) + 1, dtype=np.int32),
                "item_id": data.item_ids(kept.item_codes),
            }
        )
        write_interactions(out / "interactions.parquet", kept, split, data)
        del kept, split
    write_parquet(users, out / "users.parquet")
    del users
    bar.update()
    bar.set_postfix_str("items")
    items, item_info = build_items(items, cfg, meta)
    write_parquet(items, out / "items.parquet")
    items = items.select("item_idx", "item_id", "title")  # what the report needs
    bar.update()
    if cfg.report:
        bar.set_postfix_str("report")
        from mmrec.ingest.report import write_trend_report

        write_trend_report(pl.scan_parquet(out / "interactions.parquet"), items, out / "report")
    bar.update()
    bar.close()

    truncated += item_info.pop("truncated_files", [])
    if truncated:  # kept with --allow_truncated: which files were cut, and what was kept
        info["truncated_files"] = truncated
    info |= {**item_info, "inputs": [str(f) for f in files], "fingerprint": fingerprint}
    info |= {"settings": settings(cfg), "input_files": identity}
    info["created"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    _check_counts(info, dropped)
    _write_meta(out, info)
    shown = ", ".join(f"{k}={v}" for k, v in dropped.items()) or "none"
    _log(
        f"{out}: {info['num_users']:,} users, {info['num_items']:,} items, "
        f"{info['num_interactions']:,} interactions from {input_rows:,} rows (dropped: {shown}) "
        f"in {time.perf_counter() - start:.1f}s"
    )
    _log_item_quality(info)
    return out


def _log_item_quality(info: dict) -> None:
    """One line on the metadata quirks met (meta.json ``item_fields``), when there were some."""
    quirks = [
        f"{what}: {', '.join(f'{k}={v}' for k, v in counts.items() if v)}"
        for what, counts in info.get("item_fields", {}).items()
        if any(counts.values())
    ]
    if info.get("meta_duplicate_records"):
        quirks.append(f"duplicate_records: {info['meta_duplicate_records']} dropped")
    if quirks:
        _log(f"item metadata fields: {'; '.join(quirks)} (meta.json: item_fields)")


def _meta_info(
    cfg: PrepareConfig, kept: Cleaned, split: np.ndarray, input_rows: int, dropped: dict[str, int]
) -> dict:
    """meta.json up to ``keep_repeats``: settings, counts, dropped rows, time range, splits."""
    ts = kept.ts
    counts = np.bincount(split, minlength=3)
    split_info: dict = {
        "protocol": cfg.split,
        "counts": {name: int(counts[k]) for k, name in enumerate(SPLITS)},
    }
    if cfg.split == "temporal":
        split_info |= {
            "valid_start": cfg.valid_start,
            "test_start": cfg.test_start,
            "valid_start_ts": _parse_time("valid_start", cfg.valid_start),
            "test_start_ts": _parse_time("test_start", cfg.test_start),
        }
        if cfg.test_end is not None:
            split_info |= {
                "test_end": cfg.test_end,
                "test_end_ts": _parse_time("test_end", cfg.test_end),
            }
    return {
        "source": cfg.source,
        "version": FORMAT_VERSION,
        "mmrec_version": _mmrec_version(),
        "category": cfg.category,
        "num_users": len(kept.user_codes),
        "num_items": len(kept.item_codes),
        "num_interactions": len(ts),
        "input_rows": input_rows,
        "dropped": dropped,
        "time_granularity": "day" if not np.any(ts % DAY) else "second",
        "time_range": [int(ts.min()), int(ts.max())],
        "split": split_info,
        "kcore": cfg.kcore,
        "keep_repeats": cfg.keep_repeats,
    }


def _input_files(cfg: PrepareConfig, reviews: list[Path], meta: Path | None) -> list[Path]:
    """Every input file (reviews, metadata, item text and attributes), each checked to exist."""
    extra = (meta, cfg.item_text and Path(cfg.item_text))
    extra += (cfg.item_attributes and Path(cfg.item_attributes),)
    files = [*reviews, *(p for p in extra if p)]
    for f in files:
        if not Path(f).is_file():
            raise DataError(f"{f}: file not found; check the path")
    return files


def _check_counts(info: dict, dropped: dict[str, int]) -> None:
    """Every input row is kept or dropped under a reason (code, not an assert: it must hold
    under ``python -O`` too); a folder that breaks it gets no meta.json."""
    kept, lost = info["num_interactions"], sum(dropped.values())
    if kept + lost != info["input_rows"]:
        raise RuntimeError(
            f"{kept} kept + {lost} dropped != {info['input_rows']} input rows (dropped: "
            f"{dropped}): rows were lost without a reason; please report this input"
        )


def build_parser():
    """The ``mmrec prepare`` argument parser (jsonargparse; ``--config`` takes a YAML file)."""
    from jsonargparse import ActionConfigFile

    from mmrec.parsing import argument_parser

    parser = argument_parser(
        prog="mmrec prepare",
        description="Prepare a dataset folder (interactions/items/users parquet + meta.json) "
        "from raw Amazon review files or a tabular file. Later flags override --config values.",
    )
    parser.add_argument(
        "--config", action=ActionConfigFile, help="YAML file with any of the options below"
    )
    parser.add_class_arguments(PrepareConfig, as_group=False)
    parser.add_argument("--progress", type=bool, default=True, help="Show progress bars.")
    return parser


def config_from_args(argv: list[str] | None = None) -> tuple[PrepareConfig, bool]:
    """Parses command-line arguments into a PrepareConfig and the progress flag."""
    args = build_parser().parse_args(argv)
    names = [f.name for f in dataclasses.fields(PrepareConfig)]
    return PrepareConfig(**{name: args[name] for name in names}), bool(args.progress)


def main(argv: list[str] | None = None) -> int:
    """``mmrec prepare`` entry point; returns the exit code (2 on a data error)."""
    cfg, progress = config_from_args(argv)
    try:
        prepare_dataset(cfg, progress=progress)
    except DataError as err:
        print(f"mmrec prepare: error: {err}", file=sys.stderr)
        return 2
    except pl.exceptions.PolarsError as err:
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        print(
            f"mmrec prepare: error: could not process the input files ({first}); "
            "check them and the column mapping, or report this with the command you ran",
            file=sys.stderr,
        )
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
