"""Synthetic item content: categories, seasonal groups, titles, descriptions, images, reviews."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl

#: Category name, image colour (RGB) and image shape; item ``i`` carries its category in its
#: title, description, ``categories`` and image.
CATEGORIES = (
    ("lipstick", (200, 30, 60), "circle"),
    ("shampoo", (30, 120, 200), "square"),
    ("perfume", (150, 60, 190), "triangle"),
    ("nail polish", (230, 120, 20), "diamond"),
    ("sunscreen", (240, 210, 30), "hbars"),
    ("moisturizer", (40, 170, 90), "vbars"),
    ("mascara", (40, 40, 40), "cross"),
    ("hair dryer", (120, 90, 60), "ring"),
)
#: Seasonal item groups: (first month, first day) .. (last month, last day), inclusive.
SEASONS = {
    "christmas": ((12, 1), (12, 24)),
    "valentine": ((2, 1), (2, 14)),
    "summer": ((6, 1), (8, 31)),
}
_ADJ = ("silky", "radiant", "gentle", "luxury", "natural", "matte", "classic", "fresh")
_BRANDS = ("Lumina", "Aurel", "Verda", "Nocturne", "Petalia", "Orris", "Calyx", "Solenne")
_SEASON_WORDS = {
    "christmas": "christmas holiday gift set",
    "valentine": "valentine's day edition",
    "summer": "summer beach edition",
}


def make_item_image(item_idx: int, category: str | int, size: int = 32):
    """A small PNG-able image whose colour and shape identify the item's category.

    Args:
        item_idx: The item (seeds a small per-item jitter of background and position).
        category: A name of ``CATEGORIES`` or its index (unknown names hash to one).
        size: Width and height in pixels.

    Returns:
        A ``PIL.Image.Image`` in RGB mode.
    """
    from PIL import Image, ImageDraw

    names = [c[0] for c in CATEGORIES]
    if isinstance(category, str):
        c = names.index(category) if category in names else sum(category.encode()) % len(names)
    else:
        c = int(category) % len(names)
    _, colour, shape = CATEGORIES[c]
    rng = np.random.default_rng(int(item_idx))
    bg = tuple(int(v) for v in 225 + rng.integers(0, 30, 3))
    img = Image.new("RGB", (size, size), bg)
    d = ImageDraw.Draw(img)
    j = int(rng.integers(-size // 16, size // 16 + 1))
    lo, hi, mid = size // 5 + j, size - size // 5 + j, size // 2 + j
    if shape == "circle":
        d.ellipse([lo, lo, hi, hi], fill=colour)
    elif shape == "square":
        d.rectangle([lo, lo, hi, hi], fill=colour)
    elif shape == "triangle":
        d.polygon([(mid, lo), (hi, hi), (lo, hi)], fill=colour)
    elif shape == "diamond":
        d.polygon([(mid, lo), (hi, mid), (mid, hi), (lo, mid)], fill=colour)
    elif shape == "hbars":
        for y in range(lo, hi, max(size // 8, 2)):
            d.rectangle([lo, y, hi, y + max(size // 16, 1)], fill=colour)
    elif shape == "vbars":
        for x in range(lo, hi, max(size // 8, 2)):
            d.rectangle([x, lo, x + max(size // 16, 1), hi], fill=colour)
    elif shape == "cross":
        w = max(size // 10, 1)
        d.rectangle([mid - w, lo, mid + w, hi], fill=colour)
        d.rectangle([lo, mid - w, hi, mid + w], fill=colour)
    else:
        d.ellipse([lo, lo, hi, hi], outline=colour, width=max(size // 10, 1))
    return img


def review_texts(items: np.ndarray, cat: np.ndarray, rating: np.ndarray) -> pl.Series:
    words = np.array(["awful", "poor", "okay", "good", "excellent"])[rating.astype(np.int64) - 1]
    names = np.array([c[0] for c in CATEGORIES])[cat[items]]
    return pl.Series(np.char.add(np.char.add(words.astype(str), " "), names.astype(str)))


def item_table(out: Path, cat, season, rng, with_images: bool, image_size: int) -> pl.DataFrame:
    N = len(cat) - 1
    idx = np.arange(1, N + 1)
    name = np.array([c[0] for c in CATEGORIES])[cat[1:]]
    season_name = np.array([*SEASONS, ""], dtype=object)[season[1:]]
    df = pl.DataFrame(
        {
            "item_idx": idx.astype(np.int32),
            "cat": name,
            "adj": np.array(_ADJ)[rng.integers(0, len(_ADJ), N)],
            "brand": np.array(_BRANDS)[rng.integers(0, len(_BRANDS), N)],
            "price": np.round(rng.lognormal(2.7, 0.6, N), 2).astype(np.float32),
            "season": pl.Series(season_name.tolist(), dtype=pl.String),
        }
    ).with_columns(pl.when(pl.col("season") == "").then(None).otherwise("season").alias("season"))
    sw = pl.col("season").replace_strict(_SEASON_WORDS, default="", return_dtype=pl.String)
    if with_images:
        img_dir = out / "images"
        img_dir.mkdir(exist_ok=True)
        urls = []
        for i, c in zip(idx.tolist(), cat[1:].tolist(), strict=True):
            path = img_dir / f"{i}.png"
            make_item_image(i, c, image_size).save(path)
            urls.append([path.resolve().as_uri()])
        images = pl.Series("image_urls", urls, dtype=pl.List(pl.String))
    else:
        images = pl.Series("image_urls", [[]] * N, dtype=pl.List(pl.String))
    return df.select(
        "item_idx",
        pl.format("S{}", pl.col("item_idx").cast(pl.String).str.zfill(9)).alias("item_id"),
        pl.concat_str(["brand", "adj", "cat", sw], separator=" ").str.strip_chars().alias("title"),
        pl.format(
            "A {} {} by {}, made for everyday {} lovers. {}", "adj", "cat", "brand", "cat", sw
        )
        .str.strip_chars()
        .alias("description"),
        pl.format("Beauty > {}", pl.col("cat").str.to_titlecase()).alias("categories"),
        "brand",
        "price",
        images,
        "season",
    )
