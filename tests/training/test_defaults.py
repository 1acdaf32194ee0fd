"""``GPTModule.configure_callbacks``: a plain ``Trainer(...).fit(GPTModule(...), data)`` gets the default callbacks
of the CLI (schedule, clipping, samples, non-finite guard, loss curve, throughput), each replaceable; throughput
reaches every logger from the first logging step, through a plain ``Trainer`` and through the command."""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

from lightning_gpt.training import GPTModule
from lightning_gpt.training.callbacks import GPTThroughputMonitor, GradientClipping, LRSchedule, lr_at
from lightning_gpt.training.callbacks.defaults import DEFAULT_CALLBACKS
from tests.helpers import ToyData, plain_trainer, tiny_gpt_config


class StepRecorder(pl.Callback):
    """The lr and the gradient norm each optimizer step applies: read in an optimizer step pre-hook, which runs after
    every ``on_before_optimizer_step`` callback (clipping included)."""

    def __init__(self) -> None:
        self.lrs: list[float] = []
        self.applied_norms: list[float] = []

    def on_train_start(self, trainer, pl_module):
        def record(optimizer, *args, **kwargs):
            grads = [p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
            self.applied_norms.append(float(torch.nn.utils.get_total_norm(grads)))
            self.lrs.append(optimizer.param_groups[0]["lr"])

        trainer.optimizers[0].register_step_pre_hook(record)


def _rows(log_dir: str, key: str) -> list[dict[str, str]]:
    with open(Path(log_dir) / "metrics.csv") as f:
        return [r for r in csv.DictReader(f) if r.get(key)]


def test_a_plain_trainer_gets_the_default_callbacks(tmp_path):
    torch.manual_seed(0)
    module = GPTModule(tiny_gpt_config(), learning_rate=1e-2)
    rec = StepRecorder()
    logger = CSVLogger(tmp_path)
    trainer = plain_trainer(tmp_path, [rec], max_steps=6, log_every_n_steps=2, logger=logger)
    trainer.fit(module, ToyData())

    kinds = [type(c) for c in trainer.callbacks]
    for kind in DEFAULT_CALLBACKS:
        assert kinds.count(kind) == 1, kind
    # the schedule moved the lr: the default warmup (100 steps) over these 6 steps
    expected = [lr_at(s, base_lr=1e-2, warmup_steps=100, decay_steps=100, min_lr=1e-3) for s in range(6)]
    assert rec.lrs == pytest.approx(expected)
    # clipping happened: the logged norm (before clipping) is above 1, the applied one is clipped to 1
    norms = [float(r["train/grad_norm"]) for r in _rows(logger.log_dir, "train/grad_norm")]
    assert len(norms) == 3 and all(n > 1.0 for n in norms), norms
    assert max(rec.applied_norms) == pytest.approx(1.0, rel=1e-4)
    # losses, lr, tokens/s logged on the logging steps; the loss curve drawn at the end
    for key in ("train/loss", "train/lr", "train/tokens_per_sec", "train/flops_per_sec"):
        assert [int(r["step"]) for r in _rows(logger.log_dir, key)] == [1, 3, 5], key
    assert (tmp_path / "loss.png").is_file()


def test_the_cli_and_a_plain_trainer_have_the_same_default_callbacks(tmp_path, run_yaml, monkeypatch):
    from lightning_gpt.cli.fit import GPTLightningCLI

    monkeypatch.setattr(sys, "argv", ["lightning-gpt"])
    cli = GPTLightningCLI(args=["--config", str(run_yaml())], run=False)
    trainer = plain_trainer(tmp_path, max_steps=1)
    trainer.fit(GPTModule(tiny_gpt_config()), ToyData())
    defaults = set(DEFAULT_CALLBACKS)
    assert {type(c) for c in cli.trainer.callbacks} & defaults == defaults
    assert {type(c) for c in trainer.callbacks} & defaults == defaults
    # the CLI configured each itself (a flag group each), so the module adds none of them again
    assert sum(isinstance(c, GPTThroughputMonitor) for c in cli.trainer.callbacks) == 1


def test_a_callback_given_to_the_trainer_wins_and_each_can_be_switched_off(tmp_path):
    torch.manual_seed(0)
    rec = StepRecorder()
    mine = LRSchedule(warmup_steps=0, schedule="constant")
    trainer = plain_trainer(tmp_path, [mine, GradientClipping(max_norm=None), rec], max_steps=3)
    trainer.fit(GPTModule(tiny_gpt_config(), learning_rate=1e-2), ToyData())
    schedules = [c for c in trainer.callbacks if isinstance(c, LRSchedule)]
    assert schedules == [mine] and rec.lrs == [1e-2] * 3  # the user's constant schedule, no warmup
    assert max(rec.applied_norms) > 1.0  # GradientClipping(max_norm=None): no clipping
    assert sum(isinstance(c, GradientClipping) for c in trainer.callbacks) == 1


def test_trainer_clipping_replaces_ours_and_default_callbacks_false_adds_none(tmp_path):
    trainer = plain_trainer(tmp_path, max_steps=1, gradient_clip_val=0.5)
    trainer.fit(GPTModule(tiny_gpt_config()), ToyData())  # no "clipped twice" error: ours is left out
    assert not any(isinstance(c, GradientClipping) for c in trainer.callbacks)
    assert any(isinstance(c, LRSchedule) for c in trainer.callbacks)
    trainer = plain_trainer(tmp_path, max_steps=1)
    trainer.fit(GPTModule(tiny_gpt_config(), default_callbacks=False), ToyData())
    assert not {type(c) for c in trainer.callbacks} & set(DEFAULT_CALLBACKS)
    with pytest.raises(ValueError, match="default_callbacks must be true or false"):
        GPTModule(tiny_gpt_config(), default_callbacks="no")


def _tensorboard_scalars(log_dir: str) -> dict[str, list[int]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(log_dir, size_guidance={"scalars": 0}).Reload()
    return {tag: [e.step for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def test_throughput_reaches_tensorboard_from_the_first_logging_step(tmp_path):
    torch.manual_seed(0)
    logger = TensorBoardLogger(tmp_path)
    plain_trainer(tmp_path, max_steps=4, log_every_n_steps=2, logger=logger).fit(
        GPTModule(tiny_gpt_config()), ToyData()
    )
    logger.experiment.flush()
    steps = _tensorboard_scalars(logger.log_dir)
    assert steps["train/tokens_per_sec"] == steps["train/loss"] == [1, 3]  # global steps 2 and 4
    assert steps["train/flops_per_sec"] == [1, 3]
    assert "train/mfu" not in steps  # no known peak for a CPU: not made up


def test_throughput_through_the_command_from_the_first_logging_step(cli, run_yaml, tmp_path):
    logger = {"class_path": "lightning.pytorch.loggers.TensorBoardLogger", "init_args": {"save_dir": str(tmp_path)}}
    cfg = run_yaml(**{"trainer.logger": logger, "trainer.log_every_n_steps": 2, "trainer.max_steps": 4})
    assert cli("fit", "--config", cfg).code == 0
    (log_dir,) = {p.parent for p in tmp_path.rglob("events.out.tfevents.*")}
    steps = _tensorboard_scalars(str(log_dir))
    assert steps["train/tokens_per_sec"] == steps["train/loss"] == [1, 3]
    assert steps["train/flops_per_sec"] == [1, 3]
