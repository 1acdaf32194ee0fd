"""Beam search, the vectorized algorithm of Hugging Face ``transformers`` (``GenerationMixin._beam_search``).

Each step keeps the top ``K = max(2, 1 + n_eos) * num_beams`` continuations over all beams of a prompt; those that
hit a stopping rule (EOS, stop sequence, length) become finished hypotheses scored
``sum(log p) / generated_length ** length_penalty`` (EOS included in both), the best ``num_beams`` unfinished ones
keep running. ``early_stopping``: True stops a prompt once ``num_beams`` hypotheses are finished; False stops when the
best running beam, scored at its current length, cannot beat the worst finished one; ``"never"`` does the same with
the most favourable length (``max_new_tokens`` when ``length_penalty > 0``), which is canonical beam search.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from lightning_gpt.generation.config import GenerationConfig
from lightning_gpt.generation.processors import (
    apply_min_p,
    apply_repetition_penalty,
    apply_temperature,
    apply_top_k,
    apply_top_p,
)
from lightning_gpt.generation.sampling import DecodeState
from lightning_gpt.generation.stopping import NOT_STOPPED, StopCriteria

__all__ = ["BeamResult", "beam_search"]

NEG = -1.0e9


@dataclass
class BeamResult:
    """Best hypotheses, ``num_return_sequences`` per prompt, best first.

    Args:
        new_tokens: ``(B * num_return_sequences, L)`` generated ids, right-filled with the pad id.
        lengths: ``(B * num_return_sequences,)`` generated length of each hypothesis (EOS included).
        scores: ``(B * num_return_sequences,)`` length-penalized sum of log-probabilities.
        reasons: ``(B * num_return_sequences,)`` stop codes (see ``stopping``).
    """

    new_tokens: Tensor
    lengths: Tensor
    scores: Tensor
    reasons: Tensor


def _gather(t: Tensor, index: Tensor) -> Tensor:
    """Select along dim 1 of a ``(B, n, ...)`` tensor with a ``(B, m)`` index."""
    while index.dim() < t.dim():
        index = index.unsqueeze(-1)
    return torch.take_along_dim(t, index, dim=1)


def beam_search(
    state: DecodeState,
    config: GenerationConfig,
    *,
    batch_size: int,
    max_new_tokens: int,
    stop: StopCriteria,
    pad_token_id: int,
    generator: Optional[torch.Generator] = None,
) -> BeamResult:
    """Run beam search on a ``DecodeState`` whose rows are the prompts repeated ``config.num_beams`` times each.

    Settings read from ``config``: ``num_beams``, ``length_penalty``, ``early_stopping`` (see the module docstring),
    ``num_return_sequences`` (<= ``num_beams``), ``repetition_penalty`` (applied to the log-probabilities, as Hugging
    Face does in beam search) and, for beam sampling (``config.sampling``: the ``K`` continuations are drawn without
    replacement from ``softmax(accumulated processed log-probs)`` instead of taken as the top ``K``), ``temperature``,
    ``top_k``, ``top_p`` and ``min_p`` (each keeps at least ``n_eos + 1`` tokens).

    Args:
        state: fresh decode state with ``batch_size * num_beams`` rows (prefill not run yet).
        config: the decoding settings.
        batch_size: number of distinct prompts.
        max_new_tokens: most tokens to generate (``config.max_new_tokens`` resolved against the context).
        stop: EOS and stop-sequence rules.
        pad_token_id: filler after a hypothesis ends.
        generator: beam sampling: the RNG.
    """
    num_beams, length_penalty = config.num_beams, float(config.length_penalty)
    early_stopping, num_return_sequences = config.early_stopping, config.num_return_sequences
    repetition_penalty, do_sample = float(config.repetition_penalty), config.sampling
    temperature, top_k, top_p, min_p = float(config.temperature), config.top_k, config.top_p, config.min_p
    B, nb, M = batch_size, num_beams, max_new_tokens
    n_eos = len(stop.eos_token_ids)
    K = max(2, 1 + n_eos) * nb
    logits = state.prefill()  # (B * nb, V)
    device = logits.device
    V = logits.size(-1)
    top_nb_mask = torch.arange(K, device=device) < nb  # (K,)
    batch_offset = torch.arange(B, device=device)[:, None] * nb  # (B, 1)

    running = torch.full((B, nb, M), pad_token_id, dtype=torch.long, device=device)
    running_scores = torch.zeros(B, nb, device=device)
    running_scores[:, 1:] = NEG  # only the first beam expands at step 0 (all beams are identical)
    finished = running.clone()
    finished_scores = torch.full((B, nb), NEG, device=device)
    finished_lengths = torch.zeros(B, nb, dtype=torch.long, device=device)
    finished_reasons = torch.zeros(B, nb, dtype=torch.long, device=device)
    is_finished = torch.zeros(B, nb, dtype=torch.bool, device=device)
    can_improve = torch.ones(B, 1, dtype=torch.bool, device=device)

    for cur in range(M):
        log_probs = F.log_softmax(logits, dim=-1)  # (B * nb, V)
        if repetition_penalty != 1.0:
            log_probs = apply_repetition_penalty(
                log_probs, state.tokens[:, : state.length], repetition_penalty, state.valid()
            )
        if do_sample:
            # Hugging Face's warpers, applied to log-probabilities; each keeps at least one non-EOS token.
            keep = n_eos + 1 if n_eos else 2
            if temperature != 1.0:
                log_probs = apply_temperature(log_probs, temperature)
            log_probs = apply_top_k(log_probs, top_k, keep)
            log_probs = apply_top_p(log_probs, top_p, keep)
            log_probs = apply_min_p(log_probs, min_p, keep)
        log_probs = log_probs.view(B, nb, V) + running_scores[:, :, None]
        if do_sample:
            flat = log_probs.view(B, nb * V)
            topk_idx = torch.multinomial(flat.softmax(dim=-1), K, generator=generator)  # (B, K) without replacement
            topk_scores, order = torch.gather(flat, 1, topk_idx).sort(dim=-1, descending=True)
            topk_idx = topk_idx.gather(1, order)
        else:
            topk_scores, topk_idx = torch.topk(log_probs.view(B, nb * V), K)  # (B, K)
        topk_beam = topk_idx // V
        topk_ids = topk_idx % V
        topk_seqs = _gather(running, topk_beam)  # (B, K, M)
        topk_seqs[:, :, cur] = topk_ids

        # Which candidates end here: length limit, EOS, stop sequences.
        if cur + 1 >= M:
            reasons = torch.zeros(B, K, dtype=torch.long, device=device)
            hits = torch.ones(B, K, dtype=torch.bool, device=device)
        else:
            reasons = torch.zeros(B, K, dtype=torch.long, device=device)
            hits = torch.zeros(B, K, dtype=torch.bool, device=device)
        if stop.active:
            reasons = stop(topk_seqs[:, :, : cur + 1].reshape(B * K, cur + 1)).view(B, K)
            hits = hits | (reasons != NOT_STOPPED)

        # The best num_beams candidates that did not finish keep running.
        running_cand = topk_scores + hits.float() * NEG
        next_idx = torch.topk(running_cand, nb).indices  # (B, nb)
        running = _gather(topk_seqs, next_idx)
        running_scores = _gather(running_cand, next_idx)
        origin = (_gather(topk_beam, next_idx) + batch_offset).flatten()  # (B * nb,) rows of the previous step

        # Finished candidates among the top num_beams join the finished set if they beat its worst member.
        just_finished = hits & top_nb_mask[None, :]
        fin_scores = topk_scores / ((cur + 1) ** length_penalty)
        full = is_finished.all(dim=-1, keepdim=True) & (early_stopping is True)
        fin_scores = fin_scores + full.float() * NEG
        fin_scores = fin_scores + (~can_improve).float() * NEG
        fin_scores = fin_scores + (~just_finished).float() * NEG
        merged_idx = torch.topk(torch.cat([finished_scores, fin_scores], dim=1), nb).indices  # (B, nb)
        finished = _gather(torch.cat([finished, topk_seqs], dim=1), merged_idx)
        finished_scores = _gather(torch.cat([finished_scores, fin_scores], dim=1), merged_idx)
        new_len = torch.full((B, K), cur + 1, dtype=torch.long, device=device)
        finished_lengths = _gather(torch.cat([finished_lengths, new_len], dim=1), merged_idx)
        finished_reasons = _gather(torch.cat([finished_reasons, reasons], dim=1), merged_idx)
        is_finished = _gather(torch.cat([is_finished, just_finished], dim=1), merged_idx)

        # Can a running beam still beat the worst finished hypothesis?
        n_gen = cur + 1
        best_len = M if (early_stopping == "never" and length_penalty > 0.0) else n_gen
        best_running = running_scores[:, :1] / (best_len**length_penalty)
        worst_finished = torch.where(is_finished, finished_scores.min(dim=1, keepdim=True).values, NEG)
        can_improve = can_improve & (best_running > worst_finished).any(dim=-1, keepdim=True)
        go_on = bool(can_improve.any()) and not (bool(is_finished.all()) and early_stopping is True)
        if not go_on or bool(hits.all()) or cur + 1 >= M:
            break
        state.reorder(origin)
        state.append(running[:, :, cur].flatten())
        logits = state.decode_one_token()

    R = num_return_sequences
    lengths = finished_lengths[:, :R].flatten()
    L = int(lengths.max()) if lengths.numel() else 0
    return BeamResult(
        new_tokens=finished[:, :R, :L].reshape(B * R, L),
        lengths=lengths,
        scores=finished_scores[:, :R].flatten(),
        reasons=finished_reasons[:, :R].flatten(),
    )
