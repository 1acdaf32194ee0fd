"""FSDP2 that shards from the start (``lightning_gpt.training.meta_init`` / ``parallelize.build_parallel``): the model
built on the meta device and materialized shard by shard holds the weights of ``GPT(config)`` built in one process
after the same seed, bit for bit; parameters and AdamW state are shards; activation checkpointing and the mixed
precision policy run on CPU (gloo) with the expected results.

The two-rank part is one ``torchrun --standalone --nproc_per_node 2`` of a script (no Lightning start-up), so the test
process never joins a process group.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lightning_gpt.model import GPT
from lightning_gpt.training.meta_init import materialize_recorded, record_meta_build
from tests.helpers import tiny_gpt_config

SCRIPT = r"""
import json, os, sys
import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor import DTensor
from lightning_gpt.model import GPT
from lightning_gpt.config import GPTConfig
from lightning_gpt.training.parallelize import build_parallel


class Strategy:  # the attributes FSDP2Strategy exposes
    def __init__(self, activation_checkpointing=False, param_dtype=None, reduce_dtype=None):
        self.activation_checkpointing = activation_checkpointing
        self.param_dtype, self.reduce_dtype, self.reshard_after_forward = param_dtype, reduce_dtype, True


dist.init_process_group("gloo")
rank = dist.get_rank()
mesh = init_device_mesh("cpu", (2,))
config = GPTConfig(vocab_size=37, block_size=16, n_layer=2, n_head=2, n_embd=32, dropout=0.0)
x = torch.randint(0, 37, (4, 16), generator=torch.Generator().manual_seed(0))
y = torch.randint(0, 37, (4, 16), generator=torch.Generator().manual_seed(1))


def step(model):
    # this rank's half of the global batch; the loss of the whole batch is the mean of the two halves
    rows = slice(2 * rank, 2 * rank + 2)
    logits = model(x[rows])
    loss = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), y[rows].flatten())
    loss.backward()
    total = loss.detach().clone()
    dist.all_reduce(total)
    grads = {}
    global grad_local
    grad_local = sum(p.grad.to_local().numel() for p in model.parameters())  # before gathering: this rank's shards
    for name, p in model.named_parameters():
        g = p.grad.full_tensor() if isinstance(p.grad, DTensor) else p.grad
        grads[name] = g
    return float(total) / 2, grads


out = {}
for name, strategy in {
    "plain": Strategy(),
    "ac": Strategy(activation_checkpointing=True),
    "bf16": Strategy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32),
}.items():
    torch.manual_seed(1234)
    model = build_parallel(lambda: GPT(config), mesh, strategy, torch.device("cpu"))
    after = torch.rand(4).tolist()  # the generator continues where a one-process build leaves it
    full = {k: v.full_tensor() for k, v in model.state_dict().items()}
    local = sum(p.to_local().numel() for p in model.parameters())
    loss, grads = step(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    optimizer.step()
    state = optimizer.state[model.transformer.wte.weight]
    out[name] = dict(
        loss=loss,
        after=after,
        local=local,
        grad_local=grad_local,
        total=sum(p.numel() for p in model.parameters()),
        dtypes=sorted({str(p.dtype) for p in model.parameters()}),
        grad_dtypes=sorted({str(g.dtype) for g in grads.values()}),
        exp_avg_local=list(state["exp_avg"].to_local().shape),
        exp_avg_global=list(state["exp_avg"].shape),
        tied=model.lm_head.weight is model.transformer.wte.weight,
    )
    if rank == 0:
        torch.save({"initial": full, "grads": grads}, os.path.join(sys.argv[1], f"{name}.pt"))
if rank == 0:
    with open(os.path.join(sys.argv[1], "out.json"), "w") as f:
        json.dump(out, f)
dist.destroy_process_group()
"""


def test_a_meta_build_replays_the_initialization_of_one_process():
    config = tiny_gpt_config(n_layer=3)
    torch.manual_seed(7)
    reference = GPT(config)
    after_reference = torch.rand(5)
    torch.manual_seed(7)
    recorded = record_meta_build(lambda: GPT(config), torch.device("cpu"))
    assert recorded is not None
    model, recording = recorded
    assert all(p.is_meta for p in model.parameters())  # nothing allocated yet
    materialize_recorded(model, recording)
    assert torch.equal(torch.rand(5), after_reference)  # the generator ends where the one-process build left it
    assert model.lm_head.weight is model.transformer.wte.weight  # still tied
    for name, value in reference.state_dict().items():
        assert torch.equal(model.state_dict()[name], value), name


def test_a_build_that_cannot_be_replayed_falls_back_with_the_generator_untouched():
    class CopiesAnotherTensor(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = torch.nn.Parameter(torch.randn(3))
            self.b = torch.nn.Parameter(torch.empty(3))
            with torch.no_grad():
                self.b.copy_(self.a)  # reads another (meta) tensor: no replay possible

    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    assert record_meta_build(CopiesAnotherTensor, torch.device("cpu")) is None
    assert torch.equal(torch.rand(3), expected)


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory) -> tuple[dict, Path]:
    folder = tmp_path_factory.mktemp("meta")
    script = folder / "run.py"
    script.write_text(SCRIPT)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    result = subprocess.run([*command, str(script), str(folder)], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads((folder / "out.json").read_text()), folder


@pytest.mark.slow
def test_sharded_from_the_start_with_the_weights_of_one_process(two_ranks):
    out, folder = two_ranks
    config = tiny_gpt_config(vocab_size=37, dropout=0.0)
    torch.manual_seed(1234)
    reference = GPT(config)
    after = torch.rand(4).tolist()
    for name in ("plain", "ac", "bf16"):
        initial = torch.load(folder / f"{name}.pt")["initial"]
        for key, value in reference.state_dict().items():
            assert torch.equal(initial[key], value), (name, key)  # bit-equal after gathering the shards
        assert out[name]["after"] == after
        assert out[name]["tied"]
        # parameters, gradients and AdamW moments are shards: this rank holds about half of each
        assert out[name]["local"] <= out[name]["total"] // 2 + 64
        assert out[name]["grad_local"] <= out[name]["total"] // 2 + 64  # gradients too
        assert out[name]["exp_avg_local"][0] < out[name]["exp_avg_global"][0]


@pytest.mark.slow
def test_activation_checkpointing_and_mixed_precision_on_cpu(two_ranks):
    out, folder = two_ranks
    config = tiny_gpt_config(vocab_size=37, dropout=0.0)
    torch.manual_seed(1234)
    reference = GPT(config)
    x = torch.randint(0, 37, (4, 16), generator=torch.Generator().manual_seed(0))
    y = torch.randint(0, 37, (4, 16), generator=torch.Generator().manual_seed(1))
    loss = torch.nn.functional.cross_entropy(reference(x).flatten(0, 1), y.flatten())
    loss.backward()
    loss = loss.detach()
    # fp32, with and without activation checkpointing: the loss and gradients of one process over the global batch
    for name in ("plain", "ac"):
        assert out[name]["loss"] == pytest.approx(float(loss), rel=1e-6, abs=1e-6)
        grads = torch.load(folder / f"{name}.pt")["grads"]
        for key, param in reference.named_parameters():
            torch.testing.assert_close(grads[key], param.grad, rtol=1e-5, atol=1e-6, msg=key)
    ac, plain = (torch.load(folder / f"{n}.pt")["grads"] for n in ("ac", "plain"))
    for key in plain:  # recomputing the activations changes nothing
        torch.testing.assert_close(ac[key], plain[key], rtol=0, atol=1e-7, msg=key)
    # bf16 compute, fp32 reduction: sharded master weights and their gradients stay fp32, the loss is bf16-close
    assert out["bf16"]["dtypes"] == ["torch.float32"] and out["bf16"]["grad_dtypes"] == ["torch.float32"]
    assert out["bf16"]["loss"] == pytest.approx(float(loss), rel=2e-2)
    assert out["bf16"]["loss"] != pytest.approx(float(loss), rel=1e-6, abs=1e-6)  # it did compute in bf16
