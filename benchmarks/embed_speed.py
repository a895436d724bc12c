"""Throughput of `mmrec embed`'s hot path: texts/s and images/s (JPEG decode included) for a
ViT-B/32-sized CLIP with random weights (no download).

Run: .venv/bin/python -m benchmarks.embed_speed --device cpu --num_images 256 --num_texts 256
     .venv/bin/python -m benchmarks.embed_speed --device cuda --num_images 20000 --num_texts 20000
Appends a section to benchmarks/results/embed_speed.md (command, hardware, numbers).
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import hardware
from mmrec.content.decode import decode_jpegs_to_pixels, load_rgb
from mmrec.content.inputs import item_text
from mmrec.content.models import autocast

SIZES = [(500, 500), (500, 375), (375, 500), (320, 320)]  # typical Amazon product image sizes


def vit_b32(device: torch.device) -> torch.nn.Module:
    """CLIP ViT-B/32 architecture (151M parameters) with random weights, float32 for autocast."""
    from clip.model import CLIP

    model = CLIP(512, 224, 12, 768, 32, 77, 49408, 512, 8, 12)
    return model.float().eval().requires_grad_(False).to(device)


def write_jpegs(folder: Path, n: int, seed: int = 0) -> list[Path]:
    """``n`` product-photo-like JPEGs (smooth gradient + shapes + noise), quality 90."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        w, h = SIZES[i % len(SIZES)]
        base = np.linspace(0, 255, w, dtype=np.float32)[None, :, None] * rng.random(3)
        arr = np.broadcast_to(base, (h, w, 3)) + rng.normal(0, 8, (h, w, 3))
        img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
        d = ImageDraw.Draw(img)
        for _ in range(3):
            x, y = rng.integers(0, w - 50), rng.integers(0, h - 50)
            d.ellipse([x, y, x + 50, y + 50], fill=tuple(int(c) for c in rng.integers(0, 255, 3)))
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=90)
        p = folder / f"{i:06d}.jpg"
        p.write_bytes(buf.getvalue())
        paths.append(p)
    return paths


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def bench_texts(model, device, n: int, batch: int) -> float:
    import clip

    rng = np.random.default_rng(0)
    words = (
        "moisturizing shampoo argan oil keratin dry hair gentle formula vegan matte lipstick"
    ).split()
    texts = [
        item_text(
            f"Acme {' '.join(rng.choice(words, 6))}",
            "Acme",
            "Beauty > Hair Care",
            " ".join(rng.choice(words, 60)),
        )
        for _ in range(n)
    ]
    with torch.inference_mode(), autocast(device):  # warm-up
        model.encode_text(clip.tokenize(texts[:batch], truncate=True).to(device))
    sync(device)
    t = time.perf_counter()
    with torch.inference_mode(), autocast(device):
        for s in range(0, n, batch):
            model.encode_text(
                clip.tokenize(texts[s : s + batch], truncate=True).to(device)
            ).float().cpu()
    sync(device)
    return n / (time.perf_counter() - t)


def bench_images(
    model, device, paths: list[Path], batch: int, workers: int, gpu_decode: bool
) -> dict:
    """End to end (read file, decode, preprocess, encode) and decode-only throughput."""
    import clip

    prep = clip.clip._transform(224)

    def cpu_batch(ps):
        with ThreadPoolExecutor(workers) as pool:
            return torch.stack(list(pool.map(lambda p: prep(load_rgb(p)), ps)))

    def gpu_batch(ps):
        with ThreadPoolExecutor(workers) as pool:
            datas = list(pool.map(lambda p: p.read_bytes(), ps))
        pixels, _ = decode_jpegs_to_pixels(datas, 224, device=str(device))
        return pixels

    load = gpu_batch if gpu_decode else cpu_batch
    load(paths[:batch])  # warm-up (nvjpeg init, thread pools)
    sync(device)
    t = time.perf_counter()
    for s in range(0, len(paths), batch):
        load(paths[s : s + batch])
    sync(device)
    decode = len(paths) / (time.perf_counter() - t)
    with torch.inference_mode(), autocast(device):
        model.encode_image(load(paths[:batch]).to(device))
    sync(device)
    # overlap: decode batch k+1 on a thread while the model encodes batch k
    t = time.perf_counter()
    with ThreadPoolExecutor(1) as loader, torch.inference_mode(), autocast(device):
        nxt = loader.submit(load, paths[:batch])
        for s in range(0, len(paths), batch):
            px = nxt.result()
            if s + batch < len(paths):
                nxt = loader.submit(load, paths[s + batch : s + 2 * batch])
            model.encode_image(px.to(device, non_blocking=True)).float().cpu()
    sync(device)
    e2e = len(paths) / (time.perf_counter() - t)
    px = load(paths[:batch]).to(device)
    sync(device)
    t = time.perf_counter()
    reps = max(1, len(paths) // batch)
    with torch.inference_mode(), autocast(device):
        for _ in range(reps):
            model.encode_image(px)
    sync(device)
    encode = reps * len(px) / (time.perf_counter() - t)
    return {"end_to_end": e2e, "decode_only": decode, "encode_only": encode}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--num_images", type=int, default=256, help="JPEG files written and encoded")
    p.add_argument("--num_texts", type=int, default=256, help="item texts encoded")
    p.add_argument("--batch_size", type=int, default=256)
    p.add_argument(
        "--workers", type=int, default=os.cpu_count() or 4, help="file read/decode threads"
    )
    p.add_argument("--cpu_decode", action="store_true", help="PIL decoding even on CUDA")
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "embed_speed.md"))
    args = p.parse_args(argv)
    device = torch.device(args.device)
    model = vit_b32(device)
    gpu_decode = device.type == "cuda" and not args.cpu_decode
    texts_s = bench_texts(model, device, args.num_texts, args.batch_size)
    print(f"texts/s: {texts_s:.1f}")
    with tempfile.TemporaryDirectory() as tmp:
        paths = write_jpegs(Path(tmp), args.num_images)
        mb = sum(p.stat().st_size for p in paths) / len(paths) / 1024
        img = bench_images(model, device, paths, args.batch_size, args.workers, gpu_decode)
    print({k: round(v, 1) for k, v in img.items()})
    decoder = (
        "torchvision.io.decode_jpeg (nvjpeg) + GPU resize"
        if gpu_decode
        else "PIL + CLIP transform, threads"
    )
    cmd = "python " + " ".join(
        ["-m", "benchmarks.embed_speed", *(argv if argv is not None else sys.argv[1:])]
    )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if not out.exists():
        out.write_text(
            "# `mmrec embed` throughput (ViT-B/32-sized CLIP, random weights)\n\n"
            "Images: JPEG files of 320-500 px written by the script; end to end = read file, "
            "decode,\n"
            "resize/crop/normalise, encode (decoding of batch k+1 overlaps encoding of batch k).\n"
        )
    with out.open("a") as f:
        f.write(
            f"\n## {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} — {device.type}\n\n"
            f"`{cmd}`\n\n{hardware(device.type)}; decoder: {decoder}; batch {args.batch_size}; "
            f"{args.num_images} images (mean {mb:.0f} KiB), {args.num_texts} texts; "
            f"{'bf16 autocast' if device.type == 'cuda' else 'float32'}\n\n"
            "| texts/s | images/s end to end | images/s decode only | images/s encode only |\n"
            "|---|---|---|---|\n"
            f"| {texts_s:.1f} | {img['end_to_end']:.1f} | {img['decode_only']:.1f} "
            f"| {img['encode_only']:.1f} |\n"
        )
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
