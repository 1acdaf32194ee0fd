"""Promises of the README kept through the ``lightning-gpt`` command (issue 22 item 7): settings that would make a run
other than the one asked for, or a traceback after the model and data were built, are one paragraph (exit 2) before
anything is trained, or work as documented."""

from __future__ import annotations

import csv
import re
import warnings
from pathlib import Path

import pytest
import torch

from tests.helpers import user_error


def _weights(ckpt: Path) -> dict[str, torch.Tensor]:
    return torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]


def test_ckpt_path_last_without_any_checkpoint_stops(cli, run_yaml, tmp_path):
    """README: ``--ckpt_path last`` never starts from step 0; with no checkpoint at all it stops with a message."""
    first = cli("fit", "--config", run_yaml(), "--ckpt_path", "last")  # nothing was ever trained here
    user_error(first, "--ckpt_path last", "holds no checkpoint", "leave out --ckpt_path last")
    assert not (tmp_path / "run" / "checkpoints").exists()

    cfg = run_yaml(**{"trainer.max_steps": 2})
    assert cli("fit", "--config", cfg).code == 0
    folder = tmp_path / "run" / "checkpoints"
    for ckpt in folder.glob("*.ckpt"):  # every checkpoint deleted
        ckpt.unlink()
    result = cli("fit", "--config", cfg, "--ckpt_path", "last")
    user_error(result, f"{folder} holds no checkpoint to resume from")
    assert not list(folder.glob("*.ckpt"))  # nothing trained from step 0


def test_clip_max_norm_null_means_no_clipping(cli, run_yaml, tmp_path):
    """``clip.max_norm: null`` (documented: no clipping, the norm still logged) trains as an unreachable norm does,
    not as a small one; it used to be a ``TypeError`` traceback after the model and data were built."""
    logger = {"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": str(tmp_path / "logs")}}
    common = {"trainer.max_steps": 2, "trainer.log_every_n_steps": 1, "lr_schedule.warmup_steps": 0}
    last = {}
    for name, max_norm in (("null", None), ("huge", 1e9), ("tiny", 1e-4)):
        root = tmp_path / name
        # null in the YAML (as a recipe writes it); the numbers on the command line
        cfg = run_yaml(
            **common, **{"trainer.default_root_dir": str(root), "trainer.logger": logger, "clip.max_norm": None}
        )
        result = cli("fit", "--config", cfg, *([] if max_norm is None else ["--clip.max_norm", str(max_norm)]))
        assert result.code == 0, result
        last[name] = _weights(root / "checkpoints" / "last.ckpt")
    for key, value in last["null"].items():
        torch.testing.assert_close(value, last["huge"][key], rtol=0, atol=0, msg=key)
    assert any(not torch.equal(value, last["tiny"][key]) for key, value in last["null"].items())
    metrics = sorted((tmp_path / "logs").rglob("metrics.csv"))
    with open(metrics[0]) as f:
        assert [r["train/grad_norm"] for r in csv.DictReader(f) if r.get("train/grad_norm")], "norm logged"


@pytest.mark.parametrize("value", ["0", "-2"])
def test_accumulation_below_one_is_refused(cli, run_yaml, tmp_path, value):
    """0 was a ``ZeroDivisionError`` traceback at the first batch; -2 trained with gradients of the wrong sign."""
    result = cli("fit", "--config", run_yaml(), "--trainer.accumulate_grad_batches", value)
    user_error(result, f"--trainer.accumulate_grad_batches {value}", ">= 1")
    assert not (tmp_path / "run").exists()


def test_accumulation_longer_than_an_epoch_is_refused(cli, run_yaml, tmp_path):
    """Each step would be a partial window ending at the epoch's end: refused before the first batch."""
    result = cli("fit", "--config", run_yaml(), "--trainer.accumulate_grad_batches", "100000")
    message = user_error(result, "accumulate_grad_batches=100000", "training batch(es) of one epoch", "nothing was")
    assert "at most" in message
    assert not list((tmp_path / "run").rglob("*.ckpt"))
    assert not (tmp_path / "run" / "checkpoints").exists()  # the refused run leaves no empty folder


def test_warmup_at_or_past_the_end_warns_before_training(cli, run_yaml, tmp_path):
    """A run that is all warmup never reaches its peak learning rate: said before the first step, with the setting to
    change. (A warning, not an error: recipes are shrunk to a few steps to try them, their warmup unchanged.)"""
    warmup = "--lr_schedule.warmup_steps"
    cases = [
        ([], r"warmup \(100 steps\) lasts at least the whole run \(4 steps\)"),  # the default warmup
        ([warmup, "4"], r"warmup \(4 steps\) lasts at least the whole run \(4 steps\)"),
        ([warmup, "5", "--lr_schedule.decay_steps", "5"], r"warmup \(5 steps\) lasts at least the whole run \(5 "),
        ([warmup, "2"], None),  # ends in time: no warning
    ]
    for i, (flags, pattern) in enumerate(cases):
        cfg = run_yaml(**{"trainer.max_steps": 4, "trainer.default_root_dir": str(tmp_path / f"run{i}")})
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = cli("fit", "--config", cfg, *flags)
        assert result.code == 0, result
        said = [str(w.message) for w in caught if "LRSchedule" in str(w.message)]
        if pattern is None:
            assert not said, said
        else:
            assert len(said) == 1 and re.search(pattern, said[0]) and warmup in said[0], said


@pytest.mark.parametrize("key", ["max_steps", "max_epochs", "limit_train_batches"])
def test_a_fit_that_trains_nothing_is_refused(cli, run_yaml, tmp_path, key):
    """``--trainer.max_steps 0`` (and the like) ended with exit 0 and no checkpoint, as if it had trained."""
    result = cli("fit", "--config", run_yaml(), f"--trainer.{key}", "0")
    user_error(result, f"--trainer.{key} 0: fit would train nothing")
    assert not (tmp_path / "run").exists()


def test_trainer_gradient_clip_val_is_refused_before_anything_is_built(cli, run_yaml, tmp_path):
    """It was refused only in the clipping callback's ``setup``, after the model and data were built."""
    result = cli("fit", "--config", run_yaml(), "--trainer.gradient_clip_val", "0.5")
    user_error(result, "--trainer.gradient_clip_val 0.5", "--clip.max_norm 0.5")
    assert not (tmp_path / "run").exists()
