"""Log-likelihood scoring through ``GPT.forward``: continuations given contexts, and whole texts in rolling windows.

The window rules are lm-evaluation-harness's (``lm_eval.utils.get_rolling_token_windows`` with ``context_len=1`` and
``make_disjoint_window``; ``HFLM._loglikelihood_tokens`` for the input of a pair), restated here so that the text mode
of ``lightning-gpt evaluate`` needs no ``lm_eval`` and gives the numbers ``lm_eval`` gives:

* a text's first token is predicted from a prefix token (BOS, else EOS); each window is at most ``block_size``
  tokens and predicts tokens no other window predicts, with as much preceding context as fits;
* a (context, continuation) pair runs ``(context + continuation)[-(block_size + 1):][:-1]`` and scores the last
  ``len(continuation)`` positions.

Rows of a batch are right-padded: every attention kind is causal, so padding after a row's tokens changes none of its
logits. Log-probabilities are taken in float32 over the tokenizer's ids only (a padded vocabulary table's extra rows
are not tokens).
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from lightning_gpt.model import GPT

__all__ = ["loglikelihood_tokens", "rolling_windows"]

Pair = tuple[list[int], list[int]]  # (context ids, continuation ids)


def rolling_windows(ids: Sequence[int], prefix_id: int, block_size: int) -> list[Pair]:
    """Disjoint windows that together predict every id of ``ids`` once: lm-eval's rolling windows.

    Args:
        ids: the token ids of one text.
        prefix_id: the id the first token is predicted from (BOS, else EOS).
        block_size: the model's context length.

    Returns:
        ``(context, continuation)`` pairs for ``loglikelihood_tokens``; the continuations concatenate to ``ids``.
    """
    ids = list(ids)
    if not ids:
        return []
    first = min(block_size, len(ids))
    windows = [([prefix_id], ids[:first])]
    predicted = first
    while predicted < len(ids):
        n = min(len(ids) - predicted, block_size)
        end = predicted + n
        windows.append((ids[end - block_size - 1 : end - n], ids[end - n : end]))
        predicted = end
    return windows


@torch.no_grad()
def loglikelihood_tokens(
    model: GPT, pairs: Sequence[Pair], batch_size: int = 8, n_real: Optional[int] = None
) -> list[tuple[float, bool]]:
    """``log p(continuation | context)`` and whether greedy decoding would produce the continuation, per pair.

    Args:
        model: a ``GPT`` (its ``config.block_size`` bounds the input; it is put in eval mode).
        pairs: ``(context ids, continuation ids)``; each continuation non-empty and at most ``block_size`` long, and
            the context non-empty.
        batch_size: rows per forward pass (sorted longest first, so a batch holds rows of similar length).
        n_real: the ids that are tokens (default ``model.config.vocab_size``); log-softmax runs over these only.

    Returns:
        ``(sum of log-probabilities in nats, is_greedy)`` per pair, in the order given.

    Raises:
        ValueError: an empty context or continuation, a continuation longer than the context window, or an id outside
            the vocabulary.
    """
    config = model.config
    block = int(config.block_size)
    n_real = int(config.vocab_size if n_real is None else n_real)
    inputs: list[tuple[list[int], list[int]]] = []
    for context, continuation in pairs:
        if not context or not continuation or len(continuation) > block:
            raise ValueError(
                f"Cannot score a continuation of {len(continuation)} tokens after a context of {len(context)}: both "
                f"must be non-empty and the continuation at most block_size={block} tokens."
            )
        ids = (list(context) + list(continuation))[-(block + 1) :]
        bad = [i for i in ids if not 0 <= i < n_real]
        if bad:
            raise ValueError(
                f"Token id {bad[0]} is outside the model's vocabulary [0, {n_real}): the text was encoded with "
                "another tokenizer than the model's."
            )
        inputs.append((ids[:-1], list(continuation)))
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    order = sorted(range(len(inputs)), key=lambda i: -len(inputs[i][0]))
    results: list[tuple[float, bool]] = [(0.0, False)] * len(inputs)
    try:
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            T = max(len(inputs[i][0]) for i in rows)
            idx = torch.zeros((len(rows), T), dtype=torch.long)
            for r, i in enumerate(rows):
                idx[r, : len(inputs[i][0])] = torch.tensor(inputs[i][0])
            logits = model(idx.to(device))  # (B, T, V_padded)
            logprobs = F.log_softmax(logits[..., :n_real].float(), dim=-1)  # (B, T, V)
            for r, i in enumerate(rows):
                inp, cont = inputs[i]
                pos = torch.arange(len(inp) - len(cont), len(inp), device=device)  # the continuation's predictors
                lp = logprobs[r, pos]  # (len(cont), V)
                target = torch.tensor(cont, device=device)
                total = float(lp.gather(1, target[:, None]).sum())
                results[i] = (total, bool((lp.argmax(-1) == target).all()))
    finally:
        model.train(was_training)
    return results
