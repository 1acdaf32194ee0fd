"""Decoding in another dtype: ``load_checkpoint(..., dtype=...)`` and ``lightning-gpt generate --dtype``."""

from __future__ import annotations

import pytest
import torch

from lightning_gpt import GPT, GPTConfig
from lightning_gpt.data import CharTokenizer
from lightning_gpt.generation import generate
from lightning_gpt.io.checkpoint import load_checkpoint, resolve_dtype

TINY = GPTConfig(vocab_size=40, block_size=32, n_layer=2, n_head=2, n_embd=32)


@pytest.fixture
def saved(tmp_path):
    torch.manual_seed(0)
    tokenizer = CharTokenizer("abcdefghijklmnopqrstuvwxyz .\n")
    model = GPT(GPTConfig(**{**TINY.to_dict(), "vocab_size": tokenizer.vocab_size}))
    path = tmp_path / "tiny.ckpt"
    torch.save(
        {
            "gpt_config": model.config.to_dict(),
            "state_dict": {"model." + k: v for k, v in model.state_dict().items()},
            "tokenizer": tokenizer.state_dict(),
        },
        path,
    )
    return model.eval(), path


@pytest.mark.parametrize("dtype", ["bfloat16", torch.bfloat16, "float16", "bf16"])
def test_load_checkpoint_casts_to_the_dtype_and_decodes(saved, dtype):
    model, path = saved
    loaded, _ = load_checkpoint(path, dtype=dtype)
    assert {p.dtype for p in loaded.parameters()} == {resolve_dtype(dtype)}
    x = torch.randint(0, model.config.vocab_size, (1, 8))
    with torch.inference_mode():
        torch.testing.assert_close(loaded(x).float(), model(x), rtol=0.05, atol=0.05)
    out = generate(loaded, x, max_new_tokens=8)
    assert out.shape == (1, 16)


def test_load_checkpoint_default_dtype_is_the_saved_one(saved):
    loaded, _ = load_checkpoint(saved[1])
    assert {p.dtype for p in loaded.parameters()} == {torch.float32}
    loaded, _ = load_checkpoint(saved[1], dtype="float32")
    assert {p.dtype for p in loaded.parameters()} == {torch.float32}


@pytest.mark.parametrize("bad", ["int8", "float128", "magic", torch.int64])
def test_bad_dtype_is_a_clear_error(saved, bad):
    with pytest.raises(ValueError, match="dtype") as err:
        load_checkpoint(saved[1], dtype=bad)
    assert "bfloat16" in str(err.value)  # names what is accepted


def test_generate_cli_dtype(cli, saved):
    _, path = saved
    args = ["generate", "--ckpt_path", path, "--prompt", "the ", "--max_new_tokens", "6", "--temperature", "0"]
    result = cli(*args, "--dtype", "bfloat16")
    assert result.code == 0, result.err
    assert result.out.startswith("the ")
    bad = cli(*args, "--dtype", "int8")
    assert bad.code == 2
    assert "int8" in bad.err and "Traceback" not in bad.err


# Above DECODE_LAYOUT_MIN_BYTES of linear weights (10.5 MB), so the generation takes its own weight layout.
STREAMED = GPTConfig(vocab_size=4096, block_size=64, n_layer=2, n_head=4, n_embd=256)


def test_decode_weight_layout_gives_the_same_logits_leaves_the_model_alone_and_never_goes_stale():
    # The generation's decode-time layout of the linear weights (float32 on CPU: stored (in, out), a faster mat-vec)
    # gives the model's own logits, changes nothing in the model, and is taken anew by each generation: after a weight
    # change the next generation decodes with the new weights.
    from lightning_gpt.generation.sampling import DECODE_LAYOUT_MIN_TOKENS, decode_weights, model_logits

    torch.manual_seed(0)
    model = GPT(STREAMED).eval()
    before = {k: (v.data_ptr(), v.stride()) for k, v in model.state_dict().items()}
    weights = decode_weights(model, batch_size=2)
    linears = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    assert weights is not None and sorted(weights) == sorted(f"{n}.weight" for n in linears) and len(linears) == 9
    for name, w in weights.items():
        own = model.get_parameter(name)
        assert torch.equal(w, own) and w.t().is_contiguous() and w.data_ptr() != own.data_ptr()
    bf16 = GPT(STREAMED).eval().to(torch.bfloat16)
    assert decode_weights(model, batch_size=9) is None and decode_weights(bf16, batch_size=1) is None
    assert decode_weights(GPT(TINY), batch_size=1) is None  # 0.1 MB: sits in cache, the layout does not pay
    assert decode_weights(model, batch_size=1, new_tokens=8) is None  # too short to earn the copy back
    x = torch.randint(0, STREAMED.vocab_size, (2, 8))
    with torch.inference_mode():
        cache = model.new_cache(2, 16)
        with_layout = model_logits(model, x, torch.arange(8), cache, None, None, STREAMED.vocab_size, 8, weights)
        plain = model(x)
    torch.testing.assert_close(with_layout, plain.float(), rtol=1e-5, atol=1e-5)
    assert {k: (v.data_ptr(), v.stride()) for k, v in model.state_dict().items()} == before
    assert model.lm_head.weight is model.transformer.wte.weight  # still tied
    # Each generation takes its own copies (never kept: comparing would cost more than copying).
    again = decode_weights(model, batch_size=1)
    assert again is not None and all(again[k] is not weights[k] and torch.equal(again[k], weights[k]) for k in weights)
    ids = torch.tensor([[1, 2, 3]])
    first = generate(model, ids, max_new_tokens=DECODE_LAYOUT_MIN_TOKENS)
    with torch.no_grad():  # "a training step": the weights change after the generation
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    reference = GPT(STREAMED).eval()
    reference.load_state_dict(model.state_dict())  # a fresh model: nothing of the first generation can reach it
    n = DECODE_LAYOUT_MIN_TOKENS
    assert torch.equal(generate(model, ids, max_new_tokens=n), generate(reference, ids, max_new_tokens=n))
    assert first.shape == (1, 3 + n)
