"""Item dynamics: features equal a brute-force count, nothing at or after the query time is
read (training, evaluation, serving), packed = padded, a fit reloads with the same scores."""

from __future__ import annotations

import json
import math

import lightning as L
import numpy as np
import pytest
import torch
from torch import nn

from mmrec.config import ConfigError
from mmrec.data.datamodule import AmazonDataModule
from mmrec.data.eventlog import EventLog
from mmrec.encoders.dynamics import RecentDynamics
from mmrec.evaluation import rank_from_scores, rank_targets, topk_items
from mmrec.module import MMRecModule
from mmrec.sequence import GPT2Sequence
from mmrec.synthetic.dataset import make_synthetic_dataset
from tests.encoders.helpers import assert_packed_equals_padded

DAY = 86_400


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_synthetic_dataset(
        tmp_path_factory.mktemp("dyn") / "ds", num_users=90, num_items=40, max_events=40, seed=3
    )


def _model(num_items: int, seed: int = 0, **kw) -> MMRecModule:
    """A model with RecentDynamics whose last layer is random (a zero one adds nothing)."""
    torch.manual_seed(seed)
    kw.setdefault("sequence", GPT2Sequence(n_layer=1, n_head=2, dropout=0.0))
    model = MMRecModule(
        num_items=num_items,
        num_users=kw.pop("num_users", 1),
        d_model=16,
        dynamics=[RecentDynamics(hidden=4)],
        **kw,
    )
    nn.init.normal_(model.dynamics[0].mlp[2].weight, std=1.0)
    return model


def _dm(path, **kw) -> AmazonDataModule:
    dm = AmazonDataModule(str(path), max_len=12, batch_size=32, eval_batch_size=40, **kw)
    dm.setup("fit")
    return dm


def _for_data(dm: AmazonDataModule, seed: int = 0, **kw) -> MMRecModule:
    model = _model(dm.num_items, seed, num_users=dm.num_users, data_dir=dm.data_dir, **kw)
    return model


def _hand_log(seed: int = 0, n: int = 9, e: int = 300) -> tuple[np.ndarray, np.ndarray, int]:
    """Second-granular events over ~400 days with same-second ties, items 1..n."""
    rng = np.random.default_rng(seed)
    items = rng.integers(1, n + 1, e)
    times = 1_300_000_000 + rng.integers(0, 400 * DAY, e)
    times[::7] = times[0]  # ties at one time
    return items, times, n


# ------------------------------------------------------------------ features
def _brute(items, times, n, t, windows, trend) -> np.ndarray:
    """``[N + 1, F]`` features of RecentDynamics at time ``t``, item by item."""
    rows = []
    for i in range(n + 1):
        ts = times[(items == i) & (times < t)]
        counts = [int(((ts >= t - w * DAY) & (ts < t)).sum()) for w in windows]
        row = [math.log1p(c) for c in counts]
        if trend is not None:
            s, lng = windows.index(trend[0]), windows.index(trend[1])
            row.append(math.log(counts[s] + 1) - math.log1p(counts[lng] * trend[0] / trend[1]))
        seen = len(ts) > 0
        row.append(math.log1p((t - ts.min()) / DAY) if seen else 0.0)
        row.append(math.log1p((t - ts.max()) / DAY) if seen else 0.0)
        row.append(0.0 if seen else 1.0)
        rows.append(row)
    return np.array(rows)


@pytest.mark.parametrize("max_snapshots", [2, 64])
def test_features_equal_a_brute_force_count_at_every_cut(max_snapshots):
    items, times, n = _hand_log()
    log = EventLog(torch.from_numpy(items), torch.from_numpy(times), n, max_snapshots)
    dyn = RecentDynamics(windows_days=(1, 7, 30), trend_days=(7, 30))
    # every event time, one second either side, window edges (t - w is inside [t - w, t))
    query = np.unique(np.concatenate([times, times - 1, times + 1, times + DAY, times + 7 * DAY]))
    rng = np.random.default_rng(1)
    for t in (query, rng.permutation(query[:50]), query[::40]):  # a sweep, unsorted, far apart
        got = dyn.features(log, torch.from_numpy(t))  # [F, Q, N + 1]
        assert got.shape == (7, len(t), n + 1)
        for q in range(0, len(t), 7):
            want = _brute(items, times, n, int(t[q]), [1.0, 7.0, 30.0], (7.0, 30.0))
            np.testing.assert_allclose(got[:, q].T.numpy(), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("table_max", [2**20, 3])  # tables, and the direct path above the cap
def test_features_of_day_granular_data_are_bitwise_the_elementwise_ones(monkeypatch, table_max):
    """Counts and whole-day ages read tables of log1p: the very values the elementwise ops
    give (a model trained on either scores the same), and second-granular times still get
    their exact ages (the brute-force test above)."""
    import mmrec.encoders.dynamics as dyn_module

    monkeypatch.setattr(dyn_module, "_TABLE_MAX", table_max)
    items, times, n = _hand_log(seed=5)
    times = times - times % DAY  # day-granular, as the Amazon 2014 and 2018 files
    log = EventLog(torch.from_numpy(items), torch.from_numpy(times), n)
    dyn = RecentDynamics(windows_days=(1, 7, 30), trend_days=(7, 30))
    t = torch.from_numpy(np.unique(times))[::3]
    got = dyn.features(log, t)
    counts = log.window_counts(t, [DAY, 7 * DAY, 30 * DAY]).permute(1, 0, 2)  # [W, Q, N + 1]
    want = [torch.log1p(c) for c in counts]
    want.append(want[1] - torch.log1p(counts[2] * (7.0 / 30.0)))
    unseen = log.first_time[None, :] >= t[:, None]
    for edge in (log.first_time[None, :], log.last_before(t)):
        seconds = torch.empty(unseen.shape).copy_(t[:, None] - edge)
        want.append(seconds.div_(DAY).log1p_().masked_fill_(unseen, 0.0))
    want.append(unseen.float())
    for f, (a, b) in enumerate(zip(got, want, strict=True)):
        assert torch.equal(a, b), f
    assert int(counts.max()) > 3  # the capped run takes the direct path for some windows


def test_recent_dynamics_checks_its_settings():
    with pytest.raises(ValueError, match="windows_days"):
        RecentDynamics(windows_days=(1, 7), trend_days=(7, 30))
    with pytest.raises(ValueError, match="positive"):
        RecentDynamics(windows_days=(0, 7))
    assert RecentDynamics(trend_days=None).num_features == 4 + 3


# ------------------------------------------------------------------ the cut at the query time
def test_an_event_at_or_after_the_query_time_changes_no_score_one_second_before_does():
    items, times, n = _hand_log(seed=2)
    model = _model(n).eval()
    t = int(times[40])
    user = torch.randn(1, 16)
    item_vecs = model.item_vectors().detach()

    def scores(extra_time: int | None) -> tuple[torch.Tensor, torch.Tensor]:
        extra_i = np.append(items, 5) if extra_time is not None else items
        extra_t = np.append(times, extra_time) if extra_time is not None else times
        model.set_event_log(EventLog(torch.from_numpy(extra_i), torch.from_numpy(extra_t), n))
        with torch.no_grad():
            term = model.dynamics_term(torch.tensor([t]))  # [1, N + 1]
            top, _ = model._rank_call(
                topk_items, {"target_time": torch.tensor([t])}, user, item_vecs, n, None
            )
        return term, top

    base_term, base_top = scores(None)
    assert base_term[0, 1:].abs().sum() > 0  # the term is not zero
    for later in (t, t + 1, t + 400 * DAY):  # at the query time, after it
        term, top = scores(later)
        assert torch.equal(term, base_term) and torch.equal(top, base_top), later
    term, top = scores(t - 1)  # one second before: seen
    assert term[0, 5] != base_term[0, 5]
    assert torch.equal(term[0, :5], base_term[0, :5]) and torch.equal(term[0, 6:], base_term[0, 6:])
    assert not torch.equal(top, base_top)
    torch.testing.assert_close(top, (user @ item_vecs.T + term)[:, 1:].sort(descending=True)[0])


def test_a_training_loss_never_reads_an_event_after_its_positions_query_times(dataset):
    dm = _dm(dataset)
    model = _for_data(dm).eval()  # no dropout: the same loss twice
    batch = next(iter(dm.train_dataloader()))
    kept = batch["query_time"][batch["targets"] > 0]
    cut = int(kept.median())
    early = dict(batch, targets=torch.where(batch["query_time"] <= cut, batch["targets"], 0))
    assert (early["targets"] > 0).sum() > 10 and (early["targets"] > 0).sum() < len(kept)
    log = model.event_log
    items, times = log.items, log.times

    def loss_and_grads(extra_items, extra_times, keep=None):
        kept_items, kept_times = (items, times) if keep is None else (items[keep], times[keep])
        model.set_event_log(
            EventLog(
                torch.cat([kept_items, extra_items]),
                torch.cat([kept_times, extra_times]),
                model.num_items,
            )
        )
        model.zero_grad()
        loss = model.training_loss(early)
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in model.dynamics.parameters()]

    base, base_grads = loss_and_grads(torch.zeros(0, dtype=torch.long), torch.zeros(0).long())
    many = torch.arange(1, model.num_items + 1).repeat(5)  # 5 events of every item
    for at in (cut, cut + 1, cut + 30 * DAY):  # at or after every kept position's query time
        loss, grads = loss_and_grads(many, torch.full_like(many, at))
        assert torch.equal(loss, base), at
        assert all(torch.equal(a, b) for a, b in zip(grads, base_grads, strict=True))
    loss, _ = loss_and_grads(many[:0], many[:0], keep=times < cut)  # the log cut at `cut`
    assert torch.equal(loss, base)
    loss, _ = loss_and_grads(many, torch.full_like(many, cut - 1))  # one second before
    assert not torch.equal(loss, base)


# ------------------------------------------------------------------ training
def test_kept_features_give_the_checkpointed_loss_and_gradients(dataset):
    """Keeping a batch's features for the backward pass (when they fit keep_features_mb) is
    speed only: the loss and every gradient equal those of recomputing them chunk by chunk."""
    dm = _dm(dataset)
    model = _for_data(dm)
    batch = next(iter(dm.train_dataloader()))
    results = []
    for keep_mb in (0.0, 1024.0):
        model.dynamics[0].keep_features_mb = keep_mb
        model.dynamics[0].memory_budget_mb = 0.01  # several chunks
        model.zero_grad()
        loss = model.training_loss(batch)
        loss.backward()
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        results.append((loss.detach(), [g.clone() for g in grads]))
    assert torch.equal(results[0][0], results[1][0])
    assert all(p.grad.abs().sum() > 0 for p in model.dynamics.parameters())  # they learn
    assert len(results[0][1]) == len(results[1][1])
    for a, b in zip(results[0][1], results[1][1], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-9)


def test_packed_training_loss_equals_the_padded_one(dataset):
    dm = _dm(dataset)
    assert_packed_equals_padded(_for_data(dm).eval(), dm)


def test_zero_initialised_dynamics_change_neither_loss_nor_ranks(dataset):
    dm = _dm(dataset)
    kw = {"num_users": dm.num_users, "data_dir": dm.data_dir}
    plain = MMRecModule(
        num_items=dm.num_items,
        d_model=16,
        sequence=GPT2Sequence(n_layer=1, n_head=2, dropout=0.0),
        **kw,
    ).eval()
    dynamic = MMRecModule(
        num_items=dm.num_items,
        d_model=16,
        sequence=GPT2Sequence(n_layer=1, n_head=2, dropout=0.0),
        dynamics=[RecentDynamics()],
        **kw,
    ).eval()
    missing, unexpected = dynamic.load_state_dict(plain.state_dict(), strict=False)
    assert all(k.startswith("dynamics.0.mlp.") for k in missing) and not unexpected
    batch = next(iter(dm.train_dataloader()))
    torch.testing.assert_close(plain.training_loss(batch), dynamic.training_loss(batch))
    val = next(iter(dm.val_dataloader()))
    with torch.no_grad():
        ranks = [m._eval_step(val, m.val_metrics)[0] for m in (plain, dynamic)]
    assert torch.equal(ranks[0], ranks[1])


# ------------------------------------------------------------------ evaluation
@pytest.mark.parametrize("cache_mb", [256.0, 0.0004])  # 0.0004 MB: 3 rows, evicted often
def test_eval_ranks_equal_a_brute_force_ranking_with_the_term(dataset, monkeypatch, cache_mb):
    dm = _dm(dataset)
    model = _for_data(dm).eval()
    monkeypatch.setattr(model, "dynamics_cache_mb", cache_mb)
    for batch in list(dm.test_dataloader())[:2]:
        with torch.no_grad():
            ranks, user_vecs, item_vecs = model._eval_step(batch, model.test_metrics)
            term = model._term_of(batch["target_time"])  # no cache, no dedupe
            want = rank_from_scores(
                user_vecs @ item_vecs.T + term, batch["target_items"], batch["exclude_items"]
            )
        assert torch.equal(ranks, want)
        plain = rank_targets(user_vecs, item_vecs, batch["target_items"], batch["exclude_items"])
        assert not torch.equal(ranks, plain)  # the term moves ranks
        out = model.predict_step(batch, 0)
        top = (user_vecs @ item_vecs.T + term).scatter(1, batch["exclude_items"], -torch.inf)
        torch.testing.assert_close(out["scores"], top[:, 1:].topk(10).values)
    if cache_mb < 1:
        assert len(model._term_cache) <= 3


def test_evaluation_computes_each_distinct_time_once_and_follows_new_weights(monkeypatch):
    items, times, n = _hand_log(seed=4)
    model = _model(n).eval()
    model.set_event_log(EventLog(torch.from_numpy(items), torch.from_numpy(times), n))
    computed: list[int] = []
    forward = RecentDynamics.forward

    def counting(self, log, t):
        computed.extend(t.tolist())
        return forward(self, log, t)

    monkeypatch.setattr(RecentDynamics, "forward", counting)
    t = torch.from_numpy(times[[5, 9, 5, 5, 30, 9]])
    with torch.no_grad():
        first = model.dynamics_term(t)
        assert sorted(computed) == sorted(set(t.tolist()))  # once per distinct time
        again = model.dynamics_term(t.flip(0))
        assert len(computed) == 3 and torch.equal(again, first.flip(0))  # reused
        model.dynamics[0].mlp[2].weight.add_(0.5)  # as an optimiser step would
        changed = model.dynamics_term(t)
    assert len(computed) == 6 and not torch.equal(changed, first)
    torch.testing.assert_close(changed, model._term_of(t).detach(), rtol=0, atol=0)
    # a cache of 3 rows: the least recently used times go first, rows stay right
    monkeypatch.setattr(model, "dynamics_cache_mb", 3 * 4 * (n + 1) / 2**20)
    a, b = torch.from_numpy(times[[1, 2, 3]]), torch.from_numpy(times[[4, 5, 6]])
    computed.clear()
    with torch.inference_mode():  # rows made in inference mode are not reused outside it
        model.dynamics_term(a)
    with torch.no_grad():
        for q in (a, b, a, a):
            torch.testing.assert_close(model.dynamics_term(q), model._term_of(q), rtol=0, atol=0)
    # computed: 3 in inference mode; then a, b, a (evicted by b) are missed, the last a is
    # held; _term_of computes 3 each time
    assert len(model._term_cache) == 3 and len(computed) == 3 + 3 * 3 + 4 * 3


def test_an_evaluation_epoch_computes_all_its_times_in_one_call_and_ranks_the_same(
    dataset, monkeypatch, tmp_path
):
    """Validation and test epochs prefetch the term at every row's query time in one call
    (one pass over the log instead of one per batch): same metrics as batch by batch."""
    dm = _dm(dataset)
    model = _for_data(dm)
    calls: list[list[int]] = []
    forward = RecentDynamics.forward

    def counting(self, log, t):
        calls.append(t.tolist())
        return forward(self, log, t)

    monkeypatch.setattr(RecentDynamics, "forward", counting)
    trainer = L.Trainer(logger=False, enable_progress_bar=False, accelerator="cpu",
                        default_root_dir=tmp_path, enable_model_summary=False)  # fmt: skip
    results = {}
    for split, loaders in (("validate", "val_dataloaders"), ("test", "test_dataloaders")):
        calls.clear()
        model._term_cache.clear()  # else times the validation computed are reused
        results[split] = getattr(trainer, split)(model, datamodule=dm, verbose=False)[0]
        times = getattr(trainer, loaders).dataset.rows.qlast.tolist()  # every row's
        assert len(calls) == 1, split  # every batch found its rows in the cache
        assert sorted(calls[0]) == sorted(set(times)) and len(set(times)) > 1, split
    monkeypatch.setattr(MMRecModule, "prefetch_dynamics", lambda self, t: 0)  # batch by batch
    for split in ("validate", "test"):
        calls.clear()
        model._term_cache.clear()
        plain = getattr(trainer, split)(model, datamodule=dm, verbose=False)[0]
        assert len(calls) > 1, split
        assert plain == results[split]


def test_prefetch_skips_what_does_not_fit_the_cache(monkeypatch):
    items, times, n = _hand_log(seed=5)
    model = _model(n).eval()
    model.set_event_log(EventLog(torch.from_numpy(items), torch.from_numpy(times), n))
    t = torch.from_numpy(times[:20])
    monkeypatch.setattr(model, "dynamics_cache_mb", 10 * 4 * (n + 1) / 2**20)  # 10 rows
    assert model.prefetch_dynamics(t) == 0 and len(model._term_cache) == 0
    assert model.prefetch_dynamics(t[:10]) == len(set(t[:10].tolist()))
    assert len(model._term_cache) == len(set(t[:10].tolist()))
    assert _model(n).prefetch_dynamics(torch.zeros(0, dtype=torch.long)) == 0


# ------------------------------------------------------------------ checkpoints
def test_a_tiny_fit_reloads_with_identical_scores(dataset, tmp_path):
    dm = _dm(dataset)
    torch.manual_seed(0)
    model = MMRecModule.for_data(
        dm, d_model=16, sequence=GPT2Sequence(n_layer=1, n_head=2), dynamics=[RecentDynamics()]
    )
    trainer = L.Trainer(
        max_epochs=1,
        limit_train_batches=3,
        limit_val_batches=1,
        default_root_dir=tmp_path,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
    )
    trainer.fit(model, datamodule=dm)
    assert model.dynamics[0].mlp[2].weight.abs().sum() > 0  # trained away from zero
    path = tmp_path / "dyn.ckpt"
    trainer.save_checkpoint(path)
    reloaded = MMRecModule.load_from_checkpoint(path).eval()
    assert reloaded.hparams["dynamics"][0]["class_path"] == "mmrec.encoders.dynamics.RecentDynamics"
    model.eval()
    batch = next(iter(dm.test_dataloader()))
    with torch.no_grad():
        a, b = (m._eval_step(batch, m.test_metrics) for m in (model, reloaded))
        terms = [m.dynamics_term(batch["target_time"]) for m in (model, reloaded)]
    assert torch.equal(a[0], b[0]) and torch.equal(terms[0], terms[1])
    assert terms[0][:, 1:].std() > 0


def test_a_checkpoint_may_name_only_item_dynamics_in_the_slot(dataset, tmp_path):
    dm = _dm(dataset)
    model = _for_data(dm)
    ckpt = {"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams)}
    ckpt["hyper_parameters"]["dynamics"] = [{"class_path": "mmrec.losses.FullSoftmaxCE"}]
    path = tmp_path / "edited.ckpt"
    torch.save(ckpt, path)
    with pytest.raises(ConfigError, match=r"dynamics\[0\].*not an ItemDynamics subclass"):
        MMRecModule.load_from_checkpoint(path)


def test_a_model_without_data_dir_asks_for_a_log():
    model = _model(5)
    with pytest.raises(ConfigError, match="set_event_log"):
        model.dynamics_term(torch.tensor([0]))
    with pytest.raises(ConfigError, match="items"):
        model.set_event_log(EventLog(torch.tensor([1]), torch.tensor([0]), 4))


def test_a_config_without_dynamics_keeps_its_stored_run_key():
    """``model.dynamics: null`` (the new option at its default) is left out of the run key,
    so results stored before the slot existed are still found; a dynamics config differs."""
    from pathlib import Path

    from mmrec.experiments.store import run_key
    from mmrec.lightning_cli import resolve_config

    configs = Path(__file__).resolve().parents[2] / "configs" / "beauty2014"
    config = resolve_config([f"--config={configs / 'sasrec_v1.yaml'}"])  # the first base
    assert config["model"]["dynamics"] is None
    before = json.loads(json.dumps(config, default=str))
    del before["model"]["dynamics"]
    assert run_key(config) == run_key(before)
    dyn = resolve_config(
        [f"--config={configs / 'sasrec_v1.yaml'}", f"--config={configs / 'dyn_gpt2.yaml'}"]
    )
    dyn["name"] = config["name"]
    assert run_key(dyn) != run_key(config)


def test_lr_scale_gives_the_dynamics_their_own_learning_rate_and_keeps_old_keys(dataset):
    """The dynamics' parameters get ``lr * lr_scale`` (every other parameter ``lr``, each in
    its weight-decay group); a run stored before the option existed (lr_scale 1) keeps its
    key, another scale is another run."""
    from pathlib import Path

    from mmrec.experiments.store import run_key
    from mmrec.lightning_cli import resolve_config

    dm = _dm(dataset)
    model = _model(dm.num_items, num_users=dm.num_users, data_dir=dm.data_dir, lr=0.002)
    model.dynamics[0].lr_scale = 10.0
    optimizer = model.configure_optimizers()
    optimizer = (
        optimizer if isinstance(optimizer, torch.optim.Optimizer) else optimizer["optimizer"]
    )
    by_param = {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}
    dynamics = {id(p) for p in model.dynamics.parameters()}
    assert dynamics and all(by_param[i] == pytest.approx(0.02) for i in dynamics)
    others = [id(p) for p in model.parameters() if p.requires_grad and id(p) not in dynamics]
    assert others and all(by_param[i] == pytest.approx(0.002) for i in others)
    assert len(by_param) == len(dynamics) + len(others)  # every parameter, once
    with pytest.raises(ValueError, match="lr_scale must be > 0"):
        RecentDynamics(lr_scale=0.0)

    configs = Path(__file__).resolve().parents[2] / "configs" / "beauty2014"
    base = [f"--config={configs / 'sasrec.yaml'}", f"--config={configs / 'dyn_gpt2.yaml'}"]
    old = resolve_config(base)
    stored = json.loads(json.dumps(old, default=str))
    stored["model"]["dynamics"][0]["init_args"].pop("lr_scale")  # as written before it existed
    assert old["model"]["dynamics"][0]["init_args"]["lr_scale"] == 1.0
    assert run_key(old) == run_key(stored)
    fast = resolve_config([*base, f"--config={configs / 'dyn_fast_gpt2.yaml'}"])
    fast["name"] = old["name"]
    assert fast["model"]["dynamics"][0]["init_args"]["lr_scale"] == 10
    assert run_key(fast) != run_key(old)
