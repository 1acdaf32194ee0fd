"""``generate_until`` of the lm-eval adapter on ``lightning_gpt.generation.generate``.

As lm-eval's ``HFLM.generate_until``: requests are grouped by their generation settings; each context is encoded and
left-truncated to ``block_size - max_gen_toks`` tokens; a batch is left-padded and decoded together (greedy unless the
task sets ``do_sample`` with a temperature above 0); the text is cut at the first ``until`` string. EOS ends a row.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from lightning_gpt.generation import GenerateOutput, GenerationConfig, generate
from lightning_gpt.generation.text import _cut_at_stop

__all__ = ["generate_until"]

log = logging.getLogger(__name__)
_SAMPLING_KEYS = ("temperature", "top_k", "top_p", "min_p", "repetition_penalty")


def _settings(gen_kwargs: dict[str, Any], default_max: int, block: int) -> tuple[GenerationConfig, list[str]]:
    kwargs = dict(gen_kwargs)
    until = kwargs.pop("until", None)
    until = [until] if isinstance(until, str) else [u for u in (until or []) if u]
    max_gen = int(kwargs.pop("max_gen_toks", default_max))
    if max_gen >= block:
        log.warning(
            "max_gen_toks=%d does not leave room for a context in block_size=%d; generating %d tokens instead.",
            max_gen,
            block,
            block - 1,
        )
        max_gen = block - 1
    temperature = float(kwargs.pop("temperature", 0.0) or 0.0)
    do_sample = bool(kwargs.pop("do_sample", temperature > 0)) and temperature > 0
    sampling = {k: kwargs.pop(k) for k in _SAMPLING_KEYS if k in kwargs} if do_sample else {}
    for name in ("max_length", "num_beams"):
        kwargs.pop(name, None)
    if kwargs:
        log.warning("generate_until ignores the generation settings %s", sorted(kwargs))
    config = GenerationConfig(
        max_new_tokens=max_gen,
        do_sample=do_sample,
        temperature=temperature if do_sample else 1.0,
        stop=list(until) or None,
        **sampling,
    )
    return config, until


def generate_until(lm: Any, requests: list[Any]) -> list[str]:
    """The continuation of each request's context (``request.args == (context, gen_kwargs)``), cut at ``until``.

    Args:
        lm: the ``LightningGPTLM`` (its model, tokenizer, batch size, ``max_gen_toks``).
        requests: lm-eval ``Instance``s.

    Returns:
        One string per request, in order.
    """
    model, tokenizer = lm.model, lm.tokenizer
    block = int(model.config.block_size)
    results: list[str] = [""] * len(requests)
    groups: dict[str, list[int]] = {}
    for i, request in enumerate(requests):
        groups.setdefault(repr(sorted(request.args[1].items(), key=str)), []).append(i)
    pad = tokenizer.pad_id if tokenizer.pad_id is not None else 0
    for indices in groups.values():
        config, until = _settings(dict(requests[indices[0]].args[1]), lm.max_gen_toks, block)
        room = block - int(config.max_new_tokens or 1)
        encoded = {i: lm.tok_encode(requests[i].args[0])[-room:] or [lm.prefix_token_id] for i in indices}
        order = sorted(indices, key=lambda i: -len(encoded[i]))
        for start in range(0, len(order), lm.batch_size):
            rows = order[start : start + lm.batch_size]
            T = max(len(encoded[i]) for i in rows)
            input_ids = torch.full((len(rows), T), pad, dtype=torch.long)
            mask = torch.zeros((len(rows), T), dtype=torch.long)
            for r, i in enumerate(rows):
                input_ids[r, T - len(encoded[i]) :] = torch.tensor(encoded[i])
                mask[r, T - len(encoded[i]) :] = 1
            out = generate(
                model,
                input_ids,
                config,
                attention_mask=mask,
                eos_token_id=tokenizer.eos_id,
                pad_token_id=tokenizer.pad_id,
                tokenizer=tokenizer if config.stop else None,
                return_dict=True,
            )
            assert isinstance(out, GenerateOutput)  # return_dict=True
            for i, tokens in zip(rows, out.new_tokens):
                text, _ = _cut_at_stop(tokenizer.decode(tokens), until)
                results[i] = text
                lm.cache_hook.add_partial("generate_until", requests[i].args, text)
    return results
