"""`mmrec export`: ONNX Runtime's top-10 equals PyTorch's, the manifest, the graph's inputs
follow the encoders, unexportable components are named, item dynamics are served."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch import Tensor

from mmrec.config import ConfigError
from mmrec.encoders.base import EventEncoder
from mmrec.encoders.rating import RatingEncoder
from mmrec.encoders.user_context import UserContextEncoder
from mmrec.sequence import GPT2Sequence
from mmrec.serving.bundle import Query, ServedModel, serving_batch
from mmrec.serving.export import export_model, file_sha256
from mmrec.serving.onnx_model import tower_inputs
from mmrec.serving.recommend import Recommender
from mmrec.serving.requests import Limits, iso, parse
from mmrec.synthetic.dataset import make_synthetic_dataset
from tests.serving.helpers import (
    assert_same_top,
    build_model,
    dataset_histories,
    time_encoders,
    torch_top,
)


def _parity(served: ServedModel, model, data_dir, users: list[int]) -> float:
    """Each user's served top-10 (a request through ``parse``, ONNX Runtime) against PyTorch's
    (``torch_top``); returns the largest score difference."""
    histories = dataset_histories(data_dir, users)
    want_scores, want_items = torch_top(model, histories, 10)
    names = {i: u for u, i in served.users.items()}
    queries = [
        parse(json.dumps({"user": names[h["user_idx"]], "at": iso(h["at"], "day")}).encode(),
              served, Limits())
        for h in histories
    ]  # fmt: skip
    got = [
        a for lo in range(0, len(queries), 256) for a in served.recommend(queries[lo : lo + 256])
    ]
    return max(
        assert_same_top(wi, ws, g, served.item_ids)
        for wi, ws, g in zip(want_items.tolist(), want_scores.tolist(), got, strict=True)
    )


def test_parity_quickstart_sized_1000_users(quick):
    served = ServedModel(quick["folder"])
    diff = _parity(served, quick["model"], quick["data"], list(range(1000)))
    assert diff <= 1e-4


@pytest.mark.slow
def test_parity_beauty_sized_1000_users(tmp_path):
    """22,363 users and 12,101 items (Beauty 2014's sizes), the SASRec-sized model with time."""
    data = make_synthetic_dataset(tmp_path / "ds", num_users=22363, num_items=12101, seed=3)
    model = build_model(
        data,
        max_len=50,
        d_model=64,
        event_encoders=time_encoders(),
        sequence=GPT2Sequence(n_layer=2, n_head=2, dropout=0.5),
    )
    export_model(model, data, tmp_path / "export")
    served = ServedModel(tmp_path / "export", threads=2)
    users = np.random.default_rng(0).choice(22363, 1000, replace=False).tolist()
    assert _parity(served, model, data, users) <= 1e-4


def test_manifest_and_files(quick):
    folder, model = quick["folder"], quick["model"]
    m = json.loads((folder / "manifest.json").read_text())
    assert m["format"] == 1 and m["mmrec_version"]
    assert m["checkpoint"]["sha256"] == file_sha256(quick["ckpt"])
    assert m["checkpoint"]["config"]["d_model"] == 32 and m["checkpoint"]["config"]["max_len"] == 20
    names = [i["name"] for i in m["onnx"]["inputs"]]
    assert names == ["item_ids", "timestamps", "ratings", "mask", "query_time"]
    assert all(i["shape"] == ["batch", "length"] for i in m["onnx"]["inputs"])
    dtypes = [i["dtype"] for i in m["onnx"]["inputs"]]
    assert dtypes == ["int64", "int64", "float32", "bool", "int64"]
    assert m["onnx"]["outputs"][0]["name"] == "user_vectors"
    assert m["onnx"]["max_abs_diff_vs_torch"] < 1e-4
    assert m["dynamics"][0]["class_path"] == "mmrec.encoders.dynamics.RecentDynamics"
    assert m["model"] == {"num_items": 147, "d_model": 32, "max_len": 20}
    vecs = load_file(folder / "item_vectors.safetensors")["item_vectors"]
    with torch.no_grad():
        torch.testing.assert_close(vecs, model.item_vectors())
    for name in m["files"].values():
        assert (folder / name).is_file()
    served = ServedModel(folder)
    assert served.item_ids[5] == "S000000005" and served.index["S000000005"] == 5

    import onnx

    graph = onnx.load(str(folder / "user_tower.onnx")).graph
    dims = [[d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in graph.input]
    assert dims == [["batch", "length"]] * 5


def test_graph_inputs_follow_the_encoders(tmp_path):
    data = make_synthetic_dataset(tmp_path / "ds", num_users=30, num_items=40, seed=0)
    batch = serving_batch(
        [Query({"item_ids": np.array([1, 2]), "timestamps": np.array([10, 20]),
                "ratings": np.array([4.0, np.nan], np.float32), "event_rows": np.array([1, 2])},
               30, 10, 3)],
        max_len=5,
    )  # fmt: skip
    plain = build_model(data, max_len=5, d_model=8, sequence=GPT2Sequence(n_layer=1, n_head=2))
    vecs = plain.item_vectors()
    assert tower_inputs(plain, batch, vecs) == ["item_ids", "mask"]
    users = build_model(
        data,
        max_len=5,
        d_model=8,
        event_encoders=[RatingEncoder(), UserContextEncoder()],
        sequence=GPT2Sequence(n_layer=1, n_head=2),
    )
    assert tower_inputs(users, batch, vecs) == ["item_ids", "ratings", "mask", "user_idx"]


class BakedEncoder(EventEncoder):
    """Reads a Python number out of the batch: traced into the graph as a constant."""

    def build(self, ctx) -> None:
        super().build(ctx)
        self.scale = torch.nn.Parameter(0.1 * torch.randn(ctx.d_model))

    def forward(self, batch: dict[str, Tensor]) -> Tensor:
        newest = float(batch["timestamps"].max()) % 1e6 / 1e6  # a constant once traced
        return batch["mask"][..., None] * self.scale * newest


class NeedsTargets(EventEncoder):
    def forward(self, batch: dict[str, Tensor]) -> Tensor:
        return batch["targets"][..., None].float().expand(-1, -1, self.d_model)


@pytest.mark.parametrize(
    ("encoder", "message"),
    [
        (
            BakedEncoder(),
            r"event_encoders\[1\] \(BakedEncoder\): torchscript: ONNX Runtime differs",
        ),
        (NeedsTargets(), r"event_encoders\[1\] \(NeedsTargets\) cannot be exported: .*'targets'"),
    ],
)
def test_export_refuses_and_names_the_component(tmp_path, encoder, message):
    data = make_synthetic_dataset(tmp_path / "ds", num_users=40, num_items=40, seed=0)
    model = build_model(
        data,
        max_len=8,
        d_model=8,
        event_encoders=[RatingEncoder(), encoder],
        sequence=GPT2Sequence(n_layer=1, n_head=2),
    )
    with pytest.raises(ConfigError, match=message) as info:
        export_model(model, data, tmp_path / "out")
    assert "\n" not in str(info.value)
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_dynamics_served_as_of_at_like_mmrec_recommend(quick):
    """The served top-K equals `mmrec recommend`'s (PyTorch, dynamics from the dataset's log)
    at two dates, and the dynamics' term changes it."""
    served, rec = ServedModel(quick["folder"]), Recommender.from_checkpoint(quick["ckpt"])
    history = served.item_ids[1:4]
    body = {"history": [{"asin": a, "time": "2013-01-05"} for a in history], "k": 8}
    answers = {}
    for at in ("2013-03-01", "2014-11-20"):
        query = parse(json.dumps(body | {"at": at}).encode(), served, Limits())
        got = served.recommend([query])[0]
        want = rec.recommend(history, at=at, k=8, timestamps=[query.events["timestamps"][0]] * 3)
        assert [a for a, _ in got] == [r.item_id for r in want]
        np.testing.assert_allclose([s for _, s in got], [r.score for r in want], atol=1e-4)
        answers[at] = got
        dynamics, served.dynamics = served.dynamics, None
        assert served.recommend([query])[0] != got  # without the term: another list
        served.dynamics = dynamics
    assert answers["2013-03-01"] != answers["2014-11-20"]


def test_cli_export_refuses_a_non_empty_folder(quick, tmp_path, capsys):
    from mmrec.serving.export import main

    (tmp_path / "keep.txt").write_text("x")
    assert main(["--ckpt_path", str(quick["ckpt"]), "--out", str(tmp_path)]) == 2
    assert "is not empty" in capsys.readouterr().err
    assert main(["--ckpt_path", str(tmp_path / "nope.ckpt"), "--out", str(tmp_path / "o")]) == 2
    assert "not found" in capsys.readouterr().err


@pytest.mark.parametrize(("command", "option"), [("export", "--ckpt_path"), ("serve", "--model")])
def test_mmrec_export_and_serve_commands_explain_their_options(command, option, capsys):
    from mmrec.cli import main as mmrec_main

    with pytest.raises(SystemExit) as done:
        mmrec_main([command, "--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert f"usage: mmrec {command}" in out and option in out


def _split_cost(lens: list[int], starts: list[int], call: int = 40) -> int:
    """Work of groups of ``lens`` starting at ``starts`` (after the first, at 0)."""
    edges = [0, *starts, len(lens)]
    return sum(call + (b - a) * lens[b - 1] for a, b in zip(edges, edges[1:], strict=False))


def test_length_groups_are_the_cheapest_split():
    from itertools import combinations

    from mmrec.serving.bundle import length_groups

    rng = np.random.default_rng(0)
    for _ in range(50):
        lens = sorted(rng.integers(1, 51, size=int(rng.integers(1, 9))).tolist())
        n = len(lens)
        best = min(
            _split_cost(lens, list(c)) for r in range(n) for c in combinations(range(1, n), r)
        )
        groups = length_groups(lens, 40)
        assert groups[0][0] == 0 and groups[-1][1] == n
        assert all(a[1] == b[0] for a, b in zip(groups, groups[1:], strict=False))
        assert _split_cost(lens, [lo for lo, _ in groups[1:]]) == best
