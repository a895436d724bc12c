"""GPT2Sequence (the last-position path, the activation option), RelativeGPT2Sequence,
FilteredGPT2Sequence, and that no head's state sees a later event."""

from __future__ import annotations

import copy

import pytest
import torch

from mmrec.sequence import (
    FilteredGPT2Sequence,
    GPT2Sequence,
    RelativeGPT2Sequence,
    SequenceHead,
)


def _left_padded(
    lengths: list[int], width: int, d: int, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    lens = torch.tensor(lengths)
    mask = torch.arange(width)[None] >= width - lens[:, None]
    return torch.randn(len(lengths), width, d, generator=g), mask


@pytest.mark.parametrize("impl", ["sdpa", "eager"])
@pytest.mark.parametrize("n_layer", [1, 2, 3])
def test_last_equals_the_full_forward_at_the_last_position(impl, n_layer):
    torch.manual_seed(n_layer)
    seq = GPT2Sequence(n_layer=n_layer, n_head=2, dropout=0.3, attn_implementation=impl)
    seq.build(16, 8)
    seq.eval()
    tokens, mask = _left_padded([8, 1, 3, 5, 2], 8, 16)
    assert seq._last_is_exact()
    with torch.no_grad():
        full = seq(tokens, mask)[:, -1]
        last = seq.last(tokens, mask)
    assert last.shape == (5, 16)
    torch.testing.assert_close(last, full, atol=1e-6, rtol=1e-5)
    # the padding content does not leak into any row
    with torch.no_grad():
        noisy = seq.last(torch.where(mask[..., None], tokens, torch.randn_like(tokens) * 100), mask)
    torch.testing.assert_close(noisy, last, atol=1e-6, rtol=1e-5)


def test_last_in_cpu_chunks_equals_one_pass(monkeypatch):
    seq = GPT2Sequence(n_layer=2, n_head=2)
    seq.build(16, 8)
    seq.eval()
    tokens, mask = _left_padded([8, 1, 3, 5, 2, 7, 4], 8, 16)
    with torch.no_grad():
        whole = seq.last(tokens, mask)
        calls = []
        inner = seq._last
        monkeypatch.setattr(seq, "_last", lambda t, m: calls.append(len(t)) or inner(t, m))
        seq.cpu_chunk_tokens = 24  # 3 rows of 8 tokens per chunk
        chunked = seq.last(tokens, mask)
    assert calls == [3, 3, 1]
    torch.testing.assert_close(chunked, whole, atol=1e-6, rtol=1e-5)


def test_last_falls_back_to_forward_in_training_mode():
    seq = GPT2Sequence(n_layer=2, n_head=2, dropout=0.5)
    seq.build(16, 8)
    seq.train()
    tokens, mask = _left_padded([8, 4, 1], 8, 16)
    assert not seq._last_is_exact()
    torch.manual_seed(3)
    full = seq(tokens, mask)[:, -1]
    torch.manual_seed(3)
    last = seq.last(tokens, mask)  # same dropout draws: the same code ran
    torch.testing.assert_close(last, full)


def test_last_falls_back_for_a_checkpoint_with_other_attention_scaling(tmp_path):
    from transformers import GPT2Config, GPT2Model

    torch.manual_seed(0)
    GPT2Model(
        GPT2Config(
            n_embd=16,
            n_layer=2,
            n_head=2,
            n_positions=8,
            vocab_size=5,
            scale_attn_by_inverse_layer_idx=True,
        )
    ).save_pretrained(tmp_path / "g")
    seq = GPT2Sequence(pretrained_path=str(tmp_path / "g"), dropout=0.0)
    seq.build(16, 8)
    seq.load_pretrained()
    seq.eval()
    with torch.no_grad():  # sharp attention, so that a wrong scale would show
        seq.gpt2.h[1].attn.c_attn.weight.mul_(20)
    tokens, mask = _left_padded([8, 3], 8, 16)
    assert not seq._last_is_exact()
    with torch.no_grad():
        torch.testing.assert_close(
            seq.last(tokens, mask), seq(tokens, mask)[:, -1], atol=1e-6, rtol=1e-6
        )


def test_activation_option():
    relu = GPT2Sequence(activation="relu")
    relu.build(16, 8)
    assert relu.gpt2.config.activation_function == "relu"
    assert relu.gpt2.h[0].mlp.act(torch.tensor([-1.0, 2.0])).tolist() == [0.0, 2.0]
    default = GPT2Sequence()
    default.build(16, 8)
    assert default.gpt2.config.activation_function == "gelu_pytorch_tanh"
    with pytest.raises(
        ValueError, match="unknown activation 'gelux'; choose one of: .*gelu_pytorch_tanh"
    ):
        GPT2Sequence(activation="gelux")


def _relative(
    absolute: bool = True,
    impl: str = "sdpa",
    n_layer: int = 2,
    cls: type[RelativeGPT2Sequence] = RelativeGPT2Sequence,
    **kwargs,
) -> RelativeGPT2Sequence:
    torch.manual_seed(0)
    seq = cls(
        n_layer=n_layer,
        n_head=2,
        dropout=0.3,
        attn_implementation=impl,
        absolute_positions=absolute,
        **kwargs,
    )
    seq.build(16, 8)
    with torch.no_grad():
        seq.rel_bias.normal_(0, 2.0)  # a trained-looking bias, so a wrong distance shows
    return seq.eval()


@pytest.mark.parametrize("impl", ["sdpa", "eager"])
@pytest.mark.parametrize("absolute", [True, False])
def test_relative_positions_fast_last_packed_and_padded_agree(impl, absolute):
    seq = _relative(absolute, impl)
    tokens, mask = _left_padded([8, 3, 5], 8, 16)
    with torch.no_grad():
        full = seq(tokens, mask)
        last = seq.last(tokens, mask)
        alone = seq(tokens[1:2, -3:], torch.ones(1, 3, dtype=torch.bool))  # row 1, no padding
        # rows 1 and 2 packed into one row: segments 1 and 2, positions from each start
        packed = seq(
            torch.cat([tokens[1, -3:], tokens[2, -5:]])[None],
            torch.ones(1, 8, dtype=torch.bool),
            segments=torch.tensor([[1, 1, 1, 2, 2, 2, 2, 2]]),
            positions=torch.tensor([[0, 1, 2, 0, 1, 2, 3, 4]]),
        )
    torch.testing.assert_close(last, full[:, -1], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(alone[0], full[1, -3:], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(packed[0, :3], full[1, -3:], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(packed[0, 3:], full[2, -5:], atol=1e-6, rtol=1e-5)


def test_relative_bias_starts_at_zero_and_is_learned():
    torch.manual_seed(1)
    plain = GPT2Sequence(n_layer=2, n_head=2, dropout=0.0)
    plain.build(16, 8)
    rel = RelativeGPT2Sequence(n_layer=2, n_head=2, dropout=0.0)
    rel.build(16, 8)
    assert rel.rel_bias.shape == (2, 8) and not rel.rel_bias.any()
    rel.load_state_dict(plain.state_dict(), strict=False)  # the same GPT-2 weights
    tokens, mask = _left_padded([8, 2], 8, 16)
    real = mask[..., None].expand(-1, -1, 16)  # padding rows are nobody's output
    torch.testing.assert_close(
        rel(tokens, mask)[real], plain(tokens, mask)[real], atol=1e-6, rtol=1e-5
    )
    (rel(tokens, mask) ** 2).sum().backward()
    grad = rel.rel_bias.grad
    assert grad is not None and grad[:, :8].abs().sum() > 0
    # with the bias set, the output changes: the bias reaches the attention
    with torch.no_grad():
        rel.rel_bias[:, 1:] = -5.0
    assert not torch.allclose(rel(tokens, mask)[real], plain(tokens, mask)[real], atol=1e-3)


def test_relative_without_absolute_positions_zeroes_and_freezes_wpe():
    seq = _relative(absolute=False)
    wpe = seq.gpt2.wpe.weight
    assert not wpe.any() and not wpe.requires_grad
    assert seq.rel_bias.requires_grad
    # order still matters through the bias: reversing the history changes the last state
    tokens, mask = _left_padded([6], 8, 16)
    with torch.no_grad():
        out = seq.last(tokens, mask)
        rev = seq.last(torch.cat([tokens[:, :2], tokens[:, 2:].flip(1)], 1), mask)
    assert not torch.allclose(out, rev, atol=1e-4)


def test_relative_bias_is_indexed_by_distance_from_the_query():
    """A bias that shuts every distance but 0 leaves each state its own event only: the last
    state of any history equals that of its last event alone (a bias indexed by the key's own
    position, not by query - key, would let the first events through)."""
    seq = _relative(absolute=False)
    with torch.no_grad():
        seq.rel_bias.fill_(-1e4)
        seq.rel_bias[:, 0] = 0.0
    tokens, mask = _left_padded([8, 5, 2], 8, 16)
    with torch.no_grad():
        last = seq.last(tokens, mask)
        alone = seq(tokens[:, -1:], torch.ones(3, 1, dtype=torch.bool))[:, -1]
        seq.rel_bias[:, 1] = 0.0  # now distance 1 is open too: the state changes
        two = seq.last(tokens, mask)
    torch.testing.assert_close(last, alone, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(two, last, atol=1e-3)


def test_relative_without_absolute_positions_keeps_wpe_zero_after_loading(tmp_path):
    from transformers import GPT2Config, GPT2Model

    GPT2Model(
        GPT2Config(n_embd=16, n_layer=1, n_head=2, n_positions=8, vocab_size=5)
    ).save_pretrained(tmp_path / "g")
    seq = RelativeGPT2Sequence(pretrained_path=str(tmp_path / "g"), absolute_positions=False)
    seq.build(16, 8)
    seq.load_pretrained()
    assert not seq.gpt2.wpe.weight.any() and not seq.gpt2.wpe.weight.requires_grad
    kept = RelativeGPT2Sequence(pretrained_path=str(tmp_path / "g"))
    kept.build(16, 8)
    kept.load_pretrained()
    assert kept.gpt2.wpe.weight.any()  # the checkpoint's positions, loaded


def _filtered(filter_len: int | None = None) -> FilteredGPT2Sequence:
    seq = _relative(absolute=False, cls=FilteredGPT2Sequence, filter_len=filter_len)
    with torch.no_grad():
        seq.filters.normal_(0, 1.0)  # trained-looking filters, so a wrong key shows
    return seq


def test_filtered_starts_as_relative_and_learns_its_filters():
    torch.manual_seed(1)
    rel = RelativeGPT2Sequence(n_layer=2, n_head=2, dropout=0.0)
    rel.build(16, 8)
    filt = FilteredGPT2Sequence(n_layer=2, n_head=2, dropout=0.0)
    filt.build(16, 8)
    assert filt.filters.shape == (2, 8, 16) and not filt.filters.any()
    extra = sum(p.numel() for p in filt.parameters()) - sum(p.numel() for p in rel.parameters())
    assert extra == 2 * 8 * 16
    filt.load_state_dict(rel.state_dict(), strict=False)
    tokens, mask = _left_padded([8, 2], 8, 16)
    real = mask[..., None].expand(-1, -1, 16)
    torch.testing.assert_close(filt(tokens, mask)[real], rel(tokens, mask)[real])
    (filt(tokens, mask)[real] ** 2).sum().backward()
    assert filt.filters.grad is not None and filt.filters.grad.abs().sum() > 0
    with torch.no_grad():
        filt.filters.fill_(0.5)
    assert not torch.allclose(filt(tokens, mask)[real], rel(tokens, mask)[real], atol=1e-3)


@pytest.mark.parametrize("filter_len", [None, 3])
def test_filtered_packed_padded_and_last_agree(filter_len):
    """Packed rows keep users apart in the filter too, and no state sees a later event."""
    seq = _filtered(filter_len)
    tokens, mask = _left_padded([8, 3, 5], 8, 16)
    with torch.no_grad():
        full = seq(tokens, mask)
        last = seq.last(tokens, mask)
        packed = seq(
            torch.cat([tokens[1, -3:], tokens[2, -5:]])[None],
            torch.ones(1, 8, dtype=torch.bool),
            segments=torch.tensor([[1, 1, 1, 2, 2, 2, 2, 2]]),
            positions=torch.tensor([[0, 1, 2, 0, 1, 2, 3, 4]]),
        )
        changed = tokens.clone()
        changed[0, 5:] += 10.0  # later events of row 0
        early = seq(changed, mask)[0, :5]
        noisy = seq(torch.where(mask[..., None], tokens, torch.randn_like(tokens) * 100), mask)
    torch.testing.assert_close(last, full[:, -1])
    torch.testing.assert_close(packed[0, :3], full[1, -3:], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(packed[0, 3:], full[2, -5:], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(early, full[0, :5])
    torch.testing.assert_close(noisy[:, -1], full[:, -1], atol=1e-5, rtol=1e-5)


def test_filter_is_a_causal_convolution_within_each_user():
    seq = _filtered(filter_len=3)
    x = torch.randn(1, 8, 16)
    seq._positions = torch.tensor([[0, 1, 2, 3, 4, 0, 1, 2]])  # two users: 5 events, then 3
    out = seq._filter(x, layer=1)
    seq.train()  # the filter's output takes the blocks' residual dropout (0.3) in training
    dropped = (seq._filter(x, layer=1) == 0).float().mean().item()
    seq._positions = None
    assert 0.15 < dropped < 0.45
    w = seq.filters[1].detach()
    starts = [0, 0, 0, 0, 0, 5, 5, 5]
    for t in range(8):
        ks = range(min(3, t - starts[t] + 1))  # at most 3 back, never before the user's start
        expected = sum(w[k] * x[0, t - k] for k in ks)
        torch.testing.assert_close(out[0, t], expected, atol=1e-5, rtol=1e-5)


def test_filtered_deep_copy_uses_its_own_filters():
    """EMA keeps a deep copy of the model: its blocks must read the copy's filters."""
    seq = _filtered()
    twin = copy.deepcopy(seq)
    tokens, mask = _left_padded([8, 4], 8, 16)
    with torch.no_grad():
        before = seq(tokens, mask)
        twin.filters.mul_(-1.0)
        torch.testing.assert_close(seq(tokens, mask), before)
        assert not torch.allclose(twin(tokens, mask), before, atol=1e-3)


def test_filtered_rejects_a_filter_shorter_than_one_event():
    with pytest.raises(ValueError, match="filter_len must be >= 1"):
        FilteredGPT2Sequence(filter_len=0)


# --------------------------------------------------------------------------- causality
def _gpt2_head(cls: type[GPT2Sequence], impl: str, **kwargs) -> GPT2Sequence:
    """A 2-block head in eval mode whose zero-initialised tables (relative bias, filters) are
    drawn at random, so a leak through any of them shows."""
    torch.manual_seed(0)
    seq = cls(n_layer=2, n_head=2, dropout=0.3, attn_implementation=impl, **kwargs)
    seq.build(16, 8)
    with torch.no_grad():
        for p in seq.parameters():
            if p.requires_grad and not p.any():
                p.normal_(0, 1.0)
    return seq.eval()


#: Every sequence head of mmrec.sequence, built tiny (``impl`` = attention backend).
HEADS = {
    GPT2Sequence: lambda impl: _gpt2_head(GPT2Sequence, impl),
    RelativeGPT2Sequence: lambda impl: _gpt2_head(RelativeGPT2Sequence, impl),
    FilteredGPT2Sequence: lambda impl: _gpt2_head(FilteredGPT2Sequence, impl, filter_len=3),
}

# padded: rows of 8, 5, 2 and 1 events; packed: row 0 holds users of 3 and 5 events, row 1
# users of 5 and 2 events and one padding slot (segments numbered across the batch, 0: padding)
SEGMENTS = torch.tensor([[1, 1, 1, 2, 2, 2, 2, 2], [3, 3, 3, 3, 3, 4, 4, 0]])
POSITIONS = torch.tensor([[0, 1, 2, 0, 1, 2, 3, 4], [0, 1, 2, 3, 4, 0, 1, 0]])


def test_causality_tests_cover_every_sequence_head():
    import mmrec.sequence

    heads = {
        c
        for c in vars(mmrec.sequence).values()
        if isinstance(c, type) and issubclass(c, SequenceHead) and c is not SequenceHead
    }
    assert heads == set(HEADS), "add the new head to HEADS (tests/test_sequence.py)"


def _batches(head: SequenceHead) -> list[tuple[str, torch.Tensor, torch.Tensor, dict]]:
    """``(name, tokens [B, 8, 16], mask [B, 8], packing kwargs)``: padded, and packed when the
    head supports packing."""
    tokens, mask = _left_padded([8, 5, 2, 1], 8, 16)
    out = [("padded", tokens, mask, {})]
    if head.supports_packing:
        packed = {"segments": SEGMENTS, "positions": POSITIONS}
        out.append(("packed", tokens[:2], SEGMENTS > 0, packed))
    return out


@pytest.mark.parametrize("impl", ["sdpa", "eager"])
@pytest.mark.parametrize("cls", list(HEADS), ids=lambda c: c.__name__)
def test_no_position_sees_a_later_one(cls, impl):
    """Changing the token at position j leaves the state of every event before j exactly as
    it was (and, in packed rows, every state of another user), for every j; the state at j
    changes. Padding slots are nobody's state (GPT-2's eager padded path lets a padding query
    with no key to see attend to all of them)."""
    seq = HEADS[cls](impl)
    g = torch.Generator().manual_seed(1)
    for name, tokens, mask, packed in _batches(seq):
        with torch.no_grad():
            base = seq(tokens, mask, **packed)  # [B, L, D]
            for j in range(tokens.shape[1]):
                changed = tokens.clone()
                changed[:, j] += 3.0 * torch.randn(changed[:, j].shape, generator=g)
                out = seq(changed, mask, **packed)
                same = torch.zeros(mask.shape, dtype=torch.bool)
                same[:, :j] = True
                if packed:  # other users' states, later ones included
                    same |= packed["segments"] != packed["segments"][:, j : j + 1]
                same &= mask  # [B, L] states of events
                msg = f"{name} batch, token {j} changed"
                torch.testing.assert_close(out[same], base[same], atol=1e-6, rtol=0, msg=msg)
                seen = mask[:, j]  # a real event at j: its own state moves
                assert (out[seen, j] - base[seen, j]).abs().amax(-1).min() > 1e-3, msg


@pytest.mark.parametrize("cls", list(HEADS), ids=lambda c: c.__name__)
def test_attention_weights_on_later_positions_are_zero(cls):
    """Through the eager attention's weights ``[B, H, L, L]`` of every block: no event's query
    puts weight on a later key (nor, in packed rows, on another user's or a padding slot's)."""
    seq = HEADS[cls]("eager")
    weights = []
    hooks = [
        block.attn.register_forward_hook(lambda m, args, out: weights.append(out[1]))
        for block in seq.gpt2.h
    ]
    later = torch.ones(8, 8, dtype=torch.bool).triu(1)  # [query, key]: key after query
    try:
        for name, tokens, mask, packed in _batches(seq):
            weights.clear()
            with torch.no_grad():
                seq(tokens, mask, **packed)
            assert len(weights) == 2 and weights[0].shape == (len(tokens), 2, 8, 8), name
            shut = later[None, None].expand_as(weights[0])
            if packed:
                s = packed["segments"]
                other = (s[:, :, None] != s[:, None, :]) | (s[:, None, :] == 0)  # [B, Q, K]
                shut = shut | other[:, None]
            shut = shut & mask[:, None, :, None]  # queries of events (padding is nobody's)
            for layer, w in enumerate(weights):
                assert w[shut].abs().max() == 0, f"{name} batch, block {layer}"
                # the rows of events still sum to 1 over what they may see
                rows = mask[:, None, :].expand(w.shape[:-1])
                torch.testing.assert_close(w.sum(-1)[rows], torch.ones(int(rows.sum())))
    finally:
        for hook in hooks:
            hook.remove()
