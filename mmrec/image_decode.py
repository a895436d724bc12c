"""Decoding cached item images: PIL for checks and CPU, batched torchvision JPEG decoding
(nvjpeg on CUDA) with CLIP's preprocessing on the device."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path


def check_decodable(path: str | Path) -> str | None:
    """None when PIL fully decodes the file, else a short description of the problem."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.load()
        return None
    except Exception as e:  # PIL raises many types for bad files
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
