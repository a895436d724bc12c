"""Official metadata files (2014 Python dict literals, 2018/2023 JSON lines), read in bounded
memory and for the kept items only: a vectorised id match picks the lines, polars decodes and
converts them in bulk; Python parses only what polars cannot (2014 literals, odd lines)."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import polars as pl

from mmrec.ingest.errors import BadLines, DataError
from mmrec.ingest.items import ITEM_SCHEMA, LITERAL_ERRORS, item_values, items_frame
from mmrec.ingest.lines import LineScan

#: Per release: the JSON keys of ``items.META_KEYS`` with the dtypes of the official files, read
#: in bulk (a line whose values do not fit falls back to Python, line by line).
BULK_SCHEMAS: dict[str, dict[str, pl.DataType]] = {
    "amazon2018": {
        "asin": pl.String,
        "title": pl.String,
        "description": pl.List(pl.String),
        "category": pl.List(pl.String),
        "brand": pl.String,
        "price": pl.String,
        "imageURLHighRes": pl.List(pl.String),
        "imageURL": pl.List(pl.String),
        "image": pl.List(pl.String),
    },
    "amazon2023": {
        "parent_asin": pl.String,
        "title": pl.String,
        "description": pl.List(pl.String),
        "categories": pl.List(pl.String),
        "main_category": pl.String,
        "store": pl.String,
        "details": pl.Struct({"Brand": pl.String}),
        "price": pl.String,
        "images": pl.List(pl.Struct({"large": pl.String, "hi_res": pl.String, "thumb": pl.String})),
    },
}
_SMALL = 64  # lines parsed in Python at once when a frame does not decode in bulk


def _id_pattern(key: str) -> str:
    """A ``key: value`` pair in a JSON line or a Python dict literal."""
    return rf"""["']{key}["']\s*:\s*["']([^"'\\]*)["']"""


def read_meta_lines(
    path: str | Path,
    keys: dict[str, tuple[str, ...]],
    bad: BadLines,
    kept: pl.Series | None = None,
    *,
    allow_truncated: bool = False,
) -> pl.DataFrame:
    """Reads an official metadata file: one record a line, JSON (2018/2023) or a Python dict
    literal (2014, parsed with ``ast.literal_eval``, never ``eval``), in bounded memory.

    With ``kept``, only lines that name a kept item id are decoded (a regex on the raw lines
    finds the id), so a file of millions of items costs one scan, not a parse per record; lines
    where no id is found are parsed to tell malformed lines from records without an id.
    Malformed lines are counted in ``bad`` as ``meta_malformed``. A truncated gzip file is a
    DataError that says where it breaks off, unless ``allow_truncated``: then its complete lines
    are read and its tail is one ``meta_truncated`` bad line.

    Args:
        path: The metadata file (``.gz`` or plain).
        keys: Item column -> keys tried in order (``items.META_KEYS[release]``).
        bad: Collects the malformed lines; its ``total`` counts the data lines.
        kept: The item ids wanted (None: every record).
        allow_truncated: Keep the complete lines of a truncated gzip file.

    Returns:
        The raw item columns (``items.ITEM_SCHEMA``, not cleaned) and ``_line``, one row per
        record of a wanted item, in file order.
    """
    path = Path(path)
    id_key = keys["item_id"][0]
    pattern = _id_pattern(id_key)
    schema = next((s for s in BULK_SCHEMAS.values() if id_key in s and _covers(s, keys)), None)
    wanted = kept.implode() if kept is not None else None
    columns = {}
    if wanted is not None:  # matched inside the scan, in polars' threads
        ids = pl.col("text").str.extract_all(pattern).list.eval(pl.element().str.extract(pattern))
        hit = ids.list.eval(pl.element().is_in(wanted)).list.any() | (ids.list.len() == 0)
        columns["_hit"] = hit
    parts = []
    lines = LineScan(path, columns)
    for frame in lines:
        frame = frame.filter(pl.col("text").is_not_null())
        bad.total += frame.height
        if wanted is not None:
            frame = frame.filter(pl.col("_hit"))
        if frame.height:
            parts.append(_decode(frame, keys, schema, bad))
    if lines.truncation is not None:
        bad.truncate(lines.truncation, "meta_truncated", allow_truncated)
    elif bad.total == 0:
        raise DataError(f"{path}: the metadata file is empty; check --meta or download it again.")
    out = pl.concat(parts) if parts else _empty()
    out = out.filter(pl.col("item_id").is_not_null())
    if kept is not None:
        out = out.filter(pl.col("item_id").is_in(wanted))
    return out


def _covers(schema: dict, keys: dict[str, tuple[str, ...]]) -> bool:
    return all(k.split(".")[0] in schema for ks in keys.values() for k in ks)


def _empty() -> pl.DataFrame:
    return pl.DataFrame(schema={**ITEM_SCHEMA, "_line": pl.UInt64})


def _decode(
    frame: pl.DataFrame, keys: dict[str, tuple[str, ...]], schema: dict | None, bad: BadLines
) -> pl.DataFrame:
    """Item rows of ``frame``'s lines: in bulk when every line decodes with ``schema``; the
    lines of odd shape in Python. A frame that does not decode is halved until the halves do
    (or are small: then Python), so one broken line costs a few small decodes."""
    if schema is None:
        return _python_items(frame, keys, bad)
    try:
        rows = frame["text"].str.json_decode(pl.Struct(schema))
    except pl.exceptions.PolarsError:
        rows = None
    if rows is None or rows.null_count() or len(rows) != frame.height:  # spaces: no row
        if frame.height <= _SMALL:
            return _python_items(frame, keys, bad)
        half = frame.height // 2
        parts = (frame.slice(0, half), frame.slice(half))
        return pl.concat([_decode(part, keys, schema, bad) for part in parts])
    items, odd = _bulk_items(rows.struct.unnest(), keys)
    items = items.with_columns(frame["line"].alias("_line"))
    if not odd.any():
        return items
    slow = _python_items(frame.filter(odd), keys, bad)
    return pl.concat([items.filter(~odd), slow]).sort("_line")


def _python_items(
    frame: pl.DataFrame, keys: dict[str, tuple[str, ...]], bad: BadLines
) -> pl.DataFrame:
    """Item rows of lines parsed one by one (JSON, else a Python dict literal); lines that are
    neither, or nest deeper than the parsers or the conversion go, are ``meta_malformed``."""
    rows, numbers = [], []
    for number, line in zip(frame["line"], frame["text"], strict=True):
        line = line.strip()
        if not line:
            bad.total -= 1
            continue
        record = _parse_record(line)
        if isinstance(record, dict):
            try:
                rows.append(item_values(record, keys))
                numbers.append(number)
                continue
            except RecursionError:
                record = "a value nested deeper than the conversion goes"
        bad.add("meta_malformed", number, f"not a JSON object nor a Python dict literal ({record})")
    return items_frame(rows).with_columns(pl.Series("_line", numbers, dtype=pl.UInt64))


def _parse_record(line: str):
    """A metadata line as JSON, else as a Python literal (never evaluated); the error of the
    literal parse when it is neither (deep nesting included)."""
    try:
        return json.loads(line)
    except (ValueError, RecursionError):
        pass
    try:
        return ast.literal_eval(line)
    except LITERAL_ERRORS as exc:
        return exc if str(exc) else type(exc).__name__


def _odd_text(expr: pl.Expr) -> pl.Expr:
    """Text the Python conversion treats specially: a list written as a string (``"[...]"``)."""
    return expr.str.starts_with("[") & expr.str.ends_with("]")


def _nonempty(expr: pl.Expr) -> pl.Expr:
    return pl.when(expr != "").then(expr)


def _joined(expr: pl.Expr, sep: str) -> pl.Expr:
    """A list of strings joined without its empty entries; null when nothing is left."""
    kept = expr.list.eval(pl.element().filter(pl.element().is_not_null() & (pl.element() != "")))
    return _nonempty(kept.list.join(sep))


def _field(rows: pl.DataFrame, name: str, key: str) -> tuple[pl.Expr, pl.Expr]:
    """One key's value converted as ``items._CONVERT[name]`` does, and where that is not sure."""
    top, _, sub = key.partition(".")
    if top not in rows.columns:
        return pl.lit(None, ITEM_SCHEMA[name]), pl.lit(False)
    col = pl.col(top).struct.field(sub) if sub else pl.col(top)
    dtype = rows.schema[top]
    if sub:
        dtype = {f.name: f.dtype for f in dtype.fields}.get(sub, pl.String)
    odd = pl.lit(False)
    if name == "price":
        text = pl.when(col.str.len_chars() < 40).then(col)
        number = text.str.extract(r"(\d[\d,]*(?:\.\d+)?)", 1).str.replace_all(",", "")
        return number.cast(pl.Float32), odd
    if name == "image_urls":
        if isinstance(dtype, pl.List) and isinstance(dtype.inner, pl.Struct):
            e = pl.element()
            url = pl.coalesce(*(_nonempty(e.struct.field(f)) for f in ("large", "hi_res", "thumb")))
            col = col.list.eval(url)
        urls = col.list.eval(pl.element().filter(pl.element().is_not_null() & (pl.element() != "")))
        return pl.when(urls.list.len() > 0).then(urls), odd
    if isinstance(dtype, pl.List):
        if name == "categories":
            return _joined(col, " > "), odd
        odd = col.list.eval(_odd_text(pl.element())).list.any().fill_null(False)
        return _joined(col, " "), odd
    if name == "categories":  # a string that starts like a list is parsed as one
        return _nonempty(col), col.str.starts_with("[").fill_null(False)
    return _nonempty(col), _odd_text(col).fill_null(False)


def _bulk_items(
    rows: pl.DataFrame, keys: dict[str, tuple[str, ...]]
) -> tuple[pl.DataFrame, pl.Series]:
    """The item columns of decoded records (first non-empty key wins, as ``records_to_items``)
    and a mask of the rows whose conversion only Python does right."""
    columns, odd = [], pl.lit(False)
    for name, dtype in ITEM_SCHEMA.items():
        values = []
        for key in keys[name]:
            value, unsure = _field(rows, name, key)
            values.append(value)
            odd = odd | unsure
        columns.append(pl.coalesce(values).cast(dtype).alias(name))
    out = rows.select(*columns, odd.alias("_odd"))
    return out.drop("_odd"), out["_odd"]
