"""Logits processors: masks equal Hugging Face's warpers on random logits; documented edge cases hold."""

from __future__ import annotations

import pytest
import torch

from lightning_gpt.generation.processors import (
    apply_min_p,
    apply_repetition_penalty,
    apply_temperature,
    apply_top_k,
    apply_top_p,
    process_logits,
    sample_from_logits,
)

logits_process = pytest.importorskip("transformers.generation.logits_process")


def random_logits(seed: int = 0, B: int = 4, V: int = 50) -> torch.Tensor:
    torch.manual_seed(seed)
    return torch.randn(B, V) * 3


@pytest.mark.parametrize("k", [1, 3, 10, 49, 50, 80])
def test_top_k_mask_equals_hf(k):
    logits = random_logits(k)
    expected = logits_process.TopKLogitsWarper(top_k=k)(None, logits.clone())
    assert torch.equal(apply_top_k(logits, k), expected)
    assert (apply_top_k(logits, k) > float("-inf")).sum(-1).tolist() == [min(k, 50)] * 4


def test_top_k_keeps_ties_at_kth_value():
    logits = torch.tensor([[3.0, 2.0, 2.0, 2.0, 1.0]])
    out = apply_top_k(logits, 2)
    assert torch.isfinite(out).tolist() == [[True, True, True, True, False]]
    expected = logits_process.TopKLogitsWarper(top_k=2)(None, logits.clone())
    assert torch.equal(out, expected)


@pytest.mark.parametrize("p", [0.05, 0.3, 0.5, 0.9, 0.999, 1.0])
def test_top_p_mask_equals_hf(p):
    logits = random_logits(int(p * 1000))
    expected = logits_process.TopPLogitsWarper(top_p=p)(None, logits.clone())
    assert torch.equal(apply_top_p(logits, p), expected)


def test_top_p_keeps_the_token_that_crosses_p():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    out = apply_top_p(probs.log(), 0.7)  # 0.5 < 0.7, 0.5 + 0.3 crosses it: keep both
    assert torch.isfinite(out).tolist() == [[True, True, False, False]]


@pytest.mark.parametrize("min_p", [0.0, 0.05, 0.2, 0.9])
def test_min_p_mask_equals_hf(min_p):
    logits = random_logits(3)
    expected = logits_process.MinPLogitsWarper(min_p=min_p)(None, logits.clone())
    assert torch.equal(apply_min_p(logits, min_p), expected)


@pytest.mark.parametrize("t", [0.5, 1.0, 1.7])
def test_temperature_equals_hf(t):
    logits = random_logits(4)
    expected = logits_process.TemperatureLogitsWarper(temperature=t)(None, logits.clone())
    assert torch.allclose(apply_temperature(logits, t), expected)


@pytest.mark.parametrize("penalty", [0.5, 1.3, 2.0])
def test_repetition_penalty_equals_hf(penalty):
    logits = random_logits(5)
    torch.manual_seed(5)
    ids = torch.randint(0, 50, (4, 12))
    expected = logits_process.RepetitionPenaltyLogitsProcessor(penalty=penalty)(ids, logits.clone())
    assert torch.equal(apply_repetition_penalty(logits, ids, penalty), expected)


def test_repetition_penalty_ignores_padding():
    logits = torch.tensor([[1.0, -1.0, 2.0, 0.5]])
    ids = torch.tensor([[2, 0, 1]])
    valid = torch.tensor([[False, True, True]])  # id 2 is padding
    out = apply_repetition_penalty(logits, ids, 2.0, valid)
    assert out.tolist() == [[0.5, -2.0, 2.0, 0.5]]


def test_processors_compose_in_hf_order():
    logits = random_logits(6)
    ids = torch.randint(0, 50, (4, 5))
    chain = [
        logits_process.RepetitionPenaltyLogitsProcessor(1.2),
        logits_process.TemperatureLogitsWarper(0.8),
        logits_process.TopKLogitsWarper(20),
        logits_process.TopPLogitsWarper(0.9),
        logits_process.MinPLogitsWarper(0.05),
    ]
    expected = logits.clone()
    for proc in chain:
        expected = proc(ids, expected)
    ours = process_logits(
        logits, previous_ids=ids, repetition_penalty=1.2, do_sample=True, temperature=0.8, top_k=20, top_p=0.9,
        min_p=0.05,
    )  # fmt: skip
    assert torch.equal(ours, expected)
    # Without do_sample only the repetition penalty applies.
    greedy = process_logits(logits, previous_ids=ids, repetition_penalty=1.2, temperature=0.8, top_k=2)
    assert torch.equal(greedy, chain[0](ids, logits.clone()))


def test_sampling_only_draws_kept_tokens_and_generator_is_reproducible():
    logits = random_logits(7, B=2, V=30)
    filtered = apply_top_k(logits, 3)
    g = torch.Generator().manual_seed(0)
    draws = torch.stack([sample_from_logits(filtered, g) for _ in range(200)])  # (200, 2)
    for row in range(2):
        assert set(draws[:, row].tolist()) <= set(torch.topk(logits[row], 3).indices.tolist())
    again = torch.stack([sample_from_logits(filtered, torch.Generator().manual_seed(s)) for s in range(5)])
    again2 = torch.stack([sample_from_logits(filtered, torch.Generator().manual_seed(s)) for s in range(5)])
    assert torch.equal(again, again2)


def test_disabled_filters_are_identity():
    logits = random_logits(8)
    for out in (apply_top_k(logits, None), apply_top_k(logits, 0), apply_top_p(logits, 1.0), apply_min_p(logits, 0)):
        assert torch.equal(out, logits)
    assert torch.equal(apply_repetition_penalty(logits, torch.tensor([[1, 2]] * 4), 1.0), logits)
