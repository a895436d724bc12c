"""Item images: fetching (http(s)/file URLs, timeouts, retries, size and type checks, disk cache),
decoding (PIL checks, batched torchvision JPEG decoding with CLIP's preprocessing), embedding."""

from __future__ import annotations

import hashlib
import json
import os
import re
import struct
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from tqdm.auto import tqdm

if TYPE_CHECKING:
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
    "error",  # connection refused, DNS, bad URL scheme...
)
#: Outcomes worth retrying on a later run (never cached as failures).
TRANSIENT = frozenset({"timeout", "http_error", "error"})

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
        return f"images: {total} items, " + ", ".join(parts)

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

    Successes are cached as ``<cache_dir>/<ab>/<sha>``; permanent failures (missing,
    not_image, too_large, corrupt) as ``<sha>.fail`` so a rerun does not ask again; transient
    failures (timeout, http_error, error) are retried on the next run.

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
        self._host_fails: Counter = Counter()  # consecutive connection failures per host
        self._lock = threading.Lock()
        self.network_fetches = 0  # attempts that went past the cache (for tests and logs)

    # ---------------------------------------------------------------- cache
    def _cache_path(self, url: str) -> Path:
        key = url_key(url)
        return self.cache_dir / key[:2] / key

    def _cached(self, url: str) -> FetchResult | None:
        path = self._cache_path(url)
        if path.exists():
            return FetchResult(url, "ok", path)
        fail = path.with_suffix(".fail")
        if fail.exists():
            info = json.loads(fail.read_text())
            return FetchResult(url, info["reason"], None, info.get("detail", "") + " (cached)")
        return None

    def _store(self, url: str, data: bytes) -> Path:
        path = self._cache_path(url)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.{id(data)}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)
        return path

    def _store_failure(self, result: FetchResult) -> None:
        if result.retryable or result.reason in TRANSIENT or result.reason == "ok":
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
            bad = check_decodable(result.path)
            if bad is not None:
                result.path.unlink(missing_ok=True)
                result = FetchResult(url, "corrupt", None, bad)
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
            else:
                self._host_fails[host] = 0
        return result

    def _fetch_once(self, url: str) -> FetchResult:
        scheme = urllib.parse.urlsplit(url).scheme.lower()
        if scheme == "file" or scheme == "":
            return self._fetch_file(url)
        if scheme not in ("http", "https"):
            return FetchResult(url, "error", None, f"unsupported URL scheme {scheme!r}")
        req = urllib.request.Request(url, headers={"User-Agent": self.user_agent})
        deadline = time.monotonic() + self.timeout
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
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


def check_decodable(path: str | Path) -> str | None:
    """None when PIL fully decodes the file, else a short description of the problem."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.load()
        return None
    except decode_errors() as e:
        return f"{type(e).__name__}: {e}"


def load_rgb(path: str | Path):
    """Decode an image file into an RGB ``PIL.Image`` (raises on corrupt files)."""
    from PIL import Image

    with Image.open(path) as im:
        return im.convert("RGB")


def is_jpeg(data: bytes) -> bool:
    """JPEG signature check, used to route files to ``torchvision.io.decode_jpeg``."""
    return data[:3] == b"\xff\xd8\xff"


CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def decode_jpegs_to_pixels(datas: Sequence[bytes], resolution: int, device: str = "cuda"):
    """Batch-decode JPEG bytes with ``torchvision.io.decode_jpeg`` (nvjpeg on CUDA) and apply
    CLIP's preprocessing on the device: bicubic resize of the short side, centre crop, normalise.

    Returns ``(pixels [n_ok, 3, R, R] float32, ok [n] bool)``: files that fail to decode are
    left out and marked False (decode them with PIL to find out why).
    """
    import torch
    from torchvision.io import ImageReadMode, decode_jpeg
    from torchvision.transforms.v2 import functional as F

    raw = [torch.frombuffer(bytearray(d), dtype=torch.uint8) for d in datas]
    try:
        imgs = decode_jpeg(raw, mode=ImageReadMode.RGB, device=device)
    except RuntimeError:  # one bad file fails the batch: decode one by one
        imgs = []
        for r in raw:
            try:
                imgs.append(decode_jpeg(r, mode=ImageReadMode.RGB, device=device))
            except RuntimeError:
                imgs.append(None)
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
    file cannot be decoded).
    """
    import torch

    results: list[FetchResult] = fetcher.fetch_many(urls)
    res = model.image_resolution
    bad_image = decode_errors()

    def prep(r: FetchResult) -> Tensor | None:
        try:
            return model.preprocess(load_rgb(r.path))
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
                px, ok = decode_jpegs_to_pixels([d for _, d in jpg], res, str(model.device))
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
