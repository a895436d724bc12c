"""Sequence heads: GPT-2 (transformers ``GPT2Model`` over ``inputs_embeds`` of left-padded
histories), with relative positions and with causal filters. The ``SequenceHead`` contract they
implement is :mod:`mmrec.sequence_base` (importable from here too)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from transformers import GPT2Config, GPT2Model
from transformers.activations import ACT2FN

from mmrec.sequence_base import SequenceHead

__all__ = ["FilteredGPT2Sequence", "GPT2Sequence", "RelativeGPT2Sequence", "SequenceHead"]


class GPT2Sequence(SequenceHead):
    """Causal transformer over history tokens; ``build(d_model, max_len)`` creates it.

    Positions come from the mask (``cumsum - 1``), so left padding does not shift them: the
    first real event is position 0 whatever the padding. The token table is a dummy of size 1
    (tokens enter as ``inputs_embeds``); there is no KV cache.

    Args:
        n_layer: Number of transformer blocks.
        n_head: Attention heads per block (must divide the width).
        dropout: Dropout on embeddings and residual branches.
        attn_dropout: Dropout on attention weights (defaults to ``dropout``).
        pretrained_path: Local GPT-2 checkpoint folder (``save_pretrained`` layout). Its width,
            depth and heads replace ``n_layer``/``n_head``; linear projections map d_model in
            and out when the widths differ. Weights are loaded by ``load_pretrained()``.
        attn_implementation: transformers attention backend (``sdpa`` or ``eager``).
        activation: MLP activation, a transformers ``ACT2FN`` name. None: GPT-2's tanh GELU
            (``gelu_pytorch_tanh``, or a pretrained checkpoint's own). ``gelu`` (exact, erf) is
            RecBole SASRec's default and ~3x cheaper than the tanh GELU on AVX2 CPUs;
            ``relu`` is the original SASRec's.
    """

    supports_packing = True  # segment-local attention and positions

    def __init__(
        self,
        n_layer: int = 2,
        n_head: int = 2,
        dropout: float = 0.2,
        attn_dropout: float | None = None,
        pretrained_path: str | None = None,
        attn_implementation: str = "sdpa",
        activation: str | None = None,
    ) -> None:
        super().__init__()
        self.n_layer = n_layer
        self.n_head = n_head
        self.dropout = dropout
        self.attn_dropout = dropout if attn_dropout is None else attn_dropout
        self.pretrained_path = pretrained_path
        self.attn_implementation = attn_implementation
        if activation is not None and activation not in ACT2FN:
            raise ValueError(
                f"unknown activation {activation!r}; choose one of: {', '.join(sorted(ACT2FN))}"
            )
        self.activation = activation

    def build(self, d_model: int, max_len: int) -> None:
        """Create the transformer for ``d_model``-wide tokens and histories up to ``max_len``."""
        super().build(d_model, max_len)
        drop = {
            "resid_pdrop": self.dropout,
            "embd_pdrop": self.dropout,
            "attn_pdrop": self.attn_dropout,
        }
        if self.pretrained_path is not None:
            config = GPT2Config.from_pretrained(self.pretrained_path)
            if config.n_positions < max_len:
                raise ValueError(
                    f"pretrained GPT-2 at {self.pretrained_path} has {config.n_positions} "
                    f"positions < max_len {max_len}"
                )
            config.update(
                {
                    "vocab_size": 1,
                    "n_positions": max_len,
                    "bos_token_id": None,
                    "eos_token_id": None,
                    **drop,
                }
            )
            if config.activation_function == "gelu_new":  # the same function, one fused kernel
                config.activation_function = "gelu_pytorch_tanh"
        else:
            if d_model % self.n_head:
                raise ValueError(f"d_model {d_model} is not divisible by n_head {self.n_head}")
            config = GPT2Config(
                vocab_size=1,
                n_positions=max_len,
                n_embd=d_model,
                n_layer=self.n_layer,
                n_head=self.n_head,
                n_inner=4 * d_model,
                bos_token_id=None,
                eos_token_id=None,
                activation_function="gelu_pytorch_tanh",
                **drop,
            )
        if self.activation is not None:
            config.activation_function = self.activation
        config._attn_implementation = self.attn_implementation
        self.gpt2 = GPT2Model(config)
        self.gpt2.wte.weight.requires_grad_(
            False
        )  # unused: tokens enter as inputs_embeds (DDP needs this)
        width = config.n_embd
        self.proj_in = nn.Linear(d_model, width) if width != d_model else nn.Identity()
        self.proj_out = nn.Linear(width, d_model) if width != d_model else nn.Identity()

    def load_pretrained(self) -> None:
        """Copy the weights of ``pretrained_path`` into the built model (no-op without one)."""
        if self.pretrained_path is None:
            return
        if not Path(self.pretrained_path).is_dir():
            raise FileNotFoundError(f"pretrained GPT-2 folder not found: {self.pretrained_path}")
        state = GPT2Model.from_pretrained(self.pretrained_path).state_dict()
        state.pop("wte.weight", None)
        state["wpe.weight"] = state["wpe.weight"][: self.max_len]
        missing, unexpected = self.gpt2.load_state_dict(state, strict=False)
        missing = [k for k in missing if k != "wte.weight"]
        if missing or unexpected:
            raise RuntimeError(
                f"pretrained GPT-2 mismatch: missing {missing}, unexpected {unexpected}"
            )

    def forward(
        self,
        tokens: Tensor,
        mask: Tensor,
        segments: Tensor | None = None,
        positions: Tensor | None = None,
    ) -> Tensor:  # [B, L, D], [B, L] -> [B, L, D]
        """Hidden states after each token.

        ``segments``/``positions`` (``[B, L]``, packed training batches): tokens attend only to
        earlier tokens of their own segment (0: padding) and take positions from ``positions``;
        without them each row is one left-padded sequence.
        """
        if tokens.shape[1] > self.max_len:
            raise ValueError(
                f"history length {tokens.shape[1]} > the model's max_len {self.max_len}"
            )
        attention, position_ids = self._attention(mask, segments, positions, tokens.dtype)
        hidden = self.gpt2(
            inputs_embeds=self.proj_in(tokens),
            attention_mask=attention,
            position_ids=position_ids,
            use_cache=False,
        ).last_hidden_state
        return self.proj_out(hidden)

    def _attention(
        self, mask: Tensor, segments: Tensor | None, positions: Tensor | None, dtype: torch.dtype
    ) -> tuple[Tensor, Tensor]:
        """The ``attention_mask`` and ``position_ids`` that ``forward`` passes to GPT-2."""
        if segments is None:
            mask = mask.long()
            return mask, (mask.cumsum(-1) - 1).clamp_min(0)  # [B, L] each
        return self._block_mask(segments, dtype), positions

    def _last_masks(
        self, mask: Tensor, position_ids: Tensor, dtype: torch.dtype
    ) -> tuple[Tensor, Tensor]:
        """Masks of :meth:`last`: ``[B, 1|H, L, L]`` for the blocks before the final one and
        ``[B, 1|H, 1, L]`` (bool or additive) for the final block's last query."""
        return self._block_mask(mask.long(), dtype), mask[:, None, None, :]

    @staticmethod
    def _allowed(segments: Tensor) -> Tensor:
        """``[B, L, L]``: earlier tokens of the same segment (0: padding) and itself."""
        ar = torch.arange(segments.shape[1], device=segments.device)
        same = segments[:, :, None] == segments[:, None, :]  # [B, L, L]
        allowed = same & (ar[None, :] <= ar[:, None]) & (segments[:, None, :] > 0)
        # itself too (no empty rows); written from `ar`, not torch.eye(len(ar)), so that a traced
        # graph (ONNX export) keeps the history length dynamic
        return allowed | (ar[:, None] == ar[None, :])

    def _block_mask(self, segments: Tensor, dtype: torch.dtype) -> Tensor:
        """``[B, 1, L, L]`` mask: earlier tokens of the same segment (0: padding) and itself."""
        attention = self._allowed(segments)[:, None]  # True = attend
        if self.attn_implementation == "eager":  # additive float mask
            zero = torch.zeros((), dtype=dtype, device=segments.device)
            attention = torch.where(attention, zero, torch.finfo(dtype).min)
        return attention

    def _last_is_exact(self) -> bool:
        """Whether :meth:`last`'s own final block computes what GPT-2's would."""
        c = self.gpt2.config
        return (
            c.scale_attn_weights
            and not c.scale_attn_by_inverse_layer_idx
            and not c.add_cross_attention
            and not self.training
        )

    #: On CPU, :meth:`last` runs at most this many tokens (rows x length) at a time: smaller
    #: activations reuse allocator memory instead of page-faulting fresh 40+ MB buffers on
    #: every call (Beauty 2014 validation forward, 2 threads: 0.77 -> 0.65 s). Same result.
    cpu_chunk_tokens: int = 16384

    def last(self, tokens: Tensor, mask: Tensor) -> Tensor:  # [B, L, D], [B, L] -> [B, D]
        """Hidden state after the last token of left-padded rows: ``forward(...)[:, -1]``.

        Evaluation only needs the last position, so the final block computes keys and values
        for every token but its query, attention output and MLP for the last token alone: the
        final block costs ~1/6 of a full one (a 2-layer model ~40% less work per user; tested
        equal to ``forward`` within float tolerance). Falls back to ``forward`` in training mode
        and for checkpoints whose attention scaling differs from GPT-2's.
        """
        if not self._last_is_exact():
            return self.forward(tokens, mask)[:, -1]
        if tokens.shape[1] > self.max_len:
            raise ValueError(
                f"history length {tokens.shape[1]} > the model's max_len {self.max_len}"
            )
        rows = max(1, self.cpu_chunk_tokens // max(1, tokens.shape[1]))
        if tokens.device.type == "cpu" and tokens.shape[0] > rows:
            return torch.cat(
                [
                    self._last(tokens[i : i + rows], mask[i : i + rows])
                    for i in range(0, len(tokens), rows)
                ]
            )
        return self._last(tokens, mask)

    def _last(self, tokens: Tensor, mask: Tensor) -> Tensor:
        g = self.gpt2
        mask = mask.bool()
        position_ids = (mask.long().cumsum(-1) - 1).clamp_min(0)
        hidden = g.drop(self.proj_in(tokens) + g.wpe(position_ids))
        attention, last_mask = self._last_masks(mask, position_ids, hidden.dtype)
        if len(g.h) > 1:
            for block in g.h[:-1]:
                out = block(hidden, attention_mask=attention)
                hidden = out[0] if isinstance(out, tuple) else out
        block, attn = g.h[-1], g.h[-1].attn
        b, length, width = hidden.shape
        q, k, v = attn.c_attn(block.ln_1(hidden)).split(width, dim=2)
        heads = (b, -1, width // attn.head_dim, attn.head_dim)
        q, k, v = (x.reshape(heads).transpose(1, 2) for x in (q[:, -1:], k, v))  # [B, H, *, hd]
        ctx = nn.functional.scaled_dot_product_attention(
            q, k, v, attn_mask=last_mask, scale=attn.head_dim**-0.5
        )  # [B, H, 1, hd]
        x = hidden[:, -1] + attn.resid_dropout(attn.c_proj(ctx.transpose(1, 2).reshape(b, width)))
        x = x + block.mlp(block.ln_2(x))
        return self.proj_out(g.ln_f(x))


class RelativeGPT2Sequence(GPT2Sequence):
    """:class:`GPT2Sequence` plus relative positions: a learned attention bias for each head
    and distance in events between query and key (T5-style, one table shared by all blocks).

    A query sees its own event at distance 0, the one before at 1 and so on, whatever its
    place in the history, so each training position is weighted by recency the way the
    evaluated last position is. Absolute positions (GPT-2's ``wpe``, counted from the oldest
    event) stay unless ``absolute_positions`` is False. The bias starts at zero (the model
    starts as plain GPT-2). Packed batches and the fast :meth:`last` path are supported.

    Args:
        absolute_positions: Keep GPT-2's learned absolute position embeddings (False: zeroed
            and frozen, so order enters through the bias alone).
        **kwargs: :class:`GPT2Sequence`'s options.
    """

    def __init__(self, absolute_positions: bool = True, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.absolute_positions = absolute_positions

    def build(self, d_model: int, max_len: int) -> None:
        """Build GPT-2 and the ``[n_head, max_len]`` bias table (zeros)."""
        super().build(d_model, max_len)
        self.rel_bias = nn.Parameter(torch.zeros(self.gpt2.config.n_head, max_len))
        if not self.absolute_positions:
            with torch.no_grad():
                self.gpt2.wpe.weight.zero_()
            self.gpt2.wpe.weight.requires_grad_(False)

    def load_pretrained(self) -> None:
        """As :class:`GPT2Sequence`, then re-zero ``wpe`` when absolute positions are off."""
        super().load_pretrained()
        if not self.absolute_positions:
            with torch.no_grad():
                self.gpt2.wpe.weight.zero_()

    def _biased(self, allowed: Tensor, query_pos: Tensor, key_pos: Tensor, dtype) -> Tensor:
        """Additive ``[B, H, Q, K]`` mask: the bias at distance ``query - key`` where allowed."""
        dist = (query_pos[:, :, None] - key_pos[:, None, :]).clamp(0, self.max_len - 1)
        bias = self.rel_bias[:, dist].transpose(0, 1).to(dtype)  # [B, H, Q, K]
        return torch.where(allowed[:, None], bias, torch.finfo(dtype).min)

    def _attention(
        self, mask: Tensor, segments: Tensor | None, positions: Tensor | None, dtype: torch.dtype
    ) -> tuple[Tensor, Tensor]:
        if segments is None:
            segments, positions = mask.long(), (mask.long().cumsum(-1) - 1).clamp_min(0)
        return self._biased(self._allowed(segments), positions, positions, dtype), positions

    def _last_masks(
        self, mask: Tensor, position_ids: Tensor, dtype: torch.dtype
    ) -> tuple[Tensor, Tensor]:
        full = self._biased(self._allowed(mask.long()), position_ids, position_ids, dtype)
        return full, full[:, :, -1:]


class FilteredGPT2Sequence(RelativeGPT2Sequence):
    """:class:`RelativeGPT2Sequence` plus a learned causal filter in every block, beside
    attention: the block adds ``sum_k w[k] * x[t - k]`` (per channel, over the last
    ``filter_len`` events of the same user, ``x`` the block's normalised input) to the attention
    output. It is the causal, time-domain form of the learnable sequence filters of FMLP-Rec and
    BSARec, whose FFT over the whole window lets a training position see later events; here a
    state sees its own and earlier events only, so training on every position stays leak-free.

    The filters start at zero (the model starts as :class:`RelativeGPT2Sequence`) and add
    ``n_layer * filter_len * width`` parameters (6,400 at Beauty's SASRec size). Packed batches
    are supported; evaluation runs the full forward (no fast :meth:`last` path).

    Args:
        filter_len: Events each filter reaches back (itself included); None: ``max_len``.
        **kwargs: :class:`RelativeGPT2Sequence`'s options.
    """

    def __init__(self, filter_len: int | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if filter_len is not None and filter_len < 1:
            raise ValueError(f"filter_len must be >= 1 (or None for max_len), got {filter_len}")
        self.filter_len = filter_len
        self._positions: Tensor | None = None  # [B, L] of the current forward (``_attention``)

    def build(self, d_model: int, max_len: int) -> None:
        """Build as :class:`RelativeGPT2Sequence`, then ``[n_layer, filter_len, width]`` zero
        filters, each applied through a forward hook on its block's attention."""
        super().build(d_model, max_len)
        c = self.gpt2.config
        length = max_len if self.filter_len is None else min(self.filter_len, max_len)
        self.filters = nn.Parameter(torch.zeros(c.n_layer, length, c.n_embd))
        self.filter_dropout = nn.Dropout(c.resid_pdrop)
        for block in self.gpt2.h:  # a bound method, so a deep copy (EMA) hooks its own filters
            block.attn.register_forward_hook(self._add_filter, with_kwargs=True)

    def _add_filter(self, attn: nn.Module, args: tuple, kwargs: dict, output: tuple) -> tuple:
        """Forward hook of block ``attn.layer_idx``'s attention: output + the filtered input."""
        x = args[0] if args else kwargs["hidden_states"]
        return (output[0] + self._filter(x, attn.layer_idx),) + tuple(output[1:])

    def _filter(self, x: Tensor, layer: int) -> Tensor:  # [B, L, W] -> [B, L, W]
        """``y[t] = sum_k w[k] * x[t - k]`` over keys ``k <= positions[t]`` (same user)."""
        if self._positions is None:
            raise RuntimeError("FilteredGPT2Sequence: blocks run before any forward()")
        weights = self.filters[layer].to(x.dtype)  # [K, W]
        length, reach = x.shape[1], weights.shape[0]
        padded = nn.functional.pad(x, (0, 0, reach - 1, 0))  # [B, K - 1 + L, W]
        out = torch.zeros_like(x)
        for k in range(min(reach, length)):
            seen = (self._positions >= k)[..., None].to(x.dtype)  # key t - k is the same user's
            out = out + weights[k] * padded[:, reach - 1 - k : reach - 1 - k + length] * seen
        return self.filter_dropout(out)

    def _attention(
        self, mask: Tensor, segments: Tensor | None, positions: Tensor | None, dtype: torch.dtype
    ) -> tuple[Tensor, Tensor]:
        """As :class:`RelativeGPT2Sequence`, keeping each token's position in its user's history
        for the filters of the forward pass that asked."""
        attention, self._positions = super()._attention(mask, segments, positions, dtype)
        return attention, self._positions

    def _last_is_exact(self) -> bool:
        return False  # the fast path has no filter: evaluate through forward
