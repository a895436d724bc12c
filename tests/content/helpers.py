"""Test helpers for content: tiny CLIP/BERT checkpoints, a dataset folder, an image server."""

from __future__ import annotations

import io
import json
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np

SLOW_S = 2.0  # the "slow" URL answers after this; fetchers in tests use timeout 0.5 s


def jpeg_bytes(seed: int, size: tuple[int, int] = (40, 48)) -> bytes:
    from PIL import Image

    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def png_bytes(seed: int, size: tuple[int, int] = (36, 36)) -> bytes:
    from PIL import Image

    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


CORRUPT_JPEG = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + bytes(range(256)) * 4  # JPEG magic, junk body


def bomb_png(width: int = 100_000, height: int = 100_000) -> bytes:
    """A PNG of a few dozen bytes whose header declares ``width x height`` pixels (a
    decompression bomb: decoding it would need ``3 * width * height`` bytes)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data)
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 16))
        + chunk(b"IEND", b"")
    )


def bomb_jpeg(width: int = 60_000, height: int = 60_000) -> bytes:
    """A small real JPEG whose frame header (SOF0) is rewritten to declare ``width x height``."""
    data = bytearray(jpeg_bytes(0, (8, 8)))
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = height.to_bytes(2, "big") + width.to_bytes(2, "big")
    return bytes(data)


class ImageServer:
    """Threaded HTTP server on 127.0.0.1 with one route per failure mode; counts requests per
    path in ``hits`` and keeps every request target in ``requests`` (absolute URLs when it is
    used as a proxy). ``redirects`` maps a path to the ``Location`` of a 302 answer."""

    def __init__(self) -> None:
        self.hits: Counter = Counter()
        self.requests: list[str] = []
        self.redirects: dict[str, str] = {}
        self.routes: dict[str, tuple[int, str, bytes]] = {
            "/a.jpg": (200, "image/jpeg", jpeg_bytes(1)),
            "/b.jpg": (200, "image/jpeg", jpeg_bytes(2)),
            "/c.png": (200, "image/png", png_bytes(3)),
            "/corrupt.jpg": (200, "image/jpeg", CORRUPT_JPEG),
            "/page.html": (200, "text/html; charset=utf-8", b"<html><body>no image</body></html>"),
            "/big.png": (200, "image/png", png_bytes(4, (300, 300))),
            "/octet.jpg": (200, "application/octet-stream", jpeg_bytes(5)),
            "/bomb.png": (200, "image/png", bomb_png()),
            "/bomb.jpg": (200, "image/jpeg", bomb_jpeg()),
        }
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # keep pytest output clean
                pass

            def do_GET(self) -> None:  # noqa: N802 (http.server API)
                server.requests.append(self.path)
                path = urlsplit(self.path).path  # a proxy request names the whole URL
                server.hits[path] += 1
                if path == "/slow.jpg":
                    time.sleep(SLOW_S)
                if path == "/flaky.jpg" and server.hits[path] == 1:
                    self.send_error(503)
                    return
                if path in server.redirects:
                    self.send_response(302)
                    self.send_header("Location", server.redirects[path])
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if path in ("/slow.jpg", "/flaky.jpg"):
                    status, ctype, body = 200, "image/jpeg", jpeg_bytes(6)
                elif path in server.routes:
                    status, ctype, body = server.routes[path]
                else:
                    self.send_error(404)
                    return
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", ctype)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.httpd.block_on_close = False
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def tiny_clip_checkpoint(path: Path, seed: int = 0) -> Path:
    """A random CLIP (ViT, embed 16, 32 px, width 64) saved as a state dict ``clip.load`` reads."""
    import torch
    from clip.model import CLIP

    torch.manual_seed(seed)
    # vocab 49408: the real BPE tokenizer emits ids up to 49407; heads = width // 64 = 1
    model = CLIP(16, 32, 1, 64, 16, 77, 49408, 64, 1, 1)
    torch.save(model.state_dict(), path)
    return path


def tiny_sentence_model(folder: Path, seed: int = 0) -> Path:
    """A random 1-layer BERT with a word-piece vocabulary, saved as a HF model folder."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizerFast

    torch.manual_seed(seed)
    folder.mkdir(parents=True, exist_ok=True)
    words = "red blue lipstick shampoo soap great bad cream hair skin nice love it the a".split()
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    BertTokenizerFast(vocab_file=str(folder / "vocab.txt")).save_pretrained(folder)
    cfg = BertConfig(
        vocab_size=len(vocab),
        hidden_size=8,
        num_hidden_layers=1,
        num_attention_heads=1,
        intermediate_size=16,
        max_position_embeddings=64,
    )
    BertModel(cfg).save_pretrained(folder)
    (folder / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 32}))
    return folder


def write_dataset(
    folder: Path, image_urls: list[list[str]], texts: list[dict] | None = None
) -> Path:
    """A minimal prepared dataset folder: items, interactions (items 1..6 only), users, meta."""
    import polars as pl

    folder.mkdir(parents=True, exist_ok=True)
    n = len(image_urls)
    texts = texts or [{} for _ in range(n)]
    items = pl.DataFrame(
        {
            "item_idx": pl.Series(range(1, n + 1), dtype=pl.Int32),
            "item_id": [f"B{i:05d}" for i in range(1, n + 1)],
            "title": [t.get("title", f"Product {i} <b>deluxe</b>") for i, t in enumerate(texts, 1)],
            "description": [t.get("description", "Nice &amp; soft.") for t in texts],
            "categories": [t.get("categories", "Beauty > Hair") for t in texts],
            "brand": [t.get("brand", "Acme") for t in texts],
            "price": pl.Series([9.5] * n, dtype=pl.Float32),
            "image_urls": pl.Series(image_urls, dtype=pl.List(pl.String)),
        }
    )
    items.write_parquet(folder / "items.parquet")
    seen = list(range(1, min(n, 6) + 1))
    reviews = ["great red lipstick", None, "bad soap", "", "love it", "nice cream"]
    inter = pl.DataFrame(
        {
            "user_idx": pl.Series([0, 0, 0, 1, 1, 1], dtype=pl.Int32),
            "item_idx": pl.Series([seen[i % len(seen)] for i in range(6)], dtype=pl.Int32),
            "timestamp": pl.Series([1, 2, 3, 1, 2, 3], dtype=pl.Int64),
            "rating": pl.Series([5.0, 4.0, 1.0, 3.0, 5.0, 4.0], dtype=pl.Float32),
            "review": reviews,
            "split": ["train", "valid", "test"] * 2,
        }
    )
    inter.write_parquet(folder / "interactions.parquet")
    pl.DataFrame(
        {"user_idx": pl.Series([0, 1], dtype=pl.Int32), "user_id": ["u0", "u1"]}
    ).write_parquet(folder / "users.parquet")
    meta = {"source": "test", "num_items": n, "num_users": 2, "num_interactions": 6}
    (folder / "meta.json").write_text(json.dumps(meta))
    return folder


class CharModel:
    """A text-only ``ContentModel`` without weights: ``[n, 4]`` vectors of character counts
    (length, vowels, spaces, digits), for tests of `mmrec embed`'s plumbing."""

    name = "chars:v1"
    weights_sha256 = "0" * 64
    default_stem = "chars"
    embeds_images = False

    def __init__(self) -> None:
        import torch

        self.device = torch.device("cpu")
        self.calls: list[list[str]] = []

    @staticmethod
    def vector(text: str) -> list[float]:
        return [
            float(len(text)),
            float(sum(c in "aeiou" for c in text)),
            float(text.count(" ")),
            float(sum(c.isdigit() for c in text)),
        ]

    def encode_texts(self, texts: list[str]):
        import torch

        self.calls.append(list(texts))
        return torch.tensor([self.vector(t) for t in texts])
