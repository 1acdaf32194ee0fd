"""The decoding state (prefill, decode one token) and the greedy/sampling loop, gpt-fast style.

``DecodeState`` owns the growing token buffer (preallocated), the padding mask, the positions and its own cache (one
state per layer from ``model.new_cache``, bound to the model only during each forward call), so generations
interleaved on one model (two open streams, or a ``generate`` call between two steps of a stream) never share state.
With ``use_cache=True`` the prompt is prefilled in one call at ``start_pos=0`` and every later step feeds one token per
row through each layer's cache or recurrent state; with ``use_cache=False`` every step reruns the whole sequence.
"""

from __future__ import annotations

from typing import Any, Generator, Optional, cast

import torch
from torch import Tensor, nn

from lightning_gpt.generation.config import GenerationConfig
from lightning_gpt.generation.processors import process_logits, sample_from_logits
from lightning_gpt.generation.stopping import NOT_STOPPED, StopCriteria

__all__ = ["DecodeState", "sample_steps"]


class DecodeState:
    """Token buffer, mask, positions and cache of a batch being decoded.

    Args:
        model: a model following the cache protocol (``new_cache``, ``swap_cache``,
            ``model(idx, start_pos=..., logits_to_keep=1)``) and returning logits ``(B, T, V)``.
        input_ids: ``(B, T0)`` left-padded prompts.
        attention_mask: ``(B, T0)`` 1 for real tokens, 0 for padding; ``None`` when there is no padding.
        max_new_tokens: room to reserve after the prompt.
        use_cache: decode through the caches (True) or rerun the full sequence each step (False).
    """

    def __init__(
        self,
        model: nn.Module,
        input_ids: Tensor,
        attention_mask: Optional[Tensor],
        max_new_tokens: int,
        use_cache: bool = True,
    ) -> None:
        self.model: Any = cast(Any, model)  # duck-typed: the cache protocol above (nn.Module types attributes loosely)
        self.use_cache = use_cache
        # Ids from the config's vocab_size up to the table's padded size are padding, never real tokens.
        config = getattr(model, "config", None)
        self.n_real = getattr(config, "vocab_size", None)
        B, T0 = input_ids.shape
        self.batch_size, self.prompt_len = B, T0
        self.max_len = T0 + max_new_tokens
        device = input_ids.device
        self.tokens = torch.zeros(B, self.max_len, dtype=torch.long, device=device)  # (B, T0 + max_new)
        self.length = T0
        if attention_mask is None:
            self.tokens[:, :T0] = input_ids
            self.mask: Optional[Tensor] = None
            self.positions: Optional[Tensor] = None
        else:
            # Padding ids may be anything (even out of vocabulary): feed 0 there, the mask hides it.
            self.tokens[:, :T0] = input_ids.masked_fill(attention_mask == 0, 0)
            self.mask = torch.ones(B, self.max_len, dtype=torch.long, device=device)
            self.mask[:, :T0] = attention_mask
            # Hugging Face convention: positions count real tokens only; padding sits at position 0.
            self.positions = torch.zeros(B, self.max_len, dtype=torch.long, device=device)
            prompt_pos = (attention_mask.cumsum(-1) - 1).clamp(min=0)  # (B, T0)
            self.positions[:, :T0] = prompt_pos
            self.positions[:, T0:] = prompt_pos[:, -1:] + torch.arange(1, max_new_tokens + 1, device=device)
        self.prompt_valid = None if attention_mask is None else attention_mask.bool()
        self.cache = self.model.new_cache(B, self.max_len, device=device) if use_cache else None

    @property
    def new_tokens(self) -> Tensor:
        """``(B, n)`` ids generated so far."""
        return self.tokens[:, self.prompt_len : self.length]

    def valid(self) -> Optional[Tensor]:
        """``(B, length)`` bool, False at padding; ``None`` when there is no padding."""
        return None if self.mask is None else self.mask[:, : self.length].bool()

    def _logits(self, idx: Tensor, start: int, end: int) -> Tensor:
        mask = None if self.mask is None else self.mask[:, :end]
        pos = None if self.positions is None else self.positions[:, start:end]
        if self.use_cache and self.cache is None:
            raise RuntimeError("This DecodeState was closed; start a new generation.")
        # Bind this generation's cache for the one call, then restore whatever was bound (another stream's, or none).
        previous = self.model.swap_cache(self.cache) if self.use_cache else None
        try:
            # Only the last position's logits are used.
            logits = self.model(
                idx,
                attention_mask=mask,
                position_ids=pos,
                start_pos=start if self.use_cache else None,
                logits_to_keep=1,
            )
        finally:
            if self.use_cache:
                self.model.swap_cache(previous)
        logits = logits[:, -1].float()  # (B, V)
        if self.n_real is not None and logits.size(-1) > self.n_real:
            # The one place the padding rows of a padded table are removed from decoding (sampling and beam search).
            logits[:, self.n_real :] = float("-inf")
        return logits

    def prefill(self) -> Tensor:
        """Run the prompt (one call, ``start_pos=0``); return the next-token logits ``(B, V)`` in float32."""
        return self._logits(self.tokens[:, : self.length], 0, self.length)

    def append(self, next_tokens: Tensor) -> None:
        """Write ``(B,)`` new ids at the end of every row."""
        if self.length >= self.max_len:
            raise RuntimeError("DecodeState is full: max_new_tokens tokens were already appended.")
        self.tokens[:, self.length] = next_tokens
        self.length += 1

    def decode_one_token(self) -> Tensor:
        """Feed the last appended token (or, without cache, the whole sequence); return logits ``(B, V)``."""
        end = self.length
        if self.use_cache:
            return self._logits(self.tokens[:, end - 1 : end], end - 1, end)
        return self._logits(self.tokens[:, :end], 0, end)

    def reorder(self, index: Tensor) -> None:
        """Row ``i`` becomes old row ``index[i]`` (beam search); the model's cache follows."""
        self.tokens = self.tokens.index_select(0, index)
        if self.mask is not None:
            assert self.positions is not None and self.prompt_valid is not None  # set together with the mask
            self.mask = self.mask.index_select(0, index)
            self.positions = self.positions.index_select(0, index)
            self.prompt_valid = self.prompt_valid.index_select(0, index)
        if self.cache is not None:
            self.cache = [
                None if st is None else {n: t.index_select(0, index) for n, t in st.items()} for st in self.cache
            ]

    def close(self) -> None:
        """Free this generation's decoding state (nothing else's)."""
        self.cache = None


def sample_steps(
    state: DecodeState,
    config: GenerationConfig,
    *,
    max_new_tokens: int,
    stop: StopCriteria,
    pad_token_id: int,
    generator: Optional[torch.Generator],
    reasons: Tensor,
    lengths: Tensor,
) -> Generator[Tensor, None, None]:
    """Greedy or sampling loop: yields the ``(B,)`` next ids each step; finished rows get ``pad_token_id``.

    ``reasons`` (``(B,)`` long, all ``NOT_STOPPED`` at the start) is filled in place with each row's stop code, and
    ``lengths`` (``(B,)`` long, ``max_new_tokens`` at the start) with the generated length of each row that stopped.

    Args:
        state: a fresh ``DecodeState`` (prefill not run yet).
        config: the decoding settings (sampling or greedy, temperature, top-k/p, min-p, repetition penalty).
        max_new_tokens: most tokens to generate per row (``config.max_new_tokens`` resolved against the context).
        stop: EOS / stop-sequence rules.
        pad_token_id: filler for finished rows.
        generator: RNG for sampling.
        reasons: output buffer for the stop codes.
        lengths: output buffer for the generated lengths.
    """
    do_sample = config.sampling
    repetition_penalty = float(config.repetition_penalty)
    logits = state.prefill()
    unfinished = torch.ones(state.batch_size, dtype=torch.bool, device=logits.device)
    for step in range(max_new_tokens):
        penalize = repetition_penalty != 1.0
        scores = process_logits(
            logits,
            previous_ids=state.tokens[:, : state.length] if penalize else None,
            previous_valid=state.valid() if penalize else None,
            repetition_penalty=repetition_penalty,
            do_sample=do_sample,
            temperature=float(config.temperature),
            top_k=config.top_k,
            top_p=config.top_p,
            min_p=config.min_p,
        )
        next_tokens = sample_from_logits(scores, generator) if do_sample else scores.argmax(dim=-1)  # (B,)
        if stop.active:
            next_tokens = torch.where(unfinished, next_tokens, pad_token_id)
        state.append(next_tokens)
        yield next_tokens
        if stop.active:
            rows = unfinished.nonzero().flatten()
            code = stop(state.new_tokens.index_select(0, rows))
            hit = code != NOT_STOPPED
            if bool(hit.any()):
                reasons[rows[hit]] = code[hit]
                lengths[rows[hit]] = step + 1
                unfinished[rows[hit]] = False
                if not bool(unfinished.any()):
                    return
        if step + 1 < max_new_tokens:
            logits = state.decode_one_token()
