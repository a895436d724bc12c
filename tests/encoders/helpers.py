"""Checks shared by the item-dynamics tests."""

from __future__ import annotations

import torch

from mmrec.data.datamodule import AmazonDataModule
from mmrec.module import MMRecModule


def assert_packed_equals_padded(model: MMRecModule, dm: AmazonDataModule) -> None:
    """The training loss and the dynamics' gradients of 32 training rows, packed (several users
    per row) and padded, are the same; the dynamics get a gradient."""
    ds, rows = dm.datasets["train"], list(range(32))
    ds.pack = False
    plain = ds.__getitems__(rows)
    ds.pack = True
    packed = ds.__getitems__(rows)
    ds.pack = dm.pack_sequences
    assert packed["mask"].shape[0] < plain["mask"].shape[0]  # several users per row
    results = []
    for batch in (plain, packed):
        model.zero_grad()
        loss = model.training_loss(batch)
        loss.backward()
        results.append((loss.detach(), [p.grad.clone() for p in model.dynamics.parameters()]))
    torch.testing.assert_close(results[0][0], results[1][0])
    for a, b in zip(results[0][1], results[1][1], strict=True):
        torch.testing.assert_close(a, b)
    assert results[0][1][2].abs().sum() > 0  # the dynamics get a gradient
