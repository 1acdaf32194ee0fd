"""``generate`` and ``stream_generate``: the public decoding entry points (Hugging Face ``generate`` semantics)."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Generator, Iterator, Literal, Optional, Sequence, Union, overload

import torch
from torch import Tensor, nn

from lightning_gpt.config import is_int
from lightning_gpt.generation.beam import beam_search
from lightning_gpt.generation.config import GenerationConfig
from lightning_gpt.generation.sampling import DecodeState, decode_n_tokens
from lightning_gpt.generation.speculative import speculative_steps
from lightning_gpt.generation.stopping import FINISH_REASONS, StopCriteria
from lightning_gpt.generation.validate import normalize_eos, validate_prompt

__all__ = ["GenerateOutput", "generate", "stream_generate"]


@dataclass
class GenerateOutput:
    """What ``generate(..., return_dict=True)`` returns.

    Args:
        sequences: ``(N, prompt_len + L)`` prompt (as given, left padding included) followed by the generated ids;
            ``N = B * num_return_sequences``; rows that finished early are right-filled with the pad id.
        num_new_tokens: ``(N,)`` generated tokens per row (EOS or the stop sequence included).
        finish_reasons: per row, ``"length"`` (hit ``max_new_tokens``), ``"eos"`` or ``"stop"`` (a stop sequence).
        prompt_length: ``prompt_len``, where the generated part starts in ``sequences``.
        sequences_scores: beam search only: ``(N,)`` sum of log-probabilities of the generated tokens divided by
            ``generated_length ** length_penalty``; ``None`` otherwise.
    """

    sequences: Tensor
    num_new_tokens: Tensor
    finish_reasons: list[str] = field(default_factory=list)
    prompt_length: int = 0
    sequences_scores: Optional[Tensor] = None

    @property
    def new_tokens(self) -> list[list[int]]:
        """The generated ids of each row, without filler."""
        gen = self.sequences[:, self.prompt_length :].tolist()
        return [row[:n] for row, n in zip(gen, self.num_new_tokens.tolist())]


@contextlib.contextmanager
def _eval_mode(model: Optional[nn.Module]) -> Iterator[None]:
    if model is None:
        yield
        return
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def _model_config(model: nn.Module) -> tuple[int, int]:
    config = getattr(model, "config", None)
    if config is None or not hasattr(config, "block_size") or not hasattr(config, "vocab_size"):
        raise ValueError(
            f"generate needs a model with a `config` holding block_size and vocab_size (a lightning_gpt GPT), got "
            f"{type(model).__name__}. For a LightningModule, pass its `.model`."
        )
    return int(config.block_size), int(config.vocab_size)


def _prepare(
    model: nn.Module,
    input_ids: Tensor,
    config: GenerationConfig,
    *,
    eos_token_id: Union[None, int, Sequence[int]],
    pad_token_id: Optional[int],
    attention_mask: Optional[Tensor],
    tokenizer: Any,
    generator: Optional[torch.Generator],
    draft_model: Optional[nn.Module],
) -> dict[str, Any]:
    """The checked prompt and what the decoding loops read (a draft model checked too), or one paragraph raised."""
    block_size, vocab_size = _model_config(model)
    if pad_token_id is not None and (not is_int(pad_token_id) or not 0 <= pad_token_id < vocab_size):
        raise ValueError(f"pad_token_id={pad_token_id!r} must be None or an integer in [0, {vocab_size}).")
    config.warn_ignored()
    input_ids, attention_mask = validate_prompt(input_ids, attention_mask, vocab_size)
    device = next(model.parameters()).device
    input_ids = input_ids.to(device)
    attention_mask = None if attention_mask is None else attention_mask.to(device)
    T0 = input_ids.size(1)
    # max_new_tokens=None: fill the context after the (padded) prompt; at least 1, so a full prompt gets the error.
    max_new_tokens = config.max_new_tokens if config.max_new_tokens is not None else max(1, block_size - T0)
    if T0 + max_new_tokens > block_size:
        fixes = []
        if max_new_tokens < block_size:
            fixes.append(f"shorten the prompt to its last {block_size - max_new_tokens} tokens")
        if T0 < block_size:
            fixes.append(f"lower max_new_tokens to at most {block_size - T0}")
        if not fixes:
            fixes.append(f"keep the prompt and max_new_tokens together within {block_size} tokens")
        raise ValueError(
            f"The prompt ({T0} tokens{', padded' if attention_mask is not None else ''}) plus max_new_tokens "
            f"({max_new_tokens}) is {T0 + max_new_tokens} tokens, longer than the model's context "
            f"(block_size={block_size}). To fix: " + ", or ".join(fixes) + "."
        )
    eos = normalize_eos(eos_token_id, vocab_size)
    criteria = StopCriteria(eos, config.stop, tokenizer, vocab_size)
    # Hugging Face's fallback: finished rows are padded with the (first) EOS id when no pad id is given.
    pad = pad_token_id if pad_token_id is not None else (eos[0] if eos else 0)
    expand = config.num_beams if config.num_beams > 1 else config.num_return_sequences
    if expand > 1:
        input_ids = input_ids.repeat_interleave(expand, dim=0)
        attention_mask = None if attention_mask is None else attention_mask.repeat_interleave(expand, dim=0)
    if generator is None and config.sampling:
        generator = config.make_generator(device)
    prep = dict(
        input_ids=input_ids,
        attention_mask=attention_mask,
        stop=criteria,
        pad=pad,
        max_new_tokens=max_new_tokens,
        generator=generator,
        batch_size=input_ids.size(0) // expand,
    )
    if draft_model is not None:
        _check_draft(model, draft_model, prep, config)
    return prep


def _check_draft(model: nn.Module, draft_model: nn.Module, prep: dict[str, Any], config: GenerationConfig) -> None:
    """One paragraph for a draft model that cannot assist this generation."""
    block_size, vocab_size = _model_config(draft_model)
    _, target_vocab = _model_config(model)
    rows = prep["input_ids"].size(0)
    if config.num_beams > 1 or rows != 1:
        raise ValueError(
            f"Speculative decoding (draft_model) decodes one sequence: got {rows} rows (batch size x "
            f"num_return_sequences) and num_beams={config.num_beams}. Pass one prompt with num_beams=1 and "
            "num_return_sequences=1, or drop draft_model."
        )
    if not config.use_cache:
        raise ValueError("Speculative decoding (draft_model) needs use_cache=True.")
    if vocab_size != target_vocab:
        raise ValueError(
            f"The draft model's vocab_size ({vocab_size}) differs from the target's ({target_vocab}): speculative "
            "decoding needs both models on the same tokenizer. Use a draft trained with the target's tokenizer."
        )
    needed = prep["input_ids"].size(1) + prep["max_new_tokens"]
    if needed > block_size:
        raise ValueError(
            f"The prompt plus max_new_tokens is {needed} tokens, longer than the draft model's context "
            f"(block_size={block_size}). Lower max_new_tokens or use a draft with a longer context."
        )
    device = next(model.parameters()).device
    if next(draft_model.parameters()).device != device:
        raise ValueError(
            f"The draft model is on {next(draft_model.parameters()).device}, the target on {device}; move the draft "
            "to the target's device (draft_model.to(device))."
        )


@contextlib.contextmanager
def _decode_states(
    model: nn.Module,
    prep: dict[str, Any],
    config: GenerationConfig,
    compile: Union[bool, str],
    draft_model: Optional[nn.Module],
) -> Iterator[tuple[DecodeState, Optional[DecodeState]]]:
    """This generation's own decoding states, the target's and the draft's (or ``None``), freed on exit."""
    prompt, mask, n = prep["input_ids"], prep["attention_mask"], prep["max_new_tokens"]
    with torch.inference_mode():  # allocated as inference tensors even where the steps run outside the mode
        state = DecodeState(model, prompt, mask, n, config.use_cache, compile)
        draft = None if draft_model is None else DecodeState(draft_model, prompt, mask, n, True, compile)
    try:
        yield state, draft
    finally:
        state.close()
        if draft is not None:
            draft.close()


_Config = Optional[GenerationConfig]


# The type of what ``generate`` returns follows ``return_dict`` (the keyword arguments in ``kw`` are typed below).
@overload
def generate(
    model: nn.Module, input_ids: Tensor, config: _Config = None, *, return_dict: Literal[False] = False, **kw: Any
) -> Tensor: ...
@overload
def generate(
    model: nn.Module, input_ids: Tensor, config: _Config = None, *, return_dict: Literal[True], **kw: Any
) -> GenerateOutput: ...
@overload
def generate(
    model: nn.Module, input_ids: Tensor, config: _Config = None, *, return_dict: bool, **kw: Any
) -> Union[Tensor, GenerateOutput]: ...


def generate(
    model: nn.Module,
    input_ids: Tensor,
    config: Optional[GenerationConfig] = None,
    *,
    attention_mask: Optional[Tensor] = None,
    eos_token_id: Union[None, int, Sequence[int]] = None,
    pad_token_id: Optional[int] = None,
    tokenizer: Any = None,
    generator: Optional[torch.Generator] = None,
    return_dict: bool = False,
    compile: Union[bool, str] = False,
    draft_model: Optional[nn.Module] = None,
    **settings: Any,
) -> Union[Tensor, GenerateOutput]:
    """Continue prompts with a GPT; keyword names and semantics follow Hugging Face ``generate``.

    The decoding settings are one ``GenerationConfig``: pass it as ``config``, or its fields as keyword arguments
    (``max_new_tokens=20, do_sample=True, top_p=0.9``, Hugging Face style), or both (keywords win); they are folded
    into one config here, validated once, and that config is what the sampling loop and beam search read.

    Strategies: greedy (``do_sample=False``, the default, as in Hugging Face); sampling (``do_sample=True``) from
    ``softmax(processed logits)`` with one ``torch.multinomial`` draw per row and step (``temperature=0`` means greedy);
    beam search (``num_beams > 1``), and beam sampling (``num_beams > 1`` with ``do_sample=True``). Logits go through
    repetition penalty -> temperature -> top-k -> top-p -> min-p (the last four only when sampling). The prompt is
    prefilled in one call and every further step feeds one token per row through this generation's own cache
    (``use_cache=False`` reruns the whole sequence each step, same tokens).

    Context policy: the (padded) prompt length plus ``max_new_tokens`` must fit in ``model.config.block_size``,
    otherwise a ``ValueError`` says how much to crop; nothing is cropped silently. ``max_new_tokens=None`` (the
    default) fills the context after the prompt.

    Runs under ``torch.inference_mode()`` with the model in eval mode (its mode is restored afterwards).

    How to run (not what to decode, so beside the config): ``compile=True`` compiles the prefill (dynamic length)
    and the one-token step (``fullgraph``; on CUDA ``mode="reduce-overhead"``, CUDA graphs); the first call pays the
    compilation (seconds to a minute), later calls with the same model, batch size and buffer size reuse it.
    ``draft_model``: speculative decoding (one prompt, no beams): a smaller model on the same tokenizer drafts
    ``config.num_draft_tokens`` tokens per round and the target checks them in one pass; greedy output is the
    target's own, sampled output has the target's distribution (``lightning_gpt.generation.speculative``).

    Args:
        model: a ``lightning_gpt.GPT`` (or any model with ``config.block_size``/``vocab_size`` and the cache protocol).
        input_ids: ``(B, T)`` (or ``(T,)``) prompt ids; rows of different lengths are LEFT-padded.
        config: the decoding settings (default ``GenerationConfig()``: greedy, fill the context).
        attention_mask: ``(B, T)`` 1 for real tokens, 0 for left padding.
        eos_token_id: one id or several; a row ends after generating one (it stays in the output).
        pad_token_id: filler for finished rows; defaults to the first EOS id (or 0).
        tokenizer: for string stop sequences (anything with ``decode(ids) -> str``).
        generator: a seeded ``torch.Generator`` for sampling; default one seeded with ``config.seed``, else torch's
            global RNG.
        return_dict: return a ``GenerateOutput`` (with finish reasons, lengths and beam scores).
        settings: fields of ``GenerationConfig`` (``max_new_tokens``, ``do_sample``, ``temperature``, ``top_k``,
            ``top_p``, ``min_p``, ``repetition_penalty``, ``num_beams``, ``length_penalty``, ``early_stopping``,
            ``num_return_sequences``, ``stop``, ``use_cache``, ``seed``, ``num_draft_tokens``); they override
            ``config``.
        compile: run the decoding steps compiled (see above); a string names the ``torch.compile`` backend
            (default inductor).
        draft_model: a draft ``GPT`` for speculative decoding (see above).

    Returns:
        ``(B * num_return_sequences, T + L)`` LongTensor of prompt + generated ids (L <= max_new_tokens), or a
        ``GenerateOutput`` when ``return_dict``.

    Raises:
        ValueError: an unknown or out-of-range setting, a bad prompt or mask, or a prompt plus ``max_new_tokens``
            longer than the context; the message names the value and the fix.
    """
    config = GenerationConfig.fold(config, **settings)
    prep = _prepare(
        model,
        input_ids,
        config,
        eos_token_id=eos_token_id,
        pad_token_id=pad_token_id,
        attention_mask=attention_mask,
        tokenizer=tokenizer,
        generator=generator,
        draft_model=draft_model,
    )
    prompt = prep["input_ids"]
    max_new_tokens = prep["max_new_tokens"]
    num_return_sequences = config.num_return_sequences
    with torch.inference_mode(), _eval_mode(model), _eval_mode(draft_model):
        with _decode_states(model, prep, config, compile, draft_model) as (state, draft):
            if config.num_beams > 1:
                res = beam_search(
                    state,
                    config,
                    batch_size=prep["batch_size"],
                    max_new_tokens=max_new_tokens,
                    stop=prep["stop"],
                    pad_token_id=prep["pad"],
                    generator=prep["generator"],
                )
                keep = torch.arange(prep["batch_size"], device=prompt.device).repeat_interleave(num_return_sequences)
                sequences = torch.cat([prompt[keep * config.num_beams], res.new_tokens], dim=1)
                lengths, reasons, scores = res.lengths, res.reasons, res.scores
            else:
                reasons = torch.zeros(prompt.size(0), dtype=torch.long, device=prompt.device)
                lengths = torch.full_like(reasons, max_new_tokens)
                for _ in _steps(state, draft, config, prep, reasons, lengths):
                    pass
                sequences = state.tokens[:, : state.length].clone()
                sequences[:, : state.prompt_len] = prompt
                scores = None
    if not return_dict:
        return sequences
    return GenerateOutput(
        sequences=sequences,
        num_new_tokens=lengths,
        finish_reasons=[FINISH_REASONS[int(r)] for r in reasons.tolist()],
        prompt_length=prompt.size(1),
        sequences_scores=scores,
    )


def _steps(
    state: DecodeState,
    draft: Optional[DecodeState],
    config: GenerationConfig,
    prep: dict[str, Any],
    reasons: Tensor,
    lengths: Tensor,
) -> Generator[Tensor, None, None]:
    """The greedy/sampling loop, or the speculative one with a draft state."""
    if draft is not None:
        return speculative_steps(
            state,
            draft,
            config,
            max_new_tokens=prep["max_new_tokens"],
            stop=prep["stop"],
            generator=prep["generator"],
            reasons=reasons,
            lengths=lengths,
        )
    return decode_n_tokens(
        state,
        config,
        max_new_tokens=prep["max_new_tokens"],
        stop=prep["stop"],
        pad_token_id=prep["pad"],
        generator=prep["generator"],
        reasons=reasons,
        lengths=lengths,
    )


def stream_generate(
    model: nn.Module,
    input_ids: Tensor,
    config: Optional[GenerationConfig] = None,
    *,
    attention_mask: Optional[Tensor] = None,
    eos_token_id: Union[None, int, Sequence[int]] = None,
    pad_token_id: Optional[int] = None,
    tokenizer: Any = None,
    generator: Optional[torch.Generator] = None,
    compile: Union[bool, str] = False,
    draft_model: Optional[nn.Module] = None,
    **settings: Any,
) -> Generator[Tensor, None, None]:
    """Yield the next ids ``(N,)`` of every row at each step, as they are produced (greedy or sampling).

    Takes the arguments of ``generate`` except ``return_dict``; ``num_beams`` must be 1. Rows that already finished
    yield the pad id; the iteration ends when every row has finished or after ``max_new_tokens``. The model is in eval
    mode while the stream is open; each step runs under ``torch.inference_mode()``. Each stream owns its decoding
    state, so several streams may be open on one model and read in any order.

    Args:
        model: see ``generate``.
        input_ids: see ``generate``.
        config: see ``generate``.
        attention_mask: see ``generate``.
        eos_token_id: see ``generate``.
        pad_token_id: see ``generate``.
        tokenizer: see ``generate``.
        generator: see ``generate``.
        compile: see ``generate``.
        draft_model: see ``generate``.
        settings: fields of ``GenerationConfig``, as for ``generate``.

    Raises:
        ValueError: as ``generate``, when called (not at the first ``next``); also for ``num_beams > 1``.
    """
    if settings.pop("return_dict", False):
        raise ValueError("stream_generate yields token ids step by step; return_dict is not supported.")
    config = GenerationConfig.fold(config, **settings)
    if config.num_beams != 1:
        raise ValueError("stream_generate does not support beam search (num_beams > 1); use generate for beams.")
    prep = _prepare(
        model,
        input_ids,
        config,
        eos_token_id=eos_token_id,
        pad_token_id=pad_token_id,
        attention_mask=attention_mask,
        tokenizer=tokenizer,
        generator=generator,
        draft_model=draft_model,
    )
    # Arguments are checked above, at call time; the steps run lazily as the caller iterates.
    return _stream(model, prep, config, compile, draft_model)


def _stream(
    model: nn.Module,
    prep: dict[str, Any],
    config: GenerationConfig,
    compile: Union[bool, str],
    draft_model: Optional[nn.Module],
) -> Generator[Tensor, None, None]:
    max_new_tokens = prep["max_new_tokens"]
    with _eval_mode(model), _eval_mode(draft_model):
        with _decode_states(model, prep, config, compile, draft_model) as (state, draft):
            reasons = torch.zeros(state.batch_size, dtype=torch.long, device=state.tokens.device)
            lengths = torch.full_like(reasons, max_new_tokens)
            steps = _steps(state, draft, config, prep, reasons, lengths)
            try:
                while True:
                    # Inference mode only around the model's work, so it does not leak into the caller between yields.
                    with torch.inference_mode():
                        try:
                            next_tokens = next(steps)
                        except StopIteration:
                            return
                    yield next_tokens
            finally:
                steps.close()
