"""``generate`` and ``stream_generate``: the public decoding entry points (Hugging Face ``generate`` semantics)."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generator, Iterator, Literal, Optional, Sequence, TypedDict, Union, overload

import torch
from torch import Tensor, nn

from lightning_gpt.config import is_int
from lightning_gpt.generation.beam import beam_search
from lightning_gpt.generation.config import GenerationConfig, GenerationSettings
from lightning_gpt.generation.sampling import DecodeState, decode_n_tokens
from lightning_gpt.generation.speculative import speculative_steps
from lightning_gpt.generation.stopping import FINISH_REASONS, StopCriteria
from lightning_gpt.generation.validate import normalize_eos, validate_prompt

if TYPE_CHECKING:
    from typing_extensions import Unpack  # typing.Unpack from Python 3.11

__all__ = ["DecodeOptions", "GenerateOutput", "generate", "stream_generate"]


class DecodeOptions(GenerationSettings, total=False):
    """The keyword arguments of ``generate`` and ``stream_generate``, defined once for both: the decoding settings
    (the fields of ``GenerationConfig``, see ``GenerationSettings``; they win over ``config``) and the ones below.

    Args:
        attention_mask: ``(B, T)`` 1 for real tokens, 0 for left padding.
        eos_token_id: one id or several; a row ends after generating one (it stays in the output).
        pad_token_id: filler for finished rows; defaults to the first EOS id (or 0).
        tokenizer: for string stop sequences (anything with ``decode(ids) -> str``).
        generator: a seeded ``torch.Generator`` for sampling; default one seeded with ``config.seed``, else torch's
            global RNG.
        compile: run the decoding steps compiled (see ``generate``); a string names the ``torch.compile`` backend
            (default inductor).
        draft_model: a draft ``GPT`` for speculative decoding (see ``generate``).
    """

    attention_mask: Optional[Tensor]
    eos_token_id: Union[None, int, Sequence[int]]
    pad_token_id: Optional[int]
    tokenizer: Any
    generator: Optional[torch.Generator]
    compile: Union[bool, str]
    draft_model: Optional[nn.Module]


_CALL_KEYWORDS = frozenset(DecodeOptions.__annotations__) - frozenset(GenerationSettings.__annotations__)


class _LoopArgs(TypedDict):
    """The keyword arguments every decoding loop takes (``decode_n_tokens``, ``speculative_steps``, ``beam_search``)."""

    max_new_tokens: int
    stop: StopCriteria
    generator: Optional[torch.Generator]


@dataclass
class _Decoding:
    """One checked call of ``generate`` / ``stream_generate``: its settings, the prompt as decoded and what the
    decoding loops read.

    Args:
        config: the folded settings.
        input_ids: ``(N, T)`` the prompt on the model's device, each row repeated ``num_beams`` (beam search) or
            ``num_return_sequences`` times: ``N = batch_size * that``.
        attention_mask: ``(N, T)``, or ``None``.
        batch_size: the distinct prompts.
        pad: filler for finished rows.
        loop: the loops' shared keyword arguments (``max_new_tokens`` resolved against the context).
        compile: see ``generate``.
        draft_model: see ``generate``.
    """

    config: GenerationConfig
    input_ids: Tensor
    attention_mask: Optional[Tensor]
    batch_size: int
    pad: int
    loop: _LoopArgs
    compile: Union[bool, str]
    draft_model: Optional[nn.Module]

    @property
    def max_new_tokens(self) -> int:
        return self.loop["max_new_tokens"]


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
    model: nn.Module, input_ids: Tensor, config: Optional[GenerationConfig], options: DecodeOptions
) -> _Decoding:
    """The call checked (a draft model too) and folded into one ``_Decoding``, or one paragraph raised."""
    # Everything but the call's own keywords is a setting (an unknown name too: fold's error names it).
    settings: dict[str, Any] = {k: v for k, v in options.items() if k not in _CALL_KEYWORDS}
    config = GenerationConfig.fold(config, **settings)
    block_size, vocab_size = _model_config(model)
    pad_token_id = options.get("pad_token_id")
    if pad_token_id is not None and (not is_int(pad_token_id) or not 0 <= pad_token_id < vocab_size):
        raise ValueError(f"pad_token_id={pad_token_id!r} must be None or an integer in [0, {vocab_size}).")
    config.warn_ignored()
    input_ids, attention_mask = validate_prompt(input_ids, options.get("attention_mask"), vocab_size)
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
    eos = normalize_eos(options.get("eos_token_id"), vocab_size)
    expand = config.num_beams if config.num_beams > 1 else config.num_return_sequences
    if expand > 1:
        input_ids = input_ids.repeat_interleave(expand, dim=0)
        attention_mask = None if attention_mask is None else attention_mask.repeat_interleave(expand, dim=0)
    generator = options.get("generator")
    run = _Decoding(
        config,
        input_ids,
        attention_mask,
        batch_size=input_ids.size(0) // expand,
        # Hugging Face's fallback: finished rows are padded with the (first) EOS id when no pad id is given.
        pad=pad_token_id if pad_token_id is not None else (eos[0] if eos else 0),
        loop=_LoopArgs(
            max_new_tokens=max_new_tokens,
            stop=StopCriteria(eos, config.stop, options.get("tokenizer"), vocab_size),
            generator=config.make_generator(device) if generator is None and config.sampling else generator,
        ),
        compile=options.get("compile", False),
        draft_model=options.get("draft_model"),
    )
    if run.draft_model is not None:
        _check_draft(model, run.draft_model, run)
    return run


def _check_draft(model: nn.Module, draft_model: nn.Module, run: _Decoding) -> None:
    """One paragraph for a draft model that cannot assist this generation."""
    block_size, vocab_size = _model_config(draft_model)
    _, target_vocab = _model_config(model)
    rows, config = run.input_ids.size(0), run.config
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
    needed = run.input_ids.size(1) + run.max_new_tokens
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
def _decoding(model: nn.Module, run: _Decoding) -> Iterator[tuple[DecodeState, Optional[DecodeState]]]:
    """This generation's own decoding states, the target's and the draft's (or ``None``), with both models in eval
    mode; the states are freed and the modes restored on exit."""
    prompt, mask, n, draft_model = run.input_ids, run.attention_mask, run.max_new_tokens, run.draft_model
    with _eval_mode(model), _eval_mode(draft_model):
        with torch.inference_mode():  # allocated as inference tensors even where the steps run outside the mode
            # Speculative: the target's verification passes feed num_draft_tokens + 1 tokens at a time.
            verify = 0 if draft_model is None else int(run.config.num_draft_tokens) + 1
            state = DecodeState(model, prompt, mask, n, run.config.use_cache, run.compile, verify)
            draft = None
            if draft_model is not None:
                draft = DecodeState(draft_model, prompt, mask, n, True, run.compile)
        try:
            yield state, draft
        finally:
            state.close()
            if draft is not None:
                draft.close()


def _steps(
    state: DecodeState, draft: Optional[DecodeState], run: _Decoding
) -> tuple[Generator[Tensor, None, None], Tensor, Tensor]:
    """The greedy/sampling loop (or the speculative one, with a draft state) and the ``(N,)`` buffers it fills in
    place: each row's stop code and generated length."""
    reasons = torch.zeros(state.batch_size, dtype=torch.long, device=state.tokens.device)
    lengths = torch.full_like(reasons, run.max_new_tokens)
    if draft is None:
        steps = decode_n_tokens(state, run.config, pad_token_id=run.pad, reasons=reasons, lengths=lengths, **run.loop)
    else:
        steps = speculative_steps(state, draft, run.config, reasons=reasons, lengths=lengths, **run.loop)
    return steps, reasons, lengths


_Config = Optional[GenerationConfig]


# The type of what ``generate`` returns follows ``return_dict``.
@overload
def generate(
    model: nn.Module,
    input_ids: Tensor,
    config: _Config = None,
    *,
    return_dict: Literal[False] = False,
    **options: Unpack[DecodeOptions],
) -> Tensor: ...
@overload
def generate(
    model: nn.Module,
    input_ids: Tensor,
    config: _Config = None,
    *,
    return_dict: Literal[True],
    **options: Unpack[DecodeOptions],
) -> GenerateOutput: ...
@overload
def generate(
    model: nn.Module, input_ids: Tensor, config: _Config = None, *, return_dict: bool, **options: Unpack[DecodeOptions]
) -> Union[Tensor, GenerateOutput]: ...


def generate(
    model: nn.Module,
    input_ids: Tensor,
    config: Optional[GenerationConfig] = None,
    *,
    return_dict: bool = False,
    **options: Unpack[DecodeOptions],
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
        return_dict: return a ``GenerateOutput`` (with finish reasons, lengths and beam scores).
        options: ``DecodeOptions``: the fields of ``GenerationConfig`` (``max_new_tokens``, ``do_sample``,
            ``temperature``, ``top_k``, ``top_p``, ``min_p``, ``repetition_penalty``, ``num_beams``,
            ``length_penalty``, ``early_stopping``, ``num_return_sequences``, ``stop``, ``use_cache``, ``seed``,
            ``num_draft_tokens``; they override ``config``), and ``attention_mask`` (``(B, T)`` 1 for real tokens,
            0 for left padding), ``eos_token_id`` (one id or several; a row ends after generating one, which stays
            in the output), ``pad_token_id`` (filler for finished rows; default the first EOS id, or 0),
            ``tokenizer`` (for string stop sequences), ``generator`` (a seeded ``torch.Generator`` for sampling;
            default one seeded with ``config.seed``, else torch's global RNG), ``compile`` (see above; a string
            names the ``torch.compile`` backend) and ``draft_model`` (see above).

    Returns:
        ``(B * num_return_sequences, T + L)`` LongTensor of prompt + generated ids (L <= max_new_tokens), or a
        ``GenerateOutput`` when ``return_dict``.

    Raises:
        ValueError: an unknown or out-of-range setting, a bad prompt or mask, or a prompt plus ``max_new_tokens``
            longer than the context; the message names the value and the fix.
    """
    run = _prepare(model, input_ids, config, options)
    prompt, config = run.input_ids, run.config
    with torch.inference_mode(), _decoding(model, run) as (state, draft):
        if config.num_beams > 1:
            res = beam_search(state, config, batch_size=run.batch_size, pad_token_id=run.pad, **run.loop)
            keep = torch.arange(run.batch_size, device=prompt.device).repeat_interleave(config.num_return_sequences)
            sequences = torch.cat([prompt[keep * config.num_beams], res.new_tokens], dim=1)
            lengths, reasons, scores = res.lengths, res.reasons, res.scores
        else:
            steps, reasons, lengths = _steps(state, draft, run)
            for _ in steps:
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


def stream_generate(
    model: nn.Module, input_ids: Tensor, config: Optional[GenerationConfig] = None, **options: Unpack[DecodeOptions]
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
        options: ``DecodeOptions``, as for ``generate``.

    Raises:
        ValueError: as ``generate``, when called (not at the first ``next``); also for ``num_beams > 1``.
    """
    if "return_dict" in options:
        raise ValueError("stream_generate yields token ids step by step; return_dict is not supported.")
    run = _prepare(model, input_ids, config, options)
    if run.config.num_beams != 1:
        raise ValueError("stream_generate does not support beam search (num_beams > 1); use generate for beams.")
    # Arguments are checked above, at call time; the steps run lazily as the caller iterates.
    return _stream(model, run)


def _stream(model: nn.Module, run: _Decoding) -> Generator[Tensor, None, None]:
    with _decoding(model, run) as (state, draft):
        steps, _, _ = _steps(state, draft, run)
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
