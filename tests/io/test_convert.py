"""Equivalence with an independent reference: Hugging Face GPT-2 with random weights."""

import pytest
import torch

from lightning_gpt import GPT, GPTConfig
from lightning_gpt.io.convert import from_hf_gpt2, to_hf_gpt2
from tests.helpers import tiny_hf_gpt2

transformers = pytest.importorskip("transformers")


def _hf_model(seed: int = 0, **kwargs):
    return tiny_hf_gpt2(seed, **kwargs)


@pytest.mark.parametrize("attention", ["standard", "flash"])
def test_logits_and_loss_match_hf(attention):
    hf = _hf_model()
    model = from_hf_gpt2(hf, attention=attention)
    idx = torch.randint(0, 100, (3, 40), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = hf(idx, labels=idx)
        logits, loss = model(idx[:, :-1], idx[:, 1:])
    torch.testing.assert_close(logits, ref.logits[:, :-1], atol=1e-5, rtol=0)
    # HF shifts labels internally: its loss is over the same next-token pairs.
    torch.testing.assert_close(loss, ref.loss, atol=1e-5, rtol=0)


def test_exact_gelu_activation_matches_hf():
    hf = _hf_model(activation_function="gelu")
    model = from_hf_gpt2(hf)
    assert model.config.activation == "gelu"
    idx = torch.randint(0, 100, (2, 17))
    with torch.no_grad():
        torch.testing.assert_close(model(idx), hf(idx).logits, atol=1e-5, rtol=0)


def test_round_trip_to_hf():
    torch.manual_seed(3)
    model = GPT(GPTConfig(vocab_size=90, block_size=32, n_layer=2, n_head=2, n_embd=16)).eval()
    hf = to_hf_gpt2(model).eval()
    idx = torch.randint(0, 90, (2, 32))
    with torch.no_grad():
        torch.testing.assert_close(hf(idx).logits, model(idx), atol=1e-5, rtol=0)
    back = from_hf_gpt2(hf)
    for (k1, v1), (k2, v2) in zip(model.state_dict().items(), back.state_dict().items()):
        assert k1 == k2
        torch.testing.assert_close(v1, v2, atol=0, rtol=0)


def test_to_hf_rejects_non_gpt2_architectures():
    model = GPT(GPTConfig.from_name("tiny", scale_embeddings=True))
    with pytest.raises(ValueError, match="scale_embeddings"):
        to_hf_gpt2(model)
