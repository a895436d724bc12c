"""`mmrec export`: everything serving needs in one folder: the user side as ONNX, the item
vectors, the item and user id maps, the event log, the item dynamics and a manifest."""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import polars as pl
import torch

import mmrec
from mmrec.config import ConfigError
from mmrec.data.batch import EVENT_FIELDS, flat_events
from mmrec.serving import bundle
from mmrec.serving.bundle import Query, serving_batch
from mmrec.serving.onnx_model import (
    DEFAULT_OPSET,
    ExportFailed,
    UserTower,
    culprit,
    export_checked,
    tower_inputs,
)

#: Largest difference between ONNX Runtime's and PyTorch's user vectors that export accepts.
ATOL = 1e-4


def _events(data_dir: Path) -> pl.DataFrame:
    """Every event of the dataset as serving reads it: ``user_idx`` and each per-event batch
    field (the batch contract's reader, ``flat_events``), sorted by user then time (stable)."""
    frame = pl.read_parquet(data_dir / "interactions.parquet")
    flat = flat_events(frame, np.arange(frame.height))
    out = pl.DataFrame({"user_idx": frame["user_idx"].cast(pl.Int64)})
    out = out.with_columns(
        [pl.Series(f.key, flat[f.key][:-1].numpy()) for f in EVENT_FIELDS]
    )  # the sentinel (last) dropped
    return out.sort(["user_idx", "timestamps"], maintain_order=True)


def _probe_queries(events: pl.DataFrame, max_len: int, count: int, seed: int) -> list[Query]:
    """Histories of ``count`` users of the dataset (a spread of lengths, each at its last
    event's time), to derive the graph's inputs and check it against PyTorch."""
    users = events["user_idx"].unique().sort().to_numpy()
    pick = np.random.default_rng(seed).choice(users, size=min(count, len(users)), replace=False)
    queries = []
    for j, u in enumerate(pick.tolist()):
        rows = events.filter(pl.col("user_idx") == u)
        cut = 1 + j % max(1, min(rows.height, max_len + 3))  # 1 .. past max_len events
        values = {f.key: rows[f.key].to_numpy()[:cut] for f in EVENT_FIELDS}
        at = int(values["timestamps"][-1]) + 86_400 * (j % 40)
        queries.append(Query(values, at, 10, int(u)))
    return queries


def export_model(
    model,
    data_dir: str | Path,
    out: str | Path,
    opset: int = DEFAULT_OPSET,
    checkpoint: dict | None = None,
) -> dict:
    """Write ``model``'s serving folder into ``out`` (which must be empty or absent).

    Args:
        model: A trained ``MMRecModule``.
        data_dir: The dataset folder it was trained on (items, users, interactions).
        out: The folder to write.
        opset: ONNX opset of the graph.
        checkpoint: What the manifest says of the checkpoint (path, sha256).

    Returns:
        The manifest.

    Raises:
        ConfigError: A component cannot be exported (one line naming it), or the data does not
            match the model.
    """
    data_dir, out = Path(data_dir), Path(out)
    model = model.cpu().eval()
    meta = json.loads((data_dir / "meta.json").read_text())
    if int(meta["num_items"]) != model.num_items:
        raise ConfigError(
            f"{data_dir} has {meta['num_items']} items, the model {model.num_items}: wrong "
            "--data_dir for this checkpoint?"
        )
    max_len = int(model.hparams.max_len)
    with torch.no_grad():
        item_vecs = model.item_vectors().float()  # [N + 1, D]
    events = _events(data_dir)
    probes = _probe_queries(events, max_len, 64, seed=0)
    batches = [serving_batch(probes, max_len), serving_batch(probes[:1], max_len)]
    batches.append(serving_batch(probes[5:12], max_len))
    inputs = tower_inputs(model, batches[0], item_vecs)
    tower = UserTower(model, inputs, item_vecs)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out) as tmp:
        path = Path(tmp) / bundle.TOWER
        try:
            exporter, diff = export_checked(
                tower, inputs, batches, path, opset, max_len=max_len, atol=ATOL
            )
        except ExportFailed as err:
            which = culprit(model, batches, item_vecs, Path(tmp), opset, ATOL)
            raise ConfigError(f"cannot export {which or f'the user tower: {err}'}") from None
        shutil.move(str(path), out / bundle.TOWER)
    _write_tables(model, data_dir, out, item_vecs, events)
    onnx = {"exporter": exporter, "opset": opset, "max_abs_diff_vs_torch": diff}
    manifest = _manifest(model, meta, data_dir, inputs, batches[0], onnx, checkpoint)
    (out / bundle.MANIFEST).write_text(json.dumps(manifest, indent=2, default=str) + "\n")
    _check_dynamics(model, out)
    return manifest


def _write_tables(model, data_dir: Path, out: Path, item_vecs, events: pl.DataFrame) -> None:
    """Item vectors (safetensors), item and user id maps, events, dynamics weights."""
    from safetensors.torch import save_file

    save_file({"item_vectors": item_vecs.contiguous()}, out / bundle.ITEM_VECTORS)
    pl.read_parquet(data_dir / "items.parquet", columns=["item_idx", "item_id"]).write_parquet(
        out / bundle.ITEMS
    )
    pl.read_parquet(data_dir / "users.parquet", columns=["user_idx", "user_id"]).write_parquet(
        out / bundle.USERS
    )
    events.write_parquet(out / bundle.EVENTS)
    if len(model.dynamics):
        state = {
            f"{i}.{k}": v.detach().cpu().contiguous()
            for i, member in enumerate(model.dynamics)
            for k, v in member.state_dict().items()
        }
        save_file(state, out / bundle.DYNAMICS)


def _manifest(model, meta, data_dir, inputs, batch, onnx, checkpoint) -> dict:
    """The manifest: versions, the checkpoint's config and hash, inputs and axes, files."""
    hparams = {k: v for k, v in dict(model.hparams).items() if not k.startswith("_")}
    span = meta.get("time_range")
    if not span:
        times = pl.read_parquet(data_dir / "interactions.parquet", columns=["timestamp"])
        span = [int(times["timestamp"].min()), int(times["timestamp"].max())]
    specs = []
    for name in inputs:
        t = batch[name]
        shape = ["batch", "length"] if t.dim() == 2 else ["batch"]
        pad = next((f.pad for f in EVENT_FIELDS if f.key == name), None)
        spec = {"name": name, "dtype": str(t.dtype).removeprefix("torch."), "shape": shape}
        if pad is not None:  # JSON has no NaN: a float pad that is not finite as a string
            spec["pad"] = pad if np.isfinite(pad) else str(pad)
        specs.append(spec)
    return {
        "format": bundle.FORMAT,
        "mmrec_version": mmrec.__version__,
        "torch_version": torch.__version__,
        "exported_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "checkpoint": {**(checkpoint or {}), "config": hparams},
        "dataset": {
            "data_dir": str(Path(data_dir).resolve()),
            "fingerprint": meta.get("fingerprint"),
            "num_users": int(meta["num_users"]),
            "num_interactions": int(meta.get("num_interactions", 0)),
            "time_granularity": model.hparams.get("time_granularity")
            or meta.get("time_granularity"),
            "time_range": [int(span[0]), int(span[1])],
        },
        "model": {
            "num_items": model.num_items,
            "d_model": int(model.hparams.d_model),
            "max_len": int(model.hparams.max_len),
        },
        "onnx": {
            "file": bundle.TOWER,
            "exporter": onnx["exporter"],
            "opset": onnx["opset"],
            "inputs": specs,
            "outputs": [
                {"name": "user_vectors", "dtype": "float32", "shape": ["batch", "d_model"]}
            ],
            "dynamic_axes": {"batch": "axis 0 of every input and output", "length": "axis 1"},
            "max_abs_diff_vs_torch": onnx["max_abs_diff_vs_torch"],
        },
        "dynamics": list(model.hparams.get("dynamics") or []),
        "files": {
            "item_vectors": bundle.ITEM_VECTORS,
            "items": bundle.ITEMS,
            "users": bundle.USERS,
            "events": bundle.EVENTS,
            **({"dynamics": bundle.DYNAMICS} if len(model.dynamics) else {}),
        },
    }


def _check_dynamics(model, out: Path) -> None:
    """The dynamics rebuilt from the folder give the model's term (else a one-line error)."""
    if not len(model.dynamics):
        return
    served = bundle.ServedModel(out, tower=lambda batch: None)
    span = served.time_range
    times = torch.tensor([span[0], (span[0] + span[1]) // 2, span[1] + 86_400])
    busiest = torch.bincount(served.dynamics.log.items, minlength=2)[1:].topk(2).indices + 1
    last = torch.cat([busiest, torch.zeros(1, dtype=torch.long)])[: len(times)]  # and none
    with torch.no_grad():
        want = model.dynamics_term(times, last).float()
    got = served.dynamics(times, last)
    if not torch.allclose(got, want, atol=ATOL, rtol=1e-4):
        names = ", ".join(
            f"dynamics[{i}] ({type(d).__name__})" for i, d in enumerate(model.dynamics)
        )
        raise ConfigError(f"cannot export {names}: rebuilt from its spec it computes other terms")


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file (read in 1 MB blocks)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(2**20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass
class ExportConfig:
    """Settings of ``mmrec export``: a checkpoint as a folder for ``mmrec serve``.

    The folder holds the user side as ONNX (``user_tower.onnx``: the history fields the model's
    encoders read plus the query time -> user vectors, dynamic batch and history length), the
    item vectors (safetensors), the item id map (ASIN <-> index), users and their events, the
    item dynamics' weights when the model has them, and ``manifest.json``.

    Args:
        ckpt_path: Lightning checkpoint (.ckpt) of a trained model.
        out: Folder to write (created; must be empty unless ``overwrite``).
        data_dir: The prepared dataset folder (default: the one the checkpoint was trained on).
        opset: ONNX opset of the graph.
        overwrite: Replace the files of a non-empty ``out``.
        trust_module: Packages outside mmrec that the checkpoint's components may be imported
            from (importing runs code: only for checkpoints you trust).
    """

    ckpt_path: str
    out: str
    data_dir: str | None = None
    opset: int = DEFAULT_OPSET
    overwrite: bool = False
    trust_module: list[str] | None = None


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``mmrec export``; returns the exit status."""
    from mmrec.config import bool_flags
    from mmrec.parsing import dataclass_parser, exit_status, parse_settings

    parser = dataclass_parser(
        ExportConfig, "mmrec export", "Export a checkpoint for serving (ONNX + item vectors)."
    )
    argv = bool_flags(sys.argv[1:] if argv is None else argv, ["overwrite"])
    cfg = parse_settings(ExportConfig, parser, argv)
    return exit_status("mmrec export", lambda: run(cfg))


def run(cfg: ExportConfig) -> dict:
    """Load the checkpoint, export it into ``cfg.out`` and print what was written."""
    from mmrec.module import MMRecModule

    out = Path(cfg.out)
    if out.exists() and any(out.iterdir()) and not cfg.overwrite:
        raise ConfigError(f"--out {out} is not empty: pass another folder or --overwrite")
    if not Path(cfg.ckpt_path).is_file():
        raise FileNotFoundError(f"checkpoint {cfg.ckpt_path} not found")
    kw: dict = {"data_dir": cfg.data_dir} if cfg.data_dir else {}
    if cfg.trust_module:
        kw["trusted_modules"] = list(cfg.trust_module)
    model = MMRecModule.load_from_checkpoint(cfg.ckpt_path, map_location="cpu", **kw)
    data_dir = cfg.data_dir or model.hparams.get("data_dir")
    if not data_dir or not (Path(data_dir) / "meta.json").is_file():
        raise ConfigError(
            f"dataset folder {data_dir!r} of the checkpoint not found: pass --data_dir DIR"
        )
    ckpt = {"path": str(Path(cfg.ckpt_path).resolve()), "sha256": file_sha256(cfg.ckpt_path)}
    manifest = export_model(model, data_dir, out, cfg.opset, ckpt)
    names = ", ".join(i["name"] for i in manifest["onnx"]["inputs"])
    print(f"mmrec export: wrote {out}: user tower ({names} -> user vectors), "
          f"{manifest['model']['num_items']} item vectors, "
          f"{manifest['dataset']['num_users']} users, "
          f"{'item dynamics, ' if manifest['dynamics'] else ''}"
          f"max |ONNX - PyTorch| {manifest['onnx']['max_abs_diff_vs_torch']:.1e} "
          f"({manifest['onnx']['exporter']} exporter)")  # fmt: skip
    return manifest


if __name__ == "__main__":
    sys.exit(main())
