"""``generate`` and ``stream_generate``: the public decoding entry points (Hugging Face ``generate`` semantics)."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Iterator, Optional, Sequence, Union

import torch
from torch import Tensor, nn

from lightning_gpt.generation.beam import beam_search
from lightning_gpt.generation.sampling import DecodeState, sample_steps
from lightning_gpt.generation.stopping import FINISH_REASONS, StopCriteria, StopSpec
from lightning_gpt.generation.validate import normalize_eos, validate_generate_args, validate_prompt

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
def _eval_mode(model: nn.Module) -> Iterator[None]:
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
    *,
    max_new_tokens: int,
    temperature: float,
    top_k: Optional[int],
    top_p: Optional[float],
    min_p: Optional[float],
    repetition_penalty: float,
    do_sample: bool,
    num_beams: int,
    length_penalty: float,
    early_stopping: Union[bool, str],
    num_return_sequences: int,
    eos_token_id: Union[None, int, Sequence[int]],
    pad_token_id: Optional[int],
    attention_mask: Optional[Tensor],
    stop: StopSpec,
    tokenizer: Any,
) -> dict[str, Any]:
    block_size, vocab_size = _model_config(model)
    validate_generate_args(
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        min_p=min_p,
        repetition_penalty=repetition_penalty,
        do_sample=do_sample,
        num_beams=num_beams,
        length_penalty=length_penalty,
        early_stopping=early_stopping,
        num_return_sequences=num_return_sequences,
        pad_token_id=pad_token_id,
        vocab_size=vocab_size,
    )
    input_ids, attention_mask = validate_prompt(input_ids, attention_mask, vocab_size)
    device = next(model.parameters()).device
    input_ids = input_ids.to(device)
    attention_mask = None if attention_mask is None else attention_mask.to(device)
    T0 = input_ids.size(1)
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
    criteria = StopCriteria(eos, stop, tokenizer, vocab_size)
    # Hugging Face's fallback: finished rows are padded with the (first) EOS id when no pad id is given.
    pad = pad_token_id if pad_token_id is not None else (eos[0] if eos else 0)
    sampling = do_sample and temperature > 0
    expand = num_beams if num_beams > 1 else num_return_sequences
    if expand > 1:
        input_ids = input_ids.repeat_interleave(expand, dim=0)
        attention_mask = None if attention_mask is None else attention_mask.repeat_interleave(expand, dim=0)
    return dict(
        input_ids=input_ids,
        attention_mask=attention_mask,
        stop=criteria,
        pad=pad,
        sampling=sampling,
        batch_size=input_ids.size(0) // expand,
    )


def generate(
    model: nn.Module,
    input_ids: Tensor,
    *,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: Optional[int] = None,
    top_p: Optional[float] = None,
    min_p: Optional[float] = None,
    repetition_penalty: float = 1.0,
    do_sample: bool = False,
    num_beams: int = 1,
    length_penalty: float = 1.0,
    early_stopping: Union[bool, str] = False,
    num_return_sequences: int = 1,
    eos_token_id: Union[None, int, Sequence[int]] = None,
    pad_token_id: Optional[int] = None,
    attention_mask: Optional[Tensor] = None,
    stop: StopSpec = None,
    tokenizer: Any = None,
    use_cache: bool = True,
    generator: Optional[torch.Generator] = None,
    return_dict: bool = False,
) -> Union[Tensor, GenerateOutput]:
    """Continue prompts with a GPT; keyword names and semantics follow Hugging Face ``generate``.

    Strategies: greedy (``do_sample=False``, the default, as in Hugging Face); sampling (``do_sample=True``) from
    ``softmax(processed logits)`` with one ``torch.multinomial`` draw per row and step (``temperature=0`` means greedy);
    beam search (``num_beams > 1``), and beam sampling (``num_beams > 1`` with ``do_sample=True``). Logits go through
    repetition penalty -> temperature -> top-k -> top-p -> min-p (the last four only when sampling). The prompt is
    prefilled in one call and every further step feeds one token per row through each layer's cache
    (``use_cache=False`` reruns the whole sequence each step, same tokens).

    Context policy: the (padded) prompt length plus ``max_new_tokens`` must fit in ``model.config.block_size``,
    otherwise a ``ValueError`` says how much to crop; nothing is cropped silently.

    Runs under ``torch.inference_mode()`` with the model in eval mode (its mode is restored afterwards).

    Args:
        model: a ``lightning_gpt.GPT`` (or any model with ``config.block_size``/``vocab_size`` and the cache protocol).
        input_ids: ``(B, T)`` (or ``(T,)``) prompt ids; rows of different lengths are LEFT-padded.
        max_new_tokens: most tokens generated per row.
        temperature: divides the logits when sampling; must be >= 0, 0 means greedy.
        top_k: keep the k most likely tokens (ties at the k-th value kept); None/0 disables.
        top_p: nucleus sampling mass in (0, 1]; the token that crosses ``top_p`` is kept; None/1 disables.
        min_p: drop tokens less likely than ``min_p`` x the top probability; None/0 disables.
        repetition_penalty: > 0; seen tokens' logits divided (if > 0) or multiplied (if < 0) by it; 1 disables.
        do_sample: sample instead of greedy/beam search. Default False (Hugging Face's default).
        num_beams: beam width; 1 means no beam search. With ``do_sample=True`` it is Hugging Face's beam sampling
            (continuations drawn from the processed distribution instead of taken greedily).
        length_penalty: beam search: a finished hypothesis scores ``sum(log p) / generated_length ** length_penalty``.
        early_stopping: beam search stopping rule: True, False (heuristic) or ``"never"`` (see ``beam.py``).
        num_return_sequences: rows returned per prompt (beams, or independent samples when sampling).
        eos_token_id: one id or several; a row ends after generating one (it stays in the output).
        pad_token_id: filler for finished rows; defaults to the first EOS id (or 0).
        attention_mask: ``(B, T)`` 1 for real tokens, 0 for left padding.
        stop: stop sequences: a string or token-id list, or a list of them. Strings need ``tokenizer`` and are
            matched on the decoded generated text; id lists are matched on the generated ids.
        tokenizer: for string stop sequences (anything with ``decode(ids) -> str``).
        use_cache: decode through the caches (True) or rerun the full sequence each step (False).
        generator: a seeded ``torch.Generator`` for sampling; the global RNG otherwise.
        return_dict: return a ``GenerateOutput`` (with finish reasons, lengths and beam scores).

    Returns:
        ``(B * num_return_sequences, T + L)`` LongTensor of prompt + generated ids (L <= max_new_tokens), or a
        ``GenerateOutput`` when ``return_dict``.
    """
    prep = _prepare(
        model,
        input_ids,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        min_p=min_p,
        repetition_penalty=repetition_penalty,
        do_sample=do_sample,
        num_beams=num_beams,
        length_penalty=length_penalty,
        early_stopping=early_stopping,
        num_return_sequences=num_return_sequences,
        eos_token_id=eos_token_id,
        pad_token_id=pad_token_id,
        attention_mask=attention_mask,
        stop=stop,
        tokenizer=tokenizer,
    )
    prompt = prep["input_ids"]
    with torch.inference_mode(), _eval_mode(model):
        state = DecodeState(model, prompt, prep["attention_mask"], max_new_tokens, use_cache)
        try:
            if num_beams > 1:
                res = beam_search(
                    state,
                    batch_size=prep["batch_size"],
                    num_beams=num_beams,
                    max_new_tokens=max_new_tokens,
                    length_penalty=float(length_penalty),
                    early_stopping=early_stopping,
                    num_return_sequences=num_return_sequences,
                    repetition_penalty=float(repetition_penalty),
                    stop=prep["stop"],
                    pad_token_id=prep["pad"],
                    do_sample=prep["sampling"],
                    temperature=float(temperature),
                    top_k=top_k,
                    top_p=top_p,
                    min_p=min_p,
                    generator=generator,
                )
                keep = torch.arange(prep["batch_size"], device=prompt.device).repeat_interleave(num_return_sequences)
                sequences = torch.cat([prompt[keep * num_beams], res.new_tokens], dim=1)
                lengths, reasons, scores = res.lengths, res.reasons, res.scores
            else:
                reasons = torch.zeros(prompt.size(0), dtype=torch.long, device=prompt.device)
                lengths = torch.full_like(reasons, max_new_tokens)
                for _ in sample_steps(
                    state,
                    max_new_tokens=max_new_tokens,
                    do_sample=prep["sampling"],
                    temperature=float(temperature),
                    top_k=top_k,
                    top_p=top_p,
                    min_p=min_p,
                    repetition_penalty=float(repetition_penalty),
                    stop=prep["stop"],
                    pad_token_id=prep["pad"],
                    generator=generator,
                    reasons=reasons,
                    lengths=lengths,
                ):
                    pass
                sequences = state.tokens[:, : state.length].clone()
                sequences[:, : state.prompt_len] = prompt
                scores = None
        finally:
            state.close()
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
    model: nn.Module,
    input_ids: Tensor,
    **kwargs: Any,
) -> Iterator[Tensor]:
    """Yield the next ids ``(N,)`` of every row at each step, as they are produced (greedy or sampling).

    Takes the same keyword arguments as ``generate`` except ``num_beams`` (must be 1) and ``return_dict``. Rows that
    already finished yield the pad id; the iteration ends when every row has finished or after ``max_new_tokens``.
    The model is in eval mode while the stream is open; each step runs under ``torch.inference_mode()``.

    Args:
        model: see ``generate``.
        input_ids: see ``generate``.
        kwargs: the keyword arguments of ``generate``.
    """
    if kwargs.get("num_beams", 1) != 1:
        raise ValueError("stream_generate does not support beam search (num_beams > 1); use generate for beams.")
    if kwargs.pop("return_dict", False):
        raise ValueError("stream_generate yields token ids step by step; return_dict is not supported.")
    use_cache = kwargs.pop("use_cache", True)
    generator = kwargs.pop("generator", None)
    max_new_tokens = kwargs.pop("max_new_tokens", None)
    if max_new_tokens is None:
        raise ValueError("stream_generate needs max_new_tokens.")
    defaults = dict(
        temperature=1.0,
        top_k=None,
        top_p=None,
        min_p=None,
        repetition_penalty=1.0,
        do_sample=False,
        num_beams=1,
        length_penalty=1.0,
        early_stopping=False,
        num_return_sequences=1,
        eos_token_id=None,
        pad_token_id=None,
        attention_mask=None,
        stop=None,
        tokenizer=None,
    )
    unknown = sorted(set(kwargs) - set(defaults))
    if unknown:
        raise ValueError(f"Unknown stream_generate argument(s) {unknown}; known: {sorted(defaults)}.")
    args = {**defaults, **kwargs}
    prep = _prepare(model, input_ids, max_new_tokens=max_new_tokens, **args)
    # Arguments are checked above, at call time; the steps run lazily as the caller iterates.
    return _stream(model, prep, args, max_new_tokens, use_cache, generator)


def _stream(
    model: nn.Module,
    prep: dict[str, Any],
    args: dict[str, Any],
    max_new_tokens: int,
    use_cache: bool,
    generator: Optional[torch.Generator],
) -> Iterator[Tensor]:
    with _eval_mode(model):
        with torch.inference_mode():
            state = DecodeState(model, prep["input_ids"], prep["attention_mask"], max_new_tokens, use_cache)
        reasons = torch.zeros(state.batch_size, dtype=torch.long, device=state.tokens.device)
        lengths = torch.full_like(reasons, max_new_tokens)
        steps = sample_steps(
            state,
            max_new_tokens=max_new_tokens,
            do_sample=prep["sampling"],
            temperature=float(args["temperature"]),
            top_k=args["top_k"],
            top_p=args["top_p"],
            min_p=args["min_p"],
            repetition_penalty=float(args["repetition_penalty"]),
            stop=prep["stop"],
            pad_token_id=prep["pad"],
            generator=generator,
            reasons=reasons,
            lengths=lengths,
        )
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
            state.close()
