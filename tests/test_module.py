"""MMRecModule: building, padding invariance, checkpoint rebuild, pretrained GPT-2, ID vs
popularity."""

from __future__ import annotations

import lightning as L
import numpy as np
import pytest
import torch

from mmrec.data.datamodule import AmazonDataModule
from mmrec.encoders.item_id import ItemIdEncoder
from mmrec.encoders.rating import RatingEncoder
from mmrec.encoders.user_context import UserContextEncoder
from mmrec.fusion import ConcatLinearFusion, GatedFusion, SumFusion
from mmrec.losses import BCEOneNegative, SampledSoftmax
from mmrec.module import MMRecModule
from mmrec.sequence import GPT2Sequence
from mmrec.synthetic.dataset import make_synthetic_dataset


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_synthetic_dataset(
        tmp_path_factory.mktemp("syn") / "ds", num_users=120, num_items=40, seed=0
    )


def _dm(path, **kw) -> AmazonDataModule:
    return AmazonDataModule(str(path), max_len=8, batch_size=32, eval_batch_size=64, **kw)


def _model(dm: AmazonDataModule, **kw) -> MMRecModule:
    kw.setdefault("sequence", GPT2Sequence(n_layer=1, n_head=2, dropout=0.0))
    return MMRecModule.for_data(
        dm,
        d_model=16,
        **kw,
    )


def _trainer(tmp_path, **kw) -> L.Trainer:
    kw.setdefault("max_epochs", 1)
    return L.Trainer(
        default_root_dir=tmp_path,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        deterministic=True,
        **kw,
    )


def _first(loader) -> dict[str, torch.Tensor]:
    return next(iter(loader))


def test_user_vectors_ignore_padding_width(dataset):
    dm = _dm(dataset)
    model = _model(
        dm, event_encoders=[RatingEncoder(), UserContextEncoder(columns=["location"])]
    ).eval()
    batch = _first(dm.test_dataloader())
    wider = {k: v for k, v in batch.items()}
    for key, fill in (
        ("item_ids", 0),
        ("mask", False),
        ("timestamps", 0),
        ("ratings", float("nan")),
        ("query_time", 0),
    ):
        pad = torch.full((batch[key].shape[0], 3), fill, dtype=batch[key].dtype)
        wider[key] = torch.cat([pad, batch[key]], dim=1)
    model.sequence.max_len = 11
    model.sequence.gpt2.wpe.weight.data = torch.cat(
        [model.sequence.gpt2.wpe.weight.data, torch.zeros(3, 16)]
    )
    with torch.no_grad():
        torch.testing.assert_close(model(wider), model(batch))
        assert model(batch).shape == (batch["item_ids"].shape[0], 16)


def test_history_longer_than_max_len_is_a_clear_error(dataset):
    dm = _dm(dataset)
    model = _model(dm)
    batch = {
        "item_ids": torch.ones(2, 9, dtype=torch.long),
        "mask": torch.ones(2, 9, dtype=torch.bool),
    }
    with pytest.raises(ValueError, match="max_len 8"):
        model(batch)
    with pytest.raises(TypeError, match="RatingEncoder is not an ItemEncoder"):
        _model(dm, item_encoders=[RatingEncoder()])


@pytest.mark.parametrize("fusion", [SumFusion, ConcatLinearFusion, GatedFusion])
def test_fusion_of_two_item_encoders(dataset, fusion):
    dm = _dm(dataset)
    model = _model(
        dm, item_encoders=[ItemIdEncoder(), ItemIdEncoder(init_std=0.1)], fusion=fusion()
    )
    vecs = model.item_vectors()
    assert vecs.shape == (dm.num_items + 1, 16)
    if fusion is GatedFusion:  # gates start uniform: equal to the sum
        a, b = (e.all_items() for e in model.item_encoders)
        torch.testing.assert_close(vecs, a + b)


def test_checkpoint_alone_rebuilds_python_model(dataset, tmp_path):
    dm = _dm(dataset)
    model = _model(
        dm,
        event_encoders=[RatingEncoder(hidden=8), UserContextEncoder(columns=["location"])],
        item_encoders=[ItemIdEncoder(), ItemIdEncoder()],
        fusion=ConcatLinearFusion(),
        loss=SampledSoftmax(num_negatives=8, alpha=0.5),
    )
    trainer = _trainer(tmp_path, max_steps=2, limit_val_batches=1)
    trainer.fit(model, datamodule=dm)
    assert model.loss.probs[1:].std() > 0, "popularity counts from the datamodule were not used"
    trainer.save_checkpoint(tmp_path / "m.ckpt")
    again = MMRecModule.load_from_checkpoint(tmp_path / "m.ckpt", weights_only=True)
    assert [type(e) for e in again.event_encoders] == [RatingEncoder, UserContextEncoder]
    assert isinstance(again.fusion, ConcatLinearFusion) and again.event_encoders[0].hidden == 8
    batch = _first(dm.test_dataloader())
    with torch.no_grad():
        torch.testing.assert_close(again.eval()(batch), model.eval()(batch))


def test_pretrained_gpt2_with_projections(dataset, tmp_path):
    from transformers import GPT2Config, GPT2Model

    torch.manual_seed(1)
    GPT2Model(
        GPT2Config(n_embd=24, n_layer=2, n_head=2, n_positions=32, vocab_size=10)
    ).save_pretrained(tmp_path / "g")
    reference = GPT2Model.from_pretrained(tmp_path / "g")
    dm = _dm(dataset)
    model = _model(dm, sequence=GPT2Sequence(pretrained_path=str(tmp_path / "g"), dropout=0.0))
    assert (
        isinstance(model.sequence.proj_in, torch.nn.Linear)
        and model.sequence.gpt2.config.n_layer == 2
    )
    trainer = _trainer(tmp_path, max_steps=0, limit_val_batches=0)
    trainer.fit(model, datamodule=dm)  # configure_model loads the weights at fit
    torch.testing.assert_close(
        model.sequence.gpt2.h[1].mlp.c_fc.weight, reference.h[1].mlp.c_fc.weight
    )
    torch.testing.assert_close(model.sequence.gpt2.wpe.weight, reference.wpe.weight[:8])
    # same function as the checkpoint's gelu_new (fused kernel): same hidden states
    assert model.sequence.gpt2.config.activation_function == "gelu_pytorch_tanh"
    assert reference.config.activation_function == "gelu_new"
    x = torch.randn(3, 8, 24)
    model.sequence.gpt2.eval(), reference.eval()
    with torch.no_grad():
        torch.testing.assert_close(
            model.sequence.gpt2(inputs_embeds=x).last_hidden_state,
            reference(inputs_embeds=x).last_hidden_state,
            atol=1e-5,
            rtol=1e-5,
        )


def _popularity_ndcg(dm: AmazonDataModule) -> float:
    from mmrec.evaluation import rank_targets
    from mmrec.evaluation.metrics import RankingMetrics

    metrics = RankingMetrics(ks=(10,))
    counts = dm.item_train_counts.float()
    for batch in dm.test_dataloader():
        users = torch.ones(batch["item_ids"].shape[0], 1)
        ranks = rank_targets(users, counts[:, None], batch["target_items"], batch["exclude_items"])
        metrics.update(ranks)
    return float(metrics.compute()["ndcg@10"])


def test_id_model_beats_popularity_on_synthetic_data(tmp_path):
    """The planted successor structure is learnable from item ids; popularity cannot see it."""
    path = make_synthetic_dataset(tmp_path / "ds", num_users=600, num_items=100, seed=3)
    dm = AmazonDataModule(str(path), max_len=10, batch_size=64, eval_batch_size=256)
    L.seed_everything(0)
    model = _model(dm, lr=3e-3)
    trainer = _trainer(tmp_path, max_epochs=12)
    trainer.fit(model, datamodule=dm)
    ndcg = trainer.test(model, datamodule=dm, verbose=False)[0]["test/ndcg@10"]
    pop = _popularity_ndcg(dm)
    print(f"synthetic NDCG@10: ID model {ndcg:.4f}, popularity {pop:.4f}")
    assert ndcg >= 2 * pop and ndcg > 0.2


def test_bce_loss_trains(dataset, tmp_path):
    dm = _dm(dataset)
    model = _model(dm, loss=BCEOneNegative())
    before = [p.detach().clone() for p in model.parameters()]
    _trainer(tmp_path, max_steps=2, limit_val_batches=0).fit(model, datamodule=dm)
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def test_ranking_runs_in_fp32_under_bf16_autocast(dataset, monkeypatch):
    """Evaluation scores must not be rounded to bf16 (that creates ties among 12k items)."""
    import mmrec.evaluation

    dm = _dm(dataset)
    model = _model(dm).eval()
    seen = {}
    real = mmrec.evaluation.rank_targets

    def spy(user_vecs, item_vecs, *args, **kw):
        seen["dtype"] = (user_vecs @ item_vecs.T).dtype
        return real(user_vecs, item_vecs, *args, **kw)

    monkeypatch.setattr(mmrec.evaluation, "rank_targets", spy)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        model._eval_step(_first(dm.test_dataloader()), model.test_metrics)
    assert seen["dtype"] == torch.float32


def test_test_slices_logged_and_written(dataset, tmp_path):
    """Test-time slices: overall users split exactly over months/holiday/history; CSV and PNG
    written."""
    dm = _dm(dataset)
    model = _model(dm)
    trainer = _trainer(tmp_path, max_steps=1, limit_val_batches=0)
    trainer.fit(model, datamodule=dm)
    logged = trainer.test(model, datamodule=dm, verbose=False)[0]
    res = model.slice_results
    n_users = sum(len(b["user_idx"]) for b in dm.test_dataloader())
    for kind in ("month=", "holiday=", "history="):
        total = sum(v for k, v in res.items() if f"slice/{kind}" in k and k.endswith("/users"))
        assert total == n_users, kind
    # the users-weighted mean of per-month NDCG@10 is the overall NDCG@10
    months = {
        k.split("/")[2]: v for k, v in res.items() if "slice/month=" in k and k.endswith("/ndcg@10")
    }
    weighted = sum(v * res[f"test/slice/{m}/users"] for m, v in months.items()) / n_users
    assert weighted == pytest.approx(logged["test/ndcg@10"], abs=1e-6)
    assert any(k.startswith("test/slice/popularity=") for k in res)
    assert any(k.startswith("test/slice/month=") and k.endswith("/ndcg@10") for k in logged)
    csv_text = (tmp_path / "test_slices.csv").read_text()
    assert csv_text.startswith("slice,value") and (
        "holiday,in" in csv_text or "holiday,out" in csv_text
    )
    assert (tmp_path / "test_ndcg_by_month.png").stat().st_size > 1000


def test_training_step_scales_the_loss_by_the_batch_weight(dataset):
    dm = _dm(dataset)
    dm.setup()
    model = _model(dm)
    batch = dm.datasets["train"].__getitems__(list(range(16)))
    with pytest.warns(UserWarning, match="not managed by the `Trainer`|log"):
        plain = model.training_step({k: v for k, v in batch.items() if k != "loss_weight"}, 0)
    with pytest.warns(UserWarning, match="not managed by the `Trainer`|log"):
        weighted = model.training_step(batch | {"loss_weight": torch.tensor(2.5)}, 0)
    torch.testing.assert_close(weighted, 2.5 * plain)


def test_user_vectors_equal_the_last_hidden_state(dataset):
    """The evaluation path (GPT2Sequence.last) gives encode()[:, -1] with time features on."""
    from mmrec.encoders.time import TimestampEncoder

    dm = _dm(dataset)
    model = _model(
        dm,
        event_encoders=[TimestampEncoder()],
        sequence=GPT2Sequence(n_layer=2, n_head=2, dropout=0.3),
    ).eval()
    batch = _first(dm.test_dataloader())
    with torch.no_grad():
        full = model.encode(batch)[:, -1]
        torch.testing.assert_close(model.user_vectors(batch), full, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(model(batch), full, atol=1e-6, rtol=1e-5)


def test_weight_decay_by_module_type_not_by_name():
    from torch import nn

    from mmrec.encoders.base import EventEncoder
    from mmrec.encoders.rating import RatingEncoder
    from mmrec.encoders.time import QueryTimeEncoder, TimestampEncoder
    from mmrec.optim import split_decay

    class Renamed(EventEncoder):  # attribute names that the old name rule got wrong
        def build(self, ctx):
            super().build(ctx)
            self.weights_table = nn.Embedding(5, ctx.d_model)  # an embedding: never decayed
            self.embedding_proj = nn.Linear(ctx.d_model, ctx.d_model)  # a linear layer: decayed

        def forward(self, batch):
            return self.embedding_proj(self.weights_table(batch["item_ids"].clamp(max=4)))

    model = MMRecModule(
        num_items=30,
        num_users=4,
        max_len=6,
        d_model=16,
        time_granularity="second",
        event_encoders=[TimestampEncoder(), QueryTimeEncoder(), RatingEncoder(), Renamed()],
        sequence=GPT2Sequence(n_layer=1, n_head=2),
        weight_decay=0.1,
    )
    names = {id(p): n for n, p in model.named_parameters()}
    decay, no_decay = split_decay(model)
    decayed = {names[id(p)] for p in decay}
    assert decayed == {
        "event_encoders.0.sin_proj.weight",
        "event_encoders.2.mlp.0.weight",
        "event_encoders.2.mlp.2.weight",
        "event_encoders.3.embedding_proj.weight",
        "sequence.gpt2.h.0.attn.c_attn.weight",
        "sequence.gpt2.h.0.attn.c_proj.weight",
        "sequence.gpt2.h.0.mlp.c_fc.weight",
        "sequence.gpt2.h.0.mlp.c_proj.weight",
    }
    kept = {names[id(p)] for p in no_decay}
    for name in (
        "event_encoders.0.calendar.emb.weight",
        "event_encoders.0.calendar.hour.weight",
        "event_encoders.0.gap_emb.weight",
        "event_encoders.0.session_emb.weight",
        "event_encoders.3.weights_table.weight",
        "item_encoders.0.embedding.weight",
        "sequence.gpt2.wpe.weight",
        "sequence.gpt2.h.0.ln_1.weight",
        "event_encoders.0.gate",
        "event_encoders.2.missing",
    ):
        assert name in kept, name
    assert len(decay) + len(no_decay) == sum(p.requires_grad for p in model.parameters())
    optimizer = model.configure_optimizers()
    assert [g["weight_decay"] for g in optimizer.param_groups] == [0.1, 0.0]


def _hand_made_folder(folder, events: list[tuple[int, int, str]], n_items: int, n_users: int):
    """A dataset folder of ``(user, item, split)`` events, one day apart per user, in order."""
    import json

    import polars as pl

    folder.mkdir()
    seen: dict[int, int] = {}
    u, i, t, s = [], [], [], []
    for user, item, split in events:
        seen[user] = seen.get(user, -1) + 1
        u.append(user), i.append(item), s.append(split)
        t.append(86_400 * (10 * user + seen[user]))
    pl.DataFrame(
        {
            "user_idx": pl.Series(u, dtype=pl.Int32),
            "item_idx": pl.Series(i, dtype=pl.Int32),
            "timestamp": pl.Series(t, dtype=pl.Int64),
            "split": s,
        }
    ).write_parquet(folder / "interactions.parquet")
    pl.DataFrame(
        {"item_idx": range(1, n_items + 1), "item_id": [f"I{k}" for k in range(n_items)]}
    ).write_parquet(folder / "items.parquet")
    pl.DataFrame(
        {"user_idx": range(n_users), "user_id": [f"U{k}" for k in range(n_users)]}
    ).write_parquet(folder / "users.parquet")
    (folder / "meta.json").write_text(
        json.dumps({"num_users": n_users, "num_items": n_items, "time_granularity": "day"})
    )
    return folder


def _one_hot_items():
    from mmrec.encoders.base import ItemEncoder

    class OneHot(ItemEncoder):
        def forward(self, item_idx):
            return torch.nn.functional.one_hot(item_idx, self.d_model).float()

    return OneHot()


def test_val_and_test_metrics_exclude_the_history(tmp_path):
    """A model that scores every history item above the target: with history excluded the
    target is first (NDCG@10 = 1); evaluated without exclusion, it is not."""
    from mmrec.sequence_base import SequenceHead

    n_items, n_users = 24, 6
    # user u: items a, a+1 (train), a+2 (valid), a+3 (test); the target is last + 1
    splits = ("train", "train", "valid", "test")
    events = [(u, 1 + 3 * u + k, split) for u in range(n_users) for k, split in enumerate(splits)]
    folder = _hand_made_folder(tmp_path / "ds", events, n_items, n_users)

    class HistoryFirst(SequenceHead):
        """User vector: 2 x each history item + 1 x the item after the last one."""

        def forward(self, tokens, mask, segments=None, positions=None):
            return torch.cumsum(tokens * mask[..., None], 1) * 2 + torch.roll(tokens, 1, -1)

        def last(self, tokens, mask):
            return (tokens * mask[..., None]).sum(1) * 2 + torch.roll(tokens[:, -1], 1, -1)

    results = {}
    for exclude in (True, False):
        dm = AmazonDataModule(str(folder), max_len=5, eval_batch_size=4, exclude_history=exclude)
        model = MMRecModule.for_data(
            dm,
            d_model=32,
            item_encoders=[_one_hot_items()],
            sequence=HistoryFirst(),
            exclude_history=exclude,
            test_slices=False,
        )
        trainer = L.Trainer(
            logger=False, enable_progress_bar=False, accelerator="cpu", default_root_dir=tmp_path
        )
        val = trainer.validate(model, datamodule=dm, verbose=False)[0]
        test = trainer.test(model, datamodule=dm, verbose=False)[0]
        results[exclude] = (val["val/ndcg@10"], test["test/ndcg@10"], test["test/mrr"])
    assert results[True] == (1.0, 1.0, 1.0)
    # without exclusion the 2 (valid) and 3 (test) history items rank above the target
    assert results[False] == pytest.approx((1 / np.log2(4), 1 / np.log2(5), 1 / 4))


def test_beyond_accuracy_lists_exclude_the_history(tmp_path):
    """Coverage, popularity and novelty of the test top-K come from lists without the user's
    history. Every user's history starts with the two training items 1 and 2 (6 events each:
    the most popular) and the model scores each history item above the target, older ones
    higher: with the history excluded every user's top-1 is its own target (an item unseen in
    training), without it item 1 tops every list."""
    from mmrec.sequence_base import SequenceHead

    n_items, n_users = 24, 6
    # user u: items 1, 2 (train), 3 + 2u (valid), 4 + 2u (test; the item after the last)
    events = [
        (u, item, split)
        for u in range(n_users)
        for item, split in ((1, "train"), (2, "train"), (3 + 2 * u, "valid"), (4 + 2 * u, "test"))
    ]
    folder = _hand_made_folder(tmp_path / "ds", events, n_items, n_users)

    class OldestFirst(SequenceHead):
        """User vector: (2 + age in events) x each history item + 1 x the item after the last."""

        def forward(self, tokens, mask, segments=None, positions=None):
            raise AssertionError("evaluation goes through last()")

        def last(self, tokens, mask):  # [B, L, D], [B, L] -> [B, D]
            length = tokens.shape[1]
            weight = (length + 1 - torch.arange(length, dtype=tokens.dtype))[None, :, None]
            history = (tokens * mask[..., None] * weight).sum(1)  # each weight >= 2
            return history + torch.roll(tokens[:, -1], 1, -1)

    results = {}
    for exclude in (True, False):
        dm = AmazonDataModule(str(folder), max_len=5, eval_batch_size=4, exclude_history=exclude)
        model = MMRecModule.for_data(
            dm,
            d_model=32,
            item_encoders=[_one_hot_items()],
            sequence=OldestFirst(),
            exclude_history=exclude,
            test_slices=False,
            ks=(1,),
        )
        trainer = L.Trainer(
            logger=False, enable_progress_bar=False, accelerator="cpu", default_root_dir=tmp_path
        )
        results[exclude] = trainer.test(model, datamodule=dm, verbose=False)[0]
    # the 24 training counts: items 1 and 2 have 6 events, the 22 others none (percentile of
    # the zeros at mid-rank 11.5 of 24: 10.5 / 23; of items 1, 2: 22.5 / 23); 12 events in all
    excluded, kept = results[True], results[False]
    assert excluded["test/ndcg@1"] == 1.0
    assert excluded["test/coverage@1"] == pytest.approx(6 / 24)  # the six targets
    assert excluded["test/pop_percentile@1"] == pytest.approx(10.5 / 23)
    assert excluded["test/novelty@1"] == pytest.approx(np.log2((12 + 24) / 1))
    assert kept["test/ndcg@1"] == 0.0
    assert kept["test/coverage@1"] == pytest.approx(1 / 24)  # item 1, for everyone
    assert kept["test/pop_percentile@1"] == pytest.approx(22.5 / 23)
    assert kept["test/novelty@1"] == pytest.approx(np.log2((12 + 24) / 7))


def test_learning_rate_schedule():
    from mmrec.optim import lr_factor

    assert [lr_factor(s, 4, None, None) for s in (0, 1, 3, 10)] == [0.25, 0.5, 1.0, 1.0]
    cosine = [lr_factor(s, 0, 100, 0.1) for s in (0, 50, 100, 200)]
    assert cosine == pytest.approx([1.0, 0.55, 0.1, 0.1])
    assert lr_factor(2, 4, 100, 0.1) == 0.75 and lr_factor(4, 4, 100, 0.1) == 1.0


def test_cosine_schedule_ends_at_its_ratio(dataset, tmp_path):
    from mmrec.optim import lr_factor

    dm = _dm(dataset)
    model = _model(dm, lr=0.01, lr_min_ratio=0.1, warmup_steps=1)
    trainer = _trainer(tmp_path, max_epochs=2, limit_val_batches=0)
    trainer.fit(model, datamodule=dm)
    (lr,) = {g["lr"] for g in trainer.optimizers[0].param_groups}
    steps = trainer.global_step
    assert steps > 2 and lr == pytest.approx(0.01 * lr_factor(steps, 1, steps, 0.1))
    assert lr == pytest.approx(0.001)
