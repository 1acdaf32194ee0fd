"""Beam search: sequences and ``sequences_scores`` equal Hugging Face's, across length_penalty, early_stopping,
num_return_sequences and EOS settings; cache and no-cache agree."""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")

from lightning_gpt.generation import generate  # noqa: E402
from lightning_gpt.io.convert import from_hf_gpt2  # noqa: E402

VOCAB = 100


@pytest.fixture(scope="module")
def pair():
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(
        vocab_size=VOCAB, n_positions=64, n_embd=32, n_layer=2, n_head=4, bos_token_id=None, eos_token_id=None,
        tie_word_embeddings=False, attn_implementation="eager",
    )  # fmt: skip
    hf = transformers.GPT2LMHeadModel(cfg).eval()
    with torch.no_grad():
        hf.lm_head.weight.mul_(6.0)  # peaked distributions: beams diverge and EOS gets chosen
    torch.manual_seed(1)
    prompt = torch.randint(0, VOCAB, (2, 6))
    return hf, from_hf_gpt2(hf).eval(), prompt


def _eos_ids(model, prompt, n):
    """Token ids that the beams actually produce early, so EOS really ends some hypotheses."""
    free = generate(model, prompt, max_new_tokens=8, num_beams=4, num_return_sequences=4)
    gen = free[:, prompt.size(1) :]
    return [int(gen[0, 2]), int(gen[5, 4])][:n]


# Every early_stopping value meets every EOS count, and each length_penalty appears with several of them.
CASES = [
    (0, True, 1.0),
    (0, False, 2.0),
    (0, "never", -0.5),
    (1, True, 0.0),
    (1, False, 1.0),
    (1, "never", 2.0),
    (1, False, -0.5),
    (2, True, 2.0),
    (2, False, 0.0),
    (2, "never", 1.0),
    (2, "never", 0.0),
    (2, True, -0.5),
]


@pytest.mark.parametrize("n_eos,early_stopping,length_penalty", CASES)
def test_beam_search_equals_hf(pair, n_eos, early_stopping, length_penalty):
    hf, model, prompt = pair
    eos = _eos_ids(model, prompt, n_eos) or None
    kwargs = dict(
        max_new_tokens=10, num_beams=4, num_return_sequences=3, length_penalty=length_penalty,
        early_stopping=early_stopping, eos_token_id=eos, pad_token_id=VOCAB - 1,
    )  # fmt: skip
    expected = hf.generate(prompt, do_sample=False, output_scores=True, return_dict_in_generate=True, **kwargs)
    out = generate(model, prompt, return_dict=True, **kwargs)
    assert torch.equal(out.sequences, expected.sequences)
    torch.testing.assert_close(out.sequences_scores, expected.sequences_scores, rtol=1e-5, atol=1e-5)
    assert out.sequences.shape[0] == 2 * 3
    if eos:
        ended = [r for r, n in zip(out.finish_reasons, out.num_new_tokens.tolist()) if r == "eos"]
        for row, (reason, n) in enumerate(zip(out.finish_reasons, out.num_new_tokens.tolist())):
            if reason == "eos":
                assert int(out.sequences[row, 6 + n - 1]) in eos  # EOS kept as the last generated token
        if length_penalty <= 0.0:
            assert ended  # short hypotheses win without a length bonus: EOS really ended some


def test_beam_eos_hypotheses_occur(pair):
    """Guard against a vacuous EOS parametrization: some returned hypothesis ends with EOS."""
    hf, model, prompt = pair
    eos = _eos_ids(model, prompt, 2)
    out = generate(model, prompt, max_new_tokens=10, num_beams=4, num_return_sequences=4, eos_token_id=eos,
                   length_penalty=0.0, return_dict=True)  # fmt: skip
    assert "eos" in out.finish_reasons
    assert min(out.num_new_tokens.tolist()) < 10


@pytest.mark.parametrize("num_beams,num_return_sequences", [(3, 1), (3, 3), (4, 2)])
def test_beam_widths_and_returns_equal_hf(pair, num_beams, num_return_sequences):
    hf, model, prompt = pair
    kwargs = dict(max_new_tokens=8, num_beams=num_beams, num_return_sequences=num_return_sequences)
    expected = hf.generate(prompt, do_sample=False, output_scores=True, return_dict_in_generate=True,
                           pad_token_id=0, **kwargs)  # fmt: skip
    out = generate(model, prompt, return_dict=True, **kwargs)
    assert torch.equal(out.sequences, expected.sequences)
    torch.testing.assert_close(out.sequences_scores, expected.sequences_scores, rtol=1e-5, atol=1e-5)
    # Returned best-first per prompt.
    scores = out.sequences_scores.view(2, num_return_sequences)
    assert (scores[:, :-1] >= scores[:, 1:]).all()


def test_beam_repetition_penalty_equals_hf(pair):
    hf, model, prompt = pair
    kwargs = dict(max_new_tokens=8, num_beams=3, repetition_penalty=1.5)
    expected = hf.generate(prompt, do_sample=False, pad_token_id=0, **kwargs)
    assert torch.equal(generate(model, prompt, **kwargs), expected)


def test_batched_left_padded_beam_equals_hf_and_solo(pair):
    hf, model, _ = pair
    torch.manual_seed(2)
    a, b = torch.randint(0, VOCAB - 1, (6,)), torch.randint(0, VOCAB - 1, (3,))
    input_ids = torch.full((2, 6), VOCAB - 1)
    input_ids[0] = a
    input_ids[1, 3:] = b
    mask = torch.tensor([[1] * 6, [0, 0, 0, 1, 1, 1]])
    kwargs = dict(max_new_tokens=8, num_beams=3, pad_token_id=VOCAB - 1)
    expected = hf.generate(input_ids, attention_mask=mask, do_sample=False, **kwargs)
    ours = generate(model, input_ids, attention_mask=mask, **kwargs)
    assert torch.equal(ours, expected)
    solo_b = generate(model, b[None], **kwargs)
    assert torch.equal(ours[1, 6:], solo_b[0, 3:])


@pytest.mark.parametrize(
    "knobs",
    [dict(top_k=0), dict(temperature=0.7, top_k=10), dict(top_k=0, top_p=0.8, eos_token_id=[3, 7]), dict(top_k=5)],
)
def test_seeded_beam_sampling_equals_hf(pair, knobs):
    hf, model, prompt = pair
    kwargs = dict(max_new_tokens=8, num_beams=3, num_return_sequences=2, do_sample=True, pad_token_id=VOCAB - 1)
    torch.manual_seed(11)
    expected = hf.generate(prompt, output_scores=True, return_dict_in_generate=True, **kwargs, **knobs)
    torch.manual_seed(11)
    out = generate(model, prompt, return_dict=True, **kwargs, **knobs)
    assert torch.equal(out.sequences, expected.sequences)
    torch.testing.assert_close(out.sequences_scores, expected.sequences_scores, rtol=1e-5, atol=1e-5)
    # A seeded generator makes beam sampling reproducible without touching the global RNG.
    seeded = generate(model, prompt, generator=torch.Generator().manual_seed(0), **kwargs, **knobs)
    assert torch.equal(seeded, generate(model, prompt, generator=torch.Generator().manual_seed(0), **kwargs, **knobs))
