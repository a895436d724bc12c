"""Categorical user attributes (e.g. location) from users.parquet as an event-side encoder."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from mmrec.encoders.base import BuildContext, EventEncoder


class UserContextEncoder(EventEncoder):
    """Sum of one learned embedding per categorical column of ``users.parquet``.

    The user's vector is added to every real history token (in packed training batches, each
    segment's tokens get their own user's vector). Values are indexed at build time
    (nulls and users outside the table map to a shared "unknown" row); the value tables are
    buffers, so a checkpoint carries them.

    Args:
        columns: Columns of ``users.parquet`` to embed, e.g. ``["location"]``.
        max_values: Most frequent values kept per column; rarer ones share "unknown".
    """

    supports_packing = True  # the user of each slot comes from its segment

    def __init__(self, columns: list[str] | None = None, max_values: int = 10_000) -> None:
        super().__init__()
        self.columns = list(columns or ["location"])
        self.max_values = max_values

    def build(self, ctx: BuildContext) -> None:
        super().build(ctx)
        if ctx.data_dir is None:
            raise ValueError(
                "UserContextEncoder needs data_dir (the prepared dataset with users.parquet)"
            )
        import polars as pl

        path = Path(ctx.data_dir) / "users.parquet"
        if not path.exists():
            raise FileNotFoundError(
                f"UserContextEncoder: {path} not found; run `mmrec prepare` first"
            )
        users = pl.read_parquet(path)
        missing = [c for c in self.columns if c not in users.columns]
        if missing:
            raise ValueError(
                f"UserContextEncoder: columns {missing} not in {path} (has {users.columns}); "
                "remove this encoder or set `columns` to existing ones"
            )
        users = users.sort("user_idx")
        codes = torch.zeros(
            ctx.num_users + 1, len(self.columns), dtype=torch.long
        )  # last row: unknown
        self.embeddings = nn.ModuleList()
        idx = torch.as_tensor(users["user_idx"].to_numpy().astype("int64"))
        keep = (idx >= 0) & (idx < ctx.num_users)
        for j, col in enumerate(self.columns):
            values = users[col].cast(pl.Utf8)
            counts = values.drop_nulls().value_counts(sort=True).head(self.max_values)
            vocab = {v: i + 1 for i, v in enumerate(counts[col].to_list())}  # 0 = unknown
            col_codes = torch.as_tensor(
                [vocab.get(v, 0) for v in values.to_list()], dtype=torch.long
            )
            codes[idx[keep], j] = col_codes[keep]
            emb = nn.Embedding(len(vocab) + 1, ctx.d_model)
            nn.init.normal_(emb.weight, std=0.02)
            self.embeddings.append(emb)
        self.register_buffer("codes", codes)  # [U + 1, C]
        self.num_users = ctx.num_users

    def forward(self, batch: dict[str, Tensor]) -> Tensor:  # -> [B, L, D]
        user = batch["user_idx"]  # [B] (packed: [S], one per segment)
        user = torch.where((user >= 0) & (user < self.num_users), user, self.num_users)
        codes = self.codes[user]  # [B, C]
        vec = sum(emb(codes[:, j]) for j, emb in enumerate(self.embeddings))  # [B, D]
        mask = batch["mask"].unsqueeze(-1).to(vec.dtype)  # [B, L, 1]
        if "segments" in batch:  # packed rows: segment s (1-based) is user_idx[s - 1]
            slot_vec = vec[(batch["segments"] - 1).clamp_min(0)]  # [B, L, D]
            return slot_vec * mask
        return vec.unsqueeze(1) * mask

    @classmethod
    def example(cls, tmp_path: Path, ctx: BuildContext) -> tuple[UserContextEncoder, BuildContext]:
        import dataclasses

        import polars as pl

        locations = [["DE", "US", None][u % 3] for u in range(ctx.num_users)]
        pl.DataFrame(
            {
                "user_idx": list(range(ctx.num_users)),
                "user_id": [f"u{u}" for u in range(ctx.num_users)],
                "location": locations,
            },
            schema_overrides={"user_idx": pl.Int32},
        ).write_parquet(Path(tmp_path) / "users.parquet")
        return cls(columns=["location"]), dataclasses.replace(ctx, data_dir=str(tmp_path))
