"""Fetching item images: http(s) URLs to public hosts (see urls.py), local files on request;
timeouts, retries, size and type checks; a checksummed disk cache. What a fetch ends in is
outcomes.py; decoding is decode.py, embedding pixels.py."""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tqdm.auto import tqdm

from mmrec.content.decode import (
    MAX_PIXELS,
    check_decodable,
)
from mmrec.content.outcomes import (
    REASONS,
    TRANSIENT,
    UNCACHED,
    FetchReport,
    FetchResult,
)
from mmrec.content.urls import Refused, UrlPolicy, opener, resolve_host

__all__ = [
    "ImageFetcher",
    "amazon_full_size",
    "looks_like_image",
    "url_key",
    # moved to mmrec.content.outcomes, still importable here
    "REASONS",
    "TRANSIENT",
    "UNCACHED",
    "FetchReport",
    "FetchResult",
]

_MAGIC = (
    b"\xff\xd8\xff",  # JPEG
    b"\x89PNG\r\n\x1a\n",
    b"GIF87a",
    b"GIF89a",
    b"BM",
    b"II*\x00",  # TIFF
    b"MM\x00*",
)


def looks_like_image(head: bytes) -> bool:
    """Whether the first bytes carry a known image signature (JPEG, PNG, GIF, WebP, BMP, TIFF)."""
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return True
    return any(head.startswith(m) for m in _MAGIC)


def url_key(url: str) -> str:
    """Cache key of a URL: its SHA-256 hex digest."""
    return hashlib.sha256(url.encode("utf-8")).hexdigest()


class ImageFetcher:
    """Fetch image bytes by URL into an on-disk cache keyed by the URL's SHA-256.

    Image URLs come from downloaded metadata, written by strangers, so by default only http(s)
    URLs whose host resolves to public addresses are requested, every redirect target checked
    again (``UrlPolicy``); local files and loopback/private/link-local hosts are ``refused``
    unless ``allow_local``.

    Successes are cached as ``<cache_dir>/<ab>/<sha>`` with their SHA-256 in ``<sha>.sha256``
    (written first); a cached file whose bytes no longer match (corrupted or replaced on disk)
    is deleted and fetched again, never used (a file cached before checksums existed is kept
    when it starts with an image signature, and its checksum recorded). Permanent failures
    (missing, not_image, too_large, too_many_pixels, corrupt) are cached as ``<sha>.fail`` so a
    rerun does not ask again; transient failures (timeout, http_error, error) and ``refused``
    are decided again on the next run. The URL policy applies to requests: a URL cached by an
    earlier run is served from the cache whatever ``allow_local`` is now.

    Args:
        cache_dir: Directory of the cache (created).
        timeout: Seconds per socket operation (connect, each read) and the total per attempt.
        retries: Extra attempts after a transient failure (timeout, 429, 5xx, connection error).
        backoff: Seconds before the first retry; doubles with each further retry.
        max_bytes: Largest accepted image in bytes; bigger ones are ``too_large``.
        num_workers: Threads fetching in parallel in ``fetch_many``.
        user_agent: ``User-Agent`` header sent with http(s) requests.
        verify_decode: Decode each fetched image with PIL once, so corrupt files are
            counted here (as ``corrupt``) rather than failing later.
        amazon_full_size: Rewrite Amazon thumbnail URLs (``..._SR80,60_.jpg``) to the
            full-size image before fetching (``amazon_full_size``).
        host_fail_limit: After this many consecutive timeouts/connection errors from one
            host (no network, DNS failure), later URLs of that host fail at once as ``error``
            instead of waiting for timeouts and retries; 0 disables.
        allow_local: Also fetch ``file://`` URLs, bare paths and http(s) hosts on loopback,
            private, link-local or other non-public addresses. Off by default: a stranger's
            URL must not reach inside this machine or its network (a router's admin page,
            a cloud metadata service at 169.254.169.254, local files); turn it on for images
            you host yourself.
        max_pixels: Largest accepted width x height, read from the image header before
            anything is decoded; bigger images are ``too_many_pixels`` (decompression bombs:
            a few kilobytes can declare a canvas of gigabytes).
        resolver: Host name -> its addresses, for the URL policy and the connection
            (``resolve_host``, the system resolver).
    """

    def __init__(
        self,
        cache_dir: str | Path,
        timeout: float = 10.0,
        retries: int = 2,
        backoff: float = 0.5,
        max_bytes: int = 20 * 1024 * 1024,
        num_workers: int = 16,
        user_agent: str = "mmrec-embed/0.1 (+https://github.com/)",
        verify_decode: bool = True,
        amazon_full_size: bool = True,
        host_fail_limit: int = 20,
        allow_local: bool = False,
        max_pixels: int = MAX_PIXELS,
        resolver: Callable[[str], Sequence[str]] = resolve_host,
    ) -> None:
        self.cache_dir = Path(cache_dir)
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.max_bytes = max_bytes
        self.num_workers = num_workers
        self.user_agent = user_agent
        self.verify_decode = verify_decode
        self.amazon_full_size = amazon_full_size
        self.host_fail_limit = host_fail_limit
        self.allow_local = allow_local
        self.max_pixels = max_pixels
        self.resolver = resolver
        self._host_fails: Counter = Counter()  # consecutive connection failures per host
        self._lock = threading.Lock()
        self.network_fetches = 0  # attempts that went past the cache (for tests and logs)
        self.cache_mismatches = 0  # cached files that failed their checksum: fetched again

    # ---------------------------------------------------------------- cache
    def _cache_path(self, url: str) -> Path:
        key = url_key(url)
        return self.cache_dir / key[:2] / key

    def _cached(self, url: str) -> FetchResult | None:
        path = self._cache_path(url)
        if path.exists():
            if self._intact(path):
                return FetchResult(url, "ok", path)
            with self._lock:
                self.cache_mismatches += 1
            path.unlink(missing_ok=True)  # corrupted or replaced on disk: fetch it again
            path.with_suffix(".sha256").unlink(missing_ok=True)
            return None
        fail = path.with_suffix(".fail")
        if fail.exists():
            try:
                info = json.loads(fail.read_text())
                return FetchResult(url, info["reason"], None, info.get("detail", "") + " (cached)")
            except (OSError, ValueError, KeyError, TypeError):  # unreadable: ask again
                fail.unlink(missing_ok=True)
        return None

    @classmethod
    def _intact(cls, path: Path) -> bool:
        """Whether a cached file still has the SHA-256 recorded when it was written. A file
        without a record (a cache from before checksums) is kept when it starts with an image
        signature, and its checksum recorded now."""
        digest = path.with_suffix(".sha256")
        try:
            data = path.read_bytes()
            want = digest.read_text().strip() if digest.exists() else None
        except OSError:
            return False
        if want is None:
            if not looks_like_image(data[:16]):
                return False
            cls._write(digest, hashlib.sha256(data).hexdigest().encode())
            return True
        return hashlib.sha256(data).hexdigest() == want

    @staticmethod
    def _write(target: Path, content: bytes) -> None:
        """Write a cache file atomically (a temporary file renamed over ``target``)."""
        tmp = target.with_name(f"{target.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        tmp.write_bytes(content)
        os.replace(tmp, target)

    def _store(self, url: str, data: bytes) -> Path:
        path = self._cache_path(url)
        path.parent.mkdir(parents=True, exist_ok=True)
        # checksum first: a crash in between leaves a checksum that vouches for no old file
        self._write(path.with_suffix(".sha256"), hashlib.sha256(data).hexdigest().encode())
        self._write(path, data)
        return path

    def _store_failure(self, result: FetchResult) -> None:
        if result.retryable or result.reason in UNCACHED or result.reason == "ok":
            return
        fail = self._cache_path(result.url).with_suffix(".fail")
        fail.parent.mkdir(parents=True, exist_ok=True)
        fail.write_text(json.dumps({"reason": result.reason, "detail": result.detail}))

    # ---------------------------------------------------------------- fetch
    def fetch(self, url: str) -> FetchResult:
        """Fetch one URL (cache first); never raises for a bad URL or server."""
        if not url:
            return FetchResult(url, "no_url")
        cached = self._cached(url)
        if cached is not None:
            return cached
        self.network_fetches += 1
        result = self._fetch_with_retries(url)
        if result.reason == "ok" and self.verify_decode:
            bad = check_decodable(result.path, self.max_pixels)
            if bad is not None:
                reason, detail = bad
                result.path.unlink(missing_ok=True)
                result = FetchResult(url, reason, None, detail)
        self._store_failure(result)
        return result

    def _fetch_with_retries(self, url: str) -> FetchResult:
        host = urllib.parse.urlsplit(url).netloc
        limit = self.host_fail_limit
        if limit and host and self._host_fails[host] >= limit:
            msg = f"host {host} skipped after {limit} consecutive connection failures"
            return FetchResult(url, "error", None, msg, retryable=True)
        result = FetchResult(url, "error")
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1))
            result = self._fetch_once(url)
            if not result.retryable:
                break
        with self._lock:
            if result.reason in ("timeout", "error"):
                self._host_fails[host] += 1
            elif result.reason != "refused":  # refused: no connection was made
                self._host_fails[host] = 0
        return result

    def _fetch_once(self, url: str) -> FetchResult:
        policy = UrlPolicy(self.resolver, self.allow_local)
        try:
            refused = policy.refusal(url)
        except (OSError, ValueError) as e:  # DNS failure, offline, a malformed host name
            return FetchResult(url, "error", None, str(e) or type(e).__name__, retryable=True)
        if refused is not None:
            return FetchResult(url, "refused", None, refused)
        if urllib.parse.urlsplit(url).scheme.lower() in ("file", ""):
            return self._fetch_file(url)
        req = urllib.request.Request(url, headers={"User-Agent": self.user_agent})
        deadline = time.monotonic() + self.timeout
        try:
            with opener(policy).open(req, timeout=self.timeout) as resp:
                ctype = (resp.headers.get("Content-Type") or "").split(";")[0].strip().lower()
                if ctype and not ctype.startswith("image/") and ctype != "application/octet-stream":
                    return FetchResult(url, "not_image", None, f"Content-Type {ctype}")
                length = resp.headers.get("Content-Length")
                if length is not None and length.isdigit() and int(length) > self.max_bytes:
                    return FetchResult(url, "too_large", None, f"Content-Length {length}")
                chunks, size = [], 0
                while True:
                    if time.monotonic() > deadline:
                        msg = f"download exceeded {self.timeout}s"
                        return FetchResult(url, "timeout", None, msg, retryable=True)
                    chunk = resp.read(64 * 1024)
                    if not chunk:
                        break
                    size += len(chunk)
                    if size > self.max_bytes:
                        return FetchResult(
                            url, "too_large", None, f"more than {self.max_bytes} bytes"
                        )
                    chunks.append(chunk)
        except urllib.error.HTTPError as e:
            if e.code in (404, 410):
                return FetchResult(url, "missing", None, f"HTTP {e.code}")
            retry = e.code == 429 or e.code >= 500  # other 4xx: asking again will not help
            return FetchResult(url, "http_error", None, f"HTTP {e.code}", retryable=retry)
        except TimeoutError as e:
            return FetchResult(url, "timeout", None, str(e) or "timed out", retryable=True)
        except urllib.error.URLError as e:
            refusal = e if isinstance(e, Refused) else e.reason  # a redirect or connection
            if isinstance(refusal, Refused):
                return FetchResult(url, "refused", None, str(refusal.reason))
            if isinstance(e.reason, TimeoutError):
                return FetchResult(url, "timeout", None, str(e.reason) or "timed out", True)
            return FetchResult(url, "error", None, str(e.reason), retryable=True)
        except (OSError, ValueError) as e:
            return FetchResult(url, "error", None, f"{type(e).__name__}: {e}", retryable=True)
        data = b"".join(chunks)
        if not looks_like_image(data[:16]):
            return FetchResult(url, "not_image", None, "no image signature in the first bytes")
        return FetchResult(url, "ok", self._store(url, data))

    def _fetch_file(self, url: str) -> FetchResult:
        parts = urllib.parse.urlsplit(url)
        path = Path(urllib.request.url2pathname(parts.path)) if parts.scheme else Path(url)
        if not path.is_file():
            return FetchResult(url, "missing", None, f"no file {path}")
        if path.stat().st_size > self.max_bytes:
            return FetchResult(url, "too_large", None, f"{path.stat().st_size} bytes")
        data = path.read_bytes()
        if not looks_like_image(data[:16]):
            return FetchResult(url, "not_image", None, "no image signature in the first bytes")
        return FetchResult(url, "ok", self._store(url, data))

    def fetch_item(self, urls: Sequence[str] | None) -> FetchResult:
        """First URL of an item that yields a usable image; else the first URL's failure."""
        urls = [u for u in (urls or []) if u]
        if self.amazon_full_size:
            urls = [amazon_full_size(u) for u in urls]
        if not urls:
            return FetchResult("", "no_url")
        first: FetchResult | None = None
        for u in urls:
            r = self.fetch(u)
            if r.reason == "ok":
                return r
            first = first or r
        return first

    def fetch_many(
        self, items: Sequence[Sequence[str] | None], desc: str = "fetch images"
    ) -> list[FetchResult]:
        """``fetch_item`` for every entry, in a thread pool, results in input order."""
        if not items:
            return []
        with ThreadPoolExecutor(max_workers=max(1, self.num_workers)) as pool:
            return list(
                tqdm(pool.map(self.fetch_item, items), total=len(items), desc=desc, leave=False)
            )


_AMAZON_MODIFIER = re.compile(r"\._[A-Za-z0-9,_]+_(?=\.[A-Za-z]+$)")


def amazon_full_size(url: str) -> str:
    """Amazon image URLs with a size modifier (``..._SR80,60_.jpg``, ``._SX300_.jpg``, as in the
    2014/2018 metadata) rewritten to the original full-size image; other URLs unchanged."""
    host = urllib.parse.urlsplit(url).netloc
    if "amazon" not in host and "ssl-images" not in host:
        return url
    return _AMAZON_MODIFIER.sub("", url)
