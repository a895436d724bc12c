"""Item images: fetching (http(s) URLs to public hosts, local files on request, timeouts, retries,
size and type checks, a checksummed disk cache), decoding (pixel limit, PIL checks, batched
torchvision JPEG decoding with CLIP's preprocessing), embedding."""

from __future__ import annotations

import hashlib
import http.client
import ipaddress
import json
import os
import re
import socket
import struct
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from tqdm.auto import tqdm

if TYPE_CHECKING:
    from PIL.Image import Image as PILImage
    from torch import Tensor

    from mmrec.content.models import ImageContentModel

#: Every outcome an image fetch can have; ``ok`` is the only success.
REASONS = (
    "ok",  # fetched (or cached) and decodable
    "no_url",  # the item lists no image URL
    "missing",  # 404/410 or a file:// path that does not exist
    "http_error",  # any other HTTP status after retries
    "timeout",  # no answer within ``timeout`` seconds, after retries
    "too_large",  # larger than ``max_bytes`` (Content-Length or bytes read)
    "not_image",  # server said it is not an image, or the bytes are no known image format
    "corrupt",  # looks like an image but PIL cannot decode it
    # the URL (or a redirect) leads to a local file, a loopback/private/link-local/... host or
    # a scheme other than http(s), and ``allow_local`` is off: never requested
    "refused",
    # width x height (read from the header, nothing decoded) above ``max_pixels``: a
    # decompression bomb, a small file that would decode to gigabytes
    "too_many_pixels",
    "error",  # connection refused, DNS failure...
)
#: Outcomes worth retrying on a later run (never cached as failures).
TRANSIENT = frozenset({"timeout", "http_error", "error"})
#: Outcomes decided by this run's settings (``allow_local``) and DNS, never cached as failures.
UNCACHED = TRANSIENT | {"refused"}

#: Default pixel limit: PIL's own warning threshold (``PIL.Image.MAX_IMAGE_PIXELS``, about
#: 89.5 megapixels; a 3000x3000 product photo has 9).
MAX_PIXELS = 89_478_485

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


# ---------------------------------------------------------------- which URLs may be fetched
def resolve_host(host: str) -> list[str]:
    """The addresses ``host`` resolves to with the system resolver (an IP literal: itself).

    Raises:
        OSError: The name cannot be resolved (``socket.gaierror``).
    """
    infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def is_public_address(address: str) -> bool:
    """Whether an IPv4/IPv6 address is a public unicast one: not loopback, private (RFC 1918,
    unique-local), link-local, multicast, reserved, unspecified or shared (CGNAT); IPv4 mapped
    into IPv6 (``::ffff:a.b.c.d``, 6to4) is judged by the IPv4 address it carries."""
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = ip.ipv4_mapped if ip.ipv4_mapped is not None else ip.sixtofour
        if embedded is not None:
            return is_public_address(str(embedded))
    return ip.is_global and not (
        ip.is_loopback
        or ip.is_private
        or ip.is_link_local
        or ip.is_multicast
        or ip.is_reserved
        or ip.is_unspecified
    )


class _Refused(urllib.error.URLError):
    """A hop of a fetch that the ``UrlPolicy`` refuses (raised inside urllib, caught by the
    fetcher and counted as ``refused``)."""


class UrlPolicy:
    """Which URLs one fetch may reach, checked for the URL and again for every redirect target.

    Only http(s) URLs whose host resolves to public addresses (``is_public_address``) pass;
    with ``allow_local`` also ``file://`` URLs, bare paths and hosts on loopback, private or
    link-local addresses. The addresses each approved host resolved to are kept, and the
    connection goes to one of them (``connect``): a second DNS answer (DNS rebinding) is
    never used. Through a proxy from the environment (``http_proxy``...) the proxy resolves
    the host, so only the check applies.

    Args:
        resolver: Host name -> its addresses (``resolve_host``; tests inject a stub).
        allow_local: Also allow local files and non-public hosts.
    """

    def __init__(
        self, resolver: Callable[[str], Sequence[str]] = resolve_host, allow_local: bool = False
    ) -> None:
        self.resolver = resolver
        self.allow_local = allow_local
        self.addresses: dict[str, list[str]] = {}  # approved host -> its checked addresses
        self.proxy_hosts = {
            urllib.parse.urlsplit(p if "://" in p else f"http://{p}").hostname or ""
            for k, p in urllib.request.getproxies().items()
            if k != "no"
        }

    def refusal(self, url: str) -> str | None:
        """Why ``url`` may not be fetched, or None (its host's addresses are then kept).

        Raises:
            OSError: The host cannot be resolved (DNS failure, offline): not a refusal.
        """
        parts = urllib.parse.urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme in ("", "file"):
            return None if self.allow_local else "local file (allow_local is off)"
        if scheme not in ("http", "https"):
            return f"URL scheme {scheme!r} (only http and https are fetched)"
        host = urllib.parse.unquote(parts.hostname or "")  # as urllib connects to it
        if not host:
            return "no host in the URL"
        addresses = [str(a) for a in self.resolver(host)]
        if not addresses:
            raise OSError(f"{host} resolves to no address")
        if not self.allow_local:
            inside = [a for a in addresses if not is_public_address(a)]
            if inside:
                return (
                    f"host {host} resolves to the non-public address {inside[0]} (loopback, "
                    "private, link-local, multicast or reserved; allow_local is off)"
                )
        self.addresses[host.lower()] = addresses
        return None

    def connect(
        self,
        address: tuple[str, int],
        timeout: float | None = None,
        source_address: tuple[str, int] | None = None,
    ) -> socket.socket:
        """``socket.create_connection`` for ``http.client``: to an address checked for this
        host by ``refusal`` (or to a proxy from the environment), never a fresh DNS answer."""
        host, port = address
        checked = self.addresses.get(host.lower())
        if checked is None:
            if host.lower() in self.proxy_hosts:
                return socket.create_connection(address, timeout, source_address)
            raise _Refused(f"connection to {host}, a host that was not checked")
        err: OSError = OSError(f"no address for {host}")
        for ip in checked:
            try:
                return socket.create_connection((ip, port), timeout, source_address)
            except OSError as e:
                err = e
        raise err


class _PinnedConnections:
    """Mixin for urllib's HTTP(S) handlers: connections connect through ``UrlPolicy.connect``."""

    def __init__(self, policy: UrlPolicy) -> None:
        super().__init__()
        self.policy = policy

    def do_open(self, http_class, req, **http_conn_args):  # urllib's handler API
        def connection(host: str, **kw) -> http.client.HTTPConnection:
            conn = http_class(host, **kw)
            # http.client opens its socket with this attribute (socket.create_connection)
            conn._create_connection = self.policy.connect
            return conn

        return super().do_open(connection, req, **http_conn_args)  # type: ignore[misc]


class _PinnedHTTPHandler(_PinnedConnections, urllib.request.HTTPHandler):
    pass


class _PinnedHTTPSHandler(_PinnedConnections, urllib.request.HTTPSHandler):
    pass


class _CheckedRedirects(urllib.request.HTTPRedirectHandler):
    """Follows a redirect only to a URL the ``UrlPolicy`` allows (each hop is checked)."""

    def __init__(self, policy: UrlPolicy) -> None:
        self.policy = policy

    def http_error_302(self, req, fp, code, msg, headers):  # urllib's handler API
        location = headers.get("location") or headers.get("uri")
        if location:  # urllib itself would follow ftp:// and refuse file:// as an HTTP error
            scheme = urllib.parse.urlsplit(urllib.parse.urljoin(req.full_url, location)).scheme
            if scheme.lower() not in ("http", "https"):
                fp.close()
                raise _Refused(f"redirect to {location}: URL scheme {scheme!r}")
        return super().http_error_302(req, fp, code, msg, headers)

    http_error_301 = http_error_303 = http_error_307 = http_error_308 = http_error_302

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # urllib's handler API
        refused = self.policy.refusal(newurl)
        if refused is not None:
            fp.close()
            raise _Refused(f"redirect to {newurl}: {refused}")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _opener(policy: UrlPolicy) -> urllib.request.OpenerDirector:
    """urllib's default http(s) opener (proxies from the environment, redirects, errors), with
    every hop checked and pinned by ``policy``; no ftp, file or data handlers."""
    opener = urllib.request.OpenerDirector()
    for handler in (
        urllib.request.ProxyHandler(),
        urllib.request.UnknownHandler(),
        _PinnedHTTPHandler(policy),
        _PinnedHTTPSHandler(policy),
        urllib.request.HTTPDefaultErrorHandler(),
        _CheckedRedirects(policy),
        urllib.request.HTTPErrorProcessor(),
    ):
        opener.add_handler(handler)
    return opener


@dataclass
class FetchResult:
    """Outcome of fetching one URL.

    Attributes:
        url: The URL asked for.
        reason: One of ``REASONS``.
        path: The cached file (only when ``reason == "ok"``).
        detail: Human-readable detail for failures (status code, exception text).
        retryable: Whether another attempt may succeed (timeout, 429, 5xx, connection error).
    """

    url: str
    reason: str
    path: Path | None = None
    detail: str = ""
    retryable: bool = False


@dataclass
class FetchReport:
    """Per-item outcomes, counted per reason; written as JSON next to the features."""

    counts: Counter = field(default_factory=Counter)
    failures: list[dict] = field(default_factory=list)

    def add(self, item_id: str, result: FetchResult) -> None:
        self.counts[result.reason] += 1
        if result.reason != "ok":
            self.failures.append(
                {
                    "item_id": item_id,
                    "url": result.url,
                    "reason": result.reason,
                    "detail": result.detail,
                }
            )

    def summary(self) -> str:
        total = sum(self.counts.values())
        parts = [f"{r}={self.counts[r]}" for r in REASONS if self.counts.get(r)]
        text = f"images: {total} items, " + ", ".join(parts)
        if self.counts.get("refused"):
            text += (
                " (refused: local files, non-public hosts or schemes other than http(s); "
                "images you host yourself need allow_local, `mmrec embed "
                "--allow_local_images true`)"
            )
        return text

    def to_json(self, path: str | Path, max_failures: int = 10_000) -> None:
        data = {
            "counts": {r: int(self.counts.get(r, 0)) for r in REASONS},
            "total": int(sum(self.counts.values())),
            "failures": self.failures[:max_failures],
            "failures_truncated": max(0, len(self.failures) - max_failures),
        }
        tmp = Path(str(path) + ".tmp")
        tmp.write_text(json.dumps(data, indent=1))
        os.replace(tmp, path)


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
            with _opener(policy).open(req, timeout=self.timeout) as resp:
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
            refusal = e if isinstance(e, _Refused) else e.reason  # a redirect or connection
            if isinstance(refusal, _Refused):
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


# ---------------------------------------------------------------- decoding
def decode_errors() -> tuple[type[BaseException], ...]:
    """What PIL raises for a bad image file: unidentified or truncated (``OSError``), broken
    chunks (``SyntaxError``, ``struct.error``, ``EOFError``), bad headers (``ValueError``,
    ``TypeError``, ``IndexError``, ``ZeroDivisionError``) and decompression bombs. Callers count
    such files as ``corrupt``; anything else is a bug and propagates."""
    from PIL import Image

    return (
        OSError,
        SyntaxError,
        struct.error,
        EOFError,
        ValueError,
        TypeError,
        IndexError,
        ZeroDivisionError,
        Image.DecompressionBombError,
    )


class TooManyPixels(ValueError):
    """An image declares more than ``max_pixels`` pixels (a possible decompression bomb); it
    is never decoded. A ``ValueError``, so callers that catch ``decode_errors()`` skip it."""


@contextmanager
def open_image(path: str | Path, max_pixels: int = MAX_PIXELS) -> Iterator[PILImage]:
    """``PIL.Image.open`` (the header only: nothing decoded yet) that refuses images of more
    than ``max_pixels`` pixels with ``TooManyPixels``; PIL's global limit is left as it is."""
    from PIL import Image

    try:
        im = Image.open(path)
    except Image.DecompressionBombError as e:  # above twice PIL's own limit
        raise TooManyPixels(str(e)) from None
    with im:
        width, height = im.size
        if width * height > max_pixels:
            raise TooManyPixels(
                f"{width}x{height} = {width * height} pixels, more than max_pixels={max_pixels}"
            )
        yield im


def check_decodable(path: str | Path, max_pixels: int = MAX_PIXELS) -> tuple[str, str] | None:
    """None when PIL fully decodes the file, else ``(reason, detail)``: ``too_many_pixels``
    (nothing decoded) or ``corrupt``."""
    try:
        with open_image(path, max_pixels) as im:
            im.load()
        return None
    except TooManyPixels as e:
        return "too_many_pixels", str(e)
    except decode_errors() as e:
        return "corrupt", f"{type(e).__name__}: {e}"


def load_rgb(path: str | Path, max_pixels: int = MAX_PIXELS) -> PILImage:
    """Decode an image file into an RGB ``PIL.Image``.

    Raises:
        TooManyPixels: More than ``max_pixels`` pixels (checked before decoding).
        Exception: One of ``decode_errors()`` for a corrupt file.
    """
    with open_image(path, max_pixels) as im:
        return im.convert("RGB")


def is_jpeg(data: bytes) -> bool:
    """JPEG signature check, used to route files to ``torchvision.io.decode_jpeg``."""
    return data[:3] == b"\xff\xd8\xff"


_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}  # frame headers (not DHT, JPG, DAC)


def jpeg_size(data: bytes) -> tuple[int, int] | None:
    """``(width, height)`` of a JPEG from its frame headers (SOF markers), nothing decoded; the
    largest when a file has several. None when the markers before the first scan cannot be
    read or a dimension is 0 (defined later by a DNL marker): let PIL decide then."""
    size: tuple[int, int] | None = None
    i = 2  # after SOI
    while i + 4 <= len(data):
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:  # no length: TEM, RSTn, SOI
            i += 2
            continue
        if marker in (0xD9, 0xDA):  # end of image, start of scan: all frame headers seen
            break
        length = int.from_bytes(data[i + 2 : i + 4], "big")
        if marker in _SOF:
            if i + 9 > len(data):
                return None
            height = int.from_bytes(data[i + 5 : i + 7], "big")
            width = int.from_bytes(data[i + 7 : i + 9], "big")
            if not width or not height:
                return None
            if size is None or width * height > size[0] * size[1]:
                size = (width, height)
        i += 2 + length
    return size


CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def decode_jpegs_to_pixels(
    datas: Sequence[bytes], resolution: int, device: str = "cuda", max_pixels: int = MAX_PIXELS
):
    """Batch-decode JPEG bytes with ``torchvision.io.decode_jpeg`` (nvjpeg on CUDA) and apply
    CLIP's preprocessing on the device: bicubic resize of the short side, centre crop, normalise.

    Returns ``(pixels [n_ok, 3, R, R] float32, ok [n] bool)``: files that fail to decode are
    left out and marked False (decode them with PIL to find out why), and so are files whose
    frame header (``jpeg_size``) is unreadable or declares more than ``max_pixels`` pixels:
    those are never handed to the decoder.
    """
    import torch
    from torchvision.io import ImageReadMode, decode_jpeg
    from torchvision.transforms.v2 import functional as F

    sizes = [jpeg_size(d) for d in datas]
    fits = [s is not None and s[0] * s[1] <= max_pixels for s in sizes]
    fitting = [d for d, f in zip(datas, fits, strict=True) if f]
    raw = [torch.frombuffer(bytearray(d), dtype=torch.uint8) for d in fitting]
    try:
        decoded = decode_jpeg(raw, mode=ImageReadMode.RGB, device=device) if raw else []
    except RuntimeError:  # one bad file fails the batch: decode one by one
        decoded = []
        for r in raw:
            try:
                decoded.append(decode_jpeg(r, mode=ImageReadMode.RGB, device=device))
            except RuntimeError:
                decoded.append(None)
    it = iter(decoded)
    imgs = [next(it) if f else None for f in fits]
    ok = torch.tensor([im is not None for im in imgs], dtype=torch.bool)
    mean = torch.tensor(CLIP_MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD, device=device).view(1, 3, 1, 1)
    good = [im for im in imgs if im is not None]
    out = torch.empty(len(good), 3, resolution, resolution, device=device)
    groups: dict[tuple[int, int], list[int]] = {}
    for i, im in enumerate(good):  # same-size images are resized as one batch
        groups.setdefault(tuple(im.shape[-2:]), []).append(i)
    for idx in groups.values():
        x = torch.stack([good[i] for i in idx])  # [g, 3, H, W] uint8
        x = F.resize(x, [resolution], interpolation=F.InterpolationMode.BICUBIC, antialias=True)
        x = F.center_crop(x, [resolution, resolution])
        out[torch.tensor(idx, device=device)] = (x.float() / 255.0 - mean) / std
    return out, ok


# ---------------------------------------------------------------- embedding
def embed_images(
    model: ImageContentModel,
    fetcher: ImageFetcher,
    urls: Sequence[Sequence[str] | None],
    batch_size: int,
    gpu_decode: bool,
) -> tuple[Tensor, Tensor, Counter, list[dict]]:
    """Fetch, decode and encode the images of some items (``urls``: each item's URLs).

    Decoding of batch k+1 overlaps encoding of batch k. Returns ``(features [n, D],
    present [n], counts per reason, failures)``; items whose image is missing or unusable get
    a zero row and present False, and are counted under their reason (``corrupt`` when the
    file cannot be decoded, ``too_many_pixels`` when its header declares more than
    ``fetcher.max_pixels``: checked before any decoding, on the GPU path too).
    """
    import torch

    results: list[FetchResult] = fetcher.fetch_many(urls)
    res = model.image_resolution
    bad_image = decode_errors()

    def prep(r: FetchResult) -> Tensor | None:
        try:
            return model.preprocess(load_rgb(r.path, fetcher.max_pixels))
        except TooManyPixels as e:  # never decoded; counted and reported
            r.reason, r.detail = "too_many_pixels", str(e)
            return None
        except bad_image as e:  # counted under "corrupt" and reported, never fatal
            r.reason, r.detail = "corrupt", f"{type(e).__name__}: {e}"
            return None

    out = torch.zeros(len(results), model.feature_dim)  # [n, D]
    present = torch.zeros(len(results), dtype=torch.bool)
    ok_idx = [i for i, r in enumerate(results) if r.reason == "ok"]

    def load(idx: list[int], pool: ThreadPoolExecutor) -> tuple[list[int], Tensor | None]:
        """Decode + preprocess one batch: ``(rows, pixels [len(rows), 3, R, R])``."""
        rows: list[int] = []
        parts: list[Tensor] = []
        if gpu_decode:  # JPEGs: nvjpeg batch decode + resize on the device
            datas = list(pool.map(lambda i: Path(results[i].path).read_bytes(), idx))
            jpg = [(i, d) for i, d in zip(idx, datas, strict=True) if is_jpeg(d)]
            if jpg:
                px, ok = decode_jpegs_to_pixels(
                    [d for _, d in jpg], res, str(model.device), fetcher.max_pixels
                )
                rows += [i for (i, _), k in zip(jpg, ok.tolist(), strict=True) if k]
                parts.append(px)
            done = set(rows)
            idx = [i for i in idx if i not in done]  # non-JPEG or failed: PIL decides
        cpu = list(zip(idx, pool.map(lambda i: prep(results[i]), idx), strict=True))
        cpu = [(i, px) for i, px in cpu if px is not None]
        if cpu:
            rows += [i for i, _ in cpu]
            parts.append(torch.stack([px for _, px in cpu]).to(model.device, non_blocking=True))
        return rows, (torch.cat(parts) if parts else None)

    batches = [ok_idx[s : s + batch_size] for s in range(0, len(ok_idx), batch_size)]
    workers = max(1, fetcher.num_workers)
    with ThreadPoolExecutor(workers) as pool, ThreadPoolExecutor(1) as loader:
        nxt = loader.submit(load, batches[0], pool) if batches else None
        for k in range(len(batches)):  # decode batch k+1 while batch k is encoded
            rows, pixels = nxt.result()
            if k + 1 < len(batches):
                nxt = loader.submit(load, batches[k + 1], pool)
            if rows:
                out[rows] = model.encode_images(pixels)
                present[rows] = True
    counts = Counter(r.reason for r in results)
    failures = [
        {"row": i, "url": r.url, "reason": r.reason, "detail": r.detail}
        for i, r in enumerate(results)
        if r.reason != "ok"
    ]
    return out, present, counts, failures
