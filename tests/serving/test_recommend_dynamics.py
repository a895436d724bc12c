"""`mmrec recommend` with item dynamics: the term as of `at` from the dataset's log, and from a
newer events file (unknown items counted) without retraining."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import polars as pl
import pytest
import torch
from torch import nn

from mmrec.calendar import to_unix
from mmrec.data.eventlog import EventLog
from mmrec.encoders.dynamics import RecentDynamics
from mmrec.module import MMRecModule
from mmrec.sequence import GPT2Sequence
from mmrec.serving.recommend import main
from mmrec.serving.recommender import Recommender
from mmrec.synthetic.dataset import make_synthetic_dataset

DAY = 86_400
AT = "2014-06-10"


def _served(tmp, member, seed: int, bias: bool = False):
    """A model with one dynamics member (random last layer: a zero one adds nothing), its
    folder and its checkpoint."""
    path = make_synthetic_dataset(tmp / "ds", num_users=60, num_items=40, seed=seed)
    meta = json.loads((path / "meta.json").read_text())
    torch.manual_seed(0)
    model = MMRecModule(
        num_items=meta["num_items"],
        num_users=meta["num_users"],
        data_dir=str(path),
        time_granularity="day",
        max_len=10,
        d_model=16,
        sequence=GPT2Sequence(n_layer=1, n_head=2, dropout=0.0),
        dynamics=[member],
    )
    nn.init.normal_(model.dynamics[0].mlp[2].weight, std=2.0)
    if bias:
        nn.init.normal_(model.dynamics[0].mlp[2].bias, std=2.0)
    ckpt = tmp / "model.ckpt"
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams)}, ckpt)
    items = pl.read_parquet(path / "items.parquet")["item_id"].to_list()
    return ckpt, path, items


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A model with random RecentDynamics, its folder and its checkpoint."""
    return _served(tmp_path_factory.mktemp("recdyn"), RecentDynamics(hidden=4), seed=4)


def _expected_top(rec: Recommender, history: list[str], at: str, k: int, log: EventLog):
    """Top-k by hand: user vector . item vectors + the term from ``log`` at ``at``."""
    from mmrec.data.batch import history_batch

    query = to_unix(at, "day")
    idx = [rec.index[h] for h in history]
    batch = history_batch(idx, [query] * len(idx), None, query, rec.max_len)
    with torch.no_grad():
        scores = rec.model(batch) @ rec.item_vectors().T  # [1, N + 1]
        scores = scores + rec.model.dynamics[0](log, torch.tensor([query]))
    scores[0, [0, *idx]] = -torch.inf
    top = scores[0].topk(k)
    return [rec.item_ids[i] for i in top.indices.tolist()], top.values


def test_recommend_adds_the_dynamics_as_of_at_from_the_dataset_log(served):
    ckpt, path, items = served
    rec = Recommender.from_checkpoint(ckpt)
    history = items[:3]
    dataset_log = EventLog.from_folder(path)
    lists = {}
    for at in (AT, "2012-03-01"):
        got = rec.recommend(history, at=at, k=8)
        want_ids, want_scores = _expected_top(rec, history, at, 8, dataset_log)
        assert [r.item_id for r in got] == want_ids
        torch.testing.assert_close(torch.tensor([r.score for r in got]), want_scores)
        lists[at] = want_scores
    assert not torch.equal(lists[AT], lists["2012-03-01"])


def _events_file(tmp_path, items: list[str], query: int, suffix: str = ".csv"):
    rows = (
        [(items[5], query - DAY)] * 5  # five events the day before: counted
        + [(items[6], query - 3 * DAY)]
        + [(items[7], query)] * 4  # at the query time: never seen
        + [("NOPE", query - DAY), ("NOPE", query - 2 * DAY), ("ALSO_NOT", query - DAY)]
        + [(None, query - DAY)]  # no item id
    )
    frame = pl.DataFrame(
        {"item_id": [r[0] for r in rows], "timestamp": [r[1] for r in rows]},
        schema={"item_id": pl.Utf8, "timestamp": pl.Int64},
    )
    out = tmp_path / f"events{suffix}"
    if suffix == ".parquet":  # a datetime column
        frame = frame.with_columns(pl.from_epoch("timestamp", time_unit="s"))
        frame.write_parquet(out)
    else:
        frame.write_csv(out)
    return out


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_a_newer_events_file_replaces_the_log_without_retraining(served, tmp_path, suffix):
    ckpt, path, items = served
    rec = Recommender.from_checkpoint(ckpt)
    query = to_unix(AT, "day")
    read = rec.use_events(_events_file(tmp_path, items, query, suffix))
    assert (read.events, read.items, read.unknown_events) == (10, 3, 3)
    assert read.unknown_ids == ["NOPE", "ALSO_NOT"] and read.null_rows == 1
    assert (read.first, read.last) == (query - 3 * DAY, query) and not read.appended
    idx = [rec.index[items[i]] for i in (5, 6)]
    by_hand = EventLog(
        torch.tensor([idx[0]] * 5 + [idx[1]]),
        torch.tensor([query - DAY] * 5 + [query - 3 * DAY]),
        rec.model.num_items,
    )
    with torch.no_grad():  # the events at the query time are not seen
        term = rec.model.dynamics_term(torch.tensor([query]))
        torch.testing.assert_close(term, rec.model.dynamics[0](by_hand, torch.tensor([query])))
    got = rec.recommend(items[:3], at=AT, k=6)
    want_ids, want_scores = _expected_top(rec, items[:3], AT, 6, by_hand)
    assert [r.item_id for r in got] == want_ids
    torch.testing.assert_close(torch.tensor([r.score for r in got]), want_scores)
    assert rec.time_range()[1] >= query


def test_events_appended_to_the_dataset_log(served, tmp_path):
    ckpt, path, items = served
    rec = Recommender.from_checkpoint(ckpt)
    query = to_unix(AT, "day")
    read = rec.use_events(_events_file(tmp_path, items, query), append=True)
    assert read.appended and read.events == 10
    dataset = EventLog.from_folder(path)
    new_items = torch.tensor([rec.index[items[5]]] * 5 + [rec.index[items[6]]])
    new_times = torch.tensor([query - DAY] * 5 + [query - 3 * DAY])
    both = EventLog(
        torch.cat([dataset.items, new_items]),
        torch.cat([dataset.times, new_times]),
        rec.model.num_items,
    )
    with torch.no_grad():
        term = rec.model.dynamics_term(torch.tensor([query]))
        torch.testing.assert_close(term, rec.model.dynamics[0](both, torch.tensor([query])))


def test_cli_events_option_reports_unknown_items(served, tmp_path, capsys):
    ckpt, path, items = served
    query = to_unix(AT, "day")
    events = _events_file(tmp_path, items, query)
    argv = ["--ckpt_path", str(ckpt), "--history", ",".join(items[:3]), "--at", AT, "--k", "5"]
    assert main([*argv, "--events", str(events), "--json"]) == 0
    captured = capsys.readouterr()
    out = json.loads(captured.out)
    assert out["events"]["unknown_events"] == 3 and out["events"]["events"] == 10
    assert "3 events of 2 item id(s) unknown to the dataset skipped: NOPE, ALSO_NOT" in (
        captured.err
    )
    assert "1 rows without item_id or timestamp skipped" in captured.err
    when = datetime.fromtimestamp(query - 3 * DAY, timezone.utc).isoformat()
    assert f"10 events of 3 items, {when}" in captured.err
    assert main([*argv, "--json"]) == 0  # the dataset's log: another list
    plain = json.loads(capsys.readouterr().out)
    assert plain["recommendations"] != out["recommendations"]
    assert main([*argv, "--events", str(tmp_path / "missing.csv")]) == 2
    assert "not found" in capsys.readouterr().err
    (tmp_path / "bad.csv").write_text("asin,when\nX,1\n")
    assert main([*argv, "--events", str(tmp_path / "bad.csv")]) == 2
    assert "has no column item_id, timestamp (columns: asin, when)" in capsys.readouterr().err


@pytest.fixture(scope="module")
def served_transitions(tmp_path_factory):
    """A model with random TransitionDynamics, its folder and its checkpoint."""
    from mmrec.encoders.dynamics import TransitionDynamics

    tmp = tmp_path_factory.mktemp("rectrans")
    return _served(tmp, TransitionDynamics(hidden=4), seed=6, bias=True)


def test_recommend_scores_what_followed_the_last_history_item_before_at(served_transitions):
    ckpt, path, items = served_transitions
    rec = Recommender.from_checkpoint(ckpt)
    log = EventLog.from_folder(path)
    busiest = int(torch.bincount(log.items).argmax())  # an item many users went on from
    history = [items[0], rec.item_ids[busiest]]
    at = datetime.fromtimestamp(int(log.times.max()) + DAY, timezone.utc).date().isoformat()
    query = to_unix(at, "day")
    last = torch.tensor([busiest])
    term = rec.model.dynamics[0](log, torch.tensor([query]), last)
    assert term.abs().sum() > 0
    got = rec.recommend(history, at=at, k=5)
    from mmrec.data.batch import history_batch

    idx = [rec.index[h] for h in history]
    batch = history_batch(idx, [query] * len(idx), None, query, rec.max_len)
    with torch.no_grad():
        scores = rec.model(batch) @ rec.item_vectors().T + term
    scores[0, [0, *idx]] = -torch.inf
    assert [r.item_id for r in got] == [rec.item_ids[i] for i in scores[0].topk(5).indices]


def test_a_newer_events_file_needs_user_id_for_transitions_and_then_counts_them(
    served_transitions, tmp_path
):
    ckpt, path, items = served_transitions
    rec = Recommender.from_checkpoint(ckpt)
    history = items[:2]
    events = tmp_path / "events.csv"
    pl.DataFrame({"item_id": [history[-1], items[9]], "timestamp": ["2014-06-01"] * 2}).write_csv(
        events
    )
    with pytest.raises(ValueError, match="no user_id column.*TransitionDynamics"):
        rec.use_events(events)
    before = rec.recommend(history, at=AT, k=40)
    # a new shopper went from the history's last item to items[9] the day before AT, 30 times
    frame = pl.DataFrame(
        {
            "user_id": [f"new{u}" for u in range(30) for _ in range(2)],
            "item_id": [history[-1], items[9]] * 30,
            "timestamp": ["2014-06-01", "2014-06-09"] * 30,
        }
    )
    frame.write_csv(events)
    read = rec.use_events(events, append=True)
    assert read.events == 60
    after = rec.recommend(history, at=AT, k=40)
    score = {r.item_id: r.score for r in after}
    old = {r.item_id: r.score for r in before}
    assert score[items[9]] != old[items[9]]
    assert all(score[i] == old[i] for i in score if i != items[9])
