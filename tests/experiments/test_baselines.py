"""Baselines: exact agreement with evaluate_scores, hand-counted transitions without valid/test
events, co-occurrence beating popularity where sequences carry signal."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch

from mmrec.calendar import DAY
from mmrec.config import component_spec
from mmrec.data.datamodule import AmazonDataModule
from mmrec.data.eventlog import EventLog
from mmrec.evaluation import evaluate_scores
from mmrec.evaluation.metrics import metric_names
from mmrec.experiments.baselines import (
    Baseline,
    BaselineEvaluation,
    BlendBaseline,
    CausalCoOccurrence,
    DecayedCountBaseline,
    LastItemCoOccurrence,
    PopularityBaseline,
    RecentCountBaseline,
    evaluate_baseline,
)
from mmrec.experiments.counts import DecayedCounts, event_transitions, training_transitions
from mmrec.experiments.stats import paired_test, paired_values
from mmrec.synthetic.dataset import make_synthetic_dataset
from tests.data.test_datamodule import write_folder

INF = float("inf")
REPO = Path(__file__).resolve().parents[2]

# rows (user, item, day, rating, split). Training transitions: u0 1->2->3, u1 2->3->1,
# u2 5->4, u3 one event (none).
# valid/test events would add 3->4, 4->5 (u0), 1->6, 6->3 (u1), 6->1 (u3): none may be counted
ROWS = [
    (0, 1, 10, None, "train"), (0, 2, 20, None, "train"), (0, 3, 30, None, "train"),
    (0, 4, 40, None, "valid"), (0, 5, 50, None, "test"),
    (1, 2, 11, None, "train"), (1, 3, 21, None, "train"), (1, 1, 31, None, "train"),
    (1, 6, 41, None, "valid"), (1, 3, 51, None, "test"),
    (2, 5, 12, None, "train"), (2, 4, 22, None, "train"),
    (3, 6, 13, None, "train"), (3, 1, 23, None, "test"),
]  # fmt: skip


@pytest.fixture
def tiny_dm(tmp_path) -> AmazonDataModule:
    write_folder(tmp_path / "tiny", ROWS, num_users=4, num_items=6)
    return AmazonDataModule(str(tmp_path / "tiny"), max_len=3, eval_batch_size=2)


@pytest.fixture(scope="module")
def synthetic_dm(tmp_path_factory) -> AmazonDataModule:
    path = make_synthetic_dataset(
        tmp_path_factory.mktemp("syn") / "ds", num_users=300, num_items=120, seed=0
    )
    return AmazonDataModule(str(path), max_len=20, eval_batch_size=64)


def all_rows(dm: AmazonDataModule, split: str) -> dict[str, torch.Tensor]:
    dm.setup()
    ds = dm.datasets[split]
    return ds.__getitems__(list(range(len(ds))))


def test_cooccurrence_counts_by_hand_without_valid_or_test_events(tiny_dm):
    base = LastItemCoOccurrence(popularity_weight=0.1).fit(tiny_dm)
    expected = np.zeros((7, 7))
    expected[1, 2] = expected[3, 1] = expected[5, 4] = 1
    expected[2, 3] = 2
    np.testing.assert_array_equal(base.transitions.toarray(), expected)
    prev, nxt = training_transitions(tiny_dm)
    assert sorted(zip(prev.tolist(), nxt.tolist(), strict=True)) == [
        (1, 2), (2, 3), (2, 3), (3, 1), (5, 4)
    ]  # fmt: skip


def test_cooccurrence_scores_by_hand(tiny_dm):
    w = 0.1
    base = LastItemCoOccurrence(popularity_weight=w).fit(tiny_dm)
    # training counts of items 1..6 = 2, 2, 2, 1, 1, 1 -> prior w * count / 2
    prior = [-INF, w, w, w, w / 2, w / 2, w / 2]
    valid = all_rows(tiny_dm, "valid")  # u0 (last item 3), u1 (last item 1)
    assert valid["user_idx"].tolist() == [0, 1]
    expected = torch.tensor([prior, prior])
    expected[0, 1] += 1  # 3 -> 1 once
    expected[1, 2] += 1  # 1 -> 2 once
    torch.testing.assert_close(base.scores(valid), expected)
    # test histories end with 4 (u0: 4 -> 5 is a test transition), 6 (u1), 6 (u3): prior only
    test = all_rows(tiny_dm, "test")
    got = base.scores(test)
    assert got.shape == (3, 7)
    torch.testing.assert_close(got, torch.tensor([prior] * 3))


def test_popularity_scores_and_fit_required(tiny_dm):
    with pytest.raises(RuntimeError, match=r"fit\(dm\) must be called"):
        PopularityBaseline().scores(all_rows(tiny_dm, "test"))
    got = PopularityBaseline().fit(tiny_dm).scores(all_rows(tiny_dm, "test"))
    torch.testing.assert_close(got, torch.tensor([[-INF, 2.0, 2, 2, 1, 1, 1]] * 3))
    with pytest.raises(ValueError, match=r"popularity_weight must be in \[0, 1\)"):
        LastItemCoOccurrence(popularity_weight=1.0)


def test_popularity_metrics_equal_evaluate_scores(synthetic_dm):
    dm = synthetic_dm
    ks = (5, 10, 20)
    result = evaluate_baseline(PopularityBaseline().fit(dm), dm, "test", ks)
    assert isinstance(result, BaselineEvaluation)
    rows = all_rows(dm, "test")  # the same users, targets and exclusions in one matrix
    counts = dm.item_train_counts.float()
    scores = counts.expand(rows["target_items"].shape[0], -1).clone()  # [U, N + 1]
    expected = evaluate_scores(scores, rows["target_items"], rows["exclude_items"], ks)
    assert result.metrics == expected  # int64 fixed-point sums: exactly equal
    assert expected["ndcg@10"] > 0.05  # a meaningful value, not all zeros
    # per-user values: one row per test user, column means = the metrics
    per_user = result.per_user
    # the model's test_per_user.parquet format (per_user_table), sorted by user
    assert per_user.columns == [
        "user_idx", "user_id", "num_targets", "first_rank", *metric_names(ks)
    ]  # fmt: skip
    assert per_user["user_idx"].to_list() == sorted(rows["user_idx"].tolist())
    hit = (per_user["first_rank"] <= 10).cast(pl.Float64)
    assert hit.to_list() == per_user["hr@10"].to_list()
    assert per_user["num_targets"].to_list() == [1] * per_user.height  # leave-one-out
    for name in metric_names(ks):
        assert per_user[name].mean() == pytest.approx(result.metrics[name], abs=1e-9)


def test_prefix_valid_split_and_no_exclusion(synthetic_dm):
    dm = synthetic_dm
    base = PopularityBaseline().fit(dm)
    result = evaluate_baseline(base, dm, "valid", (10,), prefix="val/", exclude_history=False)
    rows = all_rows(dm, "valid")
    scores = dm.item_train_counts.float().expand(rows["target_items"].shape[0], -1).clone()
    expected = evaluate_scores(scores, rows["target_items"], None, (10,))
    assert result.metrics == {f"val/{k}": v for k, v in expected.items()}
    with pytest.raises(ValueError, match="split must be 'valid' or 'test'"):
        evaluate_baseline(base, dm, "train")


def test_training_transitions_match_parquet_train_split(synthetic_dm):
    dm = synthetic_dm
    df = pl.read_parquet(Path(dm.data_dir) / "interactions.parquet")
    assert set(df["split"].unique()) == {"train", "valid", "test"}
    train = (
        df.filter(pl.col("split") == "train")
        .sort("user_idx", "timestamp", maintain_order=True)
        .with_columns(nxt=pl.col("item_idx").shift(-1).over("user_idx"))
        .drop_nulls("nxt")
    )
    prev, nxt = training_transitions(dm)
    got = sorted(zip(prev.tolist(), nxt.tolist(), strict=True))
    assert got == sorted(zip(train["item_idx"].to_list(), train["nxt"].to_list(), strict=True))
    train_events = df.filter(pl.col("split") == "train")
    assert (
        len(got) == train_events.height - train_events["user_idx"].n_unique()
    )  # one fewer per user


def test_cooccurrence_beats_popularity_on_sequential_data(synthetic_dm):
    dm = synthetic_dm
    pop = evaluate_baseline(PopularityBaseline().fit(dm), dm, beyond=True)
    co = evaluate_baseline(LastItemCoOccurrence().fit(dm), dm, beyond=True)
    # planted successors (p = 0.7): measured 0.42 vs 0.13 NDCG@10, 0.65 vs 0.22 HR@10
    assert co.metrics["ndcg@10"] > pop.metrics["ndcg@10"] + 0.15
    assert co.metrics["hr@10"] > 2 * pop.metrics["hr@10"]
    r = paired_test(*paired_values(pop.per_user, co.per_user, "ndcg@10"), n_boot=2000)
    assert r.mean_diff == pytest.approx(co.metrics["ndcg@10"] - pop.metrics["ndcg@10"])
    assert r.ci_low > 0.1 and r.t_pvalue < 1e-6 and r.wilcoxon_pvalue < 1e-6
    # popularity recommends the same few head items: low coverage, high popularity percentile
    assert pop.metrics["coverage@10"] < 0.5 * co.metrics["coverage@10"]
    assert pop.metrics["pop_percentile@10"] > co.metrics["pop_percentile@10"] + 0.1
    assert pop.metrics["novelty@10"] < co.metrics["novelty@10"]


# ---------------------------------------------------------------- causal recency baselines
# Days of a temporal split (valid from day 8, test from day 9); times are day * DAY seconds.
# Test rows (one-shot): u0 history [1, 2] at t = day 9, u1 [2, 3, 4] at day 10, u2 [2, 4, 3] at
# day 12. Transitions (prev -> next @ next's day): u0 1->2 @4, 2->3 @9; u1 2->3 @6, 3->4 @8,
# 4->1 @10; u2 2->4 @7, 4->3 @8, 3->5 @12. Training ones: 1->2, 2->3 (u1), 2->4.
TEMPORAL = [
    (0, 1, 1, "train"), (0, 2, 4, "train"), (0, 3, 9, "test"),
    (1, 2, 2, "train"), (1, 3, 6, "train"), (1, 4, 8, "valid"), (1, 1, 10, "test"),
    (2, 2, 5, "train"), (2, 4, 7, "train"), (2, 3, 8, "valid"), (2, 5, 12, "test"),
]  # fmt: skip


def temporal_dm(path: Path, extra: list[tuple] = (), num_items: int = 6) -> AmazonDataModule:
    """The TEMPORAL folder, plus ``extra`` events ``(item, seconds)`` of user 3 (train split:
    no evaluation row of its own, so the rows of users 0-2 stay the same)."""
    rows = [(u, i, d * DAY, None, s) for u, i, d, s in TEMPORAL]
    rows += [(3, 6, 0, None, "train")] + [(3, i, t, None, "train") for i, t in extra]
    write_folder(path, rows, num_users=4, num_items=num_items, protocol="temporal")
    return AmazonDataModule(str(path), max_len=5, eval_batch_size=2)


@pytest.fixture
def temporal(tmp_path) -> AmazonDataModule:
    return temporal_dm(tmp_path / "temporal")


def row_scores(dm: AmazonDataModule, baseline: Baseline, split: str = "test") -> torch.Tensor:
    rows = all_rows(dm, split)
    assert rows["user_idx"].tolist() == [0, 1, 2][: len(rows["user_idx"])]
    return baseline.fit(dm).scores(rows)


def test_recent_count_by_hand(temporal):
    rows = all_rows(temporal, "test")
    assert rows["target_time"].tolist() == [9 * DAY, 10 * DAY, 12 * DAY]
    # [t - 3 days, t): day 9: days 6, 7, 8, 8 (items 3, 4, 4, 3); day 10: 7, 8, 8, 9 (4, 4, 3,
    # 3); day 12: 9, 10 (3, 1); user 3's item 6 at time 0 is too old; day 12's own event is not
    got = row_scores(temporal, RecentCountBaseline(window_days=3))
    expected = [[-INF, 0, 0, 2, 2, 0, 0], [-INF, 0, 0, 2, 2, 0, 0], [-INF, 1, 0, 1, 0, 0, 0]]
    torch.testing.assert_close(got, torch.tensor(expected))
    # 1.5 days: [day 7.5, 9): day 8 (4, 3); [8.5, 10): day 9 (3); [10.5, 12): nothing
    got = row_scores(temporal, RecentCountBaseline(window_days=1.5))
    expected = [[-INF, 0, 0, 1, 1, 0, 0], [-INF, 0, 0, 1, 0, 0, 0], [-INF, 0, 0, 0, 0, 0, 0]]
    torch.testing.assert_close(got, torch.tensor(expected))
    with pytest.raises(ValueError, match="window_days must be > 0"):
        RecentCountBaseline(window_days=0)
    with pytest.raises(RuntimeError, match=r"fit\(dm\) must be called"):
        RecentCountBaseline().scores(rows)


def test_decayed_count_by_hand(temporal):
    # half-life 1 day: an event d days before t weighs 2 ** -d (exact in binary floats)
    got = row_scores(temporal, DecayedCountBaseline(half_life_days=1))
    day9 = [-INF, 2**-8, 2**-7 + 2**-5 + 2**-4, 2**-3 + 2**-1, 2**-2 + 2**-1, 0, 2**-9]
    day10 = [-INF, 2**-9, 2**-8 + 2**-6 + 2**-5, 2**-4 + 2**-2 + 2**-1, 2**-3 + 2**-2, 0, 2**-10]
    day12 = [-INF, 2**-11 + 2**-2, 2**-10 + 2**-8 + 2**-7, 2**-6 + 2**-4 + 2**-3, 2**-5 + 2**-4,
             0, 2**-12]  # fmt: skip
    torch.testing.assert_close(got, torch.tensor([day9, day10, day12]), rtol=0, atol=1e-7)
    with pytest.raises(ValueError, match="half_life_days must be > 0"):
        DecayedCountBaseline(half_life_days=-1)


@pytest.mark.parametrize("snapshots", [1, 3, 64])
def test_decayed_counts_equal_a_brute_force_sum(snapshots):
    gen = torch.Generator().manual_seed(0)
    items = torch.randint(0, 9, (200,), generator=gen)
    times = torch.randint(-50 * DAY, 400 * DAY, (200,), generator=gen)
    times[:20] = times[20]  # ties
    log = EventLog(items, times, num_items=8, max_snapshots=snapshots)
    half_life = 5.5 * DAY
    decayed = DecayedCounts(log, half_life)
    # every event time and one second either side, before the first and after the last
    t = torch.cat([times, times - 1, times + 1, torch.tensor([-(10**9), int(times.max()) + DAY])])
    got = decayed.before(t)  # [Q, 9]
    before = times[None, :] < t[:, None]  # [Q, E]
    age = (t[:, None] - times[None, :]).double()  # [Q, E] seconds
    weight = torch.where(before, 0.5 ** (age / half_life), 0.0)
    expected = torch.zeros(len(t), 9, dtype=torch.float64).index_add_(1, items, weight)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-300)
    assert decayed.nbytes_per_item() == 8 * (200 // log.stride + 1)
    assert got[-2].abs().sum() == 0 and got[-1].sum() > 0


def test_causal_cooccurrence_by_hand_beside_training_cooccurrence(temporal):
    # u0 (last 2, day 9): 2->3 @6, 2->4 @7 (its own 2->3 @9 is at t); u1 (last 4, day 10): 4->3
    # @8 (4->1 @10 is at t); u2 (last 3, day 12): 3->4 @8 (3->5 @12 is at t)
    got = row_scores(temporal, CausalCoOccurrence(popularity_weight=0))
    expected = torch.zeros(3, 7)
    expected[0, 3] = expected[0, 4] = expected[1, 3] = expected[2, 4] = 1
    expected[:, 0] = -INF
    torch.testing.assert_close(got, expected)
    # training transitions only: u1 and u2 have nothing (4->3 and 3->4 end in validation)
    train = row_scores(temporal, LastItemCoOccurrence(popularity_weight=0))
    expected[1:, 1:] = 0
    torch.testing.assert_close(train, expected)
    # decayed, half-life 1 day: 2->3 @6 and 2->4 @7 at day 9, 4->3 @8 at 10, 3->4 @8 at 12
    got = row_scores(temporal, CausalCoOccurrence(half_life_days=1, popularity_weight=0))
    expected = torch.zeros(3, 7)
    expected[0, 3], expected[0, 4], expected[1, 3], expected[2, 4] = 2**-3, 2**-2, 2**-2, 2**-4
    expected[:, 0] = -INF
    torch.testing.assert_close(got, expected)


def test_causal_cooccurrence_equals_training_cooccurrence_before_any_later_event(temporal):
    # the validation rows (u1, u2) are asked at day 8, when every earlier event is a training
    # one: the same transitions and the same popularity (training counts = counts before t)
    w = 0.1
    valid = all_rows(temporal, "valid")
    assert valid["user_idx"].tolist() == [1, 2] and valid["target_time"].tolist() == [8 * DAY] * 2
    causal = CausalCoOccurrence(popularity_weight=w).fit(temporal).scores(valid)
    train = LastItemCoOccurrence(popularity_weight=w).fit(temporal).scores(valid)
    # u1's last item 3 never led anywhere before day 8; u2's last item 4 neither: prior only
    prior = [-INF, w / 3, w, w / 3, w / 3, 0, w / 3]  # counts 1, 3, 1, 1, 0, 1 (max 3)
    torch.testing.assert_close(causal, torch.tensor([prior, prior]))
    torch.testing.assert_close(causal, train)
    # at test time they part: u1 and u2 now have validation transitions before t
    test = all_rows(temporal, "test")
    causal = CausalCoOccurrence(popularity_weight=w).fit(temporal).scores(test)
    train = LastItemCoOccurrence(popularity_weight=w).fit(temporal).scores(test)
    assert (causal[1:, 3:5].max(1).values >= 1).all() and (train[1:, 1:] < 1).all()


def test_event_transitions_are_every_consecutive_pair_of_all_splits(temporal):
    prev, nxt, time = event_transitions(temporal)
    got = sorted(zip(prev.tolist(), nxt.tolist(), (time // DAY).tolist(), strict=True))
    assert got == [
        (1, 2, 4), (2, 3, 6), (2, 3, 9), (2, 4, 7), (3, 4, 8), (3, 5, 12), (4, 1, 10), (4, 3, 8)
    ]  # fmt: skip


def test_blend_adds_the_weighted_second_baseline(temporal):
    co = {"class_path": "mmrec.experiments.baselines.CausalCoOccurrence",
          "init_args": {"popularity_weight": 0}}  # fmt: skip
    blend = BlendBaseline(co, RecentCountBaseline(window_days=3), weight=0.1)
    got = row_scores(temporal, blend)
    co_scores = row_scores(temporal, CausalCoOccurrence(popularity_weight=0))
    recent = row_scores(temporal, RecentCountBaseline(window_days=3))
    torch.testing.assert_close(got, co_scores + 0.1 * recent)
    assert got[0, 3].item() == pytest.approx(1.2) and got[2, 1].item() == pytest.approx(0.1)
    # weight 0 is the first baseline (no NaN in the padding column); a blend nests
    torch.testing.assert_close(row_scores(temporal, BlendBaseline(co, blend, 0.0)), co_scores)
    nested = row_scores(temporal, BlendBaseline(blend, recent_spec(3), -0.1))
    torch.testing.assert_close(nested, co_scores)
    assert component_spec(blend)["init_args"]["second"] == recent_spec(3)
    with pytest.raises(TypeError, match="is not a Baseline subclass"):
        BlendBaseline({"class_path": "mmrec.encoders.item_id.ItemIdEncoder"}, co)
    with pytest.raises(ValueError, match="weight must be finite"):
        BlendBaseline(co, co, float("nan"))


def recent_spec(days: float) -> dict:
    return {"class_path": "mmrec.experiments.baselines.RecentCountBaseline",
            "init_args": {"window_days": float(days)}}  # fmt: skip


CAUSAL = {
    "recent count": lambda: RecentCountBaseline(window_days=3),
    "decayed count": lambda: DecayedCountBaseline(half_life_days=7),
    "co-occurrence": lambda: CausalCoOccurrence(),
    "decayed co-occurrence": lambda: CausalCoOccurrence(half_life_days=7, popularity_weight=0),
    "blend": lambda: BlendBaseline(CausalCoOccurrence(popularity_weight=0), recent_spec(3), 0.1),
}


@pytest.mark.parametrize("make", CAUSAL.values(), ids=CAUSAL.keys())
def test_no_event_at_or_after_the_query_time_changes_a_score(make, tmp_path):
    """User 3 adds the row's last item two days before its query time ``t``, then item 6 at
    ``t`` or later (invisible to the row) or one second before it (seen: count, decayed count,
    co-occurrence last item -> 6 all grow)."""
    base = temporal_dm(tmp_path / "base")
    rows = all_rows(base, "test")
    times, lasts = rows["target_time"].tolist(), rows["item_ids"][:, -1].tolist()
    for r, (t, last) in enumerate(zip(times, lasts, strict=True)):
        prev = [(last, t - 2 * DAY)]
        scores = {
            name: row_scores(temporal_dm(tmp_path / f"{r}-{name}", prev + extra), make())[r]
            for name, extra in [("none", []), ("at", [(6, t)]), ("second after", [(6, t + 1)]),
                                ("day after", [(6, t + DAY)]), ("before", [(6, t - 1)])]
        }  # fmt: skip
        for name in ("at", "second after", "day after"):
            torch.testing.assert_close(scores[name], scores["none"], msg=f"row {r}: {name}")
        grew = scores["before"] - scores["none"]
        assert grew[6] > 0.09, (r, grew)  # 1 count, 2 ** (-1 s / 7 days), 1 transition, ...
        if getattr(make(), "popularity_weight", 0) == 0:  # no prior normalised by the max
            assert (grew[1:6] == 0).all(), (r, grew)  # nothing but item 6 moved


def test_experiment_evaluates_baselines_with_init_args_without_training(
    tmp_path, monkeypatch, capsys
):
    import yaml

    import mmrec.experiments.execute as execute
    import mmrec.experiments.experiment as exp
    from mmrec.cli import main
    from mmrec.experiments.store import run_key
    from mmrec.lightning_cli import resolve_config

    def refuse(*a, **k):
        raise AssertionError("a model was trained")

    monkeypatch.setattr(execute, "train_and_test", refuse)
    temporal = temporal_dm(tmp_path / "data", num_items=25)  # K = 20 needs 20 items
    recent = "mmrec.experiments.baselines.RecentCountBaseline"
    co = {"class_path": "mmrec.experiments.baselines.CausalCoOccurrence",
          "init_args": {"popularity_weight": 0}}  # fmt: skip
    base = [str(REPO / "configs" / "quickstart.yaml")]
    overrides = [f"data.data_dir={temporal.data_dir}", "data.prepare.source=null"]
    config = {
        "name": "counts", "base": base, "overrides": overrides, "variants": {"ID only": []},
        "train": False, "out": str(tmp_path / "out"), "store": str(tmp_path / "store"),
        "baselines": {
            "popularity": "mmrec.experiments.baselines.PopularityBaseline",
            "recent 1.5d": {"class_path": recent, "init_args": {"window_days": 1.5}},
            "recent 3d": {"class_path": recent, "init_args": {"window_days": 3.0}},
            "recent default": {"class_path": recent},
            "blend": {"class_path": "mmrec.experiments.baselines.BlendBaseline",
                      "init_args": {"first": co, "second": recent_spec(3), "weight": 0.1}},
        },
    }  # fmt: skip
    path = tmp_path / "counts.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    assert main(["experiment", f"--config={path}"]) == 0
    assert "1 run(s) missing: ID only seed 0" in capsys.readouterr().out
    cfg, _ = exp.config_from_args([f"--config={path}"])
    # plain dicts, no jsonargparse Namespace (the workers of `jobs` read them as YAML)
    assert yaml.safe_load(yaml.safe_dump(cfg.baselines))["blend"]["init_args"]["second"] == {
        "class_path": recent, "init_args": {"window_days": 3.0}
    }  # fmt: skip
    runs = {r.variant: r for r in exp.plan(cfg)}
    # a class path keeps the key it always had; a spec's key holds every init argument
    data = resolve_config(list(runs["popularity"].args))["data"]
    ks = [10, 20]
    popularity = {"baseline": "mmrec.experiments.baselines.PopularityBaseline", "data": data}
    assert runs["popularity"].key == run_key(popularity | {"ks": ks})
    assert runs["recent default"].key == runs["recent 3d"].key != runs["recent 1.5d"].key
    assert runs["blend"].baseline["init_args"]["first"]["init_args"] == {
        "half_life_days": None, "popularity_weight": 0
    }  # fmt: skip
    records = {}
    for f in (tmp_path / "store").glob("*.json"):
        record = json.loads(f.read_text())
        records[record["variant"]] = record
    assert set(records) == {"popularity", "recent 1.5d", "recent 3d", "blend"}  # one key, 2 names
    for name, baseline in [
        ("recent 1.5d", RecentCountBaseline(window_days=1.5)),
        ("blend", BlendBaseline(co, recent_spec(3), 0.1)),
    ]:
        expected = evaluate_baseline(baseline.fit(temporal), temporal, ks=ks, beyond=True)
        assert records[name]["test"] == expected.metrics
    # 1.5 days: u0's target 3 (count 1) ties with item 4 only: rank 2; u1's and u2's targets
    # have no count, tied with the 21 and 22 candidates not in their history
    assert records["recent 1.5d"]["test"]["hr@10"] == pytest.approx(1 / 3)
    md = (tmp_path / "out" / "results.md").read_text()
    assert "| recent 1.5d | " in md and "Missing runs (not stored yet): ID only seed 0." in md
    # only Baseline subclasses, checked before anything is built; bad arguments in one line
    for bad, message in [
        ({"class_path": "mmrec.encoders.item_id.ItemIdEncoder"}, "is not a Baseline subclass"),
        ("os.system", "is not a Baseline subclass"),
        ({"class_path": recent, "init_args": {"window_days": 0}}, "window_days must be > 0"),
    ]:
        path.write_text(yaml.safe_dump(config | {"baselines": {"bad": bad}}, sort_keys=False))
        capsys.readouterr()
        assert main(["experiment", f"--config={path}"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0] and "baselines['bad']" in err[0], err
