"""Raw Amazon review and metadata files in each release's real format (2014, 2018, 2023), seeded.

What ``mmrec prepare`` meets in the official files, at any size: item-grouped review lines with
the real fields and key order, heavy-tailed users and items, exact duplicate reviews, repeated
reviews, missing fields, a few broken lines, out-of-range timestamps; metadata with HTML
debris (whole titles that are only a cut-off ``<span ...`` tag), entities, missing fields,
several records for one ASIN, invalid UTF-8 bytes, and items without metadata. Review lines are
built with polars column expressions (20M lines in a few minutes), metadata record by record.
Used by ``benchmarks/data_prepare.py`` (big files, in a temporary folder) and by tests (tiny).
"""

from __future__ import annotations

import io
import json
import queue
import threading
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl

from mmrec.synthetic.raw_reviews import _plan, _review_frame

__all__ = ["RawFiles", "write_raw_files", "FRAGMENT_TITLE"]

RELEASES = ("amazon2014", "amazon2018", "amazon2023")
#: The whole-field HTML debris of some 2018 metadata titles: a tag cut off before its ``>``.
FRAGMENT_TITLE = '<span class="a-size-medium a-color-secondary"'
_WORDS = (
    "great product love it works well fast shipping quality price smell skin hair soft color "
    "size fits perfect gift daughter recommend again cheap broke after week disappointed "
    "excellent value money stars good nice bought use daily sensitive light scent bottle "
    "package arrived quickly easy return would buy cream lotion brush battery cable screen "
    "sound charger book story author pages read characters plot kitchen pan handle sturdy "
    "dress shirt fabric comfortable wash"
).split()
_CHUNK = 500_000  # review lines built per polars frame


@dataclass
class RawFiles:
    """What ``write_raw_files`` wrote and what it planted (expected counts for tests).

    Attributes:
        reviews: The review file.
        meta: The metadata file.
        lines: Review lines written (good and bad).
        planted: Count of each planted quirk (``duplicate``, ``broken``, ``no_user``,
            ``time_out_of_range``, ``meta_fragment_title``, ``meta_duplicate_asin``,
            ``meta_invalid_utf8``, ``meta_broken``...).
    """

    reviews: Path
    meta: Path | None
    lines: int
    planted: dict[str, int] = field(default_factory=dict)


class _Gzip:
    """A gzip file written with zlib at level 1 in a background thread (zlib releases the GIL),
    so that compressing overlaps building the next lines: the benchmark's big files are made
    fast."""

    def __init__(self, path: Path, level: int = 1) -> None:
        self.fh = open(path, "wb")
        self.z = zlib.compressobj(level, zlib.DEFLATED, 31)
        self.queue: queue.Queue = queue.Queue(maxsize=2)
        self.worker = threading.Thread(target=self._run, daemon=True)
        self.worker.start()

    def _run(self) -> None:
        while (data := self.queue.get()) is not None:
            self.fh.write(self.z.compress(data))
        self.fh.write(self.z.flush())
        self.fh.close()

    def write(self, data: bytes) -> None:
        self.queue.put(data)

    def close(self) -> None:
        self.queue.put(None)
        self.worker.join()


def _open(path: Path):
    if path.suffix == ".gz":
        return _Gzip(path)
    return open(path, "wb")


def _ids(prefix: str, n: int, width: int, seed: int) -> pl.Series:
    """``n`` distinct id strings like real reviewer ids / ASINs: prefix + base-36 digits."""
    alphabet = np.frombuffer(b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ", dtype=np.uint8)
    digits = np.empty((n, width), dtype=np.uint8)
    i = np.arange(n, dtype=np.uint64)
    # bijective scrambles of 0..n-1 (odd multipliers not divisible by 3 are units mod 36**k)
    for lo, mult in ((0, 2654435761), (12, 40503)):
        w = min(width - lo, 12)
        if w <= 0:
            break
        k = (i * np.uint64(mult) + np.uint64(seed)) % np.uint64(36**w)
        for d in range(width - lo - 1, width - lo - w - 1, -1):
            digits[:, d] = alphabet[(k % np.uint64(36)).astype(np.int64)]
            k //= np.uint64(36)
    if width > 24:
        digits[:, : width - 24] = alphabet[(i % np.uint64(36)).astype(np.int64)][:, None]
    raw = np.frombuffer(digits.tobytes(), dtype=f"S{width}").astype(str)
    return pl.Series(raw).str.replace(r"^", prefix)


def _texts(rng: np.random.Generator, n: int, mean_words: float, escapes: bool) -> list[str]:
    """``n`` JSON string literals (quotes included) of random words, heavy-tailed lengths."""
    out = []
    lengths = np.clip(rng.lognormal(np.log(mean_words), 0.9, n).astype(int), 1, 2000)
    for length in lengths:
        words = [_WORDS[j] for j in rng.integers(0, len(_WORDS), length)]
        if escapes and rng.random() < 0.2:
            words.insert(int(rng.integers(0, len(words) + 1)), 'd\u00e9j\u00e0 "vu"\n\U0001f600')
        out.append(json.dumps(" ".join(words).capitalize()))
    return out


def _meta_record(release: str, asin: str, rng: np.random.Generator, title_words: list[str],
                 variant: int) -> dict:  # fmt: skip
    """One metadata record with the release's real fields (JSON-able)."""
    title = " ".join(title_words).title()
    words = [_WORDS[j] for j in rng.integers(0, len(_WORDS), int(rng.integers(5, 60)))]
    description = " ".join(words).capitalize() + "."
    brand = f"Brand{int(rng.integers(0, 5000))}"
    price = round(float(rng.lognormal(2.8, 0.8)), 2)
    urls = [
        f"https://images-na.ssl-images-amazon.com/images/I/{asin}{j}._SX38_SY50_.jpg"
        for j in range(int(rng.integers(0, 4)))
    ]
    related = [f"B0{int(x):08d}" for x in rng.integers(0, 10**8, int(rng.integers(0, 40)))]
    if release == "amazon2014":
        rec = {
            "asin": asin,
            "description": description,
            "title": title,
            "price": price,
            "imUrl": urls[0] if urls else None,
            "related": {"also_bought": related[:20], "bought_together": related[20:22]},
            "salesRank": {"Beauty": int(rng.integers(1, 10**6))},
            "categories": [["Beauty", "Skin Care", "Face"], ["Beauty", "Makeup"]][: 1 + variant],
            "brand": brand,
        }
    elif release == "amazon2018":
        rec = {
            "category": ["Beauty & Personal Care", "Skin Care", "Face"],
            "tech1": "",
            "description": [description, f"<b>{words[0]}</b> &amp; more"],
            "fit": "",
            "title": title,
            "also_buy": related[:20],
            "image": urls,
            "tech2": "",
            "brand": brand,
            "feature": [" ".join(words[:8])],
            "rank": f"{int(rng.integers(1, 10**6)):,} in Beauty & Personal Care (",
            "also_view": related[20:],
            "details": {"\n    Product Dimensions: \n    ": "3.4 x 2.1 inches", "ASIN: ": asin},
            "main_cat": "All Beauty",
            "similar_item": "",
            "date": "",
            "price": f"${price:,.2f}",
            "asin": asin,
        }
    else:
        rec = {
            "main_category": "All Beauty",
            "title": title,
            "average_rating": round(float(rng.uniform(1, 5)), 1),
            "rating_number": int(rng.integers(1, 5000)),
            "features": [" ".join(words[:8])],
            "description": [description],
            "price": price if rng.random() < 0.7 else None,
            "images": [
                {
                    "thumb": u,
                    "large": u.replace("_SX38_SY50_", "_SL1500_"),
                    "variant": "MAIN",
                    "hi_res": None,
                }
                for u in urls
            ],  # fmt: skip
            "videos": [],
            "store": brand,
            "categories": [],
            "details": {"Package Dimensions": "7.1 x 5.5 x 3 inches", "Brand": brand},
            "parent_asin": asin,
            "bought_together": None,
        }
    return rec


def _meta_line(release: str, rec: dict) -> bytes:
    if release == "amazon2014":
        return repr(rec).encode()  # a Python dict literal, as the 2014 files are
    return json.dumps(rec).encode()


def _write_meta(path: Path, release: str, item_ids: pl.Series, rng: np.random.Generator,
                planted: dict[str, int]) -> None:  # fmt: skip
    """One record per item (some items none, some two), extra unreviewed items, and quirks."""
    out = _open(path)
    n = len(item_ids)
    ids = item_ids.to_list() + _ids("X0", n // 10 + 1, 8, 7).to_list()  # + unreviewed items
    order = rng.permutation(len(ids))
    keys = ("fragment_title", "entity_title", "duplicate_asin", "invalid_utf8", "broken",
            "no_title", "no_meta")  # fmt: skip
    for key in keys:
        planted[f"meta_{key}"] = 0
    buf = io.BytesIO()
    for pos, j in enumerate(order):
        asin = ids[j]
        u = rng.random(8)
        if j < n and u[0] < 0.003:  # reviewed item without any metadata
            planted["meta_no_meta"] += 1
            continue
        title_words = [_WORDS[t] for t in rng.integers(0, len(_WORDS), int(rng.integers(2, 9)))]
        rec = _meta_record(release, asin, rng, title_words, pos % 2)
        if u[1] < 0.03 and release == "amazon2018":  # the 2018 debris: the title is one tag
            rec["title"] = FRAGMENT_TITLE
            planted["meta_fragment_title"] += j < n
        elif u[1] < 0.06:
            rec["title"] = rec["title"] + " &amp; <i>Co</i>"
            planted["meta_entity_title"] += j < n
        elif u[1] < 0.08:
            del rec["title"]
            planted["meta_no_title"] += j < n
        line = _meta_line(release, rec)
        if u[2] < 0.001 and "title" in rec and rec["title"] != FRAGMENT_TITLE:
            # invalid UTF-8: a Latin-1 byte inside the title (the file's bytes, not JSON escapes)
            line = line.replace(b'"title": "' if release != "amazon2014" else b"'title': '",
                                (b'"title": "' if release != "amazon2014" else b"'title': '")
                                + b"Caf\xe9 ", 1)  # fmt: skip
            planted["meta_invalid_utf8"] += j < n
        if u[3] < 2e-5:
            line = line[: len(line) // 2]
            planted["meta_broken"] += 1
        buf.write(line + b"\n")
        if u[4] < 0.02 and j < n:  # a second record for the same ASIN, less complete
            again = dict(rec)
            again.pop("brand", None)
            again.pop("store", None)
            buf.write(_meta_line(release, again) + b"\n")
            planted["meta_duplicate_asin"] += 1
        if buf.tell() > 1 << 24:
            out.write(buf.getvalue())
            buf = io.BytesIO()
    out.write(buf.getvalue())
    out.close()


def write_raw_files(folder: str | Path, release: str, num_reviews: int, seed: int = 0, *,
                    gzip: bool = True, num_users: int | None = None,
                    num_items: int | None = None, broken: bool = True,
                    meta: bool = True) -> RawFiles:  # fmt: skip
    """Writes a review file and a metadata file of ``release`` in its official format.

    File names follow the official ones: 2014 ``reviews_Synthetic_5.json.gz`` +
    ``meta_Synthetic.json.gz``, 2018 ``Synthetic_5.json.gz`` + ``meta_Synthetic.json.gz``, 2023
    ``Synthetic.jsonl.gz`` + ``meta_Synthetic.jsonl.gz``.

    Args:
        folder: Where the files go (created).
        release: ``amazon2014``, ``amazon2018`` or ``amazon2023``.
        num_reviews: Review lines to write.
        seed: Seed of every draw: same arguments, same bytes.
        gzip: Gzip both files (as the official ones are).
        num_users: Distinct reviewers (default ``num_reviews // 4``).
        num_items: Distinct reviewed items (default ``num_reviews // 20``).
        broken: Write the few broken review lines (False: those lines whole, the rest
            identical: the twin file a plain ``polars.scan_ndjson`` can read).
        meta: Write the metadata file too.
    """
    if release not in RELEASES:
        raise ValueError(f"release must be one of {RELEASES}, got {release!r}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    gz = ".gz" if gzip else ""
    names = {
        "amazon2014": ("reviews_Synthetic_5.json", "meta_Synthetic.json"),
        "amazon2018": ("Synthetic_5.json", "meta_Synthetic.json"),
        "amazon2023": ("Synthetic.jsonl", "meta_Synthetic.jsonl"),
    }[release]
    reviews = folder / (names[0] + gz)
    meta = folder / (names[1] + gz) if meta else None
    rng = np.random.default_rng(seed)
    n_users = num_users or max(2, num_reviews // 4)
    n_items = num_items or max(2, num_reviews // 20)
    last = {"amazon2014": "2014-07-23", "amazon2018": "2018-10-02", "amazon2023": "2023-09-01"}
    last_day = int(np.datetime64(last[release]).astype("datetime64[D]").astype(np.int64))
    first_day = int(np.datetime64("1999-01-01").astype("datetime64[D]").astype(np.int64))
    planted: dict[str, int] = {}
    pool = pl.Series(_texts(rng, 4096, 24, escapes=True))
    summaries = pl.Series(_texts(rng, 512, 3, escapes=False))
    plan = _plan(rng, num_reviews, n_users, n_items, first_day, last_day, len(pool), planted)
    prefix, width = ("AG", 26) if release == "amazon2023" else ("A", 13)
    users = _ids(prefix, n_users, width, seed + 1)
    items = _ids("B0", n_items, 8, seed + 2)
    out = _open(reviews)
    for lo in range(0, num_reviews, _CHUNK):
        hi = min(num_reviews, lo + _CHUNK)
        lines = _review_frame(release, plan, lo, hi, users, items, pool, summaries, broken)
        buf = io.BytesIO()
        lines.to_frame().write_csv(buf, include_header=False, quote_style="never")
        out.write(buf.getvalue())
    out.close()
    if meta is not None:
        _write_meta(meta, release, items, rng, planted)
    return RawFiles(reviews, meta, num_reviews, {k: int(v) for k, v in planted.items()})
