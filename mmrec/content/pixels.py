"""Item images as model inputs: fetched (:mod:`mmrec.content.images`), decoded
(:mod:`mmrec.content.decode`) and preprocessed for CLIP. :func:`embed_images` is the fetch ->
decode -> encode pipeline of ``mmrec embed``; :func:`item_pixels` gives a fine-tuned CLIP image
encoder its inputs, so the encoder itself only reads them."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

from mmrec.content.decode import (
    TooManyPixels,
    decode_errors,
    decode_jpegs_to_pixels,
    is_jpeg,
    load_rgb,
)

if TYPE_CHECKING:
    from torch import Tensor

    from mmrec.content.images import ImageFetcher
    from mmrec.content.models import ImageContentModel
    from mmrec.content.outcomes import FetchResult


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


def item_pixels(
    urls: Sequence[Sequence[str] | None],
    image_cache: str | Path,
    preprocess: Callable,
    resolution: int,
) -> tuple[Tensor, Tensor, list[int]]:
    """Every item's first usable image (``urls``: item ``i``'s at ``i - 1``) from the image cache
    of ``mmrec embed`` (no network when it is warm), decoded and preprocessed once:
    ``(pixels [N+1, 3, R, R] float16, present [N+1] bool, corrupt)``, row 0 padding.
    ``corrupt`` lists the item_idx whose cached file cannot be decoded (absent, as are items
    without a usable image).
    """
    import torch

    from mmrec.content.images import ImageFetcher

    fetcher = ImageFetcher(image_cache)
    results = fetcher.fetch_many(urls, desc="images for finetune")
    pixels = torch.zeros(len(results) + 1, 3, resolution, resolution, dtype=torch.float16)
    present = torch.zeros(len(results) + 1, dtype=torch.bool)
    corrupt: list[int] = []
    for i, r in enumerate(results, start=1):
        if r.reason == "ok":
            try:
                pixels[i] = preprocess(load_rgb(r.path)).half()
                present[i] = True
            except decode_errors():
                corrupt.append(i)
    return pixels, present, corrupt
