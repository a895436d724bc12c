"""What is embedded per item or review: cleaned item text, image URLs, and their hashes."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

from mmrec.data.items import clean_html

TEXT_RECIPE = "title|brand|categories|description;html-cleaned;v1"


def clean_text(value: object) -> str:
    """Text of a field for embedding: lists joined with spaces, then
    :func:`mmrec.data.items.clean_html`; ``""`` when nothing is left."""
    if value is None:
        return ""
    if isinstance(value, (list, tuple)):
        value = " ".join(clean_text(v) for v in value)
    return clean_html(str(value)) or ""


def item_text(title: object, brand: object, categories: object, description: object) -> str:
    """The text embedded for an item: ``title. Brand: b. Categories: c. description``.

    Empty parts are skipped; CLIP later truncates to its 77-token context, so the most
    telling fields come first.
    """
    parts = [clean_text(title)]
    if b := clean_text(brand):
        parts.append(f"Brand: {b}")
    if c := clean_text(categories):
        parts.append(f"Categories: {c}")
    parts.append(clean_text(description))
    return ". ".join(p for p in parts if p)


def _sha(values: Sequence[object]) -> str:
    h = hashlib.sha256()
    for v in values:
        h.update(json.dumps(v, ensure_ascii=False).encode("utf-8"))
        h.update(b"\n")
    return h.hexdigest()


def load_inputs(data_dir: str | Path, modality: str) -> list:
    """Per-row inputs of a modality, row 0 (padding) excluded.

    ``text``: item texts for items 1..N; ``image``: lists of image URLs for items 1..N;
    ``review``: cleaned review text of every row of ``interactions.parquet`` (row r -> r+1).
    """
    import polars as pl

    data_dir = Path(data_dir)
    if modality == "review":
        df = pl.read_parquet(data_dir / "interactions.parquet", columns=["review"])
        return [clean_text(r) for r in df["review"].to_list()]
    cols = ["item_idx", "title", "brand", "categories", "description", "image_urls"]
    items = pl.read_parquet(data_dir / "items.parquet")
    missing = [c for c in cols if c not in items.columns]
    if missing:
        raise ValueError(f"{data_dir}/items.parquet lacks columns {missing}; rerun `mmrec prepare`")
    items = items.sort("item_idx")
    idx = items["item_idx"].to_list()
    if idx != list(range(1, len(idx) + 1)):
        raise ValueError(f"{data_dir}/items.parquet: item_idx must be exactly 1..N, one row each")
    if modality == "image":
        return [list(u or []) for u in items["image_urls"].to_list()]
    rows = items.select(["title", "brand", "categories", "description"]).iter_rows()
    return [item_text(*r) for r in rows]


def inputs_sha256(inputs: Sequence[object]) -> str:
    """Hash of exactly what a modality embeds (so e.g. a price change does not invalidate)."""
    return _sha(inputs)
