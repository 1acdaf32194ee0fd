"""Padded vocabulary tables: the padding survives the tokenizer, the table only grows, and padding ids never decode."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from lightning_gpt import GPT, GPTConfig
from lightning_gpt.generation import generate

TINY = dict(block_size=16, n_layer=2, n_head=2, n_embd=32)


def test_padded_vocab_size_rounds_up():
    assert GPTConfig.from_name("gpt2", padded_vocab_multiple=64).padded_vocab_size == 50304  # nanoGPT's table
    assert GPTConfig.from_name("gpt2").padded_vocab_size == 50257  # no padding by default
    with torch.device("meta"):
        model = GPT(GPTConfig(vocab_size=69, padded_vocab_multiple=64, **TINY))
    assert model.transformer.wte.weight.shape[0] == model.lm_head.weight.shape[0] == 128
    with pytest.raises(ValueError, match="padded_vocab_multiple"):
        GPTConfig(vocab_size=69, padded_vocab_multiple=0, **TINY)


def _attach_tokenizer(module, vocab: int) -> None:
    tokenizer = SimpleNamespace(vocab_size=vocab)
    module._trainer = SimpleNamespace(datamodule=SimpleNamespace(tokenizer=tokenizer))


def test_module_keeps_the_padding_and_only_grows_the_table():
    from lightning_gpt.training.module import GPTModule

    module = GPTModule(GPTConfig(vocab_size=50304, padded_vocab_multiple=64, **TINY))
    _attach_tokenizer(module, 50257)
    module.setup("fit")
    assert module.config.vocab_size == 50257 and module.config.padded_vocab_size == 50304

    # A model built beforehand keeps its table when the tokenizer fits into it ...
    built = GPTModule.from_model(GPT(GPTConfig(vocab_size=100, **TINY)))
    _attach_tokenizer(built, 90)
    built.setup("fit")
    assert built.model.lm_head.weight.shape[0] == 100
    # ... and refuses a tokenizer that does not fit, naming both sizes.
    small = GPTModule.from_model(GPT(GPTConfig(vocab_size=50, **TINY)))
    _attach_tokenizer(small, 90)
    with pytest.raises(ValueError, match="50 ids.*90 tokens"):
        small.setup("fit")


@pytest.mark.parametrize(
    "kwargs",
    [dict(), dict(do_sample=True, temperature=1.5), dict(do_sample=True, top_p=0.99), dict(num_beams=3)],
    ids=["greedy", "sample", "top_p", "beam"],
)
def test_padding_ids_are_never_decoded(kwargs):
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=10, padded_vocab_multiple=64, tie_weights=False, **TINY)).eval()
    # Make every padding id by far the most likely next token.
    head = torch.nn.Linear(32, 64, bias=True)
    with torch.no_grad():
        head.weight.copy_(model.lm_head.weight)
        head.bias.zero_()
        head.bias[10:] = 1e4
    model.lm_head = head
    prompt = torch.randint(0, 10, (2, 3))
    out = generate(model, prompt, max_new_tokens=8, generator=torch.Generator().manual_seed(0), **kwargs)
    assert int(out.max()) < 10
