"""The plain-PyTorch GPT: shapes, loss, init, presets, and independence from Lightning."""

import math
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from lightning_gpt import GPT, GPTConfig


def tiny(**kw) -> GPTConfig:
    return GPTConfig.from_name("tiny", **kw)


def test_logits_shape_and_loss_is_mean_cross_entropy():
    torch.manual_seed(0)
    model = GPT(tiny())
    idx = torch.randint(0, 128, (3, 16))
    targets = torch.randint(0, 128, (3, 16))
    logits = model(idx)
    assert logits.shape == (3, 16, 128)
    logits2, loss = model(idx, targets)
    torch.testing.assert_close(logits, logits2)
    expected = F.cross_entropy(logits.reshape(-1, 128), targets.reshape(-1))
    torch.testing.assert_close(loss, expected)


def test_padding_targets_are_ignored():
    torch.manual_seed(0)
    model = GPT(tiny())
    idx = torch.randint(0, 128, (2, 10))
    targets = torch.randint(0, 128, (2, 10))
    targets[:, 6:] = -100
    logits, loss = model(idx, targets)
    expected = F.cross_entropy(logits[:, :6].reshape(-1, 128), targets[:, :6].reshape(-1))
    torch.testing.assert_close(loss, expected)


def test_logits_to_keep_returns_the_last_positions():
    torch.manual_seed(0)
    model = GPT(tiny())
    idx = torch.randint(0, 128, (2, 12))
    full = model(idx)
    torch.testing.assert_close(model(idx, logits_to_keep=1), full[:, -1:])
    torch.testing.assert_close(model(idx, logits_to_keep=5), full[:, -5:])
    with pytest.raises(ValueError, match="logits_to_keep cannot be combined with targets"):
        model(idx, idx, logits_to_keep=1)


def test_gpt2_init_statistics():
    torch.manual_seed(0)
    config = GPTConfig(vocab_size=1000, block_size=128, n_layer=8, n_head=4, n_embd=256)
    model = GPT(config)
    fc = model.transformer.h[0].mlp.c_fc.weight
    proj = model.transformer.h[0].mlp.c_proj.weight
    assert abs(fc.std().item() - 0.02) < 0.002
    assert abs(proj.std().item() - 0.02 / math.sqrt(2 * 8)) < 0.001
    assert abs(model.transformer.wte.weight.std().item() - 0.02) < 0.002
    assert torch.all(model.transformer.h[0].attn.c_attn.bias == 0)
    assert model.lm_head.weight is model.transformer.wte.weight


def test_untied_head_and_no_bias():
    model = GPT(tiny(tie_weights=False, bias=False))
    assert model.lm_head.weight is not model.transformer.wte.weight
    assert model.transformer.h[0].attn.c_attn.bias is None
    assert model.transformer.ln_f.bias is None


def test_scale_embeddings_multiplies_token_embeddings_by_sqrt_width():
    torch.manual_seed(0)
    plain = GPT(tiny(n_layer=1))
    scaled = GPT(tiny(n_layer=1, scale_embeddings=True))
    scaled.load_state_dict(plain.state_dict())
    captured = {}
    for name, m in (("plain", plain), ("scaled", scaled)):
        m.transformer.drop.register_forward_hook(lambda mod, inp, out, name=name: captured.__setitem__(name, inp[0]))
        m(torch.arange(8)[None])
    pos = plain.transformer.wpe.weight[:8]
    torch.testing.assert_close(captured["scaled"] - pos, (captured["plain"] - pos) * math.sqrt(32))


def test_gpt2_preset_parameter_count():
    # GPT-2 small has 124M parameters (the 124,439,808 figure counts the 1024x768 position table too).
    with torch.device("meta"):
        model = GPT(GPTConfig.from_name("gpt2"))
    assert model.num_parameters(non_embedding=False) == 124_439_808


@pytest.mark.parametrize("name", ["gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl", "tiny", "small-char"])
def test_presets_build(name):
    config = GPTConfig.from_name(name)
    assert config.n_embd % config.n_head == 0


def test_unknown_preset():
    with pytest.raises(ValueError, match="Unknown GPTConfig preset 'gpt5'"):
        GPTConfig.from_name("gpt5")


def test_sequence_longer_than_context_is_a_clear_error():
    model = GPT(tiny(block_size=8))
    with pytest.raises(ValueError, match="exceeds the model's context"):
        model(torch.zeros(1, 9, dtype=torch.long))


def test_config_dict_round_trip_and_unknown_key():
    config = tiny(attention="flash")
    assert GPTConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="Unknown GPTConfig field"):
        GPTConfig.from_dict({**config.to_dict(), "n_layers": 3})


def test_model_imports_without_lightning():
    code = (
        "import sys\n"
        "from lightning_gpt import GPT, GPTConfig\n"
        "GPT(GPTConfig.from_name('tiny'))\n"
        "loaded = [m for m in sys.modules if m.split('.')[0] in ('lightning', 'pytorch_lightning')]\n"
        "assert not loaded, loaded\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_a_layer_step_through_the_kept_cache_equals_the_full_pass():
    from lightning_gpt.model import LayerStep

    torch.manual_seed(0)
    model = GPT(tiny()).eval()
    model.setup_cache(2, 8, dtype=torch.float64)  # new_cache's placement keywords pass through
    block = model.transformer.h[0]
    assert all(t.dtype == torch.float64 for t in block.attn.state.values())
    model.setup_cache(2, 8)
    x = torch.randn(2, 6, model.config.n_embd)
    with torch.no_grad():
        full = block(x)  # step=None: the full causal pass
        first = block(x[:, :4], None, LayerStep(0))  # state=None: the cache setup_cache kept
        rest = block(x[:, 4:], None, LayerStep(torch.arange(4, 6)))
        owned = block(x, None, LayerStep(0, model.new_cache(2, 8)[0]))  # a caller-owned state
    torch.testing.assert_close(torch.cat([first, rest], dim=1), full)
    torch.testing.assert_close(owned, full)
    model.clear_cache()
    with pytest.raises(RuntimeError, match="without a cache"):
        block(x, None, LayerStep(0))
