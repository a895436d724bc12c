"""Item encoders over cached `mmrec embed` features: frozen vectors projected to d_model."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import Tensor, nn

from mmrec.encoders.base import BuildContext, ItemEncoder


def features_path(ctx: BuildContext, name: str, path: str | None) -> Path:
    """``path`` if given, else ``{ctx.data_dir}/features/{name}.safetensors``."""
    if path is not None:
        return Path(path)
    if ctx.data_dir is None:
        raise ValueError(f"no data_dir to find features/{name}.safetensors: set `path`")
    return Path(ctx.data_dir) / "features" / f"{name}.safetensors"


def load_features(file: Path, rows: int) -> tuple[Tensor, Tensor, dict]:
    """``(features [rows, F] float32, present [rows] bool, fingerprint)`` from a features file.

    Raises:
        FileNotFoundError / ValueError with the `mmrec embed` command that fixes it.
    """
    from safetensors import safe_open

    if not file.is_file():
        raise FileNotFoundError(
            f"{file} not found: run `mmrec embed --dataset <DIR> --modalities ...` first"
        )
    with safe_open(str(file), framework="pt") as f:
        meta = f.metadata() or {}
        feats = f.get_tensor("features").float()
        present = f.get_tensor("present").reshape(-1).bool()
    if feats.shape[0] != rows:
        raise ValueError(
            f"{file} has {feats.shape[0]} rows but the dataset needs {rows} (padding + items): "
            "the dataset changed since `mmrec embed`; rerun it with --force"
        )
    present = present.clone()
    present[0] = False
    return feats, present, json.loads(meta.get("fingerprint", "{}"))


def check_items_fingerprint(fp: dict, data_dir: str | None, file: Path) -> None:
    """Raise if the item table's current content differs from what ``file`` was computed on."""
    modality = fp.get("modality")
    if data_dir is None or modality not in ("text", "image"):
        return
    from mmrec.content.inputs import inputs_sha256, load_inputs

    now = inputs_sha256(load_inputs(data_dir, modality))
    if now != fp.get("items_sha256"):
        raise ValueError(
            f"{file} is stale: the {modality} of items.parquet changed since it was computed; "
            "rerun `mmrec embed ... --force`"
        )


def write_features(file: Path, rows: int, dim: int = 8, seed: int = 0) -> Path:
    """Random features ``[rows, dim]`` in the `mmrec embed` file format, every 3rd row absent."""
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(seed)
    feats = torch.randn(rows, dim, generator=g)
    present = torch.arange(rows) % 3 != 0
    feats[~present] = 0
    file.parent.mkdir(parents=True, exist_ok=True)
    meta = {"fingerprint": json.dumps({"modality": "random", "rows": str(rows)})}
    save_file({"features": feats, "present": present.unsqueeze(0)}, str(file), metadata=meta)
    return file


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
        check_fingerprint: Recompute the hash of the item table's text/images and refuse
            stale features.
    """

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
        file = features_path(ctx, self.name, self.path)
        feats, present, fp = load_features(file, ctx.num_items + 1)
        if self.check_fingerprint:
            check_items_fingerprint(fp, ctx.data_dir, file)
        if self.normalize:
            feats = nn.functional.normalize(feats, dim=-1)
        self.register_buffer("features", feats, persistent=False)  # [N+1, F]
        self.register_buffer("present", present, persistent=False)  # [N+1]
        self._init_head(feats.shape[1], ctx.d_model)

    @classmethod
    def example(
        cls, tmp_path: Path, ctx: BuildContext
    ) -> tuple[CachedFeatureEncoder, BuildContext]:
        """An encoder over random features written under ``tmp_path`` (contract tests)."""
        enc = cls()
        write_features(Path(tmp_path) / "features" / f"{enc.name}.safetensors", ctx.num_items + 1)
        return enc, BuildContext(
            ctx.num_items, ctx.num_users, ctx.d_model, str(tmp_path), ctx.time_granularity
        )

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
