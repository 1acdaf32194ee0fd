"""``generate(..., compile=True)``: the compiled prefill and one-token step give the eager tokens."""

from __future__ import annotations

import pytest
import torch

from lightning_gpt import GPT, GPTConfig
from lightning_gpt.generation import generate


@pytest.mark.slow
def test_compiled_greedy_equals_eager():
    # One small model, one compilation (about a minute of wall time on a loaded 2-core machine).
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=64, block_size=64, n_layer=2, n_head=2, n_embd=32)).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(10.0)
    prompt = torch.randint(0, 64, (2, 5))
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    eager = generate(model, prompt, attention_mask=mask, max_new_tokens=12)
    compiled = generate(model, prompt, attention_mask=mask, max_new_tokens=12, compile=True)
    assert torch.equal(compiled, eager)
    # Batch 1: the greedy step with its argmax inside, MatVecMode and STEP_INDUCTOR_OPTIONS (inductor's C++ code).
    one = generate(model, prompt[:1], max_new_tokens=12, compile=True)
    assert torch.equal(one, generate(model, prompt[:1], max_new_tokens=12))
    with pytest.raises(ValueError, match="use_cache=True"):
        generate(model, prompt, max_new_tokens=2, compile=True, use_cache=False)


def test_the_decode_weight_layout_is_captured_in_one_graph():
    # A model above DECODE_LAYOUT_MIN_BYTES runs its one-token step through functional_call with the generation's
    # weight layout; fullgraph capture (the "eager" backend: the capture without inductor's code generation) must take
    # it whole and give the eager tokens.
    from lightning_gpt.generation.sampling import DecodeState

    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=4096, block_size=64, n_layer=2, n_head=4, n_embd=256)).eval()
    prompt = torch.randint(0, 4096, (1, 5))
    assert DecodeState(model, prompt, None, 32).weights is not None
    eager = generate(model, prompt, max_new_tokens=32)
    assert torch.equal(generate(model, prompt, max_new_tokens=32, compile="eager"), eager)
