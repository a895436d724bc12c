"""Losses: full softmax equals manual CE over items 1..N; sampled softmax with logQ estimates it."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mmrec.losses import BCEOneNegative, FullSoftmaxCE, SampledSoftmax

N, D, M = 20, 8, 16


@pytest.fixture()
def inputs():
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(M, D, generator=g)
    item_vecs = torch.randn(N + 1, D, generator=g)
    targets = torch.randint(1, N + 1, (M,), generator=g)
    return hidden, targets, item_vecs


def test_full_softmax_matches_manual_and_never_scores_padding(inputs):
    hidden, targets, item_vecs = inputs
    item_vecs = item_vecs.clone().requires_grad_()
    loss_fn = FullSoftmaxCE()
    loss_fn.build(N)
    loss = loss_fn(hidden, targets, item_vecs)
    logits = hidden @ item_vecs.detach().T
    logits[:, 0] = float("-inf")
    torch.testing.assert_close(loss, F.cross_entropy(logits, targets))
    loss.backward()
    assert item_vecs.grad[0].abs().sum() == 0
    assert item_vecs.grad[1:].abs().sum() > 0


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_full_softmax_fused_fp32_path_equals_pytorch(inputs, smoothing):
    """The hand-written fp32 backward gives PyTorch's loss and gradients, label smoothing too."""
    hidden, targets, item_vecs = inputs
    loss_fn = FullSoftmaxCE(label_smoothing=smoothing)
    loss_fn.build(N)
    got, ref = [(hidden.clone().requires_grad_(), item_vecs.clone().requires_grad_()) for _ in "ab"]
    loss = loss_fn(got[0], targets, got[1])
    assert loss.grad_fn is not None and "_SoftmaxCE" in type(loss.grad_fn).__name__
    expected = F.cross_entropy(ref[0] @ ref[1][1:].T, targets - 1, label_smoothing=smoothing)
    (3.0 * loss).backward()
    (3.0 * expected).backward()
    torch.testing.assert_close(loss, expected)
    for a, b in zip(got, ref, strict=True):
        torch.testing.assert_close(a.grad, b.grad)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # mixed precision takes the plain path
        mixed = loss_fn(hidden, targets, item_vecs)
    assert abs(mixed.item() - expected.item()) < 0.1


@pytest.mark.parametrize("alpha", [0.0, 1.0])
def test_sampled_softmax_estimates_full_softmax(inputs, alpha):
    hidden, targets, item_vecs = inputs
    full = FullSoftmaxCE()
    full.build(N)
    sampled = SampledSoftmax(num_negatives=20_000, alpha=alpha)
    sampled.build(N)
    counts = torch.arange(N + 1).float() ** 2  # very skewed popularity
    sampled.set_item_counts(counts)
    torch.manual_seed(0)
    estimate = torch.stack([sampled(hidden, targets, item_vecs) for _ in range(5)]).mean()
    assert abs(estimate.item() - full(hidden, targets, item_vecs).item()) < 0.05
    if alpha:
        assert sampled.probs[N] > 50 * sampled.probs[1] and sampled.probs[0] == 0


def test_sampled_softmax_without_logq_is_biased(inputs):
    """The correction matters: with few popular-skewed negatives, an uncorrected loss is far off."""
    hidden, targets, item_vecs = inputs
    sampled = SampledSoftmax(num_negatives=20_000, alpha=1.0)
    sampled.build(N)
    sampled.set_item_counts(torch.arange(N + 1).float() ** 2)
    negatives = torch.multinomial(sampled.probs, 20_000, replacement=True)
    naive = torch.cat(
        [(hidden * item_vecs[targets]).sum(-1, keepdim=True), hidden @ item_vecs[negatives].T], 1
    )
    naive_loss = F.cross_entropy(naive, torch.zeros_like(targets))
    full = FullSoftmaxCE()
    full.build(N)
    assert abs(naive_loss.item() - full(hidden, targets, item_vecs).item()) > 1.0


def test_sampled_softmax_requires_counts_for_popularity_sampling(inputs):
    sampled = SampledSoftmax(num_negatives=4, alpha=0.5)
    sampled.build(N)
    with pytest.raises(RuntimeError, match="needs item counts"):
        sampled(*inputs)
    with pytest.raises(ValueError, match="expected"):
        sampled.set_item_counts(torch.ones(N))


def test_bce_one_negative_rewards_separating_the_target():
    items = torch.eye(N + 1)[:, : N + 1] * 10  # orthogonal item vectors
    targets = torch.arange(1, N + 1)
    bce = BCEOneNegative()
    bce.build(N)
    torch.manual_seed(0)
    good = bce(items[targets], targets, items)  # hidden == the target's vector
    bad = bce(-items[targets], targets, items)
    # positive term ~0, negative term softplus(0) = log 2 (a negative never equals its target here)
    assert abs(good.item() - torch.log(torch.tensor(2.0)).item()) < 0.05
    assert bad > 50


# ------------------------------------------------------------------ an additive bias [M, N + 1]
def _bias(seed: int = 3, dtype=torch.float32) -> torch.Tensor:
    return torch.randn(M, N + 1, generator=torch.Generator().manual_seed(seed), dtype=dtype)


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_softmax_ce_gradients_with_bias_equal_finite_differences(inputs, smoothing):
    """The hand-written backward of _SoftmaxCE, bias included, against central differences in
    float64 (torch's gradcheck calls a backward twice, which this one-buffer backward refuses)."""
    from mmrec.losses import _SoftmaxCE

    hidden, targets, item_vecs = inputs
    args = [hidden[:6].double(), item_vecs[1:].double(), _bias(dtype=torch.float64)[:6, 1:]]
    fn = lambda h, c, b: _SoftmaxCE.apply(h, c, targets[:6] - 1, smoothing, b)  # noqa: E731
    leaves = [a.clone().requires_grad_() for a in args]
    fn(*leaves).backward()
    eps = 1e-6
    for i, a in enumerate(args):
        numeric = torch.zeros_like(a)
        for j in range(a.numel()):
            up, down = [x.clone() for x in args], [x.clone() for x in args]
            up[i].view(-1)[j] += eps
            down[i].view(-1)[j] -= eps
            numeric.view(-1)[j] = (fn(*up) - fn(*down)) / (2 * eps)
        torch.testing.assert_close(leaves[i].grad, numeric, atol=1e-7, rtol=1e-5)
    assert leaves[2].grad.abs().sum() > 0


@pytest.mark.parametrize("smoothing", [0.0, 0.2])
def test_full_softmax_with_bias_equals_pytorch_and_gives_the_bias_its_gradient(inputs, smoothing):
    hidden, targets, item_vecs = inputs
    loss_fn = FullSoftmaxCE(label_smoothing=smoothing)
    loss_fn.build(N)
    got = [t.clone().requires_grad_() for t in (hidden, item_vecs, _bias())]
    ref = [t.clone().requires_grad_() for t in (hidden, item_vecs, _bias())]
    loss = loss_fn(got[0], targets, got[1], got[2])
    assert "_SoftmaxCE" in type(loss.grad_fn).__name__
    logits = ref[0] @ ref[1][1:].T + ref[2][:, 1:]
    expected = F.cross_entropy(logits, targets - 1, label_smoothing=smoothing)
    (2.0 * loss).backward()
    (2.0 * expected).backward()
    torch.testing.assert_close(loss, expected)
    for a, b in zip(got, ref, strict=True):
        torch.testing.assert_close(a.grad, b.grad)
    assert got[2].grad[:, 0].abs().sum() == 0 and got[2].grad[:, 1:].abs().sum() > 0
    # the bias moves the loss: without it the value differs
    assert abs(loss_fn(hidden, targets, item_vecs).item() - loss.item()) > 1e-3
    with torch.autocast("cpu", dtype=torch.bfloat16):  # mixed precision: the plain path
        mixed = loss_fn(hidden, targets, item_vecs, _bias())
    assert abs(mixed.item() - expected.item()) < 0.1


def test_sampled_softmax_adds_the_bias_at_its_candidates(inputs):
    hidden, targets, item_vecs = inputs
    sampled = SampledSoftmax(num_negatives=7, alpha=0.0)
    sampled.build(N)
    bias = _bias().requires_grad_()
    torch.manual_seed(5)
    loss = sampled(hidden, targets, item_vecs, bias)
    loss.backward()
    torch.manual_seed(5)  # the same negatives, by hand
    negatives = torch.multinomial(sampled.probs, 7, replacement=True)
    log_q = (sampled.probs[negatives] * 7).log()
    ref_bias = _bias().requires_grad_()
    pos = (hidden * item_vecs[targets]).sum(-1) + ref_bias[torch.arange(M), targets]
    neg = hidden @ item_vecs[negatives].T - log_q + ref_bias[:, negatives]
    neg = neg.masked_fill(negatives[None] == targets[:, None], float("-inf"))
    expected = F.cross_entropy(torch.cat([pos[:, None], neg], 1), torch.zeros_like(targets))
    expected.backward()
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(bias.grad, ref_bias.grad)
    candidates = torch.zeros(M, N + 1, dtype=torch.bool)
    candidates[torch.arange(M), targets] = True
    candidates[:, negatives] = True
    assert bias.grad[~candidates].abs().sum() == 0 and bias.grad[candidates].abs().sum() > 0


def test_bce_one_negative_adds_the_bias_at_the_target_and_the_negative(inputs):
    hidden, targets, item_vecs = inputs
    bce = BCEOneNegative()
    bce.build(N)
    bias = _bias().requires_grad_()
    torch.manual_seed(7)
    loss = bce(hidden, targets, item_vecs, bias)
    loss.backward()
    torch.manual_seed(7)  # the same negatives, by hand
    neg = torch.randint(1, N + 1, targets.shape)
    neg = torch.where(neg == targets, torch.randint(1, N + 1, targets.shape), neg)
    rows = torch.arange(M)
    ref_bias = _bias().requires_grad_()
    pos_logit = (hidden * item_vecs[targets]).sum(-1) + ref_bias[rows, targets]
    neg_logit = (hidden * item_vecs[neg]).sum(-1) + ref_bias[rows, neg]
    expected = F.softplus(-pos_logit).mean() + F.softplus(neg_logit).mean()
    expected.backward()
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(bias.grad, ref_bias.grad)
    touched = torch.zeros(M, N + 1, dtype=torch.bool)
    touched[rows, targets] = touched[rows, neg] = True
    assert bias.grad[~touched].abs().sum() == 0 and bias.grad[touched].abs().sum() > 0
