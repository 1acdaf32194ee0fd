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
    with pytest.raises(ValueError, match="use_cache=True"):
        generate(model, prompt, max_new_tokens=2, compile=True, use_cache=False)
