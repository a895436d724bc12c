"""Helpers of the serving tests: models of a dataset's sizes, checkpoints, histories read
apart from the export, the PyTorch top-K the exported model must reproduce, tie-aware checks."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from mmrec.data.batch import history_batch
from mmrec.encoders.rating import RatingEncoder
from mmrec.encoders.time import QueryTimeEncoder, TimestampEncoder
from mmrec.module import MMRecModule

DAY = 86_400


def time_encoders() -> list:
    """The quickstart's event encoders, their gates open and their tables large enough that
    time changes an untrained model's ranking (the parity test then checks it)."""
    return [
        RatingEncoder(init_std=0.5),
        TimestampEncoder(gate_init=1.0, init_std=0.5),
        QueryTimeEncoder(gate_init=1.0, init_std=0.5),
    ]


def build_model(data_dir: Path, seed: int = 0, **kwargs) -> MMRecModule:
    """An untrained model of ``data_dir`` (sizes from its meta.json) with ``kwargs``."""
    meta = json.loads((data_dir / "meta.json").read_text())
    torch.manual_seed(seed)
    return MMRecModule(
        num_items=meta["num_items"],
        num_users=meta["num_users"],
        data_dir=str(data_dir),
        time_granularity=meta["time_granularity"],
        **kwargs,
    ).eval()


def save_checkpoint(model: MMRecModule, path: Path) -> Path:
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams)}, path)
    return path


def torch_top(model: MMRecModule, histories: list[dict], k: int) -> tuple[torch.Tensor, ...]:
    """The PyTorch answer: each history as ``history_batch`` builds it for ``mmrec recommend``
    (padded to ``max_len``), the model's user vectors, its dynamics' term as of the query
    time, history excluded, ``topk_items``: ``scores [U, k]``, ``items [U, k]``."""
    from mmrec.evaluation import topk_items

    max_len = model.hparams.max_len
    rows = [
        history_batch(
            h["items"], h["times"], h["ratings"], h["at"], max_len, h["user_idx"],
            event_rows=h["event_rows"],
        )
        for h in histories
    ]  # fmt: skip
    batch = {key: torch.cat([r[key] for r in rows]) for key in rows[0] if key != "exclude_items"}
    width = max(r["exclude_items"].shape[1] for r in rows)
    exclude = torch.stack(
        [nn.functional.pad(r["exclude_items"][0], (0, width - r["exclude_items"].shape[1]))
         for r in rows]
    )  # fmt: skip
    with torch.no_grad():
        users = model(batch)
        bias = model.dynamics_term(batch["target_time"])
        return topk_items(users, model.item_vectors(), k, exclude, bias=bias)


def dataset_histories(data_dir: Path, users: list[int]) -> list[dict]:
    """Each user's events from ``interactions.parquet`` (read here, apart from the export),
    asked at the day after their last event."""
    import polars as pl

    frame = (
        pl.read_parquet(data_dir / "interactions.parquet")
        .with_row_index("row", offset=1)
        .filter(pl.col("user_idx").is_in(users))
    )
    parts = frame.partition_by("user_idx", as_dict=True, maintain_order=True)
    out = []
    for u in users:
        rows = parts[(u,)]
        times = rows["timestamp"].to_list()
        out.append(
            {
                "user_idx": u,
                "items": rows["item_idx"].to_list(),
                "times": times,
                "ratings": rows["rating"].cast(pl.Float32).fill_null(float("nan")).to_list(),
                "event_rows": rows["row"].cast(pl.Int64).to_list(),
                "at": times[-1] - times[-1] % DAY + DAY,
            }
        )
    return out


def assert_same_top(want_items, want_scores, got, ids, tol: float = 1e-4) -> float:
    """``got`` (``[(asin, score)]``) is the top-K of ``want`` (indices, scores): scores equal
    within ``tol`` place by place, and items may differ only among scores within ``tol`` (ties
    at the K-th place or swapped neighbours). Returns the largest score difference."""
    want_ids = [ids[i] for i in want_items]
    got_ids, got_scores = [a for a, _ in got], [s for _, s in got]
    assert len(got_ids) == len(want_ids)
    diff = max(abs(a - b) for a, b in zip(got_scores, want_scores, strict=True))
    assert diff <= tol, (got, want_ids, want_scores)
    for i, (a, b) in enumerate(zip(got_ids, want_ids, strict=True)):
        if a != b:  # a swap: the two lists' scores there are equal within tol
            assert abs(got_scores[i] - want_scores[i]) <= tol
    extra = set(got_ids) ^ set(want_ids)
    for a in extra:  # in one list only: tied with the K-th item
        s = got_scores[got_ids.index(a)] if a in got_ids else want_scores[want_ids.index(a)]
        assert abs(s - want_scores[-1]) <= tol, (a, s, want_scores[-1])
    return diff
