"""The compiled pass of RecentDynamics' features (whole-day times): bitwise the torch path's
features, a brute-force count at every cut, and nothing at or after the query time read."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import mmrec.encoders.dynamics as dynamics_module
import mmrec.encoders.dynamics_sweep as sweep_module
from mmrec.data.eventlog import EventLog
from mmrec.encoders.dynamics import RecentDynamics
from mmrec.evaluation import topk_items
from mmrec.module import MMRecModule
from mmrec.sequence import GPT2Sequence

DAY = 86_400


def _day_log(seed: int, n: int = 11, e: int = 400, item0: bool = False):
    """Whole-day events over ~500 days, many on the same day; items 1..n (0 too if asked)."""
    rng = np.random.default_rng(seed)
    items = rng.integers(0 if item0 else 1, n + 1, e)
    items[-5:] = n  # item n is busy on its last day
    days = 15_000 + rng.integers(0, 500, e)
    days[::9] = days[0]
    return items, days * DAY, n


def _both(dyn: RecentDynamics, log: EventLog, t: torch.Tensor, monkeypatch):
    """(compiled, torch) features at ``t``, and how many times the compiled pass ran."""
    calls = []
    real = sweep_module.sweep_features

    def counted(*args):
        out = real(*args)
        calls.extend([] if out is None else [1])
        return out

    monkeypatch.setattr(dynamics_module, "sweep_features", counted)
    fast = dyn.features(log, t)
    ran = len(calls)
    log.whole_days = False  # the flag the compiled pass checks: the torch path from here
    slow = dyn.features(log, t)
    log.whole_days = True
    return fast, slow, ran


@pytest.mark.parametrize(
    ("windows", "trend", "snapshots", "item0"),
    [
        ((1, 7, 30, 365), (7, 30), 64, False),
        ((2, 14), None, 3, True),
        ((0.5, 3, 90), (3, 90), 1, False),
    ],
)
@pytest.mark.parametrize("restart_mb", [64, 0])  # 0: no restart but the first time's
def test_compiled_features_are_bitwise_the_torch_ones(
    monkeypatch, windows, trend, snapshots, item0, restart_mb
):
    monkeypatch.setattr(sweep_module, "RESTART_MB", restart_mb)
    items, times, n = _day_log(seed=len(windows), item0=item0)
    log = EventLog(torch.from_numpy(items), torch.from_numpy(times), n, snapshots)
    dyn = RecentDynamics(windows_days=windows, trend_days=trend)
    days = np.unique(times // DAY)
    edges = [days[0] - 30, days[0], days[-1], days[-1] + 1, days[-1] + 900]  # before, after
    rng = np.random.default_rng(0)
    every = np.unique(np.concatenate([days, days + 1, edges])) * DAY
    for t in (every, rng.permutation(every[:60]), every[::37], every[-1:]):
        fast, slow, ran = _both(dyn, log, torch.from_numpy(t), monkeypatch)
        assert ran == 1, "whole-day times must take the compiled pass"
        assert fast.shape == slow.shape == (dyn.num_features, len(t), n + 1)
        assert torch.equal(fast, slow)


def test_second_granular_times_take_the_torch_path(monkeypatch):
    items, times, n = _day_log(seed=1)
    log = EventLog(torch.from_numpy(items), torch.from_numpy(times), n)
    dyn = RecentDynamics(windows_days=(1, 7), trend_days=None)
    _, _, ran = _both(dyn, log, torch.tensor([int(times.max()) + 3600]), monkeypatch)
    assert ran == 0  # a query off whole days
    shifted = EventLog(torch.from_numpy(items), torch.from_numpy(times + 1), n)
    _, _, ran = _both(dyn, shifted, torch.tensor([int(times.max()) + DAY]), monkeypatch)
    assert ran == 0  # events off whole days


def test_compiled_features_equal_a_brute_force_count():
    items, times, n = _day_log(seed=4, n=6, e=150)
    log = EventLog(torch.from_numpy(items), torch.from_numpy(times), n, 2)
    dyn = RecentDynamics(windows_days=(1, 7, 30), trend_days=(7, 30))
    t = np.unique(np.concatenate([times, times + DAY, times + 7 * DAY]))
    got = dyn.features(log, torch.from_numpy(t))
    for q in range(0, len(t), 5):
        now = int(t[q])
        for i in range(n + 1):
            ts = times[(items == i) & (times < now)]
            counts = [int((ts >= now - w * DAY).sum()) for w in (1, 7, 30)]
            want = [np.log1p(c) for c in counts]
            want.append(np.log1p(counts[1]) - np.log1p(counts[2] * 7 / 30))
            seen = len(ts) > 0
            want += [np.log1p((now - ts.min()) / DAY) if seen else 0.0]
            want += [np.log1p((now - ts.max()) / DAY) if seen else 0.0, 0.0 if seen else 1.0]
            np.testing.assert_allclose(got[:, q, i].numpy(), want, rtol=1e-5, atol=1e-6)


def test_an_event_on_the_query_day_or_later_changes_no_whole_day_score():
    """The cut of the compiled pass: an event at the query time (the same day, for day-granular
    data) or later is not read; one a day before is. Fails if the cut is off by one."""
    items, times, n = _day_log(seed=2, n=9)
    torch.manual_seed(0)
    model = MMRecModule(
        num_items=n,
        num_users=1,
        d_model=16,
        sequence=GPT2Sequence(n_layer=1, n_head=2, dropout=0.0),
        dynamics=[RecentDynamics(hidden=4)],
    ).eval()
    nn.init.normal_(model.dynamics[0].mlp[2].weight, std=1.0)
    t = int(np.sort(times)[200])
    user, item_vecs = torch.randn(1, 16), model.item_vectors().detach()

    def scores(extra: int | None):
        i = np.append(items, 4) if extra is not None else items
        s = np.append(times, extra) if extra is not None else times
        model.set_event_log(EventLog(torch.from_numpy(i), torch.from_numpy(s), n))
        with torch.no_grad():
            term = model.dynamics_term(torch.tensor([t]))
            top, _ = model._rank_call(
                topk_items, {"target_time": torch.tensor([t])}, user, item_vecs, n, None
            )
        return term, top

    base_term, base_top = scores(None)
    for later in (t, t + DAY, t + 300 * DAY):
        term, top = scores(later)
        assert torch.equal(term, base_term) and torch.equal(top, base_top), later
    term, _ = scores(t - DAY)
    assert term[0, 4] != base_term[0, 4]
    assert torch.equal(term[0, :4], base_term[0, :4]) and torch.equal(term[0, 5:], base_term[0, 5:])


def test_the_compiled_pass_leaves_torchs_thread_count_alone():
    """A process told to use one thread (``OMP_NUM_THREADS=1``, ``--jobs 2``) keeps it."""
    items, times, n = _day_log(seed=3)
    log = EventLog(torch.from_numpy(items), torch.from_numpy(times), n)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        RecentDynamics().features(log, torch.from_numpy(np.unique(times)))
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_evaluation_terms_match_the_training_term(monkeypatch):
    """Outside autograd the term comes from the fused kernel (features and MLP a tile of items
    at a time): the training term's function within float32 rounding, the same whatever the
    split of the catalogue over threads; the unfused path's smaller MLP blocks are bitwise the
    training blocks."""
    items, times, n = _day_log(seed=6, n=3000, e=5000)
    edges = [999, 1000, 1001, 1499, 1500, 1501, 1999, 2000, 2001]  # of the column ranges
    items[:180] = np.repeat(edges, 20)
    log = EventLog(torch.from_numpy(items), torch.from_numpy(times), n)
    dyn = RecentDynamics(hidden=8)
    dyn.build(type("Ctx", (), {"num_items": n, "d_model": 8})())
    nn.init.normal_(dyn.mlp[0].bias, std=1.0)
    nn.init.normal_(dyn.mlp[2].weight, std=1.0)
    t = torch.from_numpy(np.unique(times))  # ~500 days x 3,001 items: many blocks of 2**15
    trained = dyn(log, t)  # grad enabled: the training blocks
    assert trained.requires_grad and trained[:, 1:].abs().sum() > 0
    fused = []
    for threads, columns in ((1, 4096), (2, 1000), (3, 7)):  # 1, 2 and 3 column ranges
        monkeypatch.setattr(sweep_module, "MIN_COLUMNS", columns)
        before = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            with torch.no_grad():
                fused.append(dyn(log, t))
        finally:
            torch.set_num_threads(before)
    torch.testing.assert_close(fused[0], trained.detach(), rtol=1e-5, atol=1e-5)
    assert not torch.equal(fused[0], trained.detach())  # another order of float32 sums
    assert torch.equal(fused[0], fused[1]) and torch.equal(fused[0], fused[2])
    assert torch.equal(fused[0][:, 0], torch.zeros(len(t)))  # the padding item
    shuffled = torch.randperm(len(t), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(dyn(log, t[shuffled]), fused[0][shuffled])  # rows follow the times
    monkeypatch.setattr(dyn, "_fused", lambda log, t: None)  # the unfused path
    with torch.no_grad():
        small = dyn(log, t)
        monkeypatch.setattr(dynamics_module, "_EVAL_MLP_BLOCK", dynamics_module._MLP_BLOCK)
        large = dyn(log, t)
    assert torch.equal(small, large) and torch.equal(small, trained.detach())


def test_without_numba_the_torch_path_gives_the_same_features_and_says_so(monkeypatch):
    items, times, n = _day_log(seed=7)
    log = EventLog(torch.from_numpy(items), torch.from_numpy(times), n)
    t = torch.from_numpy(np.unique(times)[::5])
    dyn = RecentDynamics()
    compiled = dyn.features(log, t)
    monkeypatch.setattr(sweep_module, "numba", None)
    with pytest.warns(UserWarning, match="numba is not installed"):
        plain = dyn.features(log, t)
    assert torch.equal(compiled, plain)
