"""The examples run and do what they claim: a GPTModule subclass (z-loss, own optimizer) and a user attention core."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def load(name: str):
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_subclass_module_example():
    example = load("subclass_module")
    module, losses = example.main(max_steps=15)
    assert len(losses) == 15 and losses[-1] < losses[0] - 0.3
    # the z-loss term is really added
    torch.manual_seed(0)
    logits, targets = torch.randn(2, 5, 64) * 3, torch.randint(0, 64, (2, 5))
    ce = F.cross_entropy(logits.flatten(0, 1), targets.flatten())
    z = torch.logsumexp(logits, -1).square().mean()
    module.train()
    torch.testing.assert_close(module.compute_loss(logits, targets), ce + module.z_weight * z)
    # the overridden optimizer: embeddings in their own groups at a scaled lr, every parameter exactly once
    opt = module.configure_optimizers()
    emb = {id(module.model.transformer.wte.weight), id(module.model.transformer.wpe.weight)}
    emb_groups = [g for g in opt.param_groups if any(id(p) in emb for p in g["params"])]
    assert emb_groups and all(g["lr"] == module.learning_rate * module.embedding_lr_scale for g in emb_groups)
    ids = [id(p) for g in opt.param_groups for p in g["params"]]
    assert len(ids) == len(set(ids)) == len(list(module.parameters()))


@pytest.mark.slow
def test_custom_attention_example():
    example = load("custom_attention")
    from lightning_gpt.attention import available_attention

    assert "alibi" in available_attention()
    module, losses = example.main(max_steps=12)  # main() also checks cached == uncached decoding
    assert losses[-1] < losses[0]
    assert all(isinstance(b.attn.core, example.ALiBiAttention) for b in module.model.transformer.h)
    # ALiBi really biases: with zero slopes the core reduces to standard attention, and the outputs differ otherwise
    core = module.model.transformer.h[0].attn.core.eval()
    q, k, v = (torch.randn(1, 4, 6, 8) for _ in range(3))
    from lightning_gpt.attention.standard import StandardAttention

    standard = StandardAttention(module.config).eval()
    assert not torch.allclose(core(q, k, v), standard(q, k, v))
    core.slopes.zero_()
    torch.testing.assert_close(core(q, k, v), standard(q, k, v))
