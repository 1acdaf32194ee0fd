"""A decoder-only GPT in plain PyTorch (no Lightning import).

Token + learned position embeddings -> n_layer pre-LN blocks (attention, MLP, residuals) -> final LayerNorm -> LM head.
The attention core is chosen by name from ``lightning_gpt.attention``'s registry.

Decoding protocol (used by ``lightning_gpt.generation``), static-shaped as in gpt-fast:

* ``cache = model.new_cache(batch_size, max_seq_len)`` allocates one decoding state per layer (a key/value buffer of
  ``max_seq_len`` positions written by index, a rolling window, or a recurrent state) and returns it: the caller owns
  it, so two generations on one model never share state;
* ``model(idx, input_pos=pos, cache=cache)`` runs the tokens ``idx`` ``(B, T)`` at the buffer positions ``pos``
  ``(T,)`` (a long tensor) through ``cache``, updating it in place. With a tensor ``pos`` no shape depends on the
  position, so a one-token step compiles once.
* Convenience for interactive use and tests: ``model.setup_cache(batch_size, max_seq_len)`` keeps one cache on the
  model, which ``model(idx, start_pos=p)`` (an ``int``) then uses; ``reorder_cache(index)`` selects its rows,
  ``clear_cache()`` drops it.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, NamedTuple, Optional, Sequence, TypedDict, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_gpt.attention import State, get_attention
from lightning_gpt.attention.base import Positions
from lightning_gpt.config import IGNORE_INDEX, GPTConfig

if TYPE_CHECKING:
    from typing_extensions import Unpack  # typing.Unpack from Python 3.11

__all__ = ["GPT", "Block", "MLP", "CausalSelfAttention", "Cache", "CachePlacement", "LayerStep"]

Cache = list[State]  # one decoding state per layer


class CachePlacement(TypedDict, total=False):
    """Where ``GPT.new_cache`` puts a cache, as keywords (``setup_cache`` passes them on)."""

    device: Optional[torch.device]
    dtype: Optional[torch.dtype]


class LayerStep(NamedTuple):
    """One layer's part of a decoding call: where the new tokens go and the state they extend (the two travel
    together: positions mean nothing without a state). ``None`` in its place means the full causal pass.

    Args:
        input_pos: buffer positions of the ``T`` new tokens: a ``(T,)`` long tensor, or an ``int`` start.
        state: the layer's decoding state (one entry of ``GPT.new_cache``); ``None``: the one ``setup_cache`` kept.
    """

    input_pos: Positions
    state: Optional[State] = None


class CausalSelfAttention(nn.Module):
    """Projects q, k, v, runs the configured attention core, projects back. Owns the layer's decoding state.

    Args:
        config: the model config.
    """

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.n_head = config.n_head
        self.n_embd = config.n_embd
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)
        self.core = get_attention(config.attention)(config)
        self.state: Optional[State] = None

    def forward(self, x: Tensor, key_mask: Optional[Tensor] = None, step: Optional[LayerStep] = None) -> Tensor:
        """``(B, T, C)`` -> ``(B, T, C)``: the full causal pass over ``x``, or ``T`` new tokens through its state.

        Args:
            x: the layer's input ``(B, T, C)``.
            key_mask: ``(B, T_keys)`` bool, False for (left) padding (``lightning_gpt.attention`` says what it covers).
            step: the decoding call's positions and this layer's state; ``None``: the full causal pass.

        Raises:
            RuntimeError: a step without a state where no cache was kept (``setup_cache``).
        """
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)  # 3 x (B, T, C)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        if step is None:
            y = self.core(q, k, v, key_mask=key_mask)
        else:
            state = self.state if step.state is None else step.state
            if state is None:
                raise RuntimeError(
                    "A decoding position was given without a cache: pass cache=model.new_cache(...) (or call "
                    "model.setup_cache() first)."
                )
            y = self.core.step(q, k, v, state, step.input_pos, key_mask=key_mask)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # (B, T, C)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    """Position-wise feed-forward network: Linear -> GELU -> Linear -> dropout.

    Args:
        config: the model config.
    """

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        hidden = config.mlp_ratio * config.n_embd
        self.c_fc = nn.Linear(config.n_embd, hidden, bias=config.bias)
        self.approximate = "tanh" if config.activation == "gelu_tanh" else "none"
        self.c_proj = nn.Linear(hidden, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.dropout(self.c_proj(F.gelu(self.c_fc(x), approximate=self.approximate)))


class Block(nn.Module):
    """Pre-LN transformer block: ``x + attn(ln_1(x))`` then ``x + mlp(ln_2(x))``.

    Args:
        config: the model config.
    """

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_eps, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_eps, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x: Tensor, key_mask: Optional[Tensor] = None, step: Optional[LayerStep] = None) -> Tensor:
        """``(B, T, C)`` -> ``(B, T, C)``; ``key_mask`` and ``step`` as for ``CausalSelfAttention``."""
        x = x + self.attn(self.ln_1(x), key_mask, step)
        return x + self.mlp(self.ln_2(x))


class _Trunk(nn.ModuleDict):
    """GPT's ``transformer``: an ``nn.ModuleDict`` (its state-dict keys are GPT-2's ``transformer.wte.weight``...)
    whose entries are typed for mypy."""

    wte: nn.Embedding
    wpe: nn.Embedding
    drop: nn.Dropout
    h: Sequence[Block]  # an nn.ModuleList of the blocks
    ln_f: nn.LayerNorm


class GPT(nn.Module):
    """The GPT language model.

    Args:
        config: the architecture (a ``GPTConfig``).
    """

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        if not isinstance(config, GPTConfig):
            raise TypeError(f"GPT expects a GPTConfig, got {type(config).__name__}.")
        self.config = config
        self.transformer = _Trunk(
            dict(
                wte=nn.Embedding(config.padded_vocab_size, config.n_embd),
                wpe=nn.Embedding(config.block_size, config.n_embd),
                drop=nn.Dropout(config.dropout),
                h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
                ln_f=nn.LayerNorm(config.n_embd, eps=config.layer_norm_eps, bias=config.bias),
            )
        )
        self.lm_head = nn.Linear(config.n_embd, config.padded_vocab_size, bias=False)
        if config.tie_weights:
            self.lm_head.weight = self.transformer.wte.weight
        self.embedding_scale = math.sqrt(config.n_embd) if config.scale_embeddings else 1.0
        self.apply(self._init_weights)
        # GPT-2: residual projections scaled by 1/sqrt(2 * n_layer), so the residual stream's variance does not grow
        # with depth.
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_parameters(self, non_embedding: bool = True) -> int:
        """Parameter count; by default without the position table (the usual convention for FLOP estimates)."""
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n -= self.transformer.wpe.weight.numel()
        return n

    def flops_per_token(self, seq_len: Optional[int] = None) -> int:
        """Training FLOPs per token (forward + backward): ``6 N`` plus each layer's attention term.

        ``N`` is ``num_parameters()`` counted from the model (so a custom core's parameters count), the PaLM appendix /
        nanoGPT convention; each layer's attention core adds its own term (``AttentionCore.flops_per_token``:
        ``12 T d`` for full attention, less for ``sparse`` and ``linear``).

        Args:
            seq_len: the training sequence length ``T``; default ``config.block_size``.

        Returns:
            FLOPs per token.
        """
        T = self.config.block_size if seq_len is None else int(seq_len)
        attention = sum(block.attn.core.flops_per_token(T) for block in self.transformer.h)
        return 6 * self.num_parameters() + attention

    def forward(
        self,
        idx: Tensor,
        targets: Optional[Tensor] = None,
        *,
        attention_mask: Optional[Tensor] = None,
        position_ids: Optional[Tensor] = None,
        input_pos: Optional[Tensor] = None,
        cache: Optional[Cache] = None,
        start_pos: Optional[int] = None,
        ignore_index: int = IGNORE_INDEX,
        logits_to_keep: int = 0,
    ) -> Union[Tensor, tuple[Tensor, Tensor]]:
        """Logits for every position, and the mean cross-entropy when ``targets`` are given (over the targets that are
        not ``ignore_index``; ``0`` when there are none).

        Args:
            idx: token ids ``(B, T)``.
            targets: next-token ids ``(B, T)``; positions equal to ``ignore_index`` do not count in the loss.
            attention_mask: ``(B, T_total)`` with 1 for real tokens and 0 for padding (left padding for batched
                decoding). When decoding, it covers every position so far (or the whole cache buffer).
            position_ids: ``(B, T)`` positions into the learned table; default ``input_pos`` (or ``arange(T)``).
            input_pos: decode through ``cache``: ``(T,)`` long tensor of the buffer positions of the tokens
                (consecutive). Not checked against ``block_size`` here (no device sync): the caller sized the cache.
            cache: the decoding state from ``new_cache`` (one per layer), updated in place; default the cache kept by
                ``setup_cache``.
            start_pos: the ``int`` form of ``input_pos`` (positions ``start_pos .. start_pos + T - 1``), checked
                against ``block_size``.
            ignore_index: target value excluded from the loss.
            logits_to_keep: compute logits for the last ``logits_to_keep`` positions only (0: all). Decoding needs
                just the last one, which saves ``(T - 1) x n_embd x V`` multiply-adds of the LM head.

        Returns:
            ``logits`` of shape ``(B, T, V)`` with ``V = config.padded_vocab_size`` (ids from ``config.vocab_size``
            on are padding: decoding masks them), or ``(logits, loss)`` when ``targets`` is given.

        Raises:
            ValueError: the positions run past ``block_size`` (without ``input_pos``), or ``logits_to_keep`` is
                combined with ``targets``.
        """
        T = idx.size(1)
        if input_pos is None:
            offset = 0 if start_pos is None else start_pos
            if position_ids is None:
                if offset + T > self.config.block_size:
                    raise ValueError(
                        f"Sequence of length {offset + T} exceeds the model's context (block_size="
                        f"{self.config.block_size}). Crop the input or train a model with a larger block_size."
                    )
                position_ids = torch.arange(offset, offset + T, device=idx.device)[None]  # (1, T)
            elif position_ids.numel() and int(position_ids.max()) >= self.config.block_size:
                raise ValueError(
                    f"Position {int(position_ids.max())} exceeds the model's context (block_size="
                    f"{self.config.block_size})."
                )
            step_pos: Optional[Positions] = start_pos
        else:
            step_pos = input_pos
            if position_ids is None:
                position_ids = input_pos[None]  # (1, T)
        key_mask = None if attention_mask is None else attention_mask.bool()
        tok_emb = self.transformer.wte(idx)  # (B, T, C)
        if self.embedding_scale != 1.0:
            tok_emb = tok_emb * self.embedding_scale
        x = self.transformer.drop(tok_emb + self.transformer.wpe(position_ids))  # (B, T, C)
        if step_pos is None:
            for block in self.transformer.h:
                x = block(x, key_mask)
        else:
            states: Sequence[Optional[State]] = cache if cache is not None else [None] * len(self.transformer.h)
            for block, state in zip(self.transformer.h, states):
                x = block(x, key_mask, LayerStep(step_pos, state))
        if logits_to_keep:
            if targets is not None:
                raise ValueError(
                    "logits_to_keep cannot be combined with targets: the loss needs every position's logits."
                )
            x = x[:, -logits_to_keep:]  # (B, logits_to_keep, C)
        logits = self.lm_head(self.transformer.ln_f(x))  # (B, T, vocab_size)
        if targets is None:
            return logits
        targets = targets.reshape(-1)
        loss = F.cross_entropy(
            logits.view(-1, logits.size(-1)).float(), targets, ignore_index=ignore_index, reduction="sum"
        ) / (targets != ignore_index).sum().clamp(min=1)  # 0, not NaN, when every target is ignored
        return logits, loss

    # ------------------------------------------------------------------ decoding state

    def new_cache(
        self,
        batch_size: int,
        max_seq_len: Optional[int] = None,
        device: Optional[torch.device] = None,
        dtype: Optional[torch.dtype] = None,
    ) -> Cache:
        """Allocate a fresh decoding state for every layer; the caller owns it and passes it as ``cache=``.

        Args:
            batch_size: rows decoded together (beams included).
            max_seq_len: longest sequence (prompt + new tokens); default ``block_size``.
            device: default the model's device.
            dtype: default the model's parameter dtype.

        Returns:
            One state per layer (a dict of ``(batch_size, ...)`` tensors each).

        Raises:
            ValueError: ``max_seq_len`` exceeds ``block_size``.
        """
        max_seq_len = self.config.block_size if max_seq_len is None else max_seq_len
        if max_seq_len > self.config.block_size:
            raise ValueError(f"max_seq_len={max_seq_len} exceeds block_size={self.config.block_size}.")
        param = self.lm_head.weight
        device = param.device if device is None else device
        dtype = param.dtype if dtype is None else dtype
        return [block.attn.core.init_state(batch_size, max_seq_len, device, dtype) for block in self.transformer.h]

    def setup_cache(
        self, batch_size: int, max_seq_len: Optional[int] = None, **placement: Unpack[CachePlacement]
    ) -> None:
        """Keep a new cache on the model (``new_cache``'s arguments), used by ``model(idx, start_pos=p)`` without
        ``cache=``.

        Generation does not use it (each generation passes its own cache); it is for interactive use and tests.
        """
        for block, state in zip(self.transformer.h, self.new_cache(batch_size, max_seq_len, **placement)):
            block.attn.state = state

    def clear_cache(self) -> None:
        """Drop the cache kept by ``setup_cache``."""
        for block in self.transformer.h:
            block.attn.state = None

    def reorder_cache(self, index: Tensor) -> None:
        """Keep/reorder batch rows of the kept cache: row ``i`` becomes old row ``index[i]``."""
        for block in self.transformer.h:
            if block.attn.state is not None:
                block.attn.state = {name: t.index_select(0, index) for name, t in block.attn.state.items()}

    @property
    def rollback_free(self) -> bool:
        """Whether every layer's decoding state ignores entries past the fed length (``AttentionCore.rollback_free``),
        so speculative decoding forgets rejected drafts without a snapshot."""
        return all(block.attn.core.rollback_free for block in self.transformer.h)

    @property
    def has_cache(self) -> bool:
        """Whether a cache is kept on the model (``setup_cache``)."""
        return all(block.attn.state is not None for block in self.transformer.h)
