"""TransitionDynamics: what followed the row's last item, read from the event log strictly
before the query time (the log's users give the transitions)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from mmrec.data.datamodule import AmazonDataModule
from mmrec.data.eventlog import EventLog
from mmrec.encoders.dynamics import RecentDynamics, TransitionDynamics
from mmrec.evaluation import rank_from_scores
from mmrec.module import MMRecModule
from mmrec.sequence import GPT2Sequence
from mmrec.synthetic.dataset import make_synthetic_dataset
from tests.encoders.helpers import assert_packed_equals_padded

DAY = 86_400


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_synthetic_dataset(
        tmp_path_factory.mktemp("trans") / "ds", num_users=90, num_items=40, max_events=40, seed=5
    )


def _hand_log(seed: int = 0, n: int = 9, e: int = 400, users: int = 30):
    """Day-granular events of ``users`` users over ~200 days, same-day ties, items 1..n."""
    rng = np.random.default_rng(seed)
    items = rng.integers(1, n + 1, e)
    times = 1_300_000_000 // DAY * DAY + rng.integers(0, 200, e) * DAY
    who = rng.integers(0, users, e)
    return items, times, who, n


def _brute(items, times, who, prev: int, t: int) -> list[tuple[int, int]]:
    """Every (next item, time) of a transition prev -> next before t, by sorting each user's
    events by time (ties in file order)."""
    out = []
    for u in np.unique(who):
        idx = np.flatnonzero(who == u)
        idx = idx[np.argsort(times[idx], kind="stable")]
        for a, b in zip(idx[:-1], idx[1:], strict=True):
            if items[a] == prev and times[b] < t:
                out.append((int(items[b]), int(times[b])))
    return sorted(out, key=lambda x: (x[1], x[0]))


def test_transitions_before_equal_a_brute_force_walk_of_each_users_events():
    items, times, who, n = _hand_log()
    log = EventLog(torch.from_numpy(items), torch.from_numpy(times), n, users=torch.from_numpy(who))
    queries = [(p, int(t)) for p in range(0, n + 1) for t in np.unique(times)[::17]]
    queries += [(3, int(times.max()) + DAY), (3, int(times.min()))]
    prev = torch.tensor([q[0] for q in queries])
    t = torch.tensor([q[1] for q in queries])
    row, nxt, when = log.transitions_before(prev, t)
    assert len(row) > 100
    for q, (p, tq) in enumerate(queries):
        got = sorted(
            zip(nxt[row == q].tolist(), when[row == q].tolist(), strict=True),
            key=lambda x: (x[1], x[0]),
        )
        assert got == (_brute(items, times, who, p, tq) if p > 0 else []), (p, tq)


def test_a_log_without_users_says_what_the_transitions_need():
    log = EventLog(torch.tensor([1, 2]), torch.tensor([0, DAY]), 2)
    with pytest.raises(ValueError, match="does not know who made each event.*users="):
        log.transitions_before(torch.tensor([1]), torch.tensor([2 * DAY]))


def _model(num_items: int, seed: int = 0, dynamics=None, **kw) -> MMRecModule:
    torch.manual_seed(seed)
    model = MMRecModule(
        num_items=num_items,
        num_users=kw.pop("num_users", 1),
        d_model=16,
        sequence=GPT2Sequence(n_layer=1, n_head=2, dropout=0.0),
        dynamics=dynamics or [TransitionDynamics(hidden=4)],
        **kw,
    )
    for member in model.dynamics:  # a zero last layer adds nothing
        nn.init.normal_(member.mlp[2].weight, std=1.0)
        nn.init.normal_(member.mlp[2].bias, std=1.0)
    return model


def test_a_transition_at_or_after_the_query_time_changes_no_score_one_day_before_does():
    items, times, who, n = _hand_log(seed=1)
    model = _model(n).eval()
    t = int(np.sort(np.unique(times))[120])
    last = torch.tensor([4])

    def term(extra: list[tuple[int, int, int]]) -> torch.Tensor:
        i = np.append(items, [e[0] for e in extra]).astype(np.int64)
        ts = np.append(times, [e[1] for e in extra]).astype(np.int64)
        u = np.append(who, [e[2] for e in extra]).astype(np.int64)
        log = EventLog(torch.from_numpy(i), torch.from_numpy(ts), n, users=torch.from_numpy(u))
        model.set_event_log(log)
        with torch.no_grad():
            return model.dynamics_term(torch.tensor([t]), last)

    base = term([])
    assert base[0, 1:].abs().sum() > 0 and base[0, 0] == 0
    fresh = 999  # a new user who bought 4 long ago, then 7
    for later in (t, t + 1, t + 30 * DAY):
        assert torch.equal(term([(4, t - 100 * DAY, fresh), (7, later, fresh)]), base), later
    moved = term([(4, t - 100 * DAY, fresh), (7, t - DAY, fresh)])  # the day before: seen
    assert moved[0, 7] != base[0, 7]
    assert torch.equal(moved[0, :7], base[0, :7]) and torch.equal(moved[0, 8:], base[0, 8:])
    # the same two events by two different users are no transition
    assert torch.equal(term([(4, t - 100 * DAY, fresh), (7, t - DAY, fresh + 1)]), base)


def test_the_features_count_the_transitions_of_each_rows_last_item():
    items, times, who, n = _hand_log(seed=2)
    log = EventLog(torch.from_numpy(items), torch.from_numpy(times), n, users=torch.from_numpy(who))
    member = TransitionDynamics(recent_days=30.0)
    member.num_items = n
    t = torch.tensor(
        [int(np.sort(np.unique(times))[150]), int(times.max()) + DAY, int(times.min())]
    )
    last = torch.tensor([2, 5, 5])
    flat, x = member.features(log, t, last)
    for q in range(3):
        seen = _brute(items, times, who, int(last[q]), int(t[q]))
        for j in range(1, n + 1):
            ages = [int(t[q]) - s for nx, s in seen if nx == j]
            hit = (flat == q * (n + 1) + j).nonzero()
            if not ages:
                assert len(hit) == 0
                continue
            want = [len(ages), sum(a < 30 * DAY for a in ages), min(ages) / DAY]
            torch.testing.assert_close(x[hit[0, 0]], torch.tensor(want).log1p().float())


def _dm(path) -> AmazonDataModule:
    dm = AmazonDataModule(str(path), max_len=12, batch_size=32, eval_batch_size=40)
    dm.setup("fit")
    return dm


def test_a_training_loss_never_reads_a_transition_after_its_positions_query_times(dataset):
    dm = _dm(dataset)
    model = _model(dm.num_items, num_users=dm.num_users, data_dir=dm.data_dir).eval()
    batch = next(iter(dm.train_dataloader()))
    kept = batch["query_time"][batch["targets"] > 0]
    cut = int(kept.median())
    early = dict(batch, targets=torch.where(batch["query_time"] <= cut, batch["targets"], 0))
    log = model.event_log
    assert log.has_users

    def loss_with(extra_times: int | None) -> torch.Tensor:
        items, times, users = log.items, log.times, log.users
        if extra_times is not None:  # new users who went from every item to item 1
            many = torch.arange(1, model.num_items + 1)
            fresh = 10_000 + many
            items = torch.cat([items, many, torch.ones_like(many)])
            times = torch.cat([times, torch.full_like(many, cut - 400 * DAY)])
            times = torch.cat([times, torch.full_like(many, extra_times)])
            users = torch.cat([users, fresh, fresh])
        model.set_event_log(EventLog(items, times, model.num_items, users=users))
        return model.training_loss(early).detach()

    base = loss_with(None)
    for at in (cut, cut + 1, cut + 30 * DAY):
        assert torch.equal(loss_with(at), base), at
    assert not torch.equal(loss_with(cut - 1), base)
    model.set_event_log(log)


def test_packed_training_loss_equals_the_padded_one(dataset):
    dm = _dm(dataset)
    model = _model(dm.num_items, num_users=dm.num_users, data_dir=dm.data_dir).eval()
    assert_packed_equals_padded(model, dm)


def test_eval_ranks_add_each_rows_term_beside_the_time_members(dataset):
    dm = _dm(dataset)
    dyn = [RecentDynamics(hidden=4), TransitionDynamics(hidden=4)]
    model = _model(dm.num_items, num_users=dm.num_users, data_dir=dm.data_dir, dynamics=dyn)
    model.eval()
    for batch in list(dm.test_dataloader())[:2]:
        last = torch.where(batch["mask"][:, -1], batch["item_ids"][:, -1], 0)
        with torch.no_grad():
            ranks, user_vecs, item_vecs = model._eval_step(batch, model.test_metrics)
            t = batch["target_time"]
            term = model.dynamics[0](model.event_log, t) + model.dynamics[1](
                model.event_log, t, last
            )
            want = rank_from_scores(
                user_vecs @ item_vecs.T + term, batch["target_items"], batch["exclude_items"]
            )
            timed = model.dynamics[0](model.event_log, t)
            without = rank_from_scores(
                user_vecs @ item_vecs.T + timed, batch["target_items"], batch["exclude_items"]
            )
        assert torch.equal(ranks, want)
        assert not torch.equal(ranks, without)  # the transition term moves ranks


def test_zero_initialised_transitions_change_nothing_and_learn(dataset):
    dm = _dm(dataset)
    kw = {"num_users": dm.num_users, "data_dir": dm.data_dir, "d_model": 16}
    seq = GPT2Sequence(n_layer=1, n_head=2, dropout=0.0)
    torch.manual_seed(0)
    plain = MMRecModule(num_items=dm.num_items, sequence=seq, **kw).eval()
    torch.manual_seed(0)
    seq = GPT2Sequence(n_layer=1, n_head=2, dropout=0.0)
    member = TransitionDynamics()
    dynamic = MMRecModule(num_items=dm.num_items, sequence=seq, dynamics=[member], **kw).eval()
    dynamic.load_state_dict(plain.state_dict(), strict=False)
    batch = next(iter(dm.train_dataloader()))
    loss = dynamic.training_loss(batch)
    torch.testing.assert_close(plain.training_loss(batch), loss)
    loss.backward()
    assert member.mlp[2].bias.grad.abs() > 0  # "some user went i -> j" gets a gradient


def test_transition_dynamics_checks_its_settings_and_needs_last_items():
    for kw, text in (({"recent_days": 0}, "recent_days"), ({"hidden": 0}, "hidden")):
        with pytest.raises(ValueError, match=text):
            TransitionDynamics(**kw)
    model = _model(5)
    model.set_event_log(EventLog(torch.tensor([1]), torch.tensor([0]), 5, users=torch.tensor([0])))
    with pytest.raises(ValueError, match="last history item: pass last="):
        model.dynamics_term(torch.tensor([DAY]))


def test_an_export_serves_the_models_transition_term(dataset, tmp_path):
    from mmrec.serving.bundle import Query, ServedModel
    from mmrec.serving.export import export_model

    dm = _dm(dataset)
    dyn = [RecentDynamics(hidden=4), TransitionDynamics(hidden=4)]
    model = _model(dm.num_items, num_users=dm.num_users, data_dir=dm.data_dir, dynamics=dyn)
    export_model(model, dm.data_dir, tmp_path / "out")  # checks the served term equals it
    served = ServedModel(tmp_path / "out")
    log = model.event_log
    t = torch.tensor([int(log.times.max()) + DAY] * 2)
    last = torch.bincount(log.items)[1:].topk(2).indices + 1
    with torch.no_grad():
        want = model.dynamics_term(t, last)
    torch.testing.assert_close(served.dynamics(t, last), want)
    with pytest.raises(ValueError, match="last history item"):
        served.dynamics(t)
    # a request's list: its user vector against every item plus the term after its last item
    at = int(t[0])
    events = served.user_events(0, at)
    answer = served.recommend([Query(events, at, 5)])[0]
    history = torch.from_numpy(events["item_ids"].astype("int64"))
    with torch.inference_mode():
        user = served.user_vectors([Query(events, at, 5)]).float()
        scores = user @ served.item_vecs.T + served.dynamics(t[:1], history[-1:])
    scores = scores.clone()  # out of inference mode
    scores[0, 0] = scores[0, history] = -torch.inf
    assert [i for i, _ in answer] == [served.item_ids[j] for j in scores[0].topk(5).indices]


def test_a_per_row_member_of_ones_own_gets_each_rows_last_item(dataset):
    """A subclass that only writes forward(log, t, last) (the default add_to adds it)."""
    from mmrec.encoders.dynamics import ItemDynamics

    class RepeatBonus(ItemDynamics):
        per_row = True

        def forward(self, log, t, last):
            out = torch.zeros(len(t), self.num_items + 1)
            out[torch.arange(len(t)), last] = 5.0
            return out

    dm = _dm(dataset)
    model = MMRecModule(
        num_items=dm.num_items,
        num_users=dm.num_users,
        data_dir=dm.data_dir,
        d_model=16,
        dynamics=[RepeatBonus()],
        trusted_modules=[__name__],
    )
    last = torch.tensor([3, 0, 7])
    term = model.dynamics_term(torch.tensor([DAY, DAY, 2 * DAY]), last)
    want = torch.zeros(3, dm.num_items + 1)
    want[0, 3], want[2, 7], want[1, 0] = 5.0, 5.0, 5.0
    assert torch.equal(term, want)
