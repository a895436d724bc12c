"""The settings of `mmrec prepare` (:class:`PrepareConfig`), which of them decide what a dataset
folder holds, the fingerprint of those settings and the input files' contents, and whether a
folder is up to date: made from them (``meta.json``, written last and atomically)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal

import numpy as np

from mmrec.calendar import DAY, to_unix
from mmrec.ingest.errors import DataError

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
            ``test_start``) are valid. Or a fraction in (0, 1), e.g. 0.8: the UTC day of the
            first event after that fraction of the prepared events (sorted by time, after the
            cleaning, ``test_end`` and the k-core), so that at most that fraction comes before
            it and a config holds for any category's time range; meta.json records the day.
        test_start: ISO date/time (UTC) or a fraction (as ``valid_start``); temporal split:
            events at/after it (and before ``test_end``) are test.
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
    valid_start: str | float | None = None
    test_start: str | float | None = None
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


def _log(msg: str) -> None:
    print(f"mmrec prepare: {msg}", flush=True)


def _parse_time(name: str, value: str | float | None) -> int | None:
    if split_fraction(name, value) is not None:
        return None  # resolved on the data by resolve_starts
    try:
        return to_unix(value, name=f"--{name}")
    except ValueError as err:
        raise DataError(str(err)) from None


def split_fraction(name: str, value: str | float | None) -> float | None:
    """The fraction a temporal start is given as (``0.8`` or ``"0.8"``), or None for a date.

    Raises:
        DataError: a number outside (0, 1) (unix seconds are not accepted here: a date is ISO).
    """
    if value is None or isinstance(value, bool):
        return None
    try:
        q = float(value)
    except ValueError:
        return None  # an ISO date: parsed by _parse_time
    if not 0 < q < 1:
        raise DataError(
            f"--{name} {value}: a number is a fraction of the events, within (0, 1) (0.8: the "
            "day by which 80% of them happened); a date is ISO, e.g. 2014-05-01"
        )
    return q


def check_split(cfg: PrepareConfig) -> tuple[int | None, int | None, int | None]:
    """``(valid_ts, test_ts, test_end_ts)`` of ``cfg`` (None where unset or a fraction).

    Raises:
        DataError: a temporal split without both starts, starts out of order, or a
            ``test_end`` that is not after ``test_start`` or not a date.
    """
    valid, test = (
        _parse_time("valid_start", cfg.valid_start),
        _parse_time("test_start", cfg.test_start),
    )
    fv, ft = (
        split_fraction("valid_start", cfg.valid_start),
        split_fraction("test_start", cfg.test_start),
    )
    if cfg.split == "temporal" and (
        (valid is None and fv is None)
        or (test is None and ft is None)
        or (valid is not None and test is not None and valid > test)
        or (fv is not None and ft is not None and fv > ft)
    ):
        raise DataError(
            "--split temporal needs --valid_start and --test_start (ISO dates or fractions of "
            "the events, e.g. 0.8 and 0.9), valid_start <= test_start"
        )
    if split_fraction("test_end", cfg.test_end) is not None:
        raise DataError(f"--test_end {cfg.test_end}: give a date (ISO), not a fraction")
    end = _parse_time("test_end", cfg.test_end)
    if end is not None and cfg.split != "temporal":
        raise DataError("--test_end applies to --split temporal only")
    if end is not None and test is not None and end <= test:
        raise DataError(
            f"--test_end {cfg.test_end} must be after --test_start {cfg.test_start} "
            "(valid_start <= test_start < test_end)"
        )
    return valid, test, end


def resolve_starts(cfg: PrepareConfig, ts: np.ndarray) -> tuple[PrepareConfig, dict]:
    """``cfg`` with each fraction start replaced by its ISO day on the prepared events ``ts``
    (the UTC day of the event at that fraction), and the fractions (for meta.json); a ``loo``
    split is returned as it is.

    Raises:
        DataError: no events, or the resolved days out of order (a date and a fraction).
    """
    resolved, fractions = {}, {}
    for name in ("valid_start", "test_start") if cfg.split == "temporal" else ():
        q = split_fraction(name, getattr(cfg, name))
        if q is None:
            continue
        if not len(ts):
            raise DataError(f"--{name} {q}: no events left to take a fraction of")
        at = int(np.sort(ts)[min(int(q * len(ts)), len(ts) - 1)]) // DAY * DAY
        resolved[name] = datetime.fromtimestamp(at, timezone.utc).date().isoformat()
        fractions[f"{name}_fraction"] = q
    if not resolved:
        return cfg, {}
    cfg = dataclasses.replace(cfg, **resolved)
    if to_unix(cfg.valid_start) > to_unix(cfg.test_start):
        raise DataError(
            f"--valid_start {cfg.valid_start} is after --test_start {cfg.test_start} (days "
            f"resolved from fractions of the events: {fractions}): valid_start <= test_start"
        )
    return cfg, fractions


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
