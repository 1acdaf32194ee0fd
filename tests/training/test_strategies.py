"""The named distributed presets: construction, options, errors, and selection from the CLI/YAML."""

from __future__ import annotations

import json
import sys
from datetime import timedelta

import pytest
import torch

from lightning_gpt.training.strategies import DDPStrategy, FSDP1Strategy, FSDP2Strategy, resolve_dtype


def test_ddp_timeout_is_configurable_in_minutes():
    strategy = DDPStrategy(timeout_minutes=0.5, process_group_backend="gloo")
    assert strategy._timeout == timedelta(seconds=30)
    assert strategy.process_group_backend == "gloo"
    assert DDPStrategy()._timeout == timedelta(minutes=30)


def test_fsdp2_options_are_read_by_the_module():
    strategy = FSDP2Strategy(activation_checkpointing=True, param_dtype="bf16", reduce_dtype="float32")
    assert strategy.activation_checkpointing is True
    assert strategy.param_dtype == torch.bfloat16 and strategy.reduce_dtype == torch.float32
    policy = strategy.mixed_precision_policy()
    assert policy.param_dtype == torch.bfloat16 and policy.reduce_dtype == torch.float32
    assert FSDP2Strategy().mixed_precision_policy() is None
    assert strategy._save_distributed_checkpoint is True  # sharded checkpoint folders by default
    assert strategy._tensor_parallel_size == 1


def test_fsdp1_wraps_and_checkpoints_each_block():
    from lightning_gpt.model import Block

    strategy = FSDP1Strategy(sharding_strategy="SHARD_GRAD_OP", activation_checkpointing=True)
    assert strategy._timeout == timedelta(minutes=30)
    policy = strategy.kwargs["auto_wrap_policy"]
    assert Block in getattr(policy, "_module_classes", {Block})
    assert strategy._activation_checkpointing_kwargs
    assert FSDP1Strategy()._activation_checkpointing_kwargs == {}


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: FSDP2Strategy(param_dtype="bf15"), "FSDP2Strategy.param_dtype='bf15'"),
        (lambda: FSDP2Strategy(reduce_dtype="half-ish"), "reduce_dtype"),
        (lambda: FSDP2Strategy(tensor_parallel_size=2), "tensor_parallel_size=1"),
        (lambda: DDPStrategy(timeout_minutes=0), "timeout_minutes must be a positive number"),
        (lambda: FSDP2Strategy(timeout_minutes=-1), "timeout_minutes"),
        (lambda: FSDP2Strategy(cpu_mmap_threshold=0), "cpu_mmap_threshold=0"),
    ],
)
def test_bad_options_raise_clear_errors(make, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        make()


def test_resolve_dtype_names():
    assert resolve_dtype(None) is None
    assert resolve_dtype("torch.float16") == torch.float16
    assert resolve_dtype("BF16") == torch.bfloat16


def test_yaml_selects_a_preset_with_init_args(tmp_path, monkeypatch):
    from lightning_gpt.cli import GPTLightningCLI

    monkeypatch.setattr(sys, "argv", ["lightning-gpt"])
    (tmp_path / "c.txt").write_text("hello world " * 200)
    spec = json.dumps(
        {
            "class_path": "lightning_gpt.training.strategies.FSDP2Strategy",
            "init_args": {"activation_checkpointing": True},
        }
    )
    cli = GPTLightningCLI(
        args=[
            "--trainer.accelerator=cpu",
            "--trainer.devices=2",
            "--trainer.logger=false",
            "--trainer.strategy",
            spec,
            f"--data.source={tmp_path / 'c.txt'}",
        ],
        run=False,
    )
    assert isinstance(cli.trainer.strategy, FSDP2Strategy)
    assert cli.trainer.strategy.activation_checkpointing is True
    spec = '{"class_path": "lightning_gpt.training.strategies.DDPStrategy", "init_args": {"timeout_minutes": 2}}'
    cli = GPTLightningCLI(
        args=["--trainer.accelerator=cpu", "--trainer.devices=2", "--trainer.logger=false", "--trainer.strategy", spec],
        run=False,
    )
    assert isinstance(cli.trainer.strategy, DDPStrategy)
    assert cli.trainer.strategy._timeout == timedelta(minutes=2)


def test_fsdp2_fixes_mallocs_mmap_threshold_on_cpu_by_default():
    import sys

    from lightning_gpt.training.strategies import fix_mmap_threshold

    assert FSDP2Strategy().cpu_mmap_threshold == 131072
    assert FSDP2Strategy(cpu_mmap_threshold=None).cpu_mmap_threshold is None
    if sys.platform.startswith("linux"):
        assert fix_mmap_threshold(131072)  # glibc accepted it (the memory effect: benchmarks/fsdp_memory.py)
