"""The encoder contract, checked over every encoder class found under mmrec.encoders.

Each concrete subclass of ItemEncoder / EventEncoder is built with ``cls.example(tmp_path, ctx)``
(default: ``cls()`` with the context below; encoders that need files override that classmethod,
see mmrec/encoders/base.py). The event batch holds exactly the keys of the batch contract for
training, without ``targets``: an event encoder that reads targets fails here.
"""

from __future__ import annotations

import importlib
import pkgutil

import pytest
import torch

import mmrec.encoders
from mmrec.config import component_spec, instantiate
from mmrec.encoders.base import BuildContext, EventEncoder, ItemEncoder

CTX = BuildContext(num_items=30, num_users=6, d_model=16, data_dir=None, time_granularity="day")
B, L = 3, 7
DAY = 86_400


def _all_subclasses(cls: type) -> list[type]:
    out = []
    for sub in cls.__subclasses__():
        out += [sub, *_all_subclasses(sub)]
    return out


def _encoder_classes() -> list[type]:
    for info in pkgutil.walk_packages(mmrec.encoders.__path__, "mmrec.encoders."):
        importlib.import_module(info.name)
    found = {}
    for base in (ItemEncoder, EventEncoder):
        for cls in _all_subclasses(base):
            # only the package's own (test modules define encoders of their own)
            if (
                cls.__module__.startswith("mmrec.encoders")
                and cls.forward not in (ItemEncoder.forward, EventEncoder.forward)
                and not getattr(cls, "__abstractmethods__", None)
            ):
                found[f"{cls.__module__}.{cls.__qualname__}"] = cls
    return [found[k] for k in sorted(found)]


ENCODERS = _encoder_classes()


def test_encoders_are_discovered():
    names = {c.__name__ for c in ENCODERS}
    assert {"ItemIdEncoder", "RatingEncoder", "UserContextEncoder"} <= names


def _lengths() -> torch.Tensor:
    return torch.tensor([L, 3, 1])


def make_batch(pad_fill: int = 0, extra_pad: int = 0, seed: int = 0) -> dict[str, torch.Tensor]:
    """Left-padded batch; ``pad_fill`` seeds garbage at padded positions, ``extra_pad`` widens L."""
    g = torch.Generator().manual_seed(seed)
    length = L + extra_pad
    pos = torch.arange(length)
    mask = pos.unsqueeze(0) >= (length - _lengths()).unsqueeze(1)  # [B, L]
    items = torch.randint(1, CTX.num_items + 1, (B, length), generator=g)
    days = torch.randint(0, 5, (B, length), generator=g).cumsum(-1) + 15_700  # ~2013
    ts = days * DAY
    ratings = torch.randint(1, 6, (B, length), generator=g).float()
    ratings[0, -2] = float("nan")  # a real event without rating
    query = torch.cat([ts[:, 1:], ts[:, -1:] + 3 * DAY], dim=1)
    batch = {
        "item_ids": torch.where(mask, items, 0),
        "mask": mask,
        "timestamps": torch.where(mask, ts, 0),
        "ratings": torch.where(mask, ratings, float("nan")),
        "query_time": torch.where(mask, query, 0),
        "user_idx": torch.tensor([0, 4, 5]),
        # 1 + the event's row in interactions.parquet (0 at padding); encoders' example tables
        # have at least 64 rows
        "event_rows": torch.where(mask, torch.randint(1, 64, (B, length), generator=g), 0),
    }
    if pad_fill:
        gp = torch.Generator().manual_seed(pad_fill)
        pad = ~mask
        batch["item_ids"] = torch.where(
            pad, torch.randint(1, CTX.num_items + 1, (B, length), generator=gp), batch["item_ids"]
        )
        batch["timestamps"] = torch.where(
            pad, torch.randint(1, 2 * 10**9, (B, length), generator=gp), batch["timestamps"]
        )
        batch["ratings"] = torch.where(
            pad, torch.rand(B, length, generator=gp) * 5, batch["ratings"]
        )
        batch["query_time"] = torch.where(
            pad, torch.randint(1, 2 * 10**9, (B, length), generator=gp), batch["query_time"]
        )
        batch["event_rows"] = torch.where(
            pad, torch.randint(1, 64, (B, length), generator=gp), batch["event_rows"]
        )
    return batch


def _align_right(batch: dict[str, torch.Tensor], extra_pad: int) -> dict[str, torch.Tensor]:
    """Same events with ``extra_pad`` more padding on the left."""
    out = {}
    for k, v in batch.items():
        if v.ndim == 2:
            fill = float("nan") if v.is_floating_point() else 0
            out[k] = torch.cat([torch.full((B, extra_pad), fill, dtype=v.dtype), v], dim=1)
        else:
            out[k] = v
    return out


def _build(cls: type, tmp_path) -> torch.nn.Module:
    torch.manual_seed(0)
    enc, ctx = cls.example(tmp_path, CTX)
    enc.build(ctx)
    return enc.eval()


@pytest.mark.parametrize("cls", ENCODERS, ids=lambda c: c.__name__)
def test_output_shape_and_padding(cls, tmp_path):
    enc = _build(cls, tmp_path)
    batch = make_batch()
    mask = batch["mask"]
    with torch.no_grad():
        if issubclass(cls, ItemEncoder):
            out = enc(batch["item_ids"])
            table = enc.all_items()
            assert table.shape == (CTX.num_items + 1, CTX.d_model)
            torch.testing.assert_close(out[mask], table[batch["item_ids"][mask]])
            garbage = enc(make_batch(pad_fill=3)["item_ids"])
        else:
            out = enc(batch)
            garbage = enc(make_batch(pad_fill=3))
            shifted = enc(_align_right(batch, 2))[:, 2:]
            torch.testing.assert_close(
                shifted[mask], out[mask], msg="output depends on left-padding width"
            )
    assert out.shape == (B, L, CTX.d_model), f"{cls.__name__} returned {tuple(out.shape)}"
    assert torch.isfinite(out[mask]).all(), (
        f"{cls.__name__} gives non-finite values at real positions"
    )
    torch.testing.assert_close(garbage[mask], out[mask], msg="output depends on padded positions")


@pytest.mark.parametrize("cls", ENCODERS, ids=lambda c: c.__name__)
def test_batch_not_mutated_and_frozen_parts_get_no_gradient(cls, tmp_path):
    enc = _build(cls, tmp_path).train()
    batch = make_batch()
    before = {k: v.clone() for k, v in batch.items()}
    out = enc(batch["item_ids"]) if issubclass(cls, ItemEncoder) else enc(batch)
    if issubclass(cls, ItemEncoder):
        out = out.sum() + enc.all_items().sum()
    out.float().sum().backward()
    assert set(batch) == set(before), f"{cls.__name__} added or removed batch keys"
    for k, v in before.items():
        torch.testing.assert_close(
            batch[k], v, equal_nan=True, msg=f"{cls.__name__} mutated batch[{k!r}]"
        )
    frozen = [n for n, p in enc.named_parameters() if not p.requires_grad and p.grad is not None]
    assert not frozen, f"frozen parameters of {cls.__name__} got gradients: {frozen}"
    # every trainable parameter must be in the graph (DDP fails on unused parameters otherwise)
    unused = [n for n, p in enc.named_parameters() if p.requires_grad and p.grad is None]
    assert not unused, f"trainable parameters of {cls.__name__} got no gradient: {unused}"


@pytest.mark.parametrize("cls", ENCODERS, ids=lambda c: c.__name__)
def test_spec_round_trip(cls, tmp_path):
    enc, ctx = cls.example(tmp_path, CTX)
    spec = component_spec(enc)
    assert spec["class_path"].endswith(cls.__qualname__)
    again = instantiate(
        spec, (ItemEncoder if issubclass(cls, ItemEncoder) else EventEncoder), "encoder"
    )
    assert type(again) is cls and component_spec(again) == spec
    again.build(ctx)
    with pytest.raises(RuntimeError, match="called twice"):
        again.build(ctx)


# unit-norm by design (cosine scores times a learned scale)
_OWN_SCALE = {"CosineItemIdEncoder"}


@pytest.mark.parametrize(
    "cls", [c for c in ENCODERS if c.__name__ not in _OWN_SCALE], ids=lambda c: c.__name__
)
def test_output_starts_at_id_embedding_scale(cls, tmp_path):
    """Summed or fused with item-ID embeddings (std 0.02), an encoder that starts much larger
    drowns them and the model first has to unlearn it (a default-initialised RatingEncoder started
    at RMS ~0.33 and cost All_Beauty 2023 0.058 -> 0.034 NDCG@10)."""
    enc = _build(cls, tmp_path)
    batch = make_batch()
    with torch.no_grad():
        out = enc(batch["item_ids"]) if issubclass(cls, ItemEncoder) else enc(batch)
    rms = out[batch["mask"]].pow(2).mean(-1).sqrt()
    assert float(rms.max()) <= 0.05, (
        f"{cls.__name__} starts at per-token RMS {float(rms.max()):.3f} (> 0.05)"
    )
