"""Every attention kind decodes through its cache/state: cached == uncached, batched left-padded rows == each prompt
alone, for greedy, seeded sampling and beam search; stopping rules, streaming and mode handling."""

from __future__ import annotations

import pytest
import torch

from lightning_gpt import GPT, GPTConfig
from lightning_gpt.attention import available_attention
from lightning_gpt.config import SPARSE_PATTERNS
from lightning_gpt.generation import generate, stream_generate

VOCAB = 64


def tiny(attention: str = "standard", seed: int = 0, **overrides) -> GPT:
    torch.manual_seed(seed)
    config = GPTConfig(
        vocab_size=VOCAB, block_size=48, n_layer=2, n_head=4, n_embd=32, attention=attention,
        attention_window=5, linear_chunk_size=4, tie_weights=False, **overrides,
    )  # fmt: skip
    model = GPT(config).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(10.0)  # peaked, varied next-token distributions (the 0.02 init is near uniform)
    return model


def padded_batch(seed: int = 1):
    torch.manual_seed(seed)
    lengths = [9, 4, 1, 6]
    T = max(lengths)
    prompts = [torch.randint(0, VOCAB, (n,)) for n in lengths]
    ids = torch.zeros(len(lengths), T, dtype=torch.long)
    mask = torch.zeros(len(lengths), T, dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, T - len(p) :] = p
        mask[i, T - len(p) :] = 1
    return prompts, ids, mask


def _variants() -> list:
    """Every registered attention kind; ``sparse`` once per pattern (strided with stride 3, longformer with 2 global
    tokens, so the pattern's own positions matter inside 29 tokens). A kind registered later is covered the day it
    is added."""
    out = []
    for kind in available_attention():
        if kind == "sparse":
            for pattern in SPARSE_PATTERNS:
                extra = dict(sparse_pattern=pattern, attention_stride=3, n_global_tokens=2)
                out.append(pytest.param(kind, extra, id=f"sparse-{pattern}"))
        else:
            out.append(pytest.param(kind, {}, id=kind))
    return out


@pytest.mark.parametrize(("attention", "extra"), _variants())
def test_cached_equals_uncached_and_rows_equal_solo(attention, extra):
    # Positions (learned table and the sparse patterns' summary/global positions) count from each row's first real
    # token, so a left-padded row decodes exactly like its prompt alone, cached and uncached.
    model = tiny(attention, **extra)
    prompts, ids, mask = padded_batch()
    T = ids.size(1)
    cached = generate(model, ids, attention_mask=mask, max_new_tokens=20)
    uncached = generate(model, ids, attention_mask=mask, max_new_tokens=20, use_cache=False)
    assert cached.shape == (4, T + 20)
    assert torch.equal(cached, uncached)
    for i, p in enumerate(prompts):
        solo = generate(model, p[None], max_new_tokens=20)
        solo_uncached = generate(model, p[None], max_new_tokens=20, use_cache=False)
        assert torch.equal(solo, solo_uncached)
        assert torch.equal(cached[i, T:], solo[0, len(p) :]), f"row {i} differs from its prompt decoded alone"


@pytest.mark.parametrize("attention", available_attention())
def test_seeded_sampling_cached_equals_uncached(attention):
    model = tiny(attention)
    _, ids, mask = padded_batch()
    kwargs = dict(attention_mask=mask, max_new_tokens=15, do_sample=True, temperature=0.9, top_k=20, top_p=0.95)
    a = generate(model, ids, generator=torch.Generator().manual_seed(5), **kwargs)
    b = generate(model, ids, use_cache=False, generator=torch.Generator().manual_seed(5), **kwargs)
    c = generate(model, ids, generator=torch.Generator().manual_seed(6), **kwargs)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)  # a different seed gives different samples


@pytest.mark.parametrize(("attention", "extra"), _variants())
def test_beam_search_cached_equals_uncached(attention, extra):
    model = tiny(attention, **extra)
    prompts, ids, mask = padded_batch()
    kwargs = dict(attention_mask=mask, max_new_tokens=10, num_beams=3, num_return_sequences=2, return_dict=True)
    a = generate(model, ids, **kwargs)
    b = generate(model, ids, use_cache=False, **kwargs)
    assert torch.equal(a.sequences, b.sequences)
    torch.testing.assert_close(a.sequences_scores, b.sequences_scores)
    solo = generate(model, prompts[1][None], max_new_tokens=10, num_beams=3, num_return_sequences=2)
    assert torch.equal(a.sequences[2:4, ids.size(1) :], solo[:, len(prompts[1]) :])


def test_stream_generate_yields_the_same_tokens_step_by_step():
    model = tiny()
    _, ids, mask = padded_batch()
    full = generate(model, ids, attention_mask=mask, max_new_tokens=12)
    steps = list(stream_generate(model, ids, attention_mask=mask, max_new_tokens=12))
    assert len(steps) == 12 and all(s.shape == (4,) for s in steps)
    assert torch.equal(torch.stack(steps, dim=1), full[:, ids.size(1) :])


def test_stream_does_not_leak_inference_mode_and_restores_train_mode():
    model = tiny(dropout=0.1).train()
    seen = []
    for _ in stream_generate(model, torch.tensor([[1, 2, 3]]), max_new_tokens=3):
        seen.append((torch.is_inference_mode_enabled(), model.training))
    assert seen == [(False, False)] * 3  # caller's code runs outside inference mode; model in eval while streaming
    assert model.training and not model.has_cache


def test_generate_uses_eval_mode_restores_it_and_frees_the_cache():
    model = tiny(dropout=0.5).train()
    prompt = torch.tensor([[3, 1, 4, 1, 5]])
    a = generate(model, prompt, max_new_tokens=10)
    b = generate(model, prompt, max_new_tokens=10)
    assert torch.equal(a, b)  # dropout off during decoding
    assert model.training
    assert not model.has_cache
    assert not a.requires_grad


def test_eos_stops_keeps_eos_and_pads_finished_rows():
    model = tiny()
    _, ids, mask = padded_batch()
    T = ids.size(1)
    free = generate(model, ids, attention_mask=mask, max_new_tokens=20)
    eos = int(free[0, T + 3])  # row 0 emits this at step 4
    out = generate(model, ids, attention_mask=mask, max_new_tokens=20, eos_token_id=eos, pad_token_id=63,
                   return_dict=True)  # fmt: skip
    n0 = int(out.num_new_tokens[0])
    assert out.finish_reasons[0] == "eos" and n0 <= 4
    assert out.sequences[0, T + n0 - 1] == eos
    assert (out.sequences[0, T + n0 :] == 63).all()
    assert torch.equal(out.sequences[0, T : T + n0], free[0, T : T + n0])  # same tokens up to EOS
    for row, reason in enumerate(out.finish_reasons):
        gen = out.new_tokens[row]
        if reason == "eos":
            assert gen[-1] == eos and eos not in gen[:-1]
        else:
            assert reason == "length" and len(gen) == 20 and eos not in gen
    # Several EOS ids: a row stops at whichever comes first.
    eos2 = int(free[1, T + 1])
    out2 = generate(model, ids, attention_mask=mask, max_new_tokens=20, eos_token_id=[eos, eos2], return_dict=True)
    assert out2.finish_reasons[1] == "eos" and int(out2.num_new_tokens[1]) <= 2


def test_all_rows_finished_stops_early():
    model = tiny()
    prompt = torch.tensor([[7, 8, 9]])
    free = generate(model, prompt, max_new_tokens=10)
    out = generate(model, prompt, max_new_tokens=10, eos_token_id=int(free[0, 4]), return_dict=True)
    assert out.sequences.shape[1] <= 5 and out.finish_reasons == ["eos"]


def test_stop_token_sequences():
    model = tiny()
    prompt = torch.tensor([[2, 4, 6, 8]])
    free = generate(model, prompt, max_new_tokens=16)[0, 4:].tolist()
    stop_seq = free[5:7]
    out = generate(model, prompt, max_new_tokens=16, stop=[stop_seq, [VOCAB - 1, VOCAB - 2, VOCAB - 3]],
                   return_dict=True)  # fmt: skip
    gen = out.new_tokens[0]
    assert out.finish_reasons == ["stop"]
    assert gen[-2:] == stop_seq and len(gen) <= 7
    assert gen == free[: len(gen)]
    # A stop sequence inside the prompt does not count.
    # [8, free[0]] spans the prompt's end and the first generated token: not a match either.
    assert all(free[i : i + 2] not in ([6, 8], [8, free[0]]) for i in range(4))
    out2 = generate(model, prompt, max_new_tokens=5, stop=[[6, 8], [8, free[0]]], return_dict=True)
    assert out2.finish_reasons == ["length"] and out2.new_tokens[0] == free[:5]


def test_temperature_zero_and_min_p_one_are_greedy():
    model = tiny()
    _, ids, mask = padded_batch()
    greedy = generate(model, ids, attention_mask=mask, max_new_tokens=12)
    t0 = generate(model, ids, attention_mask=mask, max_new_tokens=12, do_sample=True, temperature=0.0)
    mp = generate(model, ids, attention_mask=mask, max_new_tokens=12, do_sample=True, min_p=1.0)
    assert torch.equal(t0, greedy)
    assert torch.equal(mp, greedy)  # only the top token survives min_p=1


def test_repetition_penalty_reduces_repeats():
    model = tiny()
    prompt = torch.tensor([[1, 2, 3]])
    plain = generate(model, prompt, max_new_tokens=30)[0, 3:].tolist()
    penal = generate(model, prompt, max_new_tokens=30, repetition_penalty=3.0)[0, 3:].tolist()
    assert len(set(penal)) > len(set(plain))


def test_num_return_sequences_sampling_shapes():
    model = tiny()
    prompt = torch.tensor([[1, 2, 3], [4, 5, 6]])
    out = generate(model, prompt, max_new_tokens=6, do_sample=True, num_return_sequences=3,
                   generator=torch.Generator().manual_seed(0))  # fmt: skip
    assert out.shape == (6, 9)
    assert torch.equal(out[:3, :3], prompt[[0, 0, 0]]) and torch.equal(out[3:, :3], prompt[[1, 1, 1]])


def test_1d_prompt_is_accepted():
    model = tiny()
    a = generate(model, torch.tensor([5, 6, 7]), max_new_tokens=4)
    b = generate(model, torch.tensor([[5, 6, 7]]), max_new_tokens=4)
    assert torch.equal(a, b)


def test_beam_search_stops_on_stop_sequences_and_eos():
    model = tiny()
    prompt = torch.tensor([[2, 4, 6, 8]])
    best = generate(model, prompt, max_new_tokens=10, num_beams=3)[0, 4:].tolist()
    # length_penalty=0: a hypothesis that ends early keeps a higher (less negative) log-probability sum.
    out = generate(model, prompt, max_new_tokens=10, num_beams=3, length_penalty=0.0, stop=[best[1:3]],
                   return_dict=True)  # fmt: skip
    assert out.finish_reasons == ["stop"]
    assert out.new_tokens[0] == best[:3]
    out = generate(model, prompt, max_new_tokens=10, num_beams=3, length_penalty=0.0, eos_token_id=best[2],
                   return_dict=True)  # fmt: skip
    assert out.finish_reasons == ["eos"] and out.new_tokens[0][-1] == best[2] and len(out.new_tokens[0]) <= 3


@pytest.mark.parametrize("attention", available_attention())
def test_interleaved_streams_on_one_model_equal_their_solo_runs(attention):
    # Each generation owns its decoding state: opening stream B must not replace A's cache, and A finishing must not
    # free B's.
    model = tiny(attention)
    a_prompt, b_prompt = torch.tensor([[3, 1, 4, 1, 5]]), torch.tensor([[2, 7, 1]])
    a_solo = generate(model, a_prompt, max_new_tokens=12)[0, 5:].tolist()
    b_solo = generate(model, b_prompt, max_new_tokens=15)[0, 3:].tolist()
    a = stream_generate(model, a_prompt, max_new_tokens=12)
    a_got = [int(next(a)) for _ in range(3)]
    b = stream_generate(model, b_prompt, max_new_tokens=15)
    b_got = []
    for _ in range(9):
        a_got.append(int(next(a)))
        b_got.append(int(next(b)))
    assert list(a) == []  # A is done (its state freed); B goes on
    b_got += [int(t) for t in b]
    assert a_got == a_solo and b_got == b_solo
    # A generate() call in the middle of a stream does not disturb it either.
    c = stream_generate(model, a_prompt, max_new_tokens=12)
    c_got = [int(next(c)) for _ in range(4)]
    generate(model, b_prompt, max_new_tokens=5)
    c_got += [int(t) for t in c]
    assert c_got == a_solo
