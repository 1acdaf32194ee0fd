"""A decoder-only GPT in plain PyTorch (no Lightning import).

Token + learned position embeddings -> n_layer pre-LN blocks (attention, MLP, residuals) -> final LayerNorm -> LM head.
The attention core is chosen by name from ``lightning_gpt.attention``'s registry.

Decoding protocol (used by ``lightning_gpt.generation``):

* ``cache = model.new_cache(batch_size, max_seq_len)`` allocates one decoding state per layer (KV cache or recurrent
  state) and returns it without binding it: each generation owns its own, so two streams on one model never share;
* ``previous = model.swap_cache(cache)`` binds it to the layers (returning the binding it replaces), around each call
  of ``model(idx, start_pos=p)``, which runs tokens at positions ``p..p+T-1`` through the bound caches;
* ``model.setup_cache(batch_size, max_seq_len)`` = bind a new cache; ``model.reorder_cache(index)`` selects/reorders
  the bound cache's rows (beam search); ``model.clear_cache()`` unbinds it.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_gpt.attention import State, get_attention
from lightning_gpt.config import IGNORE_INDEX, GPTConfig

__all__ = ["GPT", "Block", "MLP", "CausalSelfAttention", "Cache"]

Cache = list[Optional[State]]  # one decoding state per layer


class _BoundCache(list):
    """A ``Cache`` (one state per layer) that may also carry the transposed decode weights of its generation."""

    weights_t: Optional[list[Optional[Tensor]]] = None


def _linear(layer: nn.Linear, x: Tensor) -> Tensor:
    """``layer(x)``, or, while decoding with a transposed weight copy (see ``GPT.new_cache``), the same product from
    that copy: ``x @ W^T + b`` with ``W^T`` contiguous, which CPU mat-vec kernels stream faster when out > in."""
    weight_t = getattr(layer, "decode_weight_t", None)
    if weight_t is None or torch.is_grad_enabled():
        return layer(x)
    out = (
        x.reshape(-1, x.size(-1)) @ weight_t
        if layer.bias is None
        else torch.addmm(layer.bias, x.reshape(-1, x.size(-1)), weight_t)
    )
    return out.view(*x.shape[:-1], weight_t.size(1))


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

    def forward(self, x: Tensor, key_mask: Optional[Tensor] = None, start_pos: Optional[int] = None) -> Tensor:
        B, T, C = x.size()
        q, k, v = _linear(self.c_attn, x).split(self.n_embd, dim=2)  # 3 x (B, T, C)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        if start_pos is None:
            y = self.core(q, k, v, key_mask=key_mask)
        else:
            if self.state is None:
                raise RuntimeError("start_pos was given but no decoding cache is set up; call model.setup_cache().")
            y = self.core.step(q, k, v, self.state, start_pos, key_mask=key_mask)
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
        return self.dropout(self.c_proj(F.gelu(_linear(self.c_fc, x), approximate=self.approximate)))


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

    def forward(self, x: Tensor, key_mask: Optional[Tensor] = None, start_pos: Optional[int] = None) -> Tensor:
        x = x + self.attn(self.ln_1(x), key_mask=key_mask, start_pos=start_pos)
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

    #: While decoding in float32 on CPU at batch <= 8, multiply by transposed copies of the wide layers' weights (faster
    #: mat-vec products, one extra copy of those weights in memory; see ``setup_cache``).
    transposed_decode_weights: bool = True

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
                decoding). When decoding with ``start_pos``, it covers every position so far.
            position_ids: ``(B, T)`` positions into the learned table; default ``start_pos + arange(T)``.
            start_pos: decode through the layer caches (see ``setup_cache``), the tokens sitting at positions
                ``start_pos .. start_pos + T - 1``.
            ignore_index: target value excluded from the loss.
            logits_to_keep: compute logits for the last ``logits_to_keep`` positions only (0: all). Decoding needs
                just the last one, which saves ``(T - 1) x n_embd x V`` multiply-adds of the LM head.

        Returns:
            ``logits`` of shape ``(B, T, V)`` with ``V = config.padded_vocab_size`` (ids from ``config.vocab_size``
            on are padding: decoding masks them), or ``(logits, loss)`` when ``targets`` is given.
        """
        B, T = idx.size()
        offset = 0 if start_pos is None else start_pos
        if position_ids is None:
            if offset + T > self.config.block_size:
                raise ValueError(
                    f"Sequence of length {offset + T} exceeds the model's context (block_size="
                    f"{self.config.block_size}). Crop the input or train a model with a larger block_size."
                )
            pos = torch.arange(offset, offset + T, device=idx.device)[None]  # (1, T)
        else:
            pos = position_ids
            if pos.numel() and int(pos.max()) >= self.config.block_size:
                raise ValueError(
                    f"Position {int(pos.max())} exceeds the model's context (block_size={self.config.block_size})."
                )
        key_mask = None if attention_mask is None else attention_mask.bool()
        tok_emb = self.transformer.wte(idx)  # (B, T, C)
        if self.embedding_scale != 1.0:
            tok_emb = tok_emb * self.embedding_scale
        x = self.transformer.drop(tok_emb + self.transformer.wpe(pos))  # (B, T, C)
        for block in self.transformer.h:
            x = block(x, key_mask=key_mask, start_pos=start_pos)
        if logits_to_keep:
            if targets is not None:
                raise ValueError("logits_to_keep cannot be combined with targets: the loss needs every position.")
            x = x[:, -logits_to_keep:]  # (B, logits_to_keep, C)
        logits = _linear(self.lm_head, self.transformer.ln_f(x))  # (B, T, vocab_size)
        if targets is None:
            return logits
        targets = targets.reshape(-1)
        loss = F.cross_entropy(
            logits.view(-1, logits.size(-1)).float(), targets, ignore_index=ignore_index, reduction="sum"
        ) / (targets != ignore_index).sum().clamp(min=1)  # 0, not NaN, when every target is ignored
        return logits, loss

    # ------------------------------------------------------------------ decoding state (the cache protocol)

    def new_cache(
        self,
        batch_size: int,
        max_seq_len: Optional[int] = None,
        device: Optional[torch.device] = None,
        dtype: Optional[torch.dtype] = None,
    ) -> Cache:
        """Allocate a fresh decoding state for every layer, not bound to the model (see ``swap_cache``).

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
        cache = _BoundCache(
            block.attn.core.init_state(batch_size, max_seq_len, device, dtype) for block in self.transformer.h
        )
        cache.weights_t = self._transposed_decode_weights(batch_size, torch.device(device))
        return cache

    def swap_cache(self, cache: Optional[Cache]) -> Cache:
        """Bind ``cache`` (from ``new_cache``; ``None`` unbinds) to the layers; return the binding it replaces.

        A generation binds its own cache around each forward call and restores the previous binding after it, so
        generations interleaved on one model (two open streams) never read or free each other's state.
        """
        attns, layers = self._cache_parts()
        if cache is not None and len(cache) != len(attns):
            raise ValueError(f"The cache holds {len(cache)} layer states, the model has {len(attns)} layers.")
        # Called twice per decoded token: plain instance-dict reads and writes (``nn.Module.__setattr__``'s type checks
        # cost more than the rest of a tiny model's step); ``state`` and ``decode_weight_t`` are plain attributes.
        previous = _BoundCache(a.__dict__.get("state") for a in attns)
        held = [layer.__dict__.get("decode_weight_t") for layer in layers]
        previous.weights_t = held if any(w is not None for w in held) else None
        for i, attn in enumerate(attns):
            attn.__dict__["state"] = None if cache is None else cache[i]
        weights = getattr(cache, "weights_t", None)
        if weights is not None or previous.weights_t is not None:
            for j, layer in enumerate(layers):
                layer.__dict__["decode_weight_t"] = None if weights is None else weights[j]
        return previous

    def setup_cache(
        self,
        batch_size: int,
        max_seq_len: Optional[int] = None,
        device: Optional[torch.device] = None,
        dtype: Optional[torch.dtype] = None,
    ) -> None:
        """Allocate every layer's decoding state and bind it (``swap_cache(new_cache(...))``); see ``new_cache``."""
        self.swap_cache(self.new_cache(batch_size, max_seq_len, device, dtype))

    def _cache_parts(self) -> tuple[list[CausalSelfAttention], list[nn.Linear]]:
        """The attention modules that hold the decoding states and the layers that may use transposed decode weights
        (listed once: ``swap_cache`` runs twice per decoded token)."""
        parts = self.__dict__.get("_cache_parts_list")
        if parts is None or len(parts[0]) != len(self.transformer.h):
            parts = ([block.attn for block in self.transformer.h], self._decode_layers())
            self.__dict__["_cache_parts_list"] = parts
        return parts

    def _decode_layers(self) -> list[nn.Linear]:
        return [m for block in self.transformer.h for m in (block.attn.c_attn, block.mlp.c_fc)] + [self.lm_head]

    def _transposed_decode_weights(self, batch_size: int, device: torch.device) -> Optional[list[Optional[Tensor]]]:
        # A decoded token is a matrix-vector product per layer. On CPU, for the layers with more outputs than inputs
        # (c_attn, c_fc, the LM head) that product streams ~1.7-2.2x faster from a contiguous (in, out) copy of the
        # weight than from nn.Linear's (out, in) layout (9 vs 20 GB/s for a 50257 x 384 head, one thread; see
        # benchmarks/results/decode_roofline.md). The copies are taken from the current weights when a generation's
        # cache is made and travel with that cache: they are bound only while it is (``swap_cache``), so a forward
        # pass outside decoding (validation after more training steps) never sees them. Extra memory while decoding:
        # one copy of those matrices (``GPT.transposed_decode_weights = False`` turns it off). Not in bfloat16: there
        # this CPU's kernels are no faster from the transposed layout.
        param = self.lm_head.weight
        if not (device.type == "cpu" and param.dtype == torch.float32 and self.transposed_decode_weights):
            return None
        if batch_size > 8:
            return None
        out: list[Optional[Tensor]] = []
        for layer in self._decode_layers():
            weight = layer.weight
            use = type(weight.data) is torch.Tensor and weight.dim() == 2  # not for sharded (DTensor) weights
            out.append(weight.detach().t().contiguous() if use else None)  # (in, out)
        return out

    def clear_cache(self) -> None:
        """Drop every layer's bound decoding state."""
        self.swap_cache(None)

    def reorder_cache(self, index: Tensor) -> None:
        """Keep/reorder batch rows of every layer's state: row ``i`` becomes old row ``index[i]``."""
        for block in self.transformer.h:
            if block.attn.state is not None:
                block.attn.state = {name: t.index_select(0, index) for name, t in block.attn.state.items()}

    @property
    def has_cache(self) -> bool:
        """Whether decoding state is currently allocated."""
        return all(block.attn.state is not None for block in self.transformer.h)
