"""Speculative decoding (assisted generation): a small draft model proposes ``num_draft_tokens`` tokens, the target
model scores them all in one forward pass and keeps the longest acceptable prefix plus one token of its own.

The acceptance rule is the one of Leviathan et al. 2023 ("Fast Inference from Transformers via Speculative
Decoding", ICML, Algorithm 1) and Chen et al. 2023 ("Accelerating Large Language Model Decoding with Speculative
Sampling", Algorithm 2): draft token ``d_i`` drawn from ``q_i`` is kept with probability ``min(1, p_i(d_i) /
q_i(d_i))``; at the first rejection a token is drawn from ``norm(max(0, p_i - q_i))``; when every draft is kept, one
more is drawn from ``p_{k+1}``. The output then has exactly the target's distribution ``p`` (the processed one:
temperature, top-k/p, min-p, repetition penalty). Greedy decoding keeps drafts while they equal the target's argmax,
so the output is token for token the target's own greedy output.

Each model owns its ``DecodeState``. A key/value cache forgets rejected drafts for free (entries past the accepted
length are masked and later overwritten, ``AttentionCore.rollback_free``); a state that folds tokens in (linear
attention's sums, the ``local`` rolling window) is snapshotted before a round and, when drafts are rejected, restored
and re-fed the accepted tokens at the start of the next round.
"""

from __future__ import annotations

from typing import Generator, Optional

import torch
from torch import Tensor

from lightning_gpt.generation.config import GenerationConfig
from lightning_gpt.generation.processors import process_logits
from lightning_gpt.generation.sampling import DecodeState
from lightning_gpt.generation.stopping import NOT_STOPPED, StopCriteria

__all__ = ["accept_drafts", "speculative_steps"]


def accept_drafts(
    p: Tensor, q: Optional[Tensor], drafts: Tensor, generator: Optional[torch.Generator] = None
) -> tuple[int, int]:
    """How many drafts to keep, and the token that follows them (one row).

    Args:
        p: ``(k + 1, V)`` the target's probabilities at the ``k`` draft positions and after the last draft.
        q: ``(k, V)`` the draft's probabilities its tokens were drawn from; ``None``: greedy (keep while the draft
            equals ``argmax p``, then ``argmax p``).
        drafts: ``(k,)`` the drafted ids.
        generator: RNG for the acceptance draws and the replacement token.

    Returns:
        ``(n, token)``: the first ``n`` drafts are kept, then ``token`` (``0 <= n <= k``).
    """
    k = drafts.numel()
    if q is None:
        best = p.argmax(dim=-1)  # (k + 1,)
        same = (best[:k] == drafts).tolist()
        n = same.index(False) if False in same else k
        return n, int(best[n])
    rows = torch.arange(k, device=p.device)
    ratio = p[rows, drafts] / q[rows, drafts]  # (k,); q(d) > 0: d was drawn from q
    u = torch.rand(k, generator=generator, device=p.device)
    accepted = (u < ratio).tolist()
    n = accepted.index(False) if False in accepted else k
    if n == k:
        dist = p[k]
    else:
        dist = (p[n] - q[n]).clamp(min=0)
        if float(dist.sum()) <= 0:  # p == q up to rounding: a rejection then has probability ~0; sample p
            dist = p[n]
    token = torch.multinomial(dist / dist.sum(), 1, generator=generator)
    return n, int(token)


def _scores(state: DecodeState, logits: Tensor, first: int, config: GenerationConfig) -> Tensor:
    """Processed scores ``(m, V)`` of one row's logits ``(m, V)`` whose i-th row predicts buffer position
    ``first + i`` (the repetition penalty sees the tokens before that position)."""
    penalize = float(config.repetition_penalty) != 1.0
    if not (penalize or config.sampling):
        return logits
    out = []
    for i in range(logits.size(0)):
        prev = state.tokens[:, : first + i]
        out.append(
            process_logits(
                logits[i : i + 1],
                previous_ids=prev if penalize else None,
                previous_valid=None if state.mask is None else state.mask[:, : first + i],
                repetition_penalty=float(config.repetition_penalty),
                do_sample=config.sampling,
                temperature=float(config.temperature),
                top_k=config.top_k,
                top_p=config.top_p,
                min_p=config.min_p,
            )
        )
    return torch.cat(out)


def speculative_steps(
    target: DecodeState,
    draft: DecodeState,
    config: GenerationConfig,
    *,
    max_new_tokens: int,
    stop: StopCriteria,
    generator: Optional[torch.Generator],
    reasons: Tensor,
    lengths: Tensor,
) -> Generator[Tensor, None, None]:
    """Speculative decoding of one row: yields each new id ``(1,)`` as it is accepted (like ``decode_n_tokens``).

    Args:
        target: the target model's fresh ``DecodeState`` (batch 1).
        draft: the draft model's fresh ``DecodeState`` on the same prompt.
        config: the decoding settings; ``num_draft_tokens`` drafts per round.
        max_new_tokens: most tokens to generate.
        stop: EOS / stop-sequence rules.
        generator: RNG for sampling.
        reasons: ``(1,)`` stop code, filled in place.
        lengths: ``(1,)`` generated length, filled in place when the row stops early.

    Records ``target.drafted`` / ``target.accepted`` (counts of drafts proposed and kept) for the acceptance rate.
    """
    sampling = config.sampling
    plain_greedy = not sampling and float(config.repetition_penalty) == 1.0
    K = int(config.num_draft_tokens)
    target.drafted = target.accepted = 0  # type: ignore[attr-defined]
    logits = target.prefill()  # (1, V)
    if draft.length > 1:
        draft.feed(draft.length - 1)  # the prompt but its last token: each round starts by feeding the unfed ones
    scores = _scores(target, logits, target.length, config)
    token = int(torch.multinomial(scores.softmax(-1), 1, generator=generator)) if sampling else int(scores.argmax())
    produced = 0
    while True:
        # Commit `token` (and check the stop rules) ...
        t = torch.tensor([token], device=target.tokens.device)
        target.append(t)
        draft.append(t)
        produced += 1
        yield t
        code = int(stop(target.new_tokens)[0]) if stop.active else NOT_STOPPED
        if code != NOT_STOPPED or produced >= max_new_tokens:
            if code != NOT_STOPPED:
                reasons[0], lengths[0] = code, produced
            return
        # ... then draft up to k tokens (leaving room for the target's own token after them) ...
        k = min(K, max_new_tokens - produced - 1)
        L = target.length  # committed tokens; the last one is not fed to either model yet
        d_saved = None if draft.cache is None or draft.rollback_free else (draft.snapshot(), draft.fed)
        t_saved = None if target.cache is None or target.rollback_free else (target.snapshot(), target.fed)
        drafts, q_rows = [], []
        if k and draft.length - draft.fed > 1:  # (all drafts kept last round) one-token steps only: the compiled ones
            draft.feed(draft.length - 1)
        for _ in range(k):
            if plain_greedy:  # the argmax ids (1,), taken inside the (compiled) step
                d = draft.feed(draft.length, greedy=True)
            else:
                d_logits = draft.feed(draft.length)[:, -1]  # (1, V): predicts position draft.length
                d_scores = _scores(draft, d_logits, draft.length, config)
                if sampling:
                    q_i = d_scores.softmax(-1)
                    d = torch.multinomial(q_i, 1, generator=generator).view(1)
                    q_rows.append(q_i)
                else:
                    d = d_scores.argmax(dim=-1)
            drafts.append(d)
            draft.append(d)
        target.tokens[:, L : L + k] = draft.tokens[:, L : L + k]  # (the drafts, in one copy)
        target.length += k
        # ... the target scores the k drafts and one more position in one forward pass ...
        t_logits = target.feed(target.length, keep=k + 1)[0]  # (k + 1, V): predicts positions L .. L + k
        p = _scores(target, t_logits, L, config)
        p = p.softmax(-1) if sampling else p
        d_ids = draft.tokens[0, L : L + k]  # (k,)
        n, token = accept_drafts(p, torch.cat(q_rows) if sampling and q_rows else None, d_ids, generator)
        if sampling and not q_rows:  # no drafts (one token left): sample the target directly
            token = int(torch.multinomial(p[0], 1, generator=generator))
        target.drafted += k  # type: ignore[attr-defined]
        target.accepted += n  # type: ignore[attr-defined]
        # Roll both states back to the L + n committed tokens: the accepted drafts are in both buffers already.
        target.length = draft.length = L
        target.fed, draft.fed = min(target.fed, L + n), min(draft.fed, L + n)
        if n < k:
            if t_saved is not None:
                target.restore(*t_saved)
            if d_saved is not None:
                draft.restore(*d_saved)
        for i in range(n):
            target.length = draft.length = L + i + 1
            produced += 1
            yield drafts[i]
            code = int(stop(target.new_tokens)[0]) if stop.active else NOT_STOPPED
            if code != NOT_STOPPED:
                reasons[0], lengths[0] = code, produced
                return
