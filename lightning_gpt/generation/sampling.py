"""The decoding engine, gpt-fast style: ``model_logits`` (one forward through a cache: ``step.py``), ``DecodeState``
(its ``prefill`` and ``decode_one_token``) and ``decode_n_tokens`` (the greedy/sampling loop).

``DecodeState`` owns the token buffer (preallocated), the padding mask, the positions and its own cache (one state per
layer from ``model.new_cache``), and passes that cache to every forward call (``model(idx, input_pos=pos,
cache=cache)``): nothing is bound to the model, so generations interleaved on one model (two open streams, or a
``generate`` call between two steps of a stream) never share state. With ``use_cache=True`` the prompt is prefilled in
one call and every later step feeds one token per row at a position given as a tensor, so the step has the same shapes
every time: ``compile=True`` compiles it once with ``fullgraph=True`` (on CUDA with ``mode="reduce-overhead"``: CUDA
graphs), and the prefill with a dynamic length. ``use_cache=False`` reruns the whole sequence every step.
"""

from __future__ import annotations

import inspect
import warnings
from typing import Any, Generator, Optional, Union, cast

import torch
from torch import Tensor, nn

from lightning_gpt.generation.config import GenerationConfig
from lightning_gpt.generation.layout import (
    DECODE_LAYOUT_MIN_BYTES,
    DECODE_LAYOUT_MIN_TOKENS,
    MATVEC_MAX_ROWS,
    decode_weights,
    release_decode_weights,
)
from lightning_gpt.generation.processors import process_logits, sample_from_logits
from lightning_gpt.generation.step import CacheBuffers, StepFn, compiled_steps, compiled_verify, model_logits
from lightning_gpt.generation.stopping import NOT_STOPPED, StopCriteria

__all__ = [
    "DECODE_LAYOUT_MIN_BYTES",
    "DECODE_LAYOUT_MIN_TOKENS",
    "DECODE_MATVEC",
    "CacheBuffers",
    "DecodeState",
    "compiled_steps",
    "decode_weights",
    "decode_n_tokens",
    "model_logits",
    "sample_steps",
]

#: On CPU, the compiled one-token step runs under ``MatVecMode`` (one-row float32 linear layers as reductions over the
#: model's own weights), so a compiled batch-1 generation takes no ``decode_weights`` copy.
DECODE_MATVEC = True


_COMPILED: dict[str, tuple[StepFn, StepFn, StepFn]] = {}
_VERIFY: dict[str, Optional[StepFn]] = {}
_WARNED: set[str] = set()


def _warn_once(message: str) -> None:
    if message not in _WARNED:
        _WARNED.add(message)
        warnings.warn(message, RuntimeWarning, stacklevel=3)


def _uses_input_pos(model: nn.Module) -> bool:
    # A model written for the 0.1 protocol (``start_pos`` int, no ``input_pos``/``cache`` arguments) still decodes,
    # without a cache of ours (e.g. a scripted test double).
    return "input_pos" in inspect.signature(model.forward).parameters


class DecodeState:
    """Token buffer, mask, positions and cache of a batch being decoded.

    Args:
        model: a model following the cache protocol (``new_cache``, ``model(idx, input_pos=..., cache=...,
            logits_to_keep=k)``) and returning logits ``(B, T, V)``.
        input_ids: ``(B, T0)`` left-padded prompts.
        attention_mask: ``(B, T0)`` 1 for real tokens, 0 for padding; ``None`` when there is no padding.
        max_new_tokens: room to reserve after the prompt.
        use_cache: decode through the caches (True) or rerun the full sequence each step (False).
        compile: run the prefill and the one-token step compiled (``compiled_steps``); needs ``use_cache``. The
            cache is then sized to a power of two (at most ``block_size``) so that prompts of other lengths reuse the
            compiled step. ``True`` uses inductor; a string names another ``torch.compile`` backend.
        verify: the tokens each of speculative decoding's verification passes feeds after the prefill
            (``num_draft_tokens + 1``; 0: none). Compiled at batch 1 on CPU, passes of up to ``MATVEC_MAX_ROWS``
            tokens run their own compiled step on the model's own weights (``step.compiled_verify``); longer ones
            (or ``True``: length unknown) run the prefill step on the decode-time weight copy (``decode_weights``).
            A shorter pass (the last round) on a key/value cache (``rollback_free``) re-feeds the cached tokens
            before it up to that length, so it runs the same compiled step (see ``feed``).
    """

    def __init__(
        self,
        model: nn.Module,
        input_ids: Tensor,
        attention_mask: Optional[Tensor],
        max_new_tokens: int,
        use_cache: bool = True,
        compile: Union[bool, str] = False,
        verify: Union[bool, int] = 0,
    ) -> None:
        self.model: Any = cast(Any, model)  # duck-typed: the cache protocol above (nn.Module types attributes loosely)
        self.use_cache = use_cache
        config = getattr(model, "config", None)
        B, T0 = input_ids.shape
        self.batch_size, self.prompt_len = B, T0
        self.max_len = T0 + max_new_tokens
        # Ids from the config's vocab_size up to the table's padded size are padding, never real tokens.
        self.n_real = int(getattr(config, "vocab_size", 1 << 62))
        size = self.max_len
        if compile:
            size = min(max(16, 1 << (self.max_len - 1).bit_length()), int(getattr(config, "block_size", size)))
        self.size = max(size, self.max_len)
        device = input_ids.device
        self.tokens = torch.zeros(B, self.max_len, dtype=torch.long, device=device)  # (B, T0 + max_new)
        self.length = T0
        self.arange = torch.arange(self.size, device=device)
        if attention_mask is None:
            self.tokens[:, :T0] = input_ids
            self.mask: Optional[Tensor] = None
            self.positions: Optional[Tensor] = None
        else:
            # Padding ids may be anything (even out of vocabulary): feed 0 there, the mask hides it.
            self.tokens[:, :T0] = input_ids.masked_fill(attention_mask == 0, 0)
            self.mask = torch.ones(B, self.size, dtype=torch.bool, device=device)
            self.mask[:, :T0] = attention_mask.bool()
            # Hugging Face convention: positions count real tokens only; padding sits at position 0.
            self.positions = torch.zeros(B, self.size, dtype=torch.long, device=device)
            prompt_pos = (attention_mask.cumsum(-1) - 1).clamp(min=0)  # (B, T0)
            self.positions[:, :T0] = prompt_pos
            n_after = self.size - T0
            self.positions[:, T0:] = prompt_pos[:, -1:] + torch.arange(1, n_after + 1, device=device)
            self.positions.clamp_(max=int(getattr(config, "block_size", self.size)) - 1)  # beyond max_len: unused
        self.prompt_valid = None if attention_mask is None else attention_mask.bool()
        self.legacy = not _uses_input_pos(model)
        self.cache = self.model.new_cache(B, self.size, device=device) if use_cache and not self.legacy else None
        # Compiled at batch 1 on CPU, the step reads the model's own weights (``MatVecMode``); else the layout copy.
        self.matvec = bool(compile) and use_cache and DECODE_MATVEC and device.type == "cpu" and B == 1
        # Verification passes of a known length up to MATVEC_MAX_ROWS: the compiled verify step, on the own weights.
        self.verify_len = 0 if verify is True else int(verify)
        fast_verify = self.matvec and 1 < self.verify_len <= MATVEC_MAX_ROWS
        copy = not self.matvec or (bool(verify) and not fast_verify)
        self.weights = decode_weights(model, B, max_new_tokens) if copy and not self.legacy else None
        self.fed = 0  # tokens already run through the cache
        # Whether forgetting the last fed tokens needs no work (speculative decoding; see AttentionCore.rollback_free).
        self.rollback_free = bool(getattr(model, "rollback_free", False))
        self.compiled = bool(compile)
        if compile:
            if not use_cache:
                raise ValueError("compile=True compiles the cached one-token step; it needs use_cache=True.")
            backend = compile if isinstance(compile, str) else "inductor"
            key = f"{device.type}:{backend}:{DECODE_MATVEC}"
            if key not in _COMPILED:
                _COMPILED[key] = compiled_steps(device, backend, DECODE_MATVEC)
            self._prefill_fn, self._decode_fn, self._greedy_fn = _COMPILED[key]
            if fast_verify and key not in _VERIFY:
                _VERIFY[key] = compiled_verify(device, backend)
            self._verify_fn: Optional[StepFn] = _VERIFY.get(key) if fast_verify else None
            self.cache_module = None if self.cache is None else CacheBuffers(self.cache)
        else:
            self._prefill_fn = self._decode_fn = self._greedy_fn = model_logits
            self._verify_fn = None
            self.cache_module = None

    @property
    def new_tokens(self) -> Tensor:
        """``(B, n)`` ids generated so far."""
        return self.tokens[:, self.prompt_len : self.length]

    def valid(self) -> Optional[Tensor]:
        """``(B, length)`` bool, False at padding; ``None`` when there is no padding."""
        return None if self.mask is None else self.mask[:, : self.length]

    def feed(self, end: int, keep: int = 1, greedy: bool = False) -> Tensor:
        """Run the tokens ``fed .. end - 1`` of the buffer (not yet in the cache) and return the float32 logits
        ``(B, keep, V)`` of the last ``keep`` of them; afterwards ``fed = end``. Without cache, the whole sequence
        ``0 .. end - 1`` is rerun. ``greedy``: return the argmax ids ``(B,)`` of the last token's logits instead
        (the compiled one-token step takes them inside the compiled code).

        A pass of ``keep = end - fed`` tokens shorter than ``verify_len`` on a key/value cache starts earlier, at
        ``end - verify_len``: the tokens before ``fed`` are fed again and their cache entries, written by index, get
        the same values again (up to float32 rounding), so the pass runs the compiled verification step."""
        if self.use_cache and self.cache is None and not self.legacy:  # (closed)
            raise RuntimeError("This DecodeState was closed; start a new generation.")
        start = self.fed if self.use_cache else 0
        self.fed = end
        if self.legacy:
            logits = self.model(
                self.tokens[:, start:end],
                attention_mask=None if self.mask is None else self.mask[:, :end],
                position_ids=None if self.positions is None else self.positions[:, start:end],
                start_pos=start if self.use_cache else None,
                logits_to_keep=keep,
            )
            logits = logits[:, -keep:].float()
            return logits[:, -1].argmax(-1) if greedy else logits
        if not self.use_cache:
            mask = None if self.mask is None else self.mask[:, :end]
            logits = model_logits(
                self.model,
                self.tokens[:, :end],
                self.arange[:end],
                None,
                mask,
                self.positions,
                self.n_real,
                keep,
                self.weights,
            )
            return logits[:, -1].argmax(-1) if greedy else logits
        wanted = keep
        if end - start > 1:
            fn = self._prefill_fn
            if self._verify_fn is not None and end - start == keep <= self.verify_len <= end:
                if keep < self.verify_len and self.rollback_free:
                    # A shorter pass (the last round drafts fewer tokens): the compiled length, by re-feeding the
                    # tokens before it, whose cache entries (written by index) are rewritten with the same values.
                    start, keep = end - self.verify_len, self.verify_len
                if keep == self.verify_len:
                    fn = self._verify_fn
        else:
            fn = self._greedy_fn if greedy and keep == 1 else self._decode_fn
        ids = fn is self._greedy_fn and fn is not model_logits  # fn returns the argmax ids itself
        input_pos = self.arange[start:end]
        idx = self.tokens[:, start:end]
        if self.compiled:  # fresh inputs: a view's storage offset would be one more thing to specialize on
            input_pos, idx = input_pos.clone(), idx.clone()
        cache = self.cache if self.cache_module is None else self.cache_module
        weights = self.weights if fn is self._prefill_fn or not self.matvec else None  # (MatVecMode: the model's own)
        args = (self.model, idx, input_pos, cache, self.mask, self.positions, self.n_real, keep, weights)
        if fn is model_logits:
            logits = fn(*args)
            return logits[:, -1].argmax(-1) if greedy else logits
        try:
            out = fn(*args)
        except Exception as err:
            # torch.compile's per-function limit of compiled variants (many models or shapes in one process): the
            # step fails before it runs, so decoding goes on eagerly, with the same tokens.
            if "RecompileLimit" not in type(err).__name__:
                raise
            _warn_once(f"compile=True: {err}".split("\n")[0] + " -- decoding eagerly from here.")
            self._prefill_fn = self._decode_fn = self._greedy_fn = model_logits
            self._verify_fn = None
            self.cache_module = None
            out, ids = model_logits(*args), False
        if greedy and not ids:
            return out[:, -1].argmax(-1)
        return out if keep == wanted else out[:, -wanted:]

    def prefill(self) -> Tensor:
        """Run the prompt (one call); return the next-token logits ``(B, V)`` in float32."""
        return self.feed(self.length)[:, -1]

    def append(self, next_tokens: Tensor) -> None:
        """Write ``(B,)`` new ids at the end of every row."""
        if self.length >= self.max_len:
            raise RuntimeError("DecodeState is full: max_new_tokens tokens were already appended.")
        self.tokens[:, self.length] = next_tokens
        self.length += 1

    def decode_one_token(self, next_tokens: Optional[Tensor] = None, greedy: bool = False) -> Tensor:
        """Append ``next_tokens`` ``(B,)`` (if given), feed the last token through the cache (without cache: rerun the
        whole sequence); return the next-token logits ``(B, V)`` in float32, or with ``greedy`` their argmax ids
        ``(B,)`` (see ``feed``)."""
        if next_tokens is not None:  # (``append``, inlined: the hot path)
            if self.length >= self.max_len:
                raise RuntimeError("DecodeState is full: max_new_tokens tokens were already appended.")
            self.tokens[:, self.length] = next_tokens
            self.length += 1
        out = self.feed(self.length, greedy=greedy)
        return out if greedy else out[:, -1]

    def reorder(self, index: Tensor) -> None:
        """Row ``i`` becomes old row ``index[i]`` (beam search); the cache follows, in place (same storage, so a
        compiled step keeps its inputs)."""
        self.tokens = self.tokens.index_select(0, index)
        if self.mask is not None and self.positions is not None and self.prompt_valid is not None:
            self.mask = self.mask.index_select(0, index)
            self.positions = self.positions.index_select(0, index)
            self.prompt_valid = self.prompt_valid.index_select(0, index)
        if self.cache is not None:
            for st in self.cache:
                for t in st.values():
                    t.copy_(t.index_select(0, index))

    def snapshot(self) -> list[dict[str, Tensor]]:
        """A copy of the cache (to undo steps on a state that folds tokens in: ``restore``)."""
        return [] if self.cache is None else [{n: t.clone() for n, t in st.items()} for st in self.cache]

    def restore(self, saved: list[dict[str, Tensor]], fed: int) -> None:
        """Put back a ``snapshot`` taken when ``fed`` tokens had been run (in place)."""
        if self.cache is not None:
            for st, old in zip(self.cache, saved):
                for n, t in st.items():
                    t.copy_(old[n])
        self.fed = fed

    def close(self) -> None:
        """Free this generation's decoding state (nothing else's); its decode-time weights go back to the model's
        spare set (``release_decode_weights``)."""
        self.cache = None
        self.cache_module = None
        weights, self.weights = self.weights, None
        if weights is not None:
            release_decode_weights(self.model, weights)


def decode_n_tokens(
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
    """Greedy or sampling loop (prefill, then one token per step): yields the ``(B,)`` next ids each step; finished
    rows get ``pad_token_id``.

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
    penalize = repetition_penalty != 1.0
    process = penalize or do_sample
    active = stop.active
    logits = state.prefill()
    # Greedy without logits processing: each step returns the next ids itself (compiled: argmax inside the step).
    ready = None if process else logits.argmax(dim=-1)
    unfinished = torch.ones(state.batch_size, dtype=torch.bool, device=logits.device)
    for step in range(max_new_tokens):
        if ready is not None:
            next_tokens = ready
        else:  # (process is true)
            logits = process_logits(
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
            next_tokens = sample_from_logits(logits, generator) if do_sample else logits.argmax(dim=-1)  # (B,)
        if active:
            next_tokens = torch.where(unfinished, next_tokens, pad_token_id)
        if active or step + 1 == max_new_tokens:
            state.append(next_tokens)
            yield next_tokens
        else:  # the hot path: append and feed in one call
            yield next_tokens
            if ready is None:
                logits = state.decode_one_token(next_tokens)
            else:
                ready = state.decode_one_token(next_tokens, greedy=True)
            continue
        if active:
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
            if ready is None:
                logits = state.decode_one_token()
            else:
                ready = state.decode_one_token(greedy=True)


sample_steps = decode_n_tokens  # the 0.1 name
