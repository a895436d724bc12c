"""The result store: damaged records, the code behind each result, and what the key holds."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import polars as pl
import pytest

from mmrec.experiments.store import ADDED_LATER, MOVED_CLASS_PATHS, ResultStore, run_key

REPO = Path(__file__).resolve().parents[2]


def _stored(tmp_path: Path) -> tuple[ResultStore, Path, Path]:
    store = ResultStore(tmp_path / "store")
    record = {"test": {"ndcg@10": 0.5}, "args": ["--config=configs/quickstart.yaml"] * 4}
    store.put("k", record, pl.DataFrame({"user_idx": [1, 2], "ndcg@10": [0, 1]}))
    return store, tmp_path / "store" / "k.json", tmp_path / "store" / "k.users.parquet"


@pytest.mark.parametrize("damage", ["json:0", "json:100", "json:not-an-object", "parquet:100"])
def test_a_damaged_record_is_named_once_and_treated_as_missing(tmp_path, capsys, damage):
    store, record, users = _stored(tmp_path)
    assert store.get("k")["test"] == {"ndcg@10": 0.5} and record.stat().st_size > 100
    which, how = damage.split(":")
    path = record if which == "json" else users
    if how == "not-an-object":
        path.write_text('["a list, not a record"]\n')
    else:
        path.write_bytes(path.read_bytes()[: int(how)])
    assert store.get("k") is None and store.get("k") is None
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err  # one line, once per file
    assert str(path) in err[0] and "damaged" in err[0] and "treated as missing" in err[0]
    # storing the run again (a retrain) replaces the damaged files
    store.put("k", {"test": {"ndcg@10": 0.25}}, pl.DataFrame({"user_idx": [1], "ndcg@10": [0]}))
    assert store.get("k") == {"test": {"ndcg@10": 0.25}}


def test_code_version_outside_a_git_checkout_is_unknown(tmp_path):
    from mmrec.experiments.store import code_version

    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    code = code_version(package)
    assert code["commit"] is None and code["dirty"] is None
    assert code["version"] == __import__("mmrec").__version__


def test_code_version_names_the_commit_and_a_dirty_tree(tmp_path):
    from mmrec.experiments.store import code_version

    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(tmp_path), *args], check=True,
                              capture_output=True, text=True).stdout.strip()  # fmt: skip

    git("init", "-q")
    git("config", "user.email", "t@example.com")
    git("config", "user.name", "t")
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("x = 1\n")
    git("add", "pkg/__init__.py")
    git("commit", "-q", "-m", "one")
    clean = code_version(package)
    assert clean["commit"] == git("rev-parse", "HEAD") and clean["dirty"] is False
    (package / "__init__.py").write_text("x = 2\n")
    dirty = code_version(package)
    assert dirty["commit"] == clean["commit"] and dirty["dirty"] is True
    (package / "__init__.py").write_text("x = 3\n")
    assert code_version(package)["diff"] != dirty["diff"]  # two dirty states differ
    # a package inside a checkout that does not track it (an installed copy) is no commit
    other = tmp_path / "site-packages" / "pkg"
    other.mkdir(parents=True)
    (other / "__init__.py").write_text("")
    assert code_version(other)["commit"] is None


def test_runs_with_another_seed_everything_and_the_same_data_seed_have_other_keys():
    """Adopted or hand-run fits can differ in ``seed_everything`` alone (the experiment sets
    both seeds to one value): they must not share one stored result."""
    from mmrec.lightning_cli import resolve_config

    base = [f"--config={REPO / 'configs' / 'quickstart.yaml'}", "--data.seed=0"]
    one = resolve_config([*base, "--seed_everything=1"])
    two = resolve_config([*base, "--seed_everything=2"])
    assert one["data"]["seed"] == two["data"]["seed"] == 0
    assert run_key(one) != run_key(two)
    assert run_key(one) == run_key(json.loads(json.dumps(one)) | {"name": "other"})


@pytest.mark.parametrize("dotted", sorted(ADDED_LATER))
def test_every_option_added_later_keeps_keys_at_its_old_value_only(dotted):
    before = {
        "seed_everything": 0,
        "data": {"data_dir": "d", "prepare": {"source": "s"}},
        "model": {"d_model": 64},
    }
    *parents, leaf = dotted.split(".")
    at_old = json.loads(json.dumps(before))
    node = at_old
    for part in parents:
        node = node.setdefault(part, {})
    node[leaf] = ADDED_LATER[dotted]
    assert run_key(at_old) == run_key(before)
    node[leaf] = "another value"
    assert run_key(at_old) != run_key(before)


@pytest.mark.parametrize("moved", sorted(MOVED_CLASS_PATHS))
def test_a_moved_class_keeps_the_key_its_old_class_path_gave(moved):
    """Issue 38 moved the callbacks from mmrec.runs to mmrec.callbacks: a run naming the new
    path has the key stored runs got under the old one, and both paths import one class."""
    import importlib

    def config(path: str) -> dict:
        callback = {"class_path": path, "init_args": {"decay": 0.998}}
        return {"model": {"d_model": 64}, "trainer": {"callbacks": [callback]}}

    old = MOVED_CLASS_PATHS[moved]
    assert run_key(config(moved)) == run_key(config(old))
    assert run_key(config(moved)) != run_key(config("mmrec.callbacks.Other"))
    (new_module, new_name), (old_module, old_name) = (p.rsplit(".", 1) for p in (moved, old))
    new_class = getattr(importlib.import_module(new_module), new_name)
    assert getattr(importlib.import_module(old_module), old_name) is new_class
