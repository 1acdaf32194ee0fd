"""Decoding equals Hugging Face ``generate`` on the same (random, converted) GPT-2 weights: greedy, seeded sampling,
batched left-padded greedy."""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")

from lightning_gpt.generation import generate  # noqa: E402
from lightning_gpt.io.convert import from_hf_gpt2  # noqa: E402

VOCAB = 100


def hf_pair(seed: int = 0, scale: float = 10.0, attention: str = "standard"):
    """A tiny random GPT2LMHeadModel and the same weights as a lightning_gpt GPT.

    ``scale`` multiplies the LM head so next-token distributions are peaked (the 0.02 init is near uniform).
    """
    torch.manual_seed(seed)
    cfg = transformers.GPT2Config(
        vocab_size=VOCAB,
        n_positions=64,
        n_embd=32,
        n_layer=2,
        n_head=4,
        bos_token_id=None,
        eos_token_id=None,
        tie_word_embeddings=False,
        attn_implementation="eager",
    )
    hf = transformers.GPT2LMHeadModel(cfg).eval()
    with torch.no_grad():
        hf.lm_head.weight.mul_(scale)
    return hf, from_hf_gpt2(hf, attention=attention).eval()


@pytest.mark.parametrize("attention", ["standard", "flash"])
def test_greedy_equals_hf(attention):
    hf, model = hf_pair(attention=attention)
    torch.manual_seed(1)
    prompt = torch.randint(0, VOCAB, (2, 7))
    expected = hf.generate(prompt, max_new_tokens=20, do_sample=False, pad_token_id=0)
    ours = generate(model, prompt, max_new_tokens=20)
    assert ours.shape == expected.shape == (2, 27)
    assert torch.equal(ours, expected)
    assert torch.equal(generate(model, prompt, max_new_tokens=20, use_cache=False), expected)


def test_greedy_with_eos_equals_hf():
    hf, model = hf_pair()
    torch.manual_seed(2)
    prompt = torch.randint(0, VOCAB - 1, (3, 5))  # no pad id inside: HF would infer a padding mask from it
    free = generate(model, prompt, max_new_tokens=15)
    eos = int(free[0, 5 + 3])  # a token row 0 emits at step 4: it must stop there
    expected = hf.generate(prompt, max_new_tokens=15, do_sample=False, eos_token_id=eos, pad_token_id=VOCAB - 1)
    out = generate(model, prompt, max_new_tokens=15, eos_token_id=eos, pad_token_id=VOCAB - 1, return_dict=True)
    assert torch.equal(out.sequences, expected)
    assert out.finish_reasons[0] == "eos"
    n = int(out.num_new_tokens[0])
    assert out.sequences[0, 5 + n - 1] == eos  # EOS kept
    assert (out.sequences[0, 5 + n :] == VOCAB - 1).all()  # then padded


@pytest.mark.parametrize(
    "knobs",
    [
        dict(),
        dict(temperature=0.7),
        dict(top_k=10),
        dict(top_p=0.8),
        dict(temperature=1.3, top_k=20, top_p=0.9),
        dict(min_p=0.1),
        dict(repetition_penalty=1.5, temperature=0.9),
    ],
)
def test_seeded_sampling_equals_hf(knobs):
    hf, model = hf_pair(scale=5.0)
    torch.manual_seed(3)
    prompt = torch.randint(0, VOCAB, (2, 6))
    # Hugging Face's GenerationConfig defaults to top_k=50 when sampling; ours to no top-k filter.
    hf_knobs = {"top_k": 0, **knobs}
    torch.manual_seed(1234)
    expected = hf.generate(prompt, max_new_tokens=16, do_sample=True, pad_token_id=0, **hf_knobs)
    torch.manual_seed(1234)
    ours = generate(model, prompt, max_new_tokens=16, do_sample=True, **knobs)
    assert torch.equal(ours, expected)


def test_sampling_num_return_sequences_equals_hf():
    hf, model = hf_pair(scale=5.0)
    prompt = torch.tensor([[5, 6, 7]])
    torch.manual_seed(7)
    expected = hf.generate(prompt, max_new_tokens=10, do_sample=True, num_return_sequences=3, pad_token_id=0, top_k=0)
    torch.manual_seed(7)
    ours = generate(model, prompt, max_new_tokens=10, do_sample=True, num_return_sequences=3)
    assert ours.shape == (3, 13)
    assert torch.equal(ours, expected)


def test_greedy_repetition_penalty_equals_hf():
    hf, model = hf_pair()
    prompt = torch.tensor([[1, 2, 3, 4]])
    expected = hf.generate(prompt, max_new_tokens=20, do_sample=False, repetition_penalty=2.0, pad_token_id=0)
    plain = generate(model, prompt, max_new_tokens=20)
    ours = generate(model, prompt, max_new_tokens=20, repetition_penalty=2.0)
    assert torch.equal(ours, expected)
    assert not torch.equal(ours, plain)  # the penalty changed the output (plain greedy repeats)


def test_batched_left_padded_greedy_equals_hf_and_solo():
    hf, model = hf_pair()
    torch.manual_seed(4)
    lengths = [7, 3, 5, 1]
    T = max(lengths)
    pad = VOCAB - 1
    prompts = [torch.randint(0, VOCAB - 1, (n,)) for n in lengths]
    input_ids = torch.full((len(lengths), T), pad)
    mask = torch.zeros(len(lengths), T, dtype=torch.long)
    for i, p in enumerate(prompts):
        input_ids[i, T - len(p) :] = p
        mask[i, T - len(p) :] = 1
    expected = hf.generate(input_ids, attention_mask=mask, max_new_tokens=12, do_sample=False, pad_token_id=pad)
    ours = generate(model, input_ids, attention_mask=mask, max_new_tokens=12, pad_token_id=pad)
    assert torch.equal(ours, expected)
    for i, p in enumerate(prompts):
        solo = generate(model, p[None], max_new_tokens=12)
        assert torch.equal(ours[i, T:], solo[0, len(p) :])
