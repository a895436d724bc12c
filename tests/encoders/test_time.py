"""Tests for mmrec.encoders.time: shapes, padding, granularity, vectorisation, query time."""

from __future__ import annotations

import pytest
import torch

import mmrec.calendar
import mmrec.encoders.time
from mmrec.calendar import day_index
from mmrec.config import component_spec, instantiate
from mmrec.encoders.base import BuildContext
from mmrec.encoders.time import QueryTimeEncoder, TimestampEncoder, log_gap_bucket

DAY = 86_400
D = 16


def _ctx(granularity: str = "day") -> BuildContext:
    return BuildContext(num_items=20, num_users=5, d_model=D, time_granularity=granularity)


def _built(cls, granularity: str = "day", **kw):
    kw.setdefault("gate_init", None)  # feature tests look at the ungated output
    torch.manual_seed(0)
    enc = cls(**kw)
    enc.build(_ctx(granularity))
    return enc.eval()


def _batch(
    days: list[list[int]], length: int, query_days: list[int] | None = None, pad_ts: int = 0
):
    """Left-padded batch from per-user day indices; query time = next event (last: query_days)."""
    B = len(days)
    ts = torch.full((B, length), pad_ts, dtype=torch.int64)
    qt = torch.full((B, length), pad_ts, dtype=torch.int64)
    mask = torch.zeros(B, length, dtype=torch.bool)
    for b, ds in enumerate(days):
        n = len(ds)
        t = torch.tensor(ds, dtype=torch.int64) * DAY
        q = torch.cat([t[1:], torch.tensor([(query_days or [ds[-1] + 1] * B)[b] * DAY])])
        ts[b, length - n :], qt[b, length - n :], mask[b, length - n :] = t, q, True
    return {"timestamps": ts, "query_time": qt, "mask": mask, "item_ids": mask.long()}


XMAS = day_index("2013-12-20")
JULY = day_index("2013-07-20")
HIST = [[XMAS - 40, XMAS - 12, XMAS - 12, XMAS - 1], [JULY - 3, JULY]]


@pytest.mark.parametrize("cls", [TimestampEncoder, QueryTimeEncoder])
def test_shape_and_zero_at_padding(cls):
    enc = _built(cls)
    batch = _batch(HIST, 6)
    out = enc(batch)
    assert out.shape == (2, 6, D)
    assert out[~batch["mask"]].abs().max() == 0
    assert out[batch["mask"]].abs().sum(-1).min() > 0


@pytest.mark.parametrize("cls", [TimestampEncoder, QueryTimeEncoder])
def test_padding_invariance(cls):
    enc = _built(cls)
    short = enc(_batch(HIST, 4))
    # more padding, filled with garbage timestamps: real positions must not change
    long = enc(_batch(HIST, 9, pad_ts=1_700_000_123))
    torch.testing.assert_close(long[:, -4:], short)
    assert long[:, :5].abs().max() == 0


def test_hour_of_day_only_for_second_granularity():
    day_enc = _built(TimestampEncoder, "day", use_sinusoidal=False)
    sec_enc = _built(TimestampEncoder, "second", use_sinusoidal=False)
    assert day_enc.calendar.hour is None and not day_enc.hour_of_day
    assert sec_enc.calendar.hour is not None and sec_enc.hour_of_day
    batch = _batch([[XMAS]], 1)
    later = {**batch, "timestamps": batch["timestamps"] + 15 * 3600}  # same day, 15:00
    torch.testing.assert_close(day_enc(later), day_enc(batch))  # hour ignored for day data
    assert not torch.allclose(sec_enc(later), sec_enc(batch))
    # day data: sinusoids of periods < 2 days are dropped (they would be constant)
    assert _built(TimestampEncoder, "day").freq.numel() == 4 * 2
    assert _built(TimestampEncoder, "second").freq.numel() == 5 * 2


def test_calendar_and_event_features_distinguish_days():
    enc = _built(TimestampEncoder, use_sinusoidal=False, use_gap=False)
    a, b = enc(_batch([[XMAS]], 1)), enc(_batch([[JULY]], 1))
    assert not torch.allclose(a, b)
    # Same holiday distances (both Fridays, 5 days before Christmas, 3 weeks after Black
    # Friday): identical event encodings; Prime Day (2019 only) tells the two years apart.
    d0, d1 = [[day_index("2013-12-20")]], [[day_index("2019-12-20")]]
    kw = dict(use_sinusoidal=False, use_gap=False, use_calendar=False)
    enc = _built(TimestampEncoder, events=["christmas", "black_friday", "easter"], **kw)
    torch.testing.assert_close(enc(_batch(d0, 1)), enc(_batch(d1, 1)))
    enc = _built(TimestampEncoder, events=["christmas", "black_friday", "prime_day"], **kw)
    assert not torch.allclose(enc(_batch(d0, 1)), enc(_batch(d1, 1)))


def test_log_gap_bucket_values():
    gaps = torch.tensor([-5, 0, 59, 60, DAY, 365 * DAY, 100 * 365 * DAY])
    assert log_gap_bucket(gaps, 24).tolist() == [0, 0, 0, 1, 10, 19, 23]


def test_gap_and_session_features():
    enc = _built(TimestampEncoder, use_sinusoidal=False, use_calendar=False, use_events=False)
    batch = _batch([[XMAS - 30, XMAS - 30, XMAS]], 3)
    out = enc(batch)
    first = enc.gap_emb.weight[0] + enc.session_emb.weight[1]
    same_day = enc.gap_emb.weight[1] + enc.session_emb.weight[0]  # gap 0: same session
    month = enc.gap_emb.weight[1 + 15] + enc.session_emb.weight[1]  # log2(1 + 43200) = 15.4
    torch.testing.assert_close(out[0], torch.stack([first, same_day, month]))


def test_vectorised_no_python_per_event(monkeypatch):
    enc = _built(TimestampEncoder, "second")
    qenc = _built(QueryTimeEncoder, "second")

    def boom(*a, **k):
        raise AssertionError("calendar rules called per event")

    monkeypatch.setattr(mmrec.calendar, "event_dates", boom)
    monkeypatch.setattr(mmrec.calendar, "build_calendar_table", boom)
    monkeypatch.setattr(mmrec.encoders.time, "build_calendar_table", boom)
    for name in list(mmrec.calendar._RULES):
        monkeypatch.setitem(mmrec.calendar._RULES, name, boom)
    g = torch.Generator().manual_seed(0)
    B, L = 256, 200  # 51,200 events
    ts = torch.randint(1_300_000_000, 1_400_000_000, (B, L), generator=g).sort(-1).values
    batch = {"timestamps": ts, "query_time": ts + 3600, "mask": torch.ones(B, L, dtype=torch.bool)}
    with torch.no_grad():  # any per-event call of the calendar rules raises (see `boom`)
        out = enc(batch) + qenc(batch)
    assert out.shape == (B, L, D) and out.abs().sum() > 0


def test_query_time_changes_output_and_timestamp_encoder_ignores_it():
    qenc, tenc = _built(QueryTimeEncoder), _built(TimestampEncoder)
    hist = [[JULY - 100, JULY - 50, JULY - 20]]
    dec, jul = _batch(hist, 4, query_days=[XMAS]), _batch(hist, 4, query_days=[JULY])
    assert not torch.allclose(qenc(dec)[0, -1], qenc(jul)[0, -1])
    torch.testing.assert_close(qenc(dec)[0, :-1], qenc(jul)[0, :-1])  # only the last query moved
    torch.testing.assert_close(tenc(dec), tenc(jul))


def test_learnable_frequencies_get_gradients():
    enc = _built(TimestampEncoder, learnable_frequencies=True).train()
    assert isinstance(enc.freq, torch.nn.Parameter)
    enc(_batch(HIST, 5)).sum().backward()
    assert enc.freq.grad is not None and enc.freq.grad.abs().sum() > 0
    fixed = _built(TimestampEncoder)
    assert "freq" not in dict(fixed.named_parameters())


def test_spec_roundtrip_rebuilds_same_parameters():
    enc = _built(TimestampEncoder, events=["christmas", "12-01"], harmonics=3)
    spec = component_spec(enc)
    assert spec["init_args"]["events"] == ["christmas", "12-01"]
    clone = instantiate(spec, TimestampEncoder, "event_encoders[0]")
    clone.build(_ctx())
    clone.load_state_dict(enc.state_dict())
    batch = _batch(HIST, 5)
    torch.testing.assert_close(clone.eval()(batch), enc(batch))
    assert not any("codes" in k for k in enc.state_dict())  # the lookup table is rebuilt, not saved


@pytest.mark.parametrize("cls", [TimestampEncoder, QueryTimeEncoder])
def test_zero_gate_starts_closed_and_learns(cls):
    enc = _built(cls, gate_init=0.0).train()
    batch = _batch(HIST, 5)
    out = enc(batch)
    assert out.abs().max() == 0  # starts as a model without time
    out.sum().backward()
    assert enc.gate.grad is not None and enc.gate.grad.abs() > 0  # but can open
    assert cls().gate_init == 0.0  # the default


def test_unknown_event_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown calendar event 'xmas'"):
        _built(TimestampEncoder, events=["xmas"])


def _fit_seasonal(path, event_encoders, epochs: int = 10):
    """A small GPT-2 model trained on the synthetic folder (fixed seed)."""
    import lightning as L

    from mmrec.data.datamodule import AmazonDataModule
    from mmrec.module import MMRecModule
    from mmrec.sequence import GPT2Sequence

    dm = AmazonDataModule(str(path), max_len=10, batch_size=64, eval_batch_size=256)
    L.seed_everything(0)
    model = MMRecModule.for_data(
        dm,
        d_model=32,
        event_encoders=event_encoders,
        sequence=GPT2Sequence(n_layer=1, n_head=2, dropout=0.1),
        lr=3e-3,
    )
    trainer = L.Trainer(
        max_epochs=epochs,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        limit_val_batches=0,
        num_sanity_val_steps=0,
    )
    trainer.fit(model, datamodule=dm)
    return model.eval(), dm, trainer


def _slice_ndcg(model, dm, seasonal: torch.Tensor) -> tuple[float, float, int]:
    """NDCG@10 over all test users and over those whose target is a seasonal item."""
    from mmrec.evaluation import rank_targets

    dm.setup("test")
    ranks, is_seasonal = [], []
    with torch.no_grad():
        for b in dm.test_dataloader():
            r = rank_targets(model(b), model.item_vectors(), b["target_items"], b["exclude_items"])
            ranks.append(r[:, 0])
            is_seasonal.append(seasonal[b["target_items"][:, 0]])
    r, s = torch.cat(ranks), torch.cat(is_seasonal)
    ndcg = torch.where(r <= 10, 1 / torch.log2(r + 1), 0.0)
    return ndcg.mean().item(), ndcg[s].mean().item(), int(s.sum())


@pytest.fixture
def one_thread():
    """Tiny models train much faster on one thread on a shared, busy CPU."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_time_encoders_win_on_seasonal_slice(tmp_path, one_thread):
    """Planted seasonal items (bought only in their window) need the date: the model with the
    time encoders (+ query time) must beat the same model without them by a wide margin."""
    import polars as pl

    from mmrec.synthetic.dataset import make_synthetic_dataset

    path = make_synthetic_dataset(
        tmp_path / "ds", num_users=600, num_items=100, p_seasonal=0.6, seed=1
    )
    items = pl.read_parquet(path / "items.parquet")
    seasonal = torch.zeros(101, dtype=torch.bool)
    seasonal[items.filter(pl.col("season").is_not_null())["item_idx"].to_list()] = True
    base, dm, _ = _fit_seasonal(path, [])
    timed, dm_t, _ = _fit_seasonal(path, [TimestampEncoder(), QueryTimeEncoder()])
    all_base, seas_base, n = _slice_ndcg(base, dm, seasonal)
    all_time, seas_time, _ = _slice_ndcg(timed, dm_t, seasonal)
    print(
        f"seasonal slice (n={n}) NDCG@10: without time {seas_base:.3f}, with time {seas_time:.3f}; "
        f"all: {all_base:.3f} vs {all_time:.3f}"
    )
    assert n >= 50
    assert seas_time >= 0.6 and seas_time >= seas_base + 0.25, (seas_base, seas_time)


def test_custom_events_rebuild_from_a_checkpoint_in_a_fresh_process(tmp_path):
    """Events of one's own are configuration (stored in the checkpoint), not a process-wide
    registry: a new process rebuilds the same encoder from the checkpoint alone."""
    import subprocess
    import sys

    from mmrec.module import MMRecModule
    from mmrec.sequence import GPT2Sequence

    with pytest.raises(TypeError):
        mmrec.calendar.EVENT_RULES["sale"] = lambda y: []  # read-only
    custom = {"spring_sale": ["03-08", "2014-05-05"]}
    model = MMRecModule(
        num_items=10,
        num_users=3,
        max_len=8,
        d_model=D,
        time_granularity="day",
        event_encoders=[
            TimestampEncoder(
                events=["spring_sale", "christmas"], custom_events=custom, gate_init=1.0
            )
        ],
        sequence=GPT2Sequence(n_layer=1, n_head=2),
    )
    enc = model.event_encoders[0]
    table = enc.calendar.codes.clone()
    path = tmp_path / "custom.ckpt"
    torch.save(
        {
            "state_dict": model.state_dict(),
            "hyper_parameters": dict(model.hparams),
            "pytorch-lightning_version": "2.6.6",
        },
        path,
    )
    code = (
        "import sys, torch; from mmrec.module import MMRecModule; "
        f"m = MMRecModule.load_from_checkpoint({str(path)!r}, weights_only=True); "
        f"torch.save(m.event_encoders[0].calendar.codes, {str(tmp_path / 'codes.pt')!r})"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
    assert torch.equal(torch.load(tmp_path / "codes.pt", weights_only=True), table)
    # the custom event is really in the table: 2014-03-07 is 1 day before spring_sale
    row = enc.calendar.day_rows(torch.tensor([day_index("2014-03-07") * 86_400]))
    plain = TimestampEncoder(events=["christmas", "christmas"], gate_init=1.0)
    plain.build(_ctx())
    assert not torch.equal(enc.calendar.codes[row, 4:6], plain.calendar.codes[row, 4:6])
    with pytest.raises(ValueError, match="custom event 'x'"):
        TimestampEncoder(events=["x"], custom_events={"x": ["13-40"]}).build(_ctx())
