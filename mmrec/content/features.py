"""The features-file format of `mmrec embed`: fingerprint, atomic writes, reads, staleness check.

A features file is a safetensors file with tensors ``features`` ``[rows, D]`` float32 (row 0 =
padding, zeros) and ``present`` ``[1, rows]`` bool, and the metadata entry ``fingerprint``: a
JSON object with the keys ``format`` (``FORMAT``), ``encoder``, ``weights_sha256``,
``items_sha256`` (hash of the embedded inputs), ``modality``, ``rows`` and ``text_recipe``, plus
the modality's own settings (``amazon_full_size`` for images). This module is its only reader
and writer.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING

import torch
from torch import Tensor

if TYPE_CHECKING:
    from mmrec.content.inputs import Modality
    from mmrec.content.models import ContentModel

FORMAT = "mmrec-features/1"


def inputs_sha256(inputs: Sequence[object]) -> str:
    """Hash of exactly what a modality embeds (so e.g. a price change does not invalidate)."""
    h = hashlib.sha256()
    for v in inputs:
        h.update(json.dumps(v, ensure_ascii=False).encode("utf-8"))
        h.update(b"\n")
    return h.hexdigest()


def fingerprint(
    model: ContentModel, modality: Modality, inputs: Sequence[object]
) -> dict[str, str]:
    """What features depend on: encoder, weights hash, hash of the ``inputs``, modality, rows and
    the modality's settings that change the result (text recipe, image URL rewrite)."""
    return {
        "text_recipe": "",
        **modality.settings(),
        "format": FORMAT,
        "encoder": model.name,
        "weights_sha256": model.weights_sha256,
        "items_sha256": inputs_sha256(inputs),
        "modality": modality.name,
        "rows": str(len(inputs) + 1),
    }


def save_tensors(path: Path, tensors: Mapping[str, Tensor], meta: Mapping[str, str]) -> None:
    """Write a safetensors file atomically (a temporary file renamed over ``path``)."""
    from safetensors.torch import save_file

    tmp = path.with_name(path.name + ".tmp")
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=dict(meta))
    os.replace(tmp, path)


def load_tensors(path: Path) -> tuple[dict[str, Tensor], dict[str, str]]:
    """``(tensors, metadata)`` of a safetensors file."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})


def write_features(path: Path, features: Tensor, present: Tensor, fp: Mapping[str, str]) -> Path:
    """Write a features file: ``features [rows, D]``, ``present [rows]`` and fingerprint ``fp``."""
    meta = {"fingerprint": json.dumps(dict(fp)), "dim": str(features.shape[1])}
    save_tensors(path, {"features": features, "present": present.reshape(1, -1)}, meta)
    return path


def read_fingerprint(path: str | Path) -> dict[str, str] | None:
    """The fingerprint stored in a features file, or None when the file has none or is not a
    safetensors file (a run that died while writing it, another tool's file)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except (OSError, SafetensorError):
        return None
    return json.loads(meta["fingerprint"]) if "fingerprint" in meta else None


def features_path(data_dir: str | Path | None, name: str, path: str | Path | None) -> Path:
    """``path`` if given, else ``{data_dir}/features/{name}.safetensors``."""
    if path is not None:
        return Path(path)
    if data_dir is None:
        raise ValueError(f"no data_dir to find features/{name}.safetensors: set `path`")
    return Path(data_dir) / "features" / f"{name}.safetensors"


def _embed_command(data_dir: str | Path | None, modality: object) -> str:
    where = data_dir if data_dir is not None else "<DIR>"
    return f"mmrec embed --dataset {where} --modalities {modality or '...'}"


def load_features(
    file: Path, rows: int, data_dir: str | Path | None = None
) -> tuple[Tensor, Tensor, dict[str, str]]:
    """``(features [rows, F] float32, present [rows] bool, fingerprint)`` of a features file;
    ``present[0]`` (padding) is False.

    Raises:
        FileNotFoundError: No such file; names the `mmrec embed` command that writes it.
        ValueError: The file has another number of rows than the dataset needs (``rows``).
    """
    if not file.is_file():
        raise FileNotFoundError(f"{file} not found: run `{_embed_command(data_dir, None)}` first")
    tensors, meta = load_tensors(file)
    feats = tensors["features"].float()
    present = tensors["present"].reshape(-1).bool().clone()
    fp = json.loads(meta.get("fingerprint", "{}"))
    if feats.shape[0] != rows:
        raise ValueError(
            f"{file} has {feats.shape[0]} rows but the dataset needs {rows} (padding + one per "
            f"item or interaction): the dataset changed since `mmrec embed`; rerun "
            f"`{_embed_command(data_dir, fp.get('modality'))} --force true`"
        )
    present[0] = False
    return feats, present, fp


def check_fresh(
    file: Path, fp: Mapping[str, str], modality: Modality, data_dir: str | Path
) -> None:
    """Refuse features whose inputs changed: ``modality``'s inputs in ``data_dir`` are hashed as
    `mmrec embed` hashes them and compared with the fingerprint ``fp`` read from ``file``.

    Raises:
        ValueError: ``file`` holds another modality, or its inputs changed since (stale).
    """
    if fp.get("modality") != modality.name:
        raise ValueError(
            f"{file} holds {fp.get('modality')!r} features, not {modality.name!r}: point the "
            "encoder at the right file"
        )
    if inputs_sha256(modality.load(Path(data_dir))) != fp.get("items_sha256"):
        raise ValueError(
            f"{file} is stale: the {modality.name} inputs in {data_dir} changed since it was "
            f"computed; rerun `{_embed_command(data_dir, modality.name)} --force true`"
        )


def write_random_features(
    file: Path,
    rows: int,
    dim: int = 8,
    seed: int = 0,
    modality: Modality | None = None,
    dataset: str | Path | None = None,
) -> Path:
    """Random features ``[rows, dim]`` in this format, every 3rd row absent (tests, examples).

    With ``modality`` and ``dataset`` the fingerprint is the one `mmrec embed` would record
    for that modality's inputs in ``dataset`` (encoder ``random:<seed>``), so staleness checks
    pass; without them its modality is ``random`` and encoders must not check the file
    (``check_fingerprint=False``).
    """
    g = torch.Generator().manual_seed(seed)
    feats = torch.randn(rows, dim, generator=g)
    present = torch.arange(rows) % 3 != 0
    feats[~present] = 0
    fp = {"modality": "random", "rows": str(rows)}
    if modality is not None and dataset is not None:
        inputs = modality.load(Path(dataset))
        if len(inputs) + 1 != rows:
            raise ValueError(f"{dataset} has {len(inputs)} {modality.name} rows, not {rows - 1}")
        encoder = SimpleNamespace(name=f"random:{seed}", weights_sha256="0" * 64)
        fp = fingerprint(encoder, modality, inputs)  # type: ignore[arg-type]
    file.parent.mkdir(parents=True, exist_ok=True)
    return write_features(file, feats, present, fp)
