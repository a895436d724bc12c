"""Decoding item images: a pixel limit checked before decoding (decompression bombs), PIL checks
and loading, and batched torchvision JPEG decoding with CLIP's preprocessing. The fetch ->
decode -> encode pipeline of ``mmrec embed`` is :mod:`mmrec.content.pixels`."""

from __future__ import annotations

import struct
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from PIL.Image import Image as PILImage

#: Default pixel limit: PIL's own warning threshold (``PIL.Image.MAX_IMAGE_PIXELS``, about
#: 89.5 megapixels; a 3000x3000 product photo has 9).
MAX_PIXELS = 89_478_485


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
