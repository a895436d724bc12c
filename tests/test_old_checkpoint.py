"""A checkpoint made before the layout redesign (its hyper-parameters and state_dict keys exactly
as the old code wrote them, commit f90d277) loads after it and gives the same numbers."""

from __future__ import annotations

import copy

import pytest
import torch
from safetensors.torch import save_file

from mmrec.module import MMRecModule

DAY = 86_400

# dict(MMRecModule(...).hparams) of the old code for a model with one component of every slot
# kind; "FEATURES" stands for the features file the test writes.
OLD_HPARAMS = {
    "num_items": 20,
    "num_users": 10,
    "data_dir": None,
    "time_granularity": "day",
    "max_len": 8,
    "d_model": 16,
    "lr": 0.002,
    "weight_decay": 0.01,
    "warmup_steps": 0,
    "ks": [5, 10],
    "exclude_history": True,
    "predict_k": 10,
    "test_slices": True,
    "item_encoders": [
        {
            "class_path": "mmrec.encoders.item_id.ItemIdEncoder",
            "init_args": {"dropout": 0.0, "init_std": 0.02},
        },
        {
            "class_path": "mmrec.encoders.text.SentenceTextEncoder",
            "init_args": {
                "name": "minilm_text",
                "path": "FEATURES",
                "hidden": 0,
                "layer_norm": True,
                "dropout": 0.0,
                "normalize": True,
                "check_fingerprint": False,
            },
        },
    ],
    "event_encoders": [
        {
            "class_path": "mmrec.encoders.rating.RatingEncoder",
            "init_args": {"hidden": 8, "center": 3.0, "scale": 2.0, "init_std": 0.02},
        },
        {
            "class_path": "mmrec.encoders.time.TimestampEncoder",
            "init_args": {
                "periods_days": [1.0, 7.0, 30.4375, 365.25, 3652.5],
                "harmonics": 2,
                "learnable_frequencies": False,
                "events": ["christmas", "12-01"],
                "use_sinusoidal": True,
                "use_calendar": True,
                "use_events": True,
                "use_gap": True,
                "gap_buckets": 24,
                "session_gap_seconds": 1800,
                "calendar_start": "1995-01-01",
                "calendar_end": "2035-12-31",
                "dropout": 0.0,
                "init_std": 0.02,
                "gate_init": 0.0,
            },
        },
        {
            "class_path": "mmrec.encoders.time.QueryTimeEncoder",
            "init_args": {
                "events": None,
                "use_calendar": True,
                "use_events": True,
                "use_gap": True,
                "gap_buckets": 24,
                "calendar_start": "1995-01-01",
                "calendar_end": "2035-12-31",
                "dropout": 0.0,
                "init_std": 0.02,
                "gate_init": 0.0,
            },
        },
    ],
    "fusion": {"class_path": "mmrec.fusion.GatedFusion", "init_args": {"temperature": 1.0}},
    "sequence": {
        "class_path": "mmrec.sequence.GPT2Sequence",
        "init_args": {
            "n_layer": 1,
            "n_head": 2,
            "dropout": 0.1,
            "attn_dropout": None,
            "pretrained_path": None,
            "attn_implementation": "sdpa",
            "activation": None,
        },
    },
    "loss": {
        "class_path": "mmrec.losses.SampledSoftmax",
        "init_args": {"num_negatives": 8, "alpha": 0.0},
    },
}

# the old code's state_dict keys and shapes for that model
OLD_STATE = {
    "item_encoders.0.embedding.weight": (21, 16),
    "item_encoders.1.missing": (16,),
    "item_encoders.1.proj.net.1.weight": (16, 6),
    "item_encoders.1.proj.net.1.bias": (16,),
    "item_encoders.1.proj.net.2.weight": (16,),
    "item_encoders.1.proj.net.2.bias": (16,),
    "event_encoders.0.missing": (16,),
    "event_encoders.0.mlp.0.weight": (8, 1),
    "event_encoders.0.mlp.0.bias": (8,),
    "event_encoders.0.mlp.2.weight": (16, 8),
    "event_encoders.0.mlp.2.bias": (16,),
    "event_encoders.1.gate": (),
    "event_encoders.1.freq": (8,),
    "event_encoders.1.sin_proj.weight": (16, 16),
    "event_encoders.1.calendar.emb.weight": (171, 16),
    "event_encoders.1.gap_emb.weight": (25, 16),
    "event_encoders.1.session_emb.weight": (2, 16),
    "event_encoders.2.gate": (),
    "event_encoders.2.calendar.emb.weight": (477, 16),
    "event_encoders.2.gap_emb.weight": (24, 16),
    "fusion.gate.weight": (2, 32),
    "fusion.gate.bias": (2,),
    "sequence.gpt2.wte.weight": (1, 16),
    "sequence.gpt2.wpe.weight": (8, 16),
    "sequence.gpt2.h.0.ln_1.weight": (16,),
    "sequence.gpt2.h.0.ln_1.bias": (16,),
    "sequence.gpt2.h.0.attn.c_attn.weight": (16, 48),
    "sequence.gpt2.h.0.attn.c_attn.bias": (48,),
    "sequence.gpt2.h.0.attn.c_proj.weight": (16, 16),
    "sequence.gpt2.h.0.attn.c_proj.bias": (16,),
    "sequence.gpt2.h.0.ln_2.weight": (16,),
    "sequence.gpt2.h.0.ln_2.bias": (16,),
    "sequence.gpt2.h.0.mlp.c_fc.weight": (16, 64),
    "sequence.gpt2.h.0.mlp.c_fc.bias": (64,),
    "sequence.gpt2.h.0.mlp.c_proj.weight": (64, 16),
    "sequence.gpt2.h.0.mlp.c_proj.bias": (16,),
    "sequence.gpt2.ln_f.weight": (16,),
    "sequence.gpt2.ln_f.bias": (16,),
    "loss.probs": (21,),
}

# the old code's outputs for the weights of _old_weights() and the batch of _batch()
OLD_USER_VECTORS = [
    [
        -0.005959,
        -0.160627,
        -0.05998,
        -0.132951,
        -0.089562,
        0.151305,
        0.132692,
        -0.063988,
        0.020226,
        -0.101356,
        -0.040152,
        0.131348,
        -0.028114,
        0.049614,
        -0.159077,
        -0.275995,
    ],
    [
        -0.078201,
        -0.018699,
        -0.061913,
        -0.21583,
        -0.009732,
        0.151662,
        0.15647,
        -0.081189,
        0.024604,
        0.010847,
        -0.054458,
        0.119405,
        0.051251,
        0.125314,
        -0.243719,
        -0.177064,
    ],
]
OLD_ITEM_5 = [
    0.158709,
    -0.151026,
    -0.105832,
    0.065923,
    0.021624,
    -0.447778,
    -0.052947,
    0.072177,
    0.166322,
    0.075916,
    -0.181462,
    -0.12957,
    0.154373,
    0.246631,
    -0.078167,
    0.188433,
]


def _old_weights() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    out = {k: torch.randn(OLD_STATE[k], generator=g) * 0.1 for k in sorted(OLD_STATE)}
    out["loss.probs"] = torch.full((21,), 1 / 20)
    out["loss.probs"][0] = 0
    out["sequence.gpt2.wte.weight"] = torch.zeros(1, 16)
    return out


def _batch() -> dict[str, torch.Tensor]:
    nan = float("nan")
    ts = torch.tensor(
        [
            [0, 0, 0, 1387000000, 1387400000, 1387500000, 1388000000, 1388100000],
            [1300000000 + i * DAY for i in range(8)],
        ]
    )
    last = torch.tensor([[1388200000], [1300000000 + 9 * DAY]])
    return {
        "item_ids": torch.tensor([[0, 0, 0, 3, 7, 7, 12, 5], [1, 2, 3, 4, 5, 6, 7, 8]]),
        "mask": torch.tensor([[0, 0, 0, 1, 1, 1, 1, 1], [1] * 8]).bool(),
        "timestamps": ts,
        "ratings": torch.tensor([[nan] * 3 + [5.0, 4.0, nan, 1.0, 3.0], [5.0] * 8]),
        "query_time": torch.cat([ts[:, 1:], last], 1),
        "user_idx": torch.tensor([3, 9]),
    }


@pytest.fixture
def old_checkpoint(tmp_path):
    feats = tmp_path / "old_feats.safetensors"
    save_file(
        {
            "features": torch.randn(21, 6, generator=torch.Generator().manual_seed(1)),
            "present": torch.ones(1, 21, dtype=torch.bool),
        },
        str(feats),
        metadata={"fingerprint": '{"modality": "text", "rows": "21"}'},
    )
    hparams = copy.deepcopy(OLD_HPARAMS)
    hparams["item_encoders"][1]["init_args"]["path"] = str(feats)
    path = tmp_path / "old.ckpt"
    torch.save(
        {
            "epoch": 3,
            "global_step": 40,
            "pytorch-lightning_version": "2.6.6",
            "state_dict": _old_weights(),
            "hyper_parameters": hparams,
        },
        path,
    )
    return path


def test_old_checkpoint_loads_and_gives_the_old_numbers(old_checkpoint):
    model = MMRecModule.load_from_checkpoint(old_checkpoint, weights_only=True).eval()
    assert set(model.state_dict()) == set(OLD_STATE)  # strict load: no key renamed
    with torch.no_grad():
        user_vectors = model(_batch())
        item_5 = model.item_vectors()[5]
    torch.testing.assert_close(user_vectors, torch.tensor(OLD_USER_VECTORS), atol=2e-6, rtol=0)
    torch.testing.assert_close(item_5, torch.tensor(OLD_ITEM_5), atol=2e-6, rtol=0)
    # the class paths the old checkpoint names are still the components' homes
    modules = [type(e).__module__ for e in (*model.item_encoders, *model.event_encoders)]
    assert modules == [
        "mmrec.encoders.item_id",
        "mmrec.encoders.text",
        "mmrec.encoders.rating",
        "mmrec.encoders.time",
        "mmrec.encoders.time",
    ]
    assert model.hparams["ks"] == [5, 10] and model.hparams["weight_decay"] == 0.01
