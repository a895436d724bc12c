"""What fetching an item image can end in: the reasons (:data:`REASONS`), one URL's
:class:`FetchResult`, and the per-item :class:`FetchReport` written next to the features."""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

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
