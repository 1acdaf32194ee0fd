"""Each private torch name we rely on (``lightning_gpt/training/_torch_internals.py``), on the installed version."""

from __future__ import annotations

import torch

from lightning_gpt.model import Block
from lightning_gpt.training import _torch_internals as internals
from tests.helpers import tiny_gpt_config


def test_foreach_mul_scales_every_tensor_in_place():
    tensors = [torch.ones(3), torch.full((2, 2), 2.0)]
    internals.foreach_mul_(tensors, 0.5)
    torch.testing.assert_close(tensors[0], torch.full((3,), 0.5))
    torch.testing.assert_close(tensors[1], torch.ones(2, 2))


def test_checkpoint_activations_keeps_names_and_gradients():
    torch.manual_seed(0)
    block = Block(tiny_gpt_config())
    reference = Block(tiny_gpt_config())
    reference.load_state_dict(block.state_dict())
    names = [name for name, _ in block.named_parameters()]
    internals.checkpoint_activations(block)
    assert [name for name, _ in block.named_parameters()] == names  # composable: no wrapper prefix
    x = torch.randn(2, 8, 32)
    block(x).square().sum().backward()
    reference(x).square().sum().backward()
    for (name, a), b in zip(block.named_parameters(), reference.parameters()):
        torch.testing.assert_close(a.grad, b.grad, msg=name)  # recomputed in backward, same gradients


def test_scaler_has_unscaled_follows_the_scaler_stage():
    p = torch.nn.Parameter(torch.ones(4))
    optimizer = torch.optim.SGD([p], lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=8.0)
    scaler.scale(p.sum()).backward()
    assert not internals.scaler_has_unscaled(scaler, optimizer)
    scaler.unscale_(optimizer)
    assert internals.scaler_has_unscaled(scaler, optimizer)
    torch.testing.assert_close(p.grad, torch.ones(4))  # unscaled to the true gradient


def test_is_view():
    from lightning_gpt.training._torch_internals import is_view

    base = torch.zeros(4, 3)
    assert is_view(base[1]) and is_view(base.t())
    assert not is_view(base) and not is_view(base.clone())
