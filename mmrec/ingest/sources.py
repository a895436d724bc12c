"""Official Amazon review URLs per release and category, and a resumable, size-checked download."""

from __future__ import annotations

import http.client
import json
import os
import re
import sys
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from tqdm.auto import tqdm

from mmrec.ingest.errors import DataError

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


def _log(msg: str) -> None:
    print(f"mmrec download: {msg}", file=sys.stderr, flush=True)


def download(
    url: str,
    dest: str | Path,
    *,
    progress: bool = True,
    timeout: float = 10.0,
    log: Callable[[str], None] = _log,
) -> Path:
    """Downloads ``url`` to ``dest``, resuming a previous ``dest.part`` only when the server still
    has the same file.

    The first response's validator (its strong ``ETag``, else ``Last-Modified``) is kept in
    ``dest.part.json``. A resume sends ``Range`` with ``If-Range: <validator>``: a server whose
    file changed answers 200 (or a 206 with another validator, or at another offset) and the
    download starts over. A ``.part`` without a stored validator is started over rather than
    appended to (its bytes are of unknown origin). The result is size-checked against the
    server's length; when the server sends none, a log line says the size could not be
    checked. An incomplete download keeps its ``.part`` file so the next call resumes it. An
    existing ``dest`` is returned untouched.

    Args:
        url: The file to fetch (http/https).
        dest: Where the finished file goes.
        progress: Show a tqdm progress bar.
        timeout: Seconds to wait for the connection and for each read; offline fails this fast.
        log: Where notes go (starting over, unchecked size); default: stderr.
    """
    dest = Path(dest)
    if dest.exists():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    meta = dest.with_name(dest.name + ".part.json")
    have = part.stat().st_size if part.exists() else 0
    validator = _stored_validator(meta, url) if have else None
    if have and validator is None:
        log(
            f"{part} has {have} bytes but no stored ETag/Last-Modified ({meta.name}): "
            "starting over rather than appending to bytes of unknown origin"
        )
        have = 0
    headers = {"User-Agent": "mmrec"}
    if have:
        headers |= {"Range": f"bytes={have}-", "If-Range": validator}
    request = urllib.request.Request(url, headers=headers)
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as err:
        if err.code == 416 and have:  # nothing left to fetch, unless the file is now shorter
            total = _content_range(err.headers)[2]
            if total is None or total == have:
                return _finish(part, meta, dest)
            log(f"{part} has {have} bytes, more than the {total} of {url}: starting over")
            return _restart(url, dest, part, meta, progress, timeout, log)
        raise _offline_error(url, dest, f"HTTP {err.code} {err.reason}") from None
    except (urllib.error.URLError, OSError) as err:
        raise _offline_error(url, dest, str(getattr(err, "reason", err))) from None
    with response:
        length = response.headers.get("Content-Length")
        if have and response.status == 206:
            start, _, total = _content_range(response.headers)
            now = _validator(response.headers)
            if start != have or (now is not None and now != validator):
                response.close()
                log(
                    f"{url} answered a range at byte {start} with validator {now!r}, not byte "
                    f"{have} of {validator!r}: starting {part} over"
                )
                return _restart(url, dest, part, meta, progress, timeout, log)
            total = total if total is not None else (have + int(length) if length else None)
            mode = "ab"
        else:  # a fresh download, or the file changed (If-Range failed), or Range ignored
            if have:
                log(f"{url} changed since {part} was started (or ignores Range): starting over")
            have, total, mode = 0, int(length) if length else None, "wb"
            now = _validator(response.headers)
            if now is None:
                meta.unlink(missing_ok=True)  # an interrupted download will start over
            else:
                meta.write_text(json.dumps({"url": url, "validator": now}))
        if total is None:
            log(
                f"{url} sent no Content-Length: the size of {dest.name} cannot be checked, "
                "a cut-off download would go unnoticed"
            )
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
    return _finish(part, meta, dest)


def _validator(headers) -> str | None:
    """The response's validator for ``If-Range``: a strong ``ETag`` (a weak one may not be
    used), else ``Last-Modified``; None when it has neither."""
    etag = headers.get("ETag")
    if etag and not etag.startswith("W/"):
        return etag
    return headers.get("Last-Modified")


def _stored_validator(meta: Path, url: str) -> str | None:
    """The validator kept for a ``.part`` file of ``url``; None when missing, unreadable or
    kept for another URL."""
    try:
        data = json.loads(meta.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("url") != url:
        return None
    validator = data.get("validator")
    return validator if isinstance(validator, str) and validator else None


def _content_range(headers) -> tuple[int | None, int | None, int | None]:
    """``(first byte, last byte, total)`` of a ``Content-Range`` header (None where absent or
    ``*``)."""
    match = re.fullmatch(
        r"\s*bytes\s+(?:(\d+)-(\d+)|\*)/(\d+|\*)\s*", headers.get("Content-Range") or ""
    )
    if match is None:
        return None, None, None
    first, last, total = (int(g) if g and g.isdigit() else None for g in match.groups())
    return first, last, total


def _restart(url, dest, part, meta, progress, timeout, log) -> Path:
    """Drop the ``.part`` file and its validator and download from byte 0."""
    part.unlink(missing_ok=True)
    meta.unlink(missing_ok=True)
    return download(url, dest, progress=progress, timeout=timeout, log=log)


def _finish(part: Path, meta: Path, dest: Path) -> Path:
    os.replace(part, dest)
    meta.unlink(missing_ok=True)
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
