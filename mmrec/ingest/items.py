"""Item metadata: the item table schema, record conversion, item tables and title files,
duplicate records and per-field quality counts. (Official metadata files are read by
``mmrec.ingest.metalines``; the HTML cleaner is :mod:`mmrec.text`.)"""

from __future__ import annotations

import ast
import io
import re
from pathlib import Path

import polars as pl

from mmrec.ingest.errors import DataError
from mmrec.ingest.rawfiles import read_bytes
from mmrec.text import clean_html, clean_html_series

__all__ = [
    "ITEM_SCHEMA",
    "LITERAL_ERRORS",
    "META_KEYS",
    "TEXT_FIELDS",
    "clean_html",
    "clean_html_series",
    "clean_items",
    "item_values",
    "items_frame",
    "merge_item_sources",
    "read_item_attributes",
    "read_item_text",
    "read_meta_table",
    "records_to_items",
]

#: The item table's columns and dtypes (``item_idx`` is added by prepare).
ITEM_SCHEMA = {
    "item_id": pl.String,
    "title": pl.String,
    "description": pl.String,
    "categories": pl.String,
    "brand": pl.String,
    "price": pl.Float32,
    "image_urls": pl.List(pl.String),
}

#: Per release: item column -> metadata keys tried in order (``a.b`` looks inside a dict).
META_KEYS: dict[str, dict[str, tuple[str, ...]]] = {
    "amazon2014": {
        "item_id": ("asin",),
        "title": ("title",),
        "description": ("description",),
        "categories": ("categories",),
        "brand": ("brand",),
        "price": ("price",),
        "image_urls": ("imUrl",),
    },
    "amazon2018": {
        "item_id": ("asin",),
        "title": ("title",),
        "description": ("description",),
        "categories": ("category",),
        "brand": ("brand",),
        "price": ("price",),
        "image_urls": ("imageURLHighRes", "imageURL", "image"),
    },
    "amazon2023": {
        "item_id": ("parent_asin",),
        "title": ("title",),
        "description": ("description",),
        "categories": ("categories", "main_category"),
        "brand": ("store", "details.Brand"),
        "price": ("price",),
        "image_urls": ("images",),
    },
}


def _get(record: dict, key: str):
    value = record
    for part in key.split("."):
        if isinstance(value, str) and value.startswith("{"):
            value = _literal(value)
        value = value.get(part) if isinstance(value, dict) else None
    return value


#: What ``ast.literal_eval`` raises on text that is no Python literal (``TypeError``: an
#: unhashable key such as ``{[1]: 2}``; ``MemoryError``/``RecursionError``: deep nesting).
LITERAL_ERRORS = (ValueError, SyntaxError, TypeError, MemoryError, RecursionError)


def _literal(text: str):
    try:
        return ast.literal_eval(text)
    except LITERAL_ERRORS:
        return text


def _text(value) -> str | None:
    if isinstance(value, str) and value.startswith("[") and value.endswith("]"):
        value = _literal(value)
    if isinstance(value, (list, tuple)):
        value = " ".join(t for t in (_text(v) for v in value) if t)
    return str(value) if value not in (None, "") else None


def _categories(value) -> str | None:
    if isinstance(value, str) and value.startswith("["):
        value = _literal(value)
    if isinstance(value, (list, tuple)):
        if value and all(isinstance(v, (list, tuple)) for v in value):  # 2014: list of paths
            return "; ".join(" > ".join(map(str, path)) for path in value if path) or None
        return " > ".join(str(v) for v in value if v) or None
    return _text(value)


def _price(value) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    match = (
        re.search(r"\d[\d,]*(?:\.\d+)?", value)
        if isinstance(value, str) and len(value) < 40
        else None
    )
    return float(match.group(0).replace(",", "")) if match else None


def _images(value) -> list[str]:
    if isinstance(value, str):
        value = _literal(value) if value.startswith("[") else [value]
    out = []
    for v in value if isinstance(value, (list, tuple)) else []:
        url = (v.get("large") or v.get("hi_res") or v.get("thumb")) if isinstance(v, dict) else v
        if isinstance(url, str) and url:
            out.append(url)
    return out


_CONVERT = {
    "item_id": _text,
    "title": _text,
    "description": _text,
    "categories": _categories,
    "brand": _text,
    "price": _price,
    "image_urls": _images,
}


def item_values(record: dict, keys: dict[str, tuple[str, ...]]) -> tuple:
    """One parsed metadata record's values of the ``ITEM_SCHEMA`` columns (first non-empty key
    wins). Raises ``RecursionError`` for values nested deeper than Python's stack allows."""
    values = []
    for name, convert in _CONVERT.items():
        value = None
        for key in keys[name]:
            value = convert(_get(record, key))
            if value:
                break
        values.append(value)
    return tuple(values)


def records_to_items(records: list[dict], keys: dict[str, tuple[str, ...]]) -> pl.DataFrame:
    """Builds the raw item table from parsed metadata records (first non-empty key wins)."""
    rows = [item_values(record, keys) for record in records]
    return items_frame(rows)


def items_frame(rows: list[tuple]) -> pl.DataFrame:
    """The raw item table of ``item_values`` rows."""
    return pl.DataFrame(rows, schema=ITEM_SCHEMA, orient="row")


def read_meta_table(path: str | Path, keys: dict[str, tuple[str, ...]]) -> pl.DataFrame:
    """Reads item metadata from a csv/parquet table (e.g. the 2023 ``items_meta_filtered.csv``)."""
    path = Path(path)
    try:
        if ".parquet" in path.suffixes:
            frame = pl.read_parquet(path)
        else:
            source = io.BytesIO(read_bytes(path)) if path.suffix == ".gz" else path
            sep = "\t" if ".tsv" in path.suffixes else ","
            frame = pl.read_csv(source, separator=sep, infer_schema=False)
    except pl.exceptions.PolarsError as exc:
        raise DataError(
            f"{path}: cannot read the item table ({str(exc).splitlines()[0]})"
        ) from None
    id_keys = [k for k in (*keys["item_id"], "item_id") if k in frame.columns]
    if not id_keys:
        raise DataError(
            f"{path}: no item id column ({keys['item_id'][0]!r} or 'item_id'); "
            f"columns: {frame.columns}"
        )
    keys = {name: (*ks, name) for name, ks in keys.items()}
    return records_to_items(frame.to_dicts(), keys)


def read_item_text(path: str | Path) -> pl.DataFrame:
    """Reads an item title file, one item a line: ``<item_id> <title words ...>``."""
    path = Path(path)
    data = read_bytes(path)
    if not data.strip():
        raise DataError(f"{path}: the item text file is empty; check --item_text.")
    lines = pl.Series("line", data.decode("utf-8", "replace").splitlines(), dtype=pl.String)
    parts = lines.str.strip_chars().str.splitn(" ", 2)
    frame = pl.DataFrame(
        {"item_id": parts.struct.field("field_0"), "title": parts.struct.field("field_1")}
    )
    frame = frame.filter(pl.col("item_id").is_not_null() & (pl.col("item_id") != ""))
    return frame.select(
        pl.col(name).cast(dtype) if name in frame.columns else pl.lit(None, dtype).alias(name)
        for name, dtype in ITEM_SCHEMA.items()
    )


def read_item_attributes(path: str | Path) -> pl.DataFrame:
    """Reads a table of categorical item attributes: ``item_id`` (from a column ``asin``,
    ``parent_asin`` or ``item_id``) and ``attributes`` (space-separated values; a list column
    is joined), one row per item (the first row of an id wins)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found; check --item_attributes")
    try:
        if ".parquet" in path.suffixes:
            frame = pl.read_parquet(path)
        else:
            sep = "\t" if ".tsv" in path.suffixes else ","
            source = io.BytesIO(read_bytes(path)) if path.suffix == ".gz" else path
            frame = pl.read_csv(source, separator=sep, infer_schema=False)
    except pl.exceptions.PolarsError as exc:
        raise DataError(f"{path}: cannot read the attribute table ({exc})") from None
    id_col = next((c for c in ("asin", "parent_asin", "item_id") if c in frame.columns), None)
    if id_col is None or "attributes" not in frame.columns:
        raise DataError(
            f"{path}: needs an item id column (asin, parent_asin or item_id) and an "
            f"'attributes' column; its columns are {frame.columns}"
        )
    values = pl.col("attributes")
    if frame.schema["attributes"] == pl.List(pl.String):
        values = values.list.join(" ")
    return (
        frame.select(pl.col(id_col).cast(pl.String).alias("item_id"), values.cast(pl.String))
        .with_columns(pl.col("attributes").str.strip_chars().replace("", None))
        .unique("item_id", keep="first", maintain_order=True)
    )


TEXT_FIELDS = ("title", "description", "categories", "brand")


def clean_items(items: pl.DataFrame, quality: dict | None = None) -> pl.DataFrame:
    """Cleans the text columns (``clean_html_series``) and keeps one record per item id.

    Several records for one id (common in 2018 files): the record with the most non-empty
    fields after cleaning (title, description, categories, brand, price, image_urls) is kept,
    the first in the file among equals; the others are counted in ``quality`` as
    ``duplicate_records``. Per text field, ``quality`` also counts the kept records whose field
    was only markup (``markup_only``: it is null now, so text features use the other fields)
    and those holding U+FFFD (``invalid_utf8``: bytes that were not valid UTF-8 in the file,
    or were replaced before it was published).

    Args:
        items: Raw item rows (``ITEM_SCHEMA``, optionally ``_line``), in file order.
        quality: Counts, updated (``duplicate_records``, ``markup_only``, ``invalid_utf8``).
    """
    raw = {c: items[c] for c in TEXT_FIELDS}
    items = items.with_columns(clean_html_series(items[c]) for c in TEXT_FIELDS)
    filled = [pl.col(c).is_not_null() for c in ITEM_SCHEMA if c != "item_id"]
    filled[-1] = pl.col("image_urls").list.len().fill_null(0) > 0
    score = pl.sum_horizontal(filled).alias("_score")
    items = items.with_columns(score, pl.int_range(pl.len()).alias("_order"))
    raw_frame = pl.DataFrame(raw).with_columns(items["_order"])
    best = items.sort(["_score", "_order"], descending=[True, False]).unique(
        "item_id", keep="first", maintain_order=True
    )
    best = best.sort("_order")
    if quality is not None:
        quality["duplicate_records"] = quality.get("duplicate_records", 0) + (
            items.height - best.height
        )
        was = raw_frame.join(best.select("_order"), on="_order", how="semi", maintain_order="left")
        for kind in ("markup_only", "invalid_utf8"):
            quality.setdefault(kind, dict.fromkeys(TEXT_FIELDS, 0))
        for c in TEXT_FIELDS:
            before = was[c]
            text = before.str.strip_chars().str.len_bytes().fill_null(0) > 0
            markup = int((text & best[c].is_null()).sum())
            bad_utf8 = int(before.str.contains("\ufffd", literal=True).fill_null(False).sum())
            quality["markup_only"][c] += markup
            quality["invalid_utf8"][c] += bad_utf8
    return best.drop("_score", "_order", "_line", strict=False)


def merge_item_sources(
    items: pl.DataFrame, sources: list[pl.DataFrame], quality: dict | None = None
) -> tuple[pl.DataFrame, int]:
    """The item table: ``items`` (``item_idx``, ``item_id``) joined with cleaned metadata sources.

    Earlier sources win; later ones fill their gaps (e.g. titles from an item-text file). Only
    kept items are cleaned (``clean_items``, which counts into ``quality``). Returns the table
    (ITEM_SCHEMA columns, one row per item) and the number of items no source describes.
    """
    table = items.with_columns(pl.lit(None, pl.Boolean).alias("_matched"))
    for extra in sources:  # earlier sources win; later ones fill their gaps
        extra = extra.join(
            items.select("item_id"), on="item_id", how="semi"
        )  # clean kept items only
        extra = clean_items(extra, quality).with_columns(pl.lit(True).alias("_matched"))
        table = table.join(extra, on="item_id", how="left", suffix="_new")
        merged = [
            pl.coalesce(c, f"{c}_new").alias(c)
            for c in extra.columns
            if f"{c}_new" in table.columns
        ]
        table = table.with_columns(merged).drop([c for c in table.columns if c.endswith("_new")])
    table = table.with_columns(pl.col("_matched").fill_null(False))
    without_meta = int(table.height - table["_matched"].sum())
    table = table.select(
        pl.col("item_idx").cast(pl.Int32),
        *[
            (pl.col(c) if c in table.columns else pl.lit(None)).cast(t).alias(c)
            for c, t in ITEM_SCHEMA.items()
        ],
    ).with_columns(pl.col("image_urls").fill_null([]))
    return table.sort("item_idx"), without_meta
