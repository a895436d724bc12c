"""Training losses over the item catalogue: full softmax CE, sampled softmax with logQ, BCE."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmrec.config import Configurable


class Loss(Configurable, nn.Module):
    """Base: ``forward(hidden [M, D], targets [M], item_vecs [N + 1, D], bias=None) -> scalar``.

    ``targets`` are real item ids (1..N); the module drops ignored positions before calling.
    Row 0 of ``item_vecs`` is padding and is never a candidate. ``bias [M, N + 1]`` (float32),
    when given, is added to the logits of every position and item (the model's item dynamics
    as of each position's query time); a loss gives it its gradient. The model passes it only
    when it has one, so a loss written before it existed still works without it.
    """

    def build(self, num_items: int) -> None:
        """Create buffers sized by the catalogue (called once by the module)."""
        self.num_items = num_items

    def set_item_counts(self, counts: Tensor) -> None:
        """Receive training-split interaction counts per item ``[N + 1]`` (ignored by default)."""

    def forward(
        self, hidden: Tensor, targets: Tensor, item_vecs: Tensor, bias: Tensor | None = None
    ) -> Tensor:
        raise NotImplementedError


class FullSoftmaxCE(Loss):
    """Cross-entropy over the whole catalogue (items 1..N).

    Args:
        label_smoothing: Label smoothing of the cross-entropy.
    """

    def __init__(self, label_smoothing: float = 0.0) -> None:
        super().__init__()
        self.label_smoothing = label_smoothing

    def forward(
        self, hidden: Tensor, targets: Tensor, item_vecs: Tensor, bias: Tensor | None = None
    ) -> Tensor:
        cands = item_vecs[1:]  # [N, D]
        bias = None if bias is None else bias[:, 1:]  # [M, N]
        if hidden.dtype == cands.dtype == torch.float32 and not torch.is_autocast_enabled(
            hidden.device.type
        ):
            return _SoftmaxCE.apply(hidden, cands, targets - 1, self.label_smoothing, bias)
        logits = (hidden @ cands.T).float()  # [M, N] (mixed precision: the plain path)
        if bias is not None:
            logits = logits + bias.float()
        return F.cross_entropy(logits, targets - 1, label_smoothing=self.label_smoothing)


class _SoftmaxCE(torch.autograd.Function):
    """``cross_entropy(hidden @ cands.T + bias, targets)`` in fp32 with a hand-written backward.

    Equal to the PyTorch composition, but works in one ``[M, N]`` buffer: the logits become
    ``exp(logits - max)`` in place in forward and the gradient in place in backward (PyTorch
    keeps log-probabilities plus a zero-filled gradient and makes more passes). About 1.5x
    faster full-softmax training on CPU, where this loss is most of a step. ``bias [M, N]``
    (or None) is added to the logits; its gradient is the logits' (the same buffer).
    """

    @staticmethod
    def forward(
        ctx, hidden: Tensor, cands: Tensor, targets: Tensor, smoothing: float, bias: Tensor | None
    ) -> Tensor:
        logits = hidden @ cands.T  # [M, N]
        if bias is not None:
            logits.add_(bias)
        target_logit = logits.gather(1, targets[:, None]).squeeze(1)
        mean_logit = logits.mean(dim=1) if smoothing else None
        top = logits.amax(dim=1)  # [M]
        expd = logits.sub_(top[:, None]).exp_()  # in place: exp(logits - max)
        total = expd.sum(dim=1)  # [M]
        lse = top + total.log()
        loss = (lse - target_logit).mean()
        if smoothing:
            loss = (1 - smoothing) * loss + smoothing * (lse - mean_logit).mean()
        ctx.save_for_backward(hidden, cands, targets, expd, total)
        ctx.smoothing = smoothing
        return loss

    @staticmethod
    def backward(ctx, grad: Tensor):
        hidden, cands, targets, expd, total = ctx.saved_tensors
        m, n = expd.shape
        scale = grad / m
        g = expd.mul_((scale / total)[:, None])  # in place: softmax * grad / M
        eps = ctx.smoothing
        g[torch.arange(m, device=g.device), targets] -= (1 - eps) * scale
        if eps:
            g.sub_(eps * scale / n)
        grad_bias = g if ctx.needs_input_grad[4] else None
        return g @ cands, g.T @ hidden, None, None, grad_bias


class SampledSoftmax(Loss):
    """Softmax over the target and ``num_negatives`` sampled items shared by the batch.

    Negatives are drawn with probability proportional to ``count ** alpha`` (training counts
    from the datamodule; ``alpha = 0`` is uniform) and every logit is corrected by
    ``-log(K q(item))`` (logQ correction), so the negatives' sum estimates the partition
    function of the full softmax and the loss estimates full-softmax cross-entropy. Sampled
    negatives equal to a row's target are masked out (the target's own term is exact).

    Args:
        num_negatives: Negatives sampled per step (shared across the batch).
        alpha: Popularity exponent of the sampling distribution; 0 samples uniformly.
    """

    def __init__(self, num_negatives: int = 256, alpha: float = 0.75) -> None:
        super().__init__()
        self.num_negatives = num_negatives
        self.alpha = alpha

    def build(self, num_items: int) -> None:
        super().build(num_items)
        probs = torch.ones(num_items + 1)
        probs[0] = 0
        self.register_buffer("probs", probs / probs.sum())  # [N + 1]
        self._has_counts = False

    def set_item_counts(self, counts: Tensor) -> None:
        counts = counts.to(self.probs).clamp_min(0)
        if counts.shape != self.probs.shape:
            raise ValueError(
                f"item counts have shape {tuple(counts.shape)}, expected {tuple(self.probs.shape)}"
            )
        weights = (counts + 1.0) ** self.alpha  # +1: unseen items stay sampleable
        weights[0] = 0
        self.probs.copy_(weights / weights.sum())
        self._has_counts = True

    def forward(
        self, hidden: Tensor, targets: Tensor, item_vecs: Tensor, bias: Tensor | None = None
    ) -> Tensor:
        if self.alpha != 0 and not self._has_counts and self.training:
            raise RuntimeError(
                "SampledSoftmax(alpha != 0) needs item counts: "
                "use a datamodule with item_train_counts or set alpha: 0 (uniform sampling)"
            )
        negatives = torch.multinomial(self.probs, self.num_negatives, replacement=True)  # [K]
        log_expected = (self.probs[negatives] * self.num_negatives).log()  # log(K q(j)), [K]
        pos = (hidden * item_vecs[targets]).sum(-1)  # [M]
        neg = hidden @ item_vecs[negatives].T - log_expected  # [M, K]
        pos, neg = pos.float(), neg.float()
        if bias is not None:  # the bias at the candidates only
            pos = pos + bias.gather(1, targets[:, None]).squeeze(1)
            neg = neg + bias[:, negatives]
        neg = neg.masked_fill(negatives.unsqueeze(0) == targets.unsqueeze(1), float("-inf"))
        logits = torch.cat([pos.unsqueeze(1), neg], dim=1)  # [M, 1 + K]
        return F.cross_entropy(logits, torch.zeros_like(targets))


class BCEOneNegative(Loss):
    """SASRec's original loss: binary cross-entropy of the target against one uniform negative.

    The negative is drawn uniformly from 1..N and redrawn once when it equals the target.
    """

    def forward(
        self, hidden: Tensor, targets: Tensor, item_vecs: Tensor, bias: Tensor | None = None
    ) -> Tensor:
        neg = torch.randint(1, self.num_items + 1, targets.shape, device=targets.device)
        redraw = torch.randint(1, self.num_items + 1, targets.shape, device=targets.device)
        neg = torch.where(neg == targets, redraw, neg)
        pos_logit = (hidden * item_vecs[targets]).sum(-1).float()
        neg_logit = (hidden * item_vecs[neg]).sum(-1).float()
        if bias is not None:  # the bias at the target and the negative only
            pos_logit = pos_logit + bias.gather(1, targets[:, None]).squeeze(1)
            neg_logit = neg_logit + bias.gather(1, neg[:, None]).squeeze(1)
        return F.softplus(-pos_logit).mean() + F.softplus(neg_logit).mean()
