"""Text-level helpers: prompts in, completions out, through a tokenizer (``encode``/``decode``, ``eos_id``...)."""

from __future__ import annotations

from typing import Any, Generator, Iterator, Optional, Sequence

import torch
from torch import Tensor, nn

from lightning_gpt.generation.config import GenerationConfig
from lightning_gpt.generation.decode import _model_config, generate, stream_generate
from lightning_gpt.generation.stopping import NOT_STOPPED, StopCriteria
from lightning_gpt.generation.validate import normalize_eos

__all__ = ["encode_prompts", "generate_text", "stream_text"]

_UNSET: Any = object()


def _encode_one(tokenizer: Any, prompt: str) -> list[int]:
    if not isinstance(prompt, str):
        raise ValueError(f"Prompts must be strings, got {type(prompt).__name__}: {prompt!r}.")
    ids = list(tokenizer.encode(prompt))
    if not ids:
        bos = getattr(tokenizer, "bos_id", None)
        if bos is None:
            raise ValueError(
                f"The prompt {prompt!r} encodes to no tokens and the tokenizer has no BOS id to start from: give a "
                "non-empty prompt."
            )
        ids = [bos]  # unconditional generation starts from BOS
    return ids


def encode_prompts(tokenizer: Any, prompts: Sequence[str], pad_id: Optional[int] = None) -> tuple[Tensor, Tensor]:
    """Encode prompts and left-pad them into a batch.

    An empty prompt becomes the tokenizer's BOS token when it has one (unconditional generation), else a ``ValueError``.

    Args:
        tokenizer: with ``encode(text) -> list[int]`` (and optionally ``bos_id``, ``pad_id``).
        prompts: the texts.
        pad_id: filler id; default the tokenizer's ``pad_id`` or 0 (the mask hides it either way).

    Returns:
        ``input_ids`` and ``attention_mask``, both ``(B, T_max)`` LongTensors, padding on the left.
    """
    if isinstance(prompts, str):
        raise ValueError("prompts must be a list of strings; wrap a single prompt as [prompt].")
    if len(prompts) == 0:
        raise ValueError("prompts is empty: give at least one prompt.")
    encoded = [_encode_one(tokenizer, p) for p in prompts]
    if pad_id is None:
        pad_id = getattr(tokenizer, "pad_id", None)
        pad_id = 0 if pad_id is None else pad_id
    T = max(len(ids) for ids in encoded)
    input_ids = torch.full((len(encoded), T), pad_id, dtype=torch.long)
    mask = torch.zeros((len(encoded), T), dtype=torch.long)
    for i, ids in enumerate(encoded):
        input_ids[i, T - len(ids) :] = torch.tensor(ids, dtype=torch.long)
        mask[i, T - len(ids) :] = 1
    return input_ids, mask


_CALL_ARGS = ("eos_token_id", "pad_token_id", "tokenizer", "generator", "return_dict", "compile", "draft_model")


def _fold(
    tokenizer: Any, config: Optional[GenerationConfig], gen_kwargs: dict[str, Any]
) -> tuple[GenerationConfig, dict]:
    """Split keyword arguments into the one ``GenerationConfig`` and the per-call ones (EOS/pad from the tokenizer)."""
    settings = dict(gen_kwargs)
    call = {k: settings.pop(k) for k in _CALL_ARGS if k in settings}
    config = GenerationConfig.fold(config, **settings)
    if call.get("eos_token_id", _UNSET) is _UNSET:
        call["eos_token_id"] = getattr(tokenizer, "eos_id", None)
    if call.get("pad_token_id") is None:
        call["pad_token_id"] = getattr(tokenizer, "pad_id", None)
    if config.stop is not None:
        call.setdefault("tokenizer", tokenizer)
    return config, call


def _stop_strings(stop: Any) -> list[str]:
    if stop is None:
        return []
    if isinstance(stop, str):
        return [stop]
    return [s for s in stop if isinstance(s, str)]


def _cut_at_stop(text: str, stops: list[str]) -> tuple[str, bool]:
    cut = min((i for i in (text.find(s) for s in stops) if i >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


def generate_text(
    model: nn.Module,
    tokenizer: Any,
    prompts: Sequence[str],
    config: Optional[GenerationConfig] = None,
    *,
    batch_size: Optional[int] = None,
    **gen_kwargs: Any,
) -> list[dict[str, Any]]:
    """Complete text prompts; one result dict per returned sequence.

    Defaults taken from the tokenizer: ``eos_token_id`` (its ``eos_id``; pass ``eos_token_id=None`` to ignore EOS)
    and ``pad_token_id`` (its ``pad_id``). String stop sequences are matched on the decoded completion and cut from
    it: generation ends at the step whose token completes a stop string (even one spanning several byte-level
    tokens), ``tokens`` ends with that token and ``completion`` is their text up to the stop string, so
    ``tokenizer.decode(tokens)`` starts with ``completion``.

    Args:
        model: a ``GPT`` (see ``generate``).
        tokenizer: with ``encode``, ``decode``, ``eos_id``, ``bos_id``, ``pad_id`` (``lightning_gpt.data.Tokenizer``).
        prompts: the texts to continue.
        config: the decoding settings (see ``generate``); ``max_new_tokens=None`` fills the model's context after
            the longest prompt of each batch.
        batch_size: prompts decoded together (left-padded); default all at once.
        gen_kwargs: fields of ``GenerationConfig`` (they override ``config``) and the other keyword arguments of
            ``generate`` (``eos_token_id``, ``pad_token_id``, ``generator``).

    Returns:
        ``len(prompts) * num_return_sequences`` dicts with keys ``prompt``, ``completion`` (decoded new text),
        ``tokens`` (new token ids, EOS included when generated) and ``finish_reason`` (``"length"``, ``"eos"`` or
        ``"stop"``).

    Raises:
        ValueError: bad prompts, settings or ``batch_size`` (see ``generate``).
    """
    if isinstance(prompts, str):
        raise ValueError("prompts must be a list of strings; wrap a single prompt as [prompt].")
    if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
        raise ValueError(f"batch_size must be None or a positive integer, got {batch_size!r}.")
    config, call = _fold(tokenizer, config, gen_kwargs)
    call.pop("return_dict", None)
    if call.get("generator") is None and config.sampling and config.seed is not None:
        # One generator for every batch: batches continue one random stream instead of repeating it.
        call["generator"] = config.make_generator(next(model.parameters()).device)
    stops = _stop_strings(config.stop)
    n_ret = config.num_return_sequences
    chunk = batch_size or max(len(prompts), 1)
    results: list[dict[str, Any]] = []
    for start in range(0, len(prompts), chunk):
        batch = list(prompts[start : start + chunk])
        input_ids, mask = encode_prompts(tokenizer, batch, call.get("pad_token_id"))
        out = generate(model, input_ids, config, attention_mask=mask, return_dict=True, **call)
        for i, (tokens, reason) in enumerate(zip(out.new_tokens, out.finish_reasons)):
            completion, stopped = _cut_at_stop(tokenizer.decode(tokens), stops)
            results.append(
                {
                    "prompt": batch[i // n_ret],
                    "completion": completion,
                    "tokens": tokens,
                    "finish_reason": "stop" if stopped and reason != "eos" else reason,
                }
            )
    return results


def _held_back(text: str, stops: list[str]) -> int:
    """Length of the longest suffix of ``text`` that could still grow into a stop string."""
    hold = 0
    for s in stops:
        for n in range(min(len(s) - 1, len(text)), hold, -1):
            if text.endswith(s[:n]):
                hold = n
                break
    return hold


def stream_text(
    model: nn.Module,
    tokenizer: Any,
    prompt: str,
    config: Optional[GenerationConfig] = None,
    *,
    slide: bool = False,
    **gen_kwargs: Any,
) -> Iterator[str]:
    """Yield the completion of one prompt as text pieces, as the tokens are produced.

    Incomplete UTF-8 (a trailing replacement character) and text that may be the start of a stop string are held
    back until resolved; the stream ends before a stop string. Greedy or sampling only (no beams). Arguments are
    checked when ``stream_text`` is called; decoding runs as the caller iterates.

    Args:
        model: a ``GPT`` (see ``generate``).
        tokenizer: as for ``generate_text``.
        prompt: the text to continue.
        config: the decoding settings (see ``generate``); ``max_new_tokens=None`` fills the context after the prompt.
        slide: go on past the model's context: when it is full, continue from the last ``block_size // 2`` token
            ids (as nanoGPT crops its context; each window re-uses its own cache). Windows are cut on token ids, never
            on decoded text, and EOS or a stop sequence ends the stream even across a window's edge.
        gen_kwargs: fields of ``GenerationConfig`` (they override ``config``) and ``eos_token_id``,
            ``pad_token_id``, ``generator``.

    Raises:
        ValueError: a bad prompt or setting (see ``generate``); ``num_return_sequences`` other than 1.
    """
    if not isinstance(prompt, str):
        raise ValueError(f"stream_text takes one prompt string, got {type(prompt).__name__}; see generate_text.")
    config, call = _fold(tokenizer, config, gen_kwargs)
    if config.num_return_sequences != 1:
        raise ValueError("stream_text streams one sequence: num_return_sequences must be 1.")
    stops = _stop_strings(config.stop)
    ids = _encode_one(tokenizer, prompt)
    block_size, vocab_size = _model_config(model)
    if not slide or config.max_new_tokens is None or len(ids) + config.max_new_tokens <= block_size:
        steps = stream_generate(model, torch.tensor([ids], dtype=torch.long), config, **call)
    else:
        if call.get("generator") is None and config.sampling and config.seed is not None:
            call["generator"] = config.make_generator(next(model.parameters()).device)
        criteria = StopCriteria(normalize_eos(call.get("eos_token_id"), vocab_size), config.stop, tokenizer, vocab_size)
        steps = _windowed_steps(model, ids, config, call, block_size, criteria)
        next(steps)  # check every argument now (the first window's stream_generate call), not at the first piece
    return _text_pieces(steps, tokenizer, stops)


def _windowed_steps(
    model: nn.Module, ids: list[int], config: GenerationConfig, call: dict[str, Any], block: int, stop: StopCriteria
) -> Generator[Tensor, None, None]:
    """``stream_generate`` over sliding windows of token ids; yields once (nothing) first, after checking arguments."""
    assert config.max_new_tokens is not None  # only a bounded stream slides (see stream_text)
    context, generated, remaining = list(ids), [], int(config.max_new_tokens)
    first = True
    while remaining > 0:
        if len(context) >= block:
            context = context[-(block // 2) :]
        n = min(remaining, block - len(context))
        steps = stream_generate(model, torch.tensor([context], dtype=torch.long), config, max_new_tokens=n, **call)
        if first:
            first = False
            yield torch.empty(0, dtype=torch.long)
        for next_ids in steps:
            token = int(next_ids[0])
            context.append(token)
            generated.append(token)
            remaining -= 1
            yield next_ids
            # EOS or a stop sequence, judged on every generated id so far (across windows): the end.
            if stop.active and int(stop(torch.tensor([generated]))[0]) != NOT_STOPPED:
                steps.close()
                return


def _text_pieces(steps: Generator[Tensor, None, None], tokenizer: Any, stops: list[str]) -> Iterator[str]:
    tokens: list[int] = []
    emitted = 0
    text = ""
    for next_ids in steps:
        tokens.append(int(next_ids[0]))
        text = tokenizer.decode(tokens)
        text, stopped = _cut_at_stop(text, stops)
        if stopped:
            steps.close()
            break
        # An incomplete UTF-8 sequence at the end decodes to replacement characters: hold it back first, then hold
        # back whatever before it could still grow into a stop string.
        stable = len(text)
        while stable > emitted and text[stable - 1] == "\ufffd":
            stable -= 1
        safe = stable - _held_back(text[:stable], stops)
        if safe > emitted:
            yield text[emitted:safe]
            emitted = safe
    if len(text) > emitted:
        yield text[emitted:]
