"""Official Amazon review URLs per release and category, and a resumable, size-checked download."""

from __future__ import annotations

import http.client
import os
import re
import urllib.error
import urllib.request
from pathlib import Path

from tqdm.auto import tqdm

from mmrec.data.errors import DataError

_SNAP = "https://snap.stanford.edu/data/amazon/productGraph/categoryFiles"
_UCSD = "https://datarepo.eng.ucsd.edu/mcauley_group/data"

#: (release, kind) -> URL templates; ``{category}`` is e.g. ``Beauty`` / ``Gift_Cards`` /
#: ``All_Beauty``.
OFFICIAL_URLS: dict[tuple[str, str], tuple[str, ...]] = {
    ("amazon2014", "reviews"): (f"{_SNAP}/reviews_{{category}}_5.json.gz",),
    ("amazon2014", "meta"): (f"{_SNAP}/meta_{{category}}.json.gz",),
    ("amazon2018", "reviews"): (f"{_UCSD}/amazon_v2/categoryFilesSmall/{{category}}_5.json.gz",),
    ("amazon2018", "meta"): (f"{_UCSD}/amazon_v2/metaFiles2/meta_{{category}}.json.gz",),
    ("amazon2023", "reviews"): (
        f"{_UCSD}/amazon_2023/raw/review_categories/{{category}}.jsonl.gz",
    ),
    ("amazon2023", "meta"): (
        f"{_UCSD}/amazon_2023/raw/meta_categories/meta_{{category}}.jsonl.gz",
    ),
    ("amazon2023", "benchmark"): tuple(
        f"{_UCSD}/amazon_2023/benchmark/5core/last_out_w_his/{{category}}.{split}.csv.gz"
        for split in ("train", "valid", "test")
    ),
}


def official_urls(release: str, kind: str, category: str) -> list[str]:
    """The official URL(s) of one file kind of a release and category.

    Args:
        release: ``amazon2014``, ``amazon2018`` or ``amazon2023``.
        kind: ``reviews``, ``meta`` or (2023 only) ``benchmark`` (the 5-core train/valid/test CSVs).
        category: Category name as spelled in the official file names (``Beauty``, ``Gift_Cards``).
    """
    if (release, kind) not in OFFICIAL_URLS:
        known = ", ".join(f"{r}/{k}" for r, k in OFFICIAL_URLS)
        raise DataError(f"no official {kind!r} file for source {release!r}; known: {known}")
    if not category or not re.fullmatch(r"[A-Za-z0-9_&-]+", category):
        raise DataError(
            f"category {category!r} is not a valid Amazon category file name "
            "(e.g. Beauty, Gift_Cards, All_Beauty): pass --category"
        )
    return [u.format(category=category) for u in OFFICIAL_URLS[(release, kind)]]


def download(url: str, dest: str | Path, *, progress: bool = True, timeout: float = 10.0) -> Path:
    """Downloads ``url`` to ``dest``, resuming a previous ``dest.part`` with an HTTP Range request.

    The result is size-checked against the server's length; an incomplete download keeps its
    ``.part`` file so the next call resumes it. An existing ``dest`` is returned untouched.

    Args:
        url: The file to fetch (http/https).
        dest: Where the finished file goes.
        progress: Show a tqdm progress bar.
        timeout: Seconds to wait for the connection and for each read; offline fails this fast.
    """
    dest = Path(dest)
    if dest.exists():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    have = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": "mmrec", **({"Range": f"bytes={have}-"} if have else {})}
    request = urllib.request.Request(url, headers=headers)
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as err:
        if err.code == 416 and have:  # nothing left to fetch: the .part file is complete
            os.replace(part, dest)
            return dest
        raise _offline_error(url, dest, f"HTTP {err.code} {err.reason}") from None
    except (urllib.error.URLError, OSError) as err:
        raise _offline_error(url, dest, str(getattr(err, "reason", err))) from None
    with response:
        length = response.headers.get("Content-Length")
        if response.status == 206:
            match = re.search(r"/(\d+)\s*$", response.headers.get("Content-Range", ""))
            total = int(match.group(1)) if match else (have + int(length) if length else None)
            mode = "ab"
        else:  # the server ignored the Range header: start over
            have, total, mode = 0, int(length) if length else None, "wb"
        try:
            with (
                open(part, mode) as fh,
                tqdm(
                    total=total,
                    initial=have,
                    unit="B",
                    unit_scale=True,
                    desc=dest.name,
                    disable=not progress,
                ) as bar,
            ):
                while chunk := response.read(1 << 20):
                    fh.write(chunk)
                    bar.update(len(chunk))
        except (TimeoutError, http.client.IncompleteRead, OSError) as err:
            raise DataError(
                f"download of {url} was interrupted ({err}); {part} keeps what arrived: "
                "run the same command again to resume."
            ) from None
    size = part.stat().st_size
    if total is not None and size != total:
        raise DataError(
            f"download of {url} is incomplete: {size} of {total} bytes in {part}; "
            "run the same command again to resume."
        )
    os.replace(part, dest)
    return dest


def _offline_error(url: str, dest: Path, reason: str) -> DataError:
    return DataError(
        f"could not download {url} ({reason}). If this machine is offline, download the file "
        f"elsewhere and put it at {dest} (or pass the local file with --reviews / --meta)."
    )


def fetch(
    release: str, kind: str, category: str, download_dir: str | Path, *, progress: bool = True
) -> list[Path]:
    """Downloads (or finds already downloaded) one kind's official files into ``download_dir``."""
    return [
        download(url, Path(download_dir) / url.rsplit("/", 1)[1], progress=progress)
        for url in official_urls(release, kind, category)
    ]
