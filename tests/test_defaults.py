"""The rule for shipped defaults (mmrec.experiments.rule) and the shipped configs it chose."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import yaml

from mmrec.experiments.rule import CLIP, MIN_SPREAD, Paired, Side, judge, spread

REPO = Path(__file__).resolve().parents[1]
CATS = ["A", "B", "C"]


def side(val, test=None):
    return Side(val=tuple(val), test=tuple(test if test is not None else val))


def test_spread_has_a_floor():
    assert spread([0.1, 0.1, 0.1]) == MIN_SPREAD
    assert spread([0.10, 0.11, 0.12]) == pytest.approx(0.01)


def test_a_setting_better_on_validation_everywhere_wins():
    d = side([0.100, 0.102, 0.098])
    s = side([0.104, 0.106, 0.102])
    v = judge({c: (d, s, None) for c in CATS}, CATS)
    assert v.wins and v.score == pytest.approx(2.0)  # +0.004 / spread 0.002 each
    assert "wins" in v.reason


def test_one_category_cannot_decide_alone():
    d = side([0.100, 0.100, 0.100])
    big = side([0.140, 0.140, 0.140])  # +20 spreads, clipped to +2
    worse = side([0.097, 0.097, 0.097])  # -1.5 spreads
    v = judge({"A": (d, big, None), "B": (d, worse, None), "C": (d, worse, None)}, CATS)
    assert v.categories[0].change == CLIP
    assert not v.wins and v.score == pytest.approx((2 - 1.5 - 1.5) / 3)
    assert "validation does not favour" in v.reason


def test_test_may_veto_a_validation_win():
    d = side([0.100, 0.101, 0.099], test=[0.080, 0.081, 0.079])
    s = side([0.110, 0.111, 0.109], test=[0.070, 0.071, 0.069])  # -0.010 > 2 x 0.002 below
    ok = side([0.110, 0.111, 0.109], test=[0.079, 0.080, 0.078])  # within the spread
    v = judge({"A": (d, s, None), "B": (d, ok, None), "C": (d, ok, None)}, CATS)
    assert not v.wins and "vetoed on test" in v.reason and "A: test 0.0700" in v.reason
    below = Paired(-0.004, -0.006, -0.001)
    v = judge({"A": (d, ok, below), "B": (d, ok, None), "C": (d, ok, None)}, CATS)
    assert not v.wins and "wholly below zero" in v.reason
    v = judge({"A": (d, ok, Paired(-0.001, -0.003, 0.001)), "B": (d, ok, None),
               "C": (d, ok, None)}, CATS)  # fmt: skip
    assert v.wins


def test_missing_evidence_means_no_decision():
    d, s = side([0.1, 0.1, 0.1]), side([0.2, 0.2, 0.2])
    v = judge({"A": (d, s, None), "B": (d, s, None)}, CATS)
    assert not v.wins and "C: no results" in v.reason
    one = side([0.2])
    v = judge({"A": (d, s, None), "B": (d, s, None), "C": (d, one, None)}, CATS)
    assert not v.wins and "C: 1 seed(s), the rule needs 3" in v.reason
    none = Side(val=(), test=())  # a planned variant with no run trained yet
    v = judge({"A": (d, s, None), "B": (d, s, None), "C": (d, none, None)}, CATS)
    assert not v.wins and "C: 0 seed(s), the rule needs 3" in v.reason


def test_a_side_needs_one_validation_and_one_test_figure_per_seed():
    with pytest.raises(ValueError, match="one of each per seed"):
        Side(val=(0.1, 0.2), test=(0.1,))
    with pytest.raises(ValueError, match="missing"):
        Side(val=(float("nan"),), test=(0.1,))


# ----------------------------------------------------------------- the shipped configs
SHIPPED = {  # shipped Beauty config -> its row of the candidates table (the runs it is)
    "sasrec": "ID only, relative positions, 1 head, dropout 0.4, lr 2e-3, EMA",
    "content": "ID (text-initialised) + attributes + text, relative positions, d=128, lr 1e-3, EMA",
    "full": "full, relative positions, d=128, lr 1e-3, EMA",
}
NEUTRAL = {"sasrec": "id", "content": "content", "full": "full"}


#: Optimizer steps of a Beauty 2014 training epoch, at least: one sequence per training user
#: (22,363), batches of 256.
BEAUTY_STEPS_PER_EPOCH = -(-22_363 // 256)


def _candidate_rows(variant: str) -> dict[int, dict]:
    with (REPO / "benchmarks/results/beauty2014_candidates/results.csv").open() as f:
        return {int(r["seed"]): r for r in csv.DictReader(f) if r["variant"] == variant}


def _candidate_keys(variant: str) -> dict[int, str]:
    return {seed: r["key"] for seed, r in _candidate_rows(variant).items()}


def _min_steps(path: str) -> int | None:
    return (yaml.safe_load((REPO / path).read_text()).get("trainer") or {}).get("min_steps")


def _beauty_args(name: str, seed: int) -> list[str]:
    return [f"--config=configs/beauty2014/{name}.yaml", f"--seed_everything={seed}",
            f"--data.seed={seed}"]  # fmt: skip


def _has_dynamics(path: str) -> bool:
    return bool((yaml.safe_load((REPO / path).read_text()).get("model") or {}).get("dynamics"))


@pytest.mark.parametrize("name", list(SHIPPED))
def test_shipped_beauty_configs_are_the_candidate_runs(name, monkeypatch):
    """configs/beauty2014/<name>.yaml trains exactly the runs of the chosen candidate row
    (same resolved config, so the same key), which is what makes its figures theirs; item
    dynamics, shipped later in the ID-only default, are its only other difference (without
    them, the candidate's key). A wait for step ``trainer.min_steps`` before early stopping,
    shipped after those runs, is left out of the comparison only where it binds on none of
    them (each trained past it)."""
    from mmrec.cli import resolve_config
    from mmrec.experiments.store import run_key

    monkeypatch.chdir(REPO)
    rows = _candidate_rows(SHIPPED[name])
    assert sorted(rows) == [0, 1, 2]
    path = f"configs/beauty2014/{name}.yaml"
    wait, dynamics = _min_steps(path), _has_dynamics(path)
    assert dynamics == (name == "sasrec")  # the rule's verdict: ID only gets them, for now
    for seed, row in rows.items():
        args = _beauty_args(name, seed)
        if dynamics:
            assert run_key(resolve_config(args)) != row["key"]
            args.append("--model.dynamics=null")
        if wait is not None:
            assert int(row["epochs"]) * BEAUTY_STEPS_PER_EPOCH >= wait, (name, seed)
            assert run_key(resolve_config(args)) != row["key"]  # the wait is in the key
            args.append("--trainer.min_steps=null")
        assert run_key(resolve_config(args)) == row["key"], (name, seed)


def test_the_dynamics_judgement_trains_the_shipped_id_model(monkeypatch):
    """The ID-only default with item dynamics is the run of the rule's judgement on the
    defaults of record (configs/experiments/defaults_dynamics_beauty2014.yaml), and that
    table's ID only is the shipped model without them: the judgement's figures are the
    shipped config's."""
    from mmrec.cli import resolve_config
    from mmrec.experiments.experiment import config_from_args, plan
    from mmrec.experiments.store import run_key

    monkeypatch.chdir(REPO)
    cfg, _ = config_from_args(["--config", "configs/experiments/defaults_dynamics_beauty2014.yaml"])
    keys = {(r.variant, r.seed): r.key for r in plan(cfg) if r.baseline is None}
    for seed in (0, 1, 2):
        args = _beauty_args("sasrec", seed)
        assert keys["ID only + dynamics", seed] == run_key(resolve_config(args))
        assert keys["ID only", seed] == run_key(resolve_config([*args, "--model.dynamics=null"]))
        fast = keys["ID only + dynamics, lr x10", seed]
        assert fast not in (keys["ID only", seed], keys["ID only + dynamics", seed])


@pytest.mark.parametrize("name", list(SHIPPED))
def test_category_neutral_defaults_hold_the_same_model(name):
    beauty = yaml.safe_load((REPO / f"configs/beauty2014/{name}.yaml").read_text())
    neutral = yaml.safe_load((REPO / f"configs/defaults/{NEUTRAL[name]}.yaml").read_text())
    for section in ("model", "trainer", "early_stopping", "seed_everything"):
        assert beauty[section] == neutral[section], section
    assert "data_dir" not in neutral["data"] and "prepare" not in neutral["data"]


def test_defaults_experiment_plans_the_candidate_runs(monkeypatch):
    from mmrec.cli import resolve_config
    from mmrec.experiments.experiment import config_from_args, plan
    from mmrec.experiments.store import run_key

    monkeypatch.chdir(REPO)
    cfg, _ = config_from_args(["--config", "configs/experiments/defaults_beauty2014.yaml"])
    names = {"ID only (no dynamics)": "sasrec", "content (ID + attributes + text)": "content",
             "full (content + time)": "full"}  # fmt: skip
    planned = {(r.variant, r.seed): r for r in plan(cfg) if r.baseline is None}
    assert {v for v, _ in planned} == {*names, "ID + dynamics"}
    for run in planned.values():
        if run.variant == "ID + dynamics":  # the shipped ID-only config, dynamics and all
            assert run.key == run_key(resolve_config(_beauty_args("sasrec", run.seed)))
        else:
            want = _candidate_keys(SHIPPED[names[run.variant]])[run.seed]
            if _min_steps(f"configs/beauty2014/{names[run.variant]}.yaml") is None:
                assert run.key == want
            else:  # the wait binds on none of the candidate runs (the test above)
                assert run.key != want


def test_defaults_of_record_script_writes_the_verdicts(tmp_path, monkeypatch):
    from benchmarks.defaults_of_record import main

    fields = ["variant", "seed", "key", "ndcg@10", "val_ndcg@10"]
    for cat, gain in (("a", 0.004), ("b", 0.002), ("c", -0.001)):
        with (tmp_path / f"{cat}.csv").open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=fields)
            w.writeheader()
            for seed, wobble in enumerate((0.0, 0.002, -0.002)):
                w.writerow(
                    {
                        "variant": "old",
                        "seed": seed,
                        "key": f"{cat}o{seed}",
                        "ndcg@10": 0.05 + wobble,
                        "val_ndcg@10": 0.06 + wobble,
                    }
                )
                w.writerow({"variant": "new", "seed": seed, "key": f"{cat}n{seed}",
                            "ndcg@10": 0.05 + gain + wobble,
                            "val_ndcg@10": 0.06 + gain + wobble})  # fmt: skip
    spec = {
        "out": str(tmp_path / "out.md"), "store": str(tmp_path / "store"), "cats": ["A", "B", "C"],
        "decisions": [{
            "setting": "new thing", "default": "old thing", "categories": "cats",
            "evidence": {c.upper(): {"default": [str(tmp_path / f"{c}.csv"), "old"],
                                     "setting": [str(tmp_path / f"{c}.csv"), "new"]}
                         for c in "abc"},
        }],
    }  # fmt: skip
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    assert main(["--spec", str(tmp_path / "spec.yaml")]) == 0
    text = (tmp_path / "out.md").read_text()
    assert "**Default**: wins: mean standardised validation change +0.83" in text
    assert "| C | 3 | 0.0600 | 0.0590 | 0.0020 | -0.50 |" in text
    assert "per-user results not stored" in text


def test_a_side_with_no_runs_has_no_paired_test(tmp_path):
    """A planned variant with no run trained yet (no keys) gives no paired test, rather than
    failing the whole report."""
    from benchmarks.defaults_of_record import paired_from_store

    assert paired_from_store(tmp_path, [], []) is None
    assert paired_from_store(tmp_path, ["a"], []) is None
