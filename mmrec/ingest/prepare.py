"""`mmrec prepare`: raw Amazon review files or tabular files -> the dataset folder of DESIGN.md."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal

import numpy as np
import polars as pl
from tqdm.auto import tqdm

from mmrec.calendar import DAY, to_unix
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
from mmrec.ingest.sources import fetch
from mmrec.ingest.stream import ingest

__all__ = ["DataError", "PrepareConfig", "prepare_dataset", "main"]

FORMAT_VERSION = 1
SPLITS = ("train", "valid", "test")


@dataclass
class PrepareConfig:
    """Settings of ``mmrec prepare``: raw files -> dataset folder (parquet files + meta.json).

    Every field has a default so that a training config may leave ``data.prepare`` unset
    (then the dataset folder must exist); ``mmrec prepare`` itself needs ``source`` and ``out``.

    Args:
        source: Input format: ``amazon2014`` (reviews_*_5.json.gz + meta_*.json.gz),
            ``amazon2018`` (*_5.json.gz + meta_*.json.gz), ``amazon2023`` (*.jsonl(.gz) +
            meta_*.jsonl(.gz), or the benchmark *.{train,valid,test}.csv(.gz)) or ``tabular``
            (csv/tsv/parquet through ``columns``). Amazon files of any size are read in
            bounded memory; their reviews dated before 1995 or after today are dropped
            (``time_out_of_range``); timestamps in milliseconds are recognised value by value.
        out: Dataset folder to write (interactions/items/users parquet, meta.json, report/).
        category: Amazon category as in the official file names (Beauty, Gift_Cards, All_Beauty);
            needed to download and recorded in meta.json.
        reviews: Local interaction file(s). Unset: download the official file of ``source`` and
            ``category`` into ``download_dir``.
        meta: Local item metadata file (official meta file, or a csv/parquet item table with
            item_id/title/description/categories/brand/price/image_urls columns). Unset:
            downloaded together with the reviews when those are downloaded, else no metadata.
        kcore: Iteratively keep users and items with at least this many interactions (0 = off).
        split: ``loo`` (per user: last event test, second last valid, users with < 3 events all
            train) or ``temporal`` (global cut-offs ``valid_start``/``test_start``).
        valid_start: ISO date/time (UTC); temporal split: events at/after it (and before
            ``test_start``) are valid.
        test_start: ISO date/time (UTC); temporal split: events at/after it (and before
            ``test_end``) are test.
        test_end: ISO date/time (UTC); temporal split: the end of the test window. Events
            at/after it are dropped (meta.json ``dropped``: ``after_test_end``) after the
            duplicate and repeat rules and before the k-core, so the folder holds the data as
            of that time (e.g. valid_start 2013-11-01, test_start 2013-12-01, test_end
            2014-01-01: December 2013 as a fold of Beauty 2014). Unset: no end.
        columns: Tabular only: our column -> the file's column, for user_id, item_id, timestamp
            (required) and rating, review (optional), e.g. '{"user_id": "reviewerID"}'.
        item_text: Optional item title file, one item a line: ``<item_id> <title words...>``
            (e.g. item_title_keywords.txt); fills titles missing from ``meta``.
        item_attributes: Optional table (tsv/csv/parquet) of categorical item attributes: an
            item id column (``asin``, ``parent_asin`` or ``item_id``) and an ``attributes``
            column of space-separated values (ids or names), e.g. S3-Rec's Beauty
            item_attributes.tsv; written to items.parquet as ``attributes`` for the
            ``AttributeEncoder``.
        max_bad_fraction: Bad lines (malformed, missing fields, non-numeric values) of a file
            above this fraction are an error; below it they are skipped and counted.
        download_dir: Where downloads go (default ``data/raw/<source>``).
        keep_repeats: Keep every repeated (user, item) pair (repeat purchases). Default False
            keeps only the earliest one and counts the others as ``repeat`` (the official 2023
            benchmark rule). Exact duplicate rows are always dropped (``duplicate``).
        benchmark: amazon2023 without ``reviews``: download the official 5-core
            last_out_w_his benchmark CSVs instead of the raw review file.
        overwrite: Replace a finished dataset in ``out`` prepared from other inputs/settings.
        report: Write the trend report (report/trends.png, top items per month).
        review_text: Keep each review's text in interactions.parquet (``review`` column, for
            review-text features); off, the column is null and the text is only hashed to tell
            exact duplicates from repeats (less disk, less time).
        allow_truncated: Keep the complete lines of a truncated gzip file (an interrupted
            download; reviews, metadata or a .gz table): its cut-off tail counts as one
            ``truncated`` line and meta.json lists the file under ``truncated_files`` (size,
            bytes read, last complete line, lines kept). Default False: such a file stops
            prepare with an error that names it and where it breaks off (download it again).
    """

    source: Literal["amazon2014", "amazon2018", "amazon2023", "tabular"] | None = None
    out: str | None = None
    category: str | None = None
    reviews: list[str] | str | None = None
    meta: str | None = None
    kcore: int = 5
    split: Literal["loo", "temporal"] = "loo"
    valid_start: str | None = None
    test_start: str | None = None
    test_end: str | None = None
    columns: dict[str, str] | None = None
    item_text: str | None = None
    item_attributes: str | None = None
    max_bad_fraction: float = 0.01
    download_dir: str | None = None
    keep_repeats: bool = False
    benchmark: bool = False
    overwrite: bool = False
    report: bool = True
    review_text: bool = False
    allow_truncated: bool = False


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


def _log(msg: str) -> None:
    print(f"mmrec prepare: {msg}", flush=True)


def _parse_time(name: str, value: str | None) -> int | None:
    try:
        return to_unix(value, name=f"--{name}")
    except ValueError as err:
        raise DataError(str(err)) from None


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
    valid, test = (
        _parse_time("valid_start", cfg.valid_start),
        _parse_time("test_start", cfg.test_start),
    )
    if cfg.split == "temporal" and (valid is None or test is None or valid > test):
        raise DataError(
            "--split temporal needs --valid_start and --test_start (ISO dates), "
            "valid_start <= test_start"
        )
    end = _parse_time("test_end", cfg.test_end)
    if end is not None and cfg.split != "temporal":
        raise DataError("--test_end applies to --split temporal only")
    if end is not None and test is not None and end <= test:
        raise DataError(
            f"--test_end {cfg.test_end} must be after --test_start {cfg.test_start} "
            "(valid_start <= test_start < test_end)"
        )
    return valid, test, end


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


_NOT_SETTINGS = (
    "out", "reviews", "meta", "item_text", "item_attributes", "download_dir", "overwrite",
    "report",
)  # fmt: skip
#: Settings added after folders were first fingerprinted: left out while at their default, so a
#: folder prepared before they existed stays valid.
_LATER_SETTINGS = {"review_text": False, "allow_truncated": False, "test_end": None}


def settings(cfg: PrepareConfig) -> dict:
    """The settings that decide what a folder holds (stored in meta.json as ``settings``)."""
    return {
        k: v
        for k, v in dataclasses.asdict(cfg).items()
        if k not in _NOT_SETTINGS and not (k in _LATER_SETTINGS and v == _LATER_SETTINGS[k])
    }


_WHOLE_FILE_HASH = 256 << 20  # inputs up to this size are hashed whole
_SAMPLES, _BLOCK = 16, 1 << 20  # larger ones: 16 blocks of 1 MiB spread over the file


def file_digest(path: Path) -> str:
    """sha256 of a file's content: the whole file up to 256 MiB; above that, of its size and 16
    blocks of 1 MiB spread evenly from the first byte to the last (multi-GB Amazon dumps are
    identified in well under a second). A copy, a move or a fresh clone keeps the digest; an
    edit changes it (above 256 MiB: an edit that keeps the size and misses every block would
    not be seen)."""
    size = path.stat().st_size
    h = hashlib.sha256()
    with open(path, "rb") as f:
        if size <= _WHOLE_FILE_HASH:
            for chunk in iter(lambda: f.read(1 << 22), b""):
                h.update(chunk)
        else:
            h.update(str(size).encode())
            step = (size - _BLOCK) // (_SAMPLES - 1)
            for i in range(_SAMPLES):
                f.seek(i * step)
                h.update(f.read(_BLOCK))
    return h.hexdigest()[:32]


def input_identity(files: list[Path]) -> list[dict]:
    """Each input file's name, size and content digest (stored in meta.json; the modification
    time is kept for information only, since copies and clones change it)."""
    return [
        {
            "file": p.name,
            "path": str(p),
            "size": p.stat().st_size,
            "sha256": file_digest(p),
            "mtime_ns": p.stat().st_mtime_ns,
        }
        for p in files
    ]


def _same_file(now: dict, then: dict) -> bool:
    if now["file"] != then.get("file") or now["size"] != then.get("size"):
        return False
    if "sha256" in then:
        return now["sha256"] == then["sha256"]
    return now["mtime_ns"] == then.get("mtime_ns")  # meta.json of an mmrec before the digest


def _fingerprint(cfg: PrepareConfig, identity: list[dict]) -> str:
    stats = [(f["file"], f["size"], f["sha256"]) for f in identity]
    blob = json.dumps(
        {"params": settings(cfg), "files": stats, "format": FORMAT_VERSION},
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _differences(old: dict, cfg: PrepareConfig, identity: list[dict]) -> list[str]:
    """What differs between a folder's meta.json and the requested settings and inputs
    (empty: the same settings, format and input contents)."""
    if "settings" not in old:
        return ["the folder was prepared by an older mmrec that did not record its settings"]
    now, then = settings(cfg), old["settings"]
    out = [
        f"{key} {then.get(key)!r} -> {now.get(key)!r}"
        for key in sorted(set(now) | set(then))
        if json.dumps(now.get(key), default=str) != json.dumps(then.get(key), default=str)
    ]
    if old.get("version") != FORMAT_VERSION:
        out.append(f"format version {old.get('version')!r} -> {FORMAT_VERSION}")
    before = old.get("input_files", [])
    for f in identity:
        if not any(_same_file(f, b) for b in before):
            out.append(f"input {f['path']} is not the file it was prepared from")
    if len(before) != len(identity):
        out.append(f"{len(before)} input file(s) then, {len(identity)} now")
    return out


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
        split = split_codes(cfg.split, kept.user_idx, kept.ts, valid_ts, test_ts)
        info = _meta_info(cfg, kept, split, input_rows, dropped)
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


def _write_meta(out: Path, info: dict) -> None:
    """meta.json, written last and atomically: a folder without it is incomplete."""
    tmp = out / "meta.json.tmp"
    tmp.write_text(json.dumps(info, indent=2) + "\n")
    os.replace(tmp, out / "meta.json")


def _up_to_date(out: Path, fingerprint: str, cfg: PrepareConfig, identity: list[dict]) -> bool:
    """True when ``out`` holds a finished dataset of these settings and input contents (and no
    overwrite); an error naming what differs when it holds another one and ``overwrite`` is
    off."""
    meta_json = out / "meta.json"
    if meta_json.exists():
        try:
            old = json.loads(meta_json.read_text())
        except ValueError:
            old = {}
        old = old if isinstance(old, dict) else {}
        if old.get("fingerprint") == fingerprint and not cfg.overwrite:
            _log(f"{out} is up to date (fingerprint {fingerprint})")
            return True
        differences = _differences(old, cfg, identity)
        if not differences and not cfg.overwrite:
            # same settings and contents, other paths or times (a copy, a clone, an older
            # meta.json format): record the inputs as they are now
            old |= {"fingerprint": fingerprint, "input_files": identity}
            _write_meta(out, old)
            _log(f"{out} is up to date (inputs identical by content; fingerprint {fingerprint})")
            return True
        if not cfg.overwrite:
            raise DataError(
                f"{out} was prepared from other settings or inputs: "
                f"{'; '.join(differences)}. mmrec never uses a folder made "
                "with other settings: pass --overwrite true (in a training config: "
                "--data.prepare.overwrite true) to prepare it again, or choose another folder "
                "(--out, or --data.data_dir)"
            )
    elif out.exists() and any(out.iterdir()):
        _log(f"{out} has no meta.json (an incomplete earlier run): preparing it again")
    return False


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
