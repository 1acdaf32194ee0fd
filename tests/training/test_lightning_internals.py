"""Each private Lightning internal we rely on (``lightning_gpt/_lightning_internals.py``), on the installed version."""

from __future__ import annotations

import importlib

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from torch.utils.data import DataLoader, TensorDataset

from lightning_gpt.training import _lightning_internals as internals


class _Tiny(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(4, 1)

    def training_step(self, batch, batch_idx):
        return self.layer(batch[0]).pow(2).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)

    def train_dataloader(self):
        return DataLoader(TensorDataset(torch.randn(32, 4)), batch_size=4)


class _Record(Callback):
    def __init__(self) -> None:
        self.logging, self.processed, self.batch_idx, self.optimizers = [], [], [], []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.logging.append(internals.should_update_logs(trainer))
        self.processed.append(internals.batches_processed_this_epoch(trainer))
        self.batch_idx.append(batch_idx)
        self.optimizers.append(internals.unwrap_optimizer(pl_module.optimizers()))


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("internals")
    module, record = _Tiny(), _Record()
    assert internals.attached_trainer(module) is None  # detached: the public property would raise
    checkpoint = ModelCheckpoint(dirpath=tmp, every_n_train_steps=3, save_top_k=-1)
    trainer = pl.Trainer(
        max_steps=6,
        log_every_n_steps=2,
        callbacks=[record, checkpoint],
        logger=pl.loggers.CSVLogger(tmp),
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
    )
    trainer.fit(module)
    return trainer, module, record, checkpoint


def test_attached_trainer(fitted):
    trainer, module, _, _ = fitted
    assert internals.attached_trainer(module) is trainer


def test_should_update_logs_follows_log_every_n_steps(fitted):
    _, _, record, _ = fitted
    assert record.logging == [False, True] * 3  # steps 2, 4, 6 are logging steps
    assert internals.should_update_logs(object()) is True  # no connector: log


def test_batches_processed_this_epoch(fitted):
    _, _, record, _ = fitted
    assert record.processed == record.batch_idx == list(range(6))


def test_last_global_step_saved(fitted):
    _, _, _, checkpoint = fitted
    assert internals.last_global_step_saved(checkpoint) == 6
    assert internals.last_global_step_saved(object()) is None


def test_mark_step_saved_and_register_last_checkpoint(fitted, tmp_path):
    from lightning.pytorch.callbacks import ModelCheckpoint

    callback = ModelCheckpoint(dirpath=tmp_path, save_last=True)
    internals.mark_step_saved(callback, 7)
    assert internals.last_global_step_saved(callback) == 7
    internals.mark_step_saved(object(), 7)  # not a ModelCheckpoint: nothing to do
    internals.register_last_checkpoint(callback, str(tmp_path / "last.ckpt"))
    assert callback.last_model_path == str(tmp_path / "last.ckpt")
    assert callback._last_checkpoint_saved == str(tmp_path / "last.ckpt")


def test_unwrap_optimizer(fitted):
    trainer, _, record, _ = fitted
    assert all(opt is trainer.optimizers[0] for opt in record.optimizers)
    assert isinstance(record.optimizers[0], torch.optim.SGD)
    plain = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    assert internals.unwrap_optimizer(plain) is plain


def test_model_parallel_strategy_fields():
    from lightning.pytorch.strategies import ModelParallelStrategy

    strategy = ModelParallelStrategy(data_parallel_size="auto", tensor_parallel_size=1)
    assert internals.model_parallel_sizes(strategy) == ("auto", 1)
    internals.set_data_parallel_size(strategy, 4)
    assert internals.model_parallel_sizes(strategy) == (4, 1)
    assert internals.saves_distributed_checkpoint(strategy) is True  # Lightning's default
    assert internals.saves_distributed_checkpoint(ModelParallelStrategy(save_distributed_checkpoint=False)) is False


def test_load_raw_module_state():
    source, target = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    internals.load_raw_module_state(source.state_dict(), target)
    torch.testing.assert_close(target.weight, source.weight)
    with pytest.raises(RuntimeError):
        internals.load_raw_module_state({"weight": source.weight}, torch.nn.Linear(3, 2), strict=True)


@pytest.mark.parametrize("class_path, names", sorted(internals.OVERRIDDEN.items()))
def test_overridden_private_methods_exist(class_path, names):
    module_name, _, class_name = class_path.rpartition(".")
    cls = getattr(importlib.import_module(module_name), class_name)
    for name in names:
        assert callable(getattr(cls, name, None)), f"{class_path}.{name} is gone: update lightning_gpt's subclass"


def test_our_subclasses_override_exactly_the_listed_methods():
    from lightning_gpt.cli.fit import GPTLightningCLI
    from lightning_gpt.training.strategies import FSDP2Strategy

    assert "_prepare_subcommand_parser" in vars(GPTLightningCLI) and "_parse_ckpt_path" in vars(GPTLightningCLI)
    assert "_setup_distributed" in vars(FSDP2Strategy)


def test_lightning_cli_calls_a_subcommand_method_of_the_cli_class():
    """``GPTLightningCLI.fit`` (a refused run leaves no empty checkpoint folder) relies on ``LightningCLI`` running a
    subcommand through a method of the CLI class when it defines one."""
    import inspect

    from lightning.pytorch.cli import LightningCLI

    assert "getattr(self, subcommand, default)" in inspect.getsource(LightningCLI._run_subcommand)


def test_rich_available():
    import importlib.util

    assert internals.rich_available() == (importlib.util.find_spec("rich") is not None)


def test_rich_progress_bar_internals(tmp_path):
    from lightning.pytorch.callbacks import RichProgressBar

    class Bar(RichProgressBar):
        seen: list = []

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
            internals.update_progress_task(self, self.train_progress_bar_id, 2.5)
            internals.update_progress_metrics(self, trainer, pl_module)
            task = self.progress.tasks[self.train_progress_bar_id]
            tasks_before = len(self.progress.tasks)
            internals.add_train_progress_task(self)
            self.seen.append(
                (
                    internals.progress_console(self) is not None,
                    internals.batches_ready_this_epoch(trainer),
                    task.completed,
                    len(self.progress.tasks) - tasks_before,
                )
            )

    bar = Bar()
    assert internals.progress_console(bar) is None  # not started
    trainer = pl.Trainer(max_steps=2, callbacks=[bar], logger=False, enable_model_summary=False, accelerator="cpu")
    trainer.fit(_Tiny())
    assert bar.seen == [(True, 1, 2.5, 1), (True, 2, 2.5, 1)]


def test_summary_columns():
    from lightning.pytorch.utilities.model_summary import summarize

    columns = dict(internals.summary_columns(summarize(_Tiny(), max_depth=1)))
    assert columns["Name"] == ["layer"] and columns["Type"] == ["Linear"] and columns["Params"][0].strip() == "5"


def test_lightning_cli_internals(run_yaml, monkeypatch):
    import sys

    from lightning_gpt.cli.fit import GPTLightningCLI
    from lightning_gpt.training import GPTModule

    monkeypatch.setattr(sys, "argv", ["lightning-gpt"])
    cli = GPTLightningCLI(args=["validate", "--config", str(run_yaml()), "--trainer.limit_val_batches", "0"])
    assert internals.cli_model_class(cli) is GPTModule
    assert internals.cli_subcommand_parser(cli, None) is cli.parser
    parser = internals.cli_subcommand_parser(cli, "validate")
    assert parser is not cli.parser and parser.get_defaults()["trainer.max_steps"] == -1
    assert internals.cli_value(cli, cli.config, "trainer.max_steps") == 4  # the validate section of the config
    assert internals.cli_value(cli, cli.config, "no.such.key", default="x") == "x"
    assert "model.config" in {action.dest for action in internals.parser_actions(parser)}
