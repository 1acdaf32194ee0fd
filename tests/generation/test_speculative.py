"""Speculative decoding: greedy output equals the target alone for every attention kind (as target or draft), the
acceptance rule reproduces the target's distribution (chi-square tests), Hugging Face ``assistant_model`` agrees, and
misuse is one clear error."""

from __future__ import annotations

from collections import Counter

import pytest
import torch

from benchmarks.decode_speed import chi_square_p  # Pearson goodness of fit, pooled cells: one definition
from lightning_gpt import GPT, GPTConfig
from lightning_gpt.attention import available_attention
from lightning_gpt.generation import GenerationConfig, generate, stream_generate
from lightning_gpt.generation.sampling import DecodeState
from lightning_gpt.generation.speculative import accept_drafts, speculative_steps
from lightning_gpt.generation.stopping import StopCriteria

VOCAB = 64


def tiny(attention: str = "standard", seed: int = 0, layers: int = 2, width: int = 32, vocab: int = VOCAB) -> GPT:
    torch.manual_seed(seed)
    config = GPTConfig(
        vocab_size=vocab, block_size=48, n_layer=layers, n_head=2, n_embd=width, attention=attention,
        attention_window=5, linear_chunk_size=4, tie_weights=False,
    )  # fmt: skip
    model = GPT(config).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(10.0)  # peaked, varied next-token distributions
    return model


@pytest.mark.parametrize("attention", available_attention())
def test_greedy_equals_the_target_alone_with_every_kind_as_target_or_draft(attention):
    other = tiny("standard", seed=1, layers=1, width=16)
    model = tiny(attention)
    prompt = torch.tensor([[3, 1, 4, 1, 5, 9]])
    for target, draft in ((model, other), (other, model)):
        alone = generate(target, prompt, max_new_tokens=25)
        for k in (1, 3, 7):
            assisted = generate(target, prompt, max_new_tokens=25, draft_model=draft, num_draft_tokens=k)
            assert torch.equal(assisted, alone), (attention, k, target is model)


def test_a_perfect_draft_is_always_accepted_and_stops_like_the_target():
    model = tiny("standard")
    prompt = torch.tensor([[2, 7, 1]])
    free = generate(model, prompt, max_new_tokens=12)
    eos = int(free[0, 3 + 5])  # the 6th new token
    alone = generate(model, prompt, max_new_tokens=12, eos_token_id=eos, return_dict=True)
    assisted = generate(model, prompt, max_new_tokens=12, eos_token_id=eos, return_dict=True, draft_model=model)
    assert assisted.new_tokens == alone.new_tokens and assisted.finish_reasons == alone.finish_reasons == ["eos"]
    streamed = [int(t) for t in stream_generate(model, prompt, max_new_tokens=12, draft_model=model)]
    assert streamed == free[0, 3:].tolist()


def test_acceptance_rule_reproduces_the_target_distribution():
    # Synthetic p (target) and q (draft) over 5 tokens, 2 drafts per round: the first emitted token must follow p[0]
    # and, when the first draft was kept, the second must follow p[1] (Leviathan et al. 2023, Theorem 1).
    g = torch.Generator().manual_seed(0)
    p = torch.tensor([[0.5, 0.2, 0.1, 0.1, 0.1], [0.05, 0.05, 0.3, 0.3, 0.3], [0.2, 0.2, 0.2, 0.2, 0.2]])
    q = torch.tensor([[0.1, 0.1, 0.2, 0.3, 0.3], [0.4, 0.3, 0.1, 0.1, 0.1]])
    first, second = torch.zeros(5), torch.zeros(5)
    for _ in range(6000):
        drafts = torch.multinomial(q, 1, generator=g).view(2)
        n, token = accept_drafts(p, q, drafts, g)
        out = drafts[:n].tolist() + [token]
        first[out[0]] += 1
        if n >= 1:
            second[out[1]] += 1
    assert chi_square_p(first, p[0]) > 1e-3
    assert second.sum() > 1000 and chi_square_p(second, p[1]) > 1e-3


def test_sampled_output_follows_the_target_distribution():
    # End to end on a 6-token vocabulary: the joint distribution of new tokens 2 and 3 (both drafted and checked in
    # one round) against the exact distribution enumerated from the target.
    vocab = 6
    target, draft = tiny("standard", seed=0, vocab=vocab), tiny("linear", seed=3, layers=1, width=16, vocab=vocab)
    with torch.no_grad():
        target.lm_head.weight.mul_(0.5)  # distinct, not too peaked distributions
        draft.lm_head.weight.mul_(-0.5)
    prompt = torch.tensor([[1, 2, 3]])
    g = torch.Generator().manual_seed(0)
    counts = torch.zeros(vocab * vocab)
    for _ in range(1200):
        out = generate(target, prompt, max_new_tokens=3, do_sample=True, draft_model=draft, num_draft_tokens=2,
                       generator=g)  # fmt: skip
        counts[int(out[0, 4]) * vocab + int(out[0, 5])] += 1
    with torch.no_grad():
        p1 = target(prompt)[0, -1].softmax(-1)  # (V,)
        seq2 = torch.cat([prompt.expand(vocab, -1), torch.arange(vocab)[:, None]], dim=1)
        p2 = target(seq2)[:, -1].softmax(-1)  # (V, V)
        seq3 = torch.cat([seq2.repeat_interleave(vocab, 0), torch.arange(vocab).repeat(vocab)[:, None]], dim=1)
        p3 = target(seq3)[:, -1].softmax(-1).view(vocab, vocab, vocab)
    joint = (p1[:, None, None] * p2[:, :, None] * p3).sum(0).flatten()  # P(t2, t3)
    assert chi_square_p(counts, joint) > 1e-3


def test_equals_hugging_face_assisted_generation():
    transformers = pytest.importorskip("transformers")
    from lightning_gpt.io.convert import from_hf_gpt2

    def pair(seed: int, layers: int):
        torch.manual_seed(seed)
        cfg = transformers.GPT2Config(
            vocab_size=100, n_positions=64, n_embd=32, n_layer=layers, n_head=4, bos_token_id=None,
            eos_token_id=None, tie_word_embeddings=False, attn_implementation="eager",
        )  # fmt: skip
        hf = transformers.GPT2LMHeadModel(cfg).eval()
        with torch.no_grad():
            hf.lm_head.weight.mul_(10.0)
        return hf, from_hf_gpt2(hf).eval()

    hf_target, target = pair(0, 2)
    hf_draft, draft = pair(1, 1)
    prompt = torch.tensor([[5, 17, 42, 8]])
    expected = hf_target.generate(
        prompt, attention_mask=torch.ones_like(prompt), assistant_model=hf_draft, max_new_tokens=20,
        min_new_tokens=20, do_sample=False, pad_token_id=0,
    )  # fmt: skip
    got = generate(target, prompt, max_new_tokens=20, draft_model=draft)
    assert torch.equal(got, expected)


def test_misuse_is_one_clear_error():
    model, draft = tiny(), tiny(seed=1, layers=1, width=16)
    two = torch.tensor([[1, 2], [3, 4]])
    with pytest.raises(ValueError, match="decodes one sequence"):
        generate(model, two, max_new_tokens=4, draft_model=draft)
    with pytest.raises(ValueError, match="vocab_size"):
        generate(model, two[:1], max_new_tokens=4, draft_model=tiny(vocab=32, layers=1, width=16))
    with pytest.raises(ValueError, match="num_draft_tokens"):
        generate(model, two[:1], max_new_tokens=4, draft_model=draft, num_draft_tokens=0)


@pytest.mark.parametrize("attention", ["standard", "linear"])
def test_compiled_the_last_short_round_keeps_the_verification_length(attention):
    # A perfect draft (the target itself) with 3 drafts per round: 1 + 4 + 4 tokens, then a last round of 1 draft.
    # On a key/value cache (rollback-free) that pass re-feeds 2 cached tokens and runs the compiled verification step
    # of 4 tokens, so the dynamic-length prefill step runs the prompt only; a state that folds tokens in (linear)
    # keeps the prefill step for it. The tokens are the target's own either way.
    model = tiny(attention)
    prompt = torch.tensor([[3, 1, 4, 1, 5]])
    n = 11
    target = DecodeState(model, prompt, None, n, compile="eager", verify=4)
    draft = DecodeState(model, prompt, None, n, compile="eager")
    calls: Counter[str] = Counter()
    for name in ("_prefill_fn", "_verify_fn"):
        fn = getattr(target, name)
        setattr(target, name, lambda *args, fn=fn, name=name: calls.update([name]) or fn(*args))
    config = GenerationConfig(max_new_tokens=n, num_draft_tokens=3)
    reasons, lengths = torch.zeros(1, dtype=torch.long), torch.full((1,), n)
    stop = StopCriteria([], None, None, VOCAB)
    with torch.no_grad():
        got = list(speculative_steps(target, draft, config, max_new_tokens=n, stop=stop, generator=None,
                                     reasons=reasons, lengths=lengths))  # fmt: skip
    assert torch.equal(torch.cat(got), generate(model, prompt, max_new_tokens=n)[0, 5:])
    assert target.drafted == target.accepted == 3 + 3 + 1
    expected = {"_prefill_fn": 1, "_verify_fn": 3} if attention == "standard" else {"_prefill_fn": 2, "_verify_fn": 2}
    assert calls == expected
