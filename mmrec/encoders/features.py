"""Item encoders over cached `mmrec embed` features: frozen vectors projected to d_model."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import torch
from torch import Tensor, nn

from mmrec.content.features import (
    check_fresh,
    features_path,
    load_features,
    write_random_features,
)
from mmrec.content.inputs import ItemText, Modality, modality_named
from mmrec.encoders.base import BuildContext, ItemEncoder


def write_example_items(folder: Path, num_items: int) -> Path:
    """A tiny ``items.parquet`` (items ``1..num_items``, a title each, no images) for examples."""
    import polars as pl

    folder.mkdir(parents=True, exist_ok=True)
    n = range(1, num_items + 1)
    pl.DataFrame(
        {
            "item_idx": pl.Series(n, dtype=pl.Int32),
            "item_id": [f"i{i}" for i in n],
            "title": [f"item {i}" for i in n],
            "brand": [None] * num_items,
            "categories": [None] * num_items,
            "description": [None] * num_items,
            "image_urls": pl.Series([[] for _ in n], dtype=pl.List(pl.String)),
        },
        schema_overrides={c: pl.String for c in ("brand", "categories", "description")},
    ).write_parquet(folder / "items.parquet")
    return folder / "items.parquet"


class Projection(nn.Module):
    """``[..., F] -> [..., D]``: Linear, or a 2-layer MLP when ``hidden > 0``; optional LayerNorm.

    Args:
        in_dim: Feature width F.
        out_dim: Model width D.
        hidden: Hidden width of an MLP (GELU); 0 for a single Linear.
        layer_norm: LayerNorm on the output.
        dropout: Dropout on the input features.
        init_scale: Initial gain of the output LayerNorm. A LayerNorm output has unit variance
            per dimension (norm ~8 at D=64), which would swamp item-ID embeddings initialised
            at std 0.02 (norm ~0.16) and the model would first have to unlearn the content; at
            0.02 both start at the same scale and the gain is learned.
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        hidden: int = 0,
        layer_norm: bool = True,
        dropout: float = 0.0,
        init_scale: float = 0.02,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Dropout(dropout)]
        if hidden > 0:
            layers += [nn.Linear(in_dim, hidden), nn.GELU(), nn.Linear(hidden, out_dim)]
        else:
            layers.append(nn.Linear(in_dim, out_dim))
        if layer_norm:
            norm = nn.LayerNorm(out_dim)
            nn.init.constant_(norm.weight, init_scale)
            layers.append(norm)
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


def check_features(
    file: Path, fp: dict[str, str], data_dir: str | Path, modality: Modality | None = None
) -> None:
    """Refuse a features ``file`` (fingerprint ``fp``) whose inputs in ``data_dir`` changed;
    ``modality``: the one it must hold, None: the built-in one its fingerprint names.

    Raises:
        ValueError: Stale, another modality, or a modality that cannot be checked (random
            test features: the message says to pass ``check_fingerprint=False``).
    """
    if modality is None:
        modality = modality_named(fp.get("modality"))
    if modality is None:
        raise ValueError(
            f"{file} holds {fp.get('modality')!r} features, which cannot be checked against "
            f"{data_dir}: pass check_fingerprint=False to use them unchecked"
        )
    check_fresh(file, fp, modality, data_dir)


def read_item_features(
    ctx: BuildContext,
    name: str,
    path: str | None,
    check_fingerprint: bool = True,
    modality: Modality | None = None,
) -> tuple[Tensor, Tensor]:
    """``(features [N+1, F], present [N+1])`` of the item features file ``name`` (or ``path``)
    of ``ctx``'s dataset, refused when stale (``check_features``; no dataset: not checked)."""
    file = features_path(ctx.data_dir, name, path)
    feats, present, fp = load_features(file, ctx.num_items + 1, ctx.data_dir)
    if check_fingerprint and ctx.data_dir is not None:
        check_features(file, fp, ctx.data_dir, modality)
    return feats, present


def write_example_features(
    tmp_path: Path, ctx: BuildContext, name: str, modality: Modality
) -> BuildContext:
    """Random ``features/<name>.safetensors`` under ``tmp_path`` for ``example`` hooks,
    fingerprinted with the folder's item table (a tiny one is written when it has none) so
    staleness checks run and pass; returns ``ctx`` pointed at that folder."""
    folder = Path(tmp_path)
    if not (folder / "items.parquet").is_file():
        write_example_items(folder, ctx.num_items)
    file = folder / "features" / f"{name}.safetensors"
    write_random_features(file, ctx.num_items + 1, modality=modality, dataset=folder)
    return BuildContext(
        ctx.num_items, ctx.num_users, ctx.d_model, str(folder), ctx.time_granularity
    )


class CachedFeatureEncoder(ItemEncoder):
    """Item-side encoder over frozen cached features ``[N+1, F]`` (row 0 = padding).

    Items whose feature is absent (no usable image, empty text) get one learned "missing"
    vector. Items with content but no training interactions still get a content-derived
    vector, so they can be scored (cold start). The features are a non-persistent buffer:
    checkpoints stay small and ``build`` rereads the file.

    Args:
        name: Features file stem under ``{data_dir}/features/`` (e.g. ``clip_text``).
        path: Explicit features file (overrides ``name``).
        hidden: MLP hidden width of the projection; 0 for a single Linear.
        layer_norm: LayerNorm after the projection.
        dropout: Dropout on the frozen features during training.
        normalize: L2-normalise features before projecting (CLIP/MiniLM vectors are compared
            by cosine).
        check_fingerprint: Hash the dataset's inputs of the file's modality (item texts,
            image URLs) as `mmrec embed` does and refuse stale features; files of a modality
            that is not built in (random test features) need False.
    """

    #: The modality the file must hold; None: the one its fingerprint names.
    modality: ClassVar[type[Modality] | None] = None

    def __init__(
        self,
        name: str = "clip_text",
        path: str | None = None,
        hidden: int = 0,
        layer_norm: bool = True,
        dropout: float = 0.0,
        normalize: bool = True,
        check_fingerprint: bool = True,
    ) -> None:
        super().__init__()
        self.name = name
        self.path = path
        self.hidden = hidden
        self.layer_norm = layer_norm
        self.dropout = dropout
        self.normalize = normalize
        self.check_fingerprint = check_fingerprint

    def build(self, ctx: BuildContext) -> None:
        super().build(ctx)
        modality = self.modality() if self.modality is not None else None
        feats, present = read_item_features(
            ctx, self.name, self.path, self.check_fingerprint, modality
        )
        if self.normalize:
            feats = nn.functional.normalize(feats, dim=-1)
        self.register_buffer("features", feats, persistent=False)  # [N+1, F]
        self.register_buffer("present", present, persistent=False)  # [N+1]
        self._init_head(feats.shape[1], ctx.d_model)

    @classmethod
    def example(
        cls, tmp_path: Path, ctx: BuildContext
    ) -> tuple[CachedFeatureEncoder, BuildContext]:
        """An encoder over random features written under ``tmp_path`` (contract and config
        tests), fingerprinted with the folder's item table (a tiny one is written when the
        folder has none), so the staleness check runs and passes."""
        enc = cls()
        return enc, write_example_features(tmp_path, ctx, enc.name, (cls.modality or ItemText)())

    def _init_head(self, in_dim: int, d_model: int) -> None:
        self.proj = Projection(in_dim, d_model, self.hidden, self.layer_norm, self.dropout)
        self.missing = nn.Parameter(torch.randn(d_model) * 0.02)  # [D]

    def content(self, item_idx: Tensor) -> Tensor:
        """Raw features of the items: ``[...] -> [..., F]``."""
        return self.features[item_idx]

    def forward(self, item_idx: Tensor) -> Tensor:  # [...] -> [..., D]
        x = self.proj(self.content(item_idx))
        has = self.present[item_idx].unsqueeze(-1)  # [..., 1]
        return torch.where(has, x, self.missing.to(x.dtype))
