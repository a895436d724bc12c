"""Fixtures of the serving tests: a quickstart-sized model with item dynamics, its checkpoint
and its export folder (`mmrec export`)."""

from __future__ import annotations

import pytest
from torch import nn

from mmrec.encoders.dynamics import RecentDynamics
from mmrec.sequence import GPT2Sequence
from mmrec.synthetic.dataset import make_synthetic_dataset
from tests.serving.helpers import build_model, save_checkpoint, time_encoders


@pytest.fixture(scope="session")
def quick(tmp_path_factory):
    """The quickstart's model (ID + rating + time, d=32, 1 layer, max_len 20) plus random item
    dynamics, on 1,000 synthetic users and 147 items; checkpoint and `mmrec export` folder."""
    from mmrec.serving.export import main

    tmp = tmp_path_factory.mktemp("serve")
    data = make_synthetic_dataset(tmp / "ds", num_users=1000, num_items=147, seed=1)
    model = build_model(
        data,
        max_len=20,
        d_model=32,
        event_encoders=time_encoders(),
        sequence=GPT2Sequence(n_layer=1, n_head=2, dropout=0.2),
        dynamics=[RecentDynamics(hidden=4)],
    )
    nn.init.normal_(model.dynamics[0].mlp[2].weight, std=0.5)  # a term that moves the ranking
    ckpt = save_checkpoint(model, tmp / "quick.ckpt")
    assert main(["--ckpt_path", str(ckpt), "--out", str(tmp / "export")]) == 0
    return {"data": data, "ckpt": ckpt, "folder": tmp / "export", "model": model}
