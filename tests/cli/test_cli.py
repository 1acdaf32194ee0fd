"""The ``lightning-gpt`` command: fit / resume / predict / generate, defaults, errors, Ctrl-C."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from tests import zygote
from tests.helpers import MORE_WORDS, python_env, write_corpus, yaml_factory

# This file's runs: validation every 2 steps, dropout on, a short fixed schedule (on tests/helpers.tiny_config).
CLI_RUN: dict[str, Any] = {
    "seed_everything": 7,
    "trainer.limit_val_batches": 2,
    "trainer.val_check_interval": 2,
    "trainer.check_val_every_n_epoch": None,
    "model.config.n_head": 4,
    "model.config.dropout": 0.1,
    "model.learning_rate": 3e-4,
    "lr_schedule.warmup_steps": 1,
    "lr_schedule.decay_steps": 1000,
}


@pytest.fixture
def run_yaml(tmp_path):
    """``make(name="run.yaml", **dotted_overrides) -> str``: this file's run config (a str: argv for LightningCLI)."""
    make = yaml_factory(tmp_path, write_corpus(tmp_path / "corpus.txt", n_lines=300, words=MORE_WORDS), **CLI_RUN)
    return lambda *args, **overrides: str(make(*args, **overrides))


def _weights(ckpt: Path) -> dict[str, torch.Tensor]:
    from lightning_gpt.io.checkpoint import load_checkpoint

    model, _ = load_checkpoint(ckpt)
    return {k: v.clone() for k, v in model.state_dict().items()}


def _global_step(ckpt: Path) -> int:
    return int(torch.load(ckpt, map_location="cpu", weights_only=True)["global_step"])  # the safe loader suffices


def test_fit_writes_checkpoint_with_config_and_tokenizer(cli, run_yaml, tmp_path):
    torch.manual_seed(0)
    result = cli("fit", "--config", run_yaml())
    assert result.code == 0, result.err
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    assert ckpt.is_file()
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert state["global_step"] == 4
    assert state["gpt_config"]["n_layer"] == 2 and state["gpt_config"]["block_size"] == 16
    assert state["gpt_config"]["vocab_size"] < 100  # from the char tokenizer, not the 50304 default
    assert state["tokenizer"]
    assert not [p for p in (tmp_path / "run").rglob("*") if ".tmp" in p.name]  # atomic writes leave nothing


def test_default_callbacks_and_plugins(run_yaml, monkeypatch):
    from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint

    from lightning_gpt.cli import GPTLightningCLI, InterruptCheckpoint
    from lightning_gpt.training.callbacks import GradientClipping, LRSchedule, NonFiniteGuard, SampleGeneration
    from lightning_gpt.training.checkpoint_io import AtomicCheckpointIO

    monkeypatch.setattr(sys, "argv", ["lightning-gpt"])
    cli = GPTLightningCLI(args=["--config", run_yaml(**{"trainer.logger": True})], run=False)
    kinds = {type(c) for c in cli.trainer.callbacks}
    for kind in (GradientClipping, LRSchedule, NonFiniteGuard, SampleGeneration, InterruptCheckpoint):
        assert kind in kinds, kind
    assert LearningRateMonitor in kinds  # a logger is on
    ckpt = next(c for c in cli.trainer.callbacks if isinstance(c, ModelCheckpoint))
    assert ckpt.save_last is True
    assert Path(ckpt.dirpath) == Path(cli.trainer.default_root_dir) / "checkpoints"
    assert isinstance(cli.trainer.strategy.checkpoint_io, AtomicCheckpointIO)
    grad = next(c for c in cli.trainer.callbacks if isinstance(c, GradientClipping))
    assert grad.max_norm == 1.0

    cli = GPTLightningCLI(args=["--config", run_yaml(), "--clip.max_norm", "0.5"], run=False)
    assert LearningRateMonitor not in {type(c) for c in cli.trainer.callbacks}  # no logger, no monitor
    assert next(c for c in cli.trainer.callbacks if isinstance(c, GradientClipping)).max_norm == 0.5


def test_resume_from_last_matches_uninterrupted_run(cli, run_yaml, tmp_path):
    """fit 3 steps, then ``--ckpt_path last`` to 6 == fit 6 in one go (dropout on, shuffled data, validation).

    The schedule's length is pinned (``decay_steps``): by default it follows ``max_steps``, which differs here.
    """
    full = run_yaml("full.yaml", **{"trainer.max_steps": 6, "trainer.default_root_dir": str(tmp_path / "full")})
    assert cli("fit", "--config", full).code == 0
    part = run_yaml("part.yaml", **{"trainer.max_steps": 3, "trainer.default_root_dir": str(tmp_path / "part")})
    assert cli("fit", "--config", part).code == 0
    last = tmp_path / "part" / "checkpoints" / "last.ckpt"
    assert _global_step(last) == 3
    result = cli("fit", "--config", part, "--trainer.max_steps", "6", "--ckpt_path", "last")
    assert result.code == 0, result.err
    assert _global_step(last) == 6
    a, b = _weights(tmp_path / "full" / "checkpoints" / "last.ckpt"), _weights(last)
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=1e-6, msg=name)


def test_predict_takes_config_and_tokenizer_from_checkpoint(cli, run_yaml, tmp_path):
    assert cli("fit", "--config", run_yaml()).code == 0
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("the quick\na lazy dog\nfox\n")
    out = tmp_path / "pred.jsonl"
    # No model config given: the defaults (12 layers, 768 wide) would not load these weights.
    result = cli(
        "predict",
        "--ckpt_path",
        ckpt,
        "--data.path",
        prompts,
        "--writer.output_path",
        out,
        "--model.generation.max_new_tokens",
        "5",
        "--trainer.enable_progress_bar",
        "false",
        "--trainer.default_root_dir",
        tmp_path / "predict_root",
    )
    assert result.code == 0, result.err
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["prompt"] for r in rows] == ["the quick", "a lazy dog", "fox"]
    for row in rows:
        assert set(row) >= {"prompt", "completion", "tokens", "finish_reason"}
        assert len(row["tokens"]) == 5  # the explicit command-line value beats the checkpoint's hyperparameter
        assert row["finish_reason"] == "length"
    assert not (tmp_path / "predict_root").exists()  # no logger folder, no config.yaml: only the JSONL


def test_generate_streams_and_is_seeded(cli, run_yaml, tmp_path, monkeypatch):
    assert cli("fit", "--config", run_yaml()).code == 0
    run_dir = tmp_path / "run"
    args = ["generate", "--ckpt_path", run_dir, "--prompt", "the ", "--max_new_tokens", "12", "--seed", "3"]
    first, second = cli(*args), cli(*args)
    assert first.code == 0, first.err
    assert first.out.startswith("the ")
    assert first.out == second.out  # same seed, same text
    assert len(first.out.rstrip("\n")) >= len("the ")
    greedy = cli("generate", "--ckpt_path", run_dir, "--prompt", "the ", "--max_new_tokens", "6", "--temperature", "0")
    assert greedy.code == 0 and greedy.out.startswith("the ")
    monkeypatch.setattr(sys, "stdin", io.StringIO("a lazy "))
    piped = cli("generate", "--ckpt_path", run_dir, "--prompt", "-", "--max_new_tokens", "4", "--echo", "false")
    assert piped.code == 0 and not piped.out.startswith("a lazy")
    beams = cli("generate", "--ckpt_path", run_dir, "--prompt", "the ", "--max_new_tokens", "4", "--num_beams", "2")
    assert beams.code == 0 and beams.out.startswith("the ")
    # Longer than the 16-token context: generation slides on from the last half of the context.
    prompt = "a lazy dog " * 3
    long = cli("generate", "--ckpt_path", run_dir, "--prompt", prompt, "--max_new_tokens", "40", "--seed", "1")
    assert long.code == 0, long.err
    assert long.out.startswith(prompt)
    # A fresh process decodes without importing Lightning (seconds of start-up saved) and prints the same text.
    code = (
        "import sys\n"
        "from lightning_gpt.cli import main\n"
        f"main({[str(a) for a in args]!r})\n"
        "loaded = [m for m in sys.modules if m.split('.')[0] in ('lightning', 'pytorch_lightning')]\n"
        "assert not loaded, loaded\n"
    )
    env = dict(os.environ, OMP_NUM_THREADS="1")
    fresh = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert fresh.returncode == 0, fresh.stderr
    assert fresh.stdout == first.out


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["fit", "--config", "{missing}"], "does not exist"),
        (["fit", "--config", "{yaml}", "--trainer.max_steps", "many"], "max_steps"),
        (["fit", "--config", "{yaml}", "--model.config.n_head", "3"], "n_head"),
        (["fit", "--config", "{yaml}", "--model.config.attention", "magic"], "magic"),
        (["fit", "--config", "{yaml}", "--data.source", "{missing}"], "missing.txt"),
        (["fit", "--config", "{yaml}", "--ckpt_path", "{missing}"], "does not exist"),
        (["predict", "--ckpt_path", "{corrupt}", "--data.path", "{yaml}"], "not a readable checkpoint"),
        (["generate", "--ckpt_path", "{missing}", "--prompt", "x"], "does not exist"),
        (["generate", "--ckpt_path", "{corrupt}", "--prompt", "x"], "corrupt"),
        (["fit", "--config", "{yaml}", "--trainer.strategy", "not_a_strategy"], "not_a_strategy"),
    ],
)
def test_user_errors_are_one_message_exit_2(cli, run_yaml, tmp_path, argv, expected):
    corrupt = tmp_path / "corrupt.ckpt"
    corrupt.write_bytes(b"PK\x03\x04 this is not a checkpoint")
    values = {"missing": str(tmp_path / "missing.txt"), "yaml": run_yaml(), "corrupt": str(corrupt)}
    result = cli(*[a.format(**values) for a in argv])
    assert result.code == 2, (result.code, result.err[-2000:])
    assert expected in result.err
    assert "Traceback" not in result.err
    assert len(result.err.splitlines()) <= 8, result.err  # the message, not a synopsis of every option


def test_unknown_yaml_key_is_named(cli, run_yaml, tmp_path):
    path = Path(run_yaml())
    cfg = yaml.safe_load(path.read_text())
    cfg["trainer"]["max_stepz"] = 3
    path.write_text(yaml.safe_dump(cfg))
    result = cli("fit", "--config", path)
    assert result.code == 2 and "max_stepz" in result.err and "Traceback" not in result.err


def test_print_config_and_help(cli, run_yaml):
    result = cli("fit", "--config", run_yaml(), "--print_config")
    assert result.code == 0
    cfg = yaml.safe_load(result.out)
    assert cfg["checkpoint"]["save_last"] is True
    assert cfg["clip"]["max_norm"] == 1.0
    assert "block_size" not in (cfg["data"] or {}) or cfg["data"]["block_size"] is None  # declared once: the model's
    help_text = cli("fit", "--help").out
    for option in ("--model.learning_rate", "--data.source", "--lr_schedule.warmup_steps", "--sampling.every_n_steps"):
        assert option in help_text
    assert "peak learning rate" in help_text.lower()  # from GPTModule's docstring
    gen_help = cli("generate", "--help")
    assert gen_help.code == 0 and "--top_p" in gen_help.out


@pytest.mark.slow
def test_ctrl_c_saves_a_resumable_checkpoint(run_yaml, tmp_path):
    """SIGINT mid-fit -> last.ckpt at a step boundary and the loss curve so far; --ckpt_path last continues from it to
    the same weights, logging into the first run's logger version (one version_0 with both runs' rows)."""
    logs = tmp_path / "run"
    csv_logger = {"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": str(logs)}}
    cfg = run_yaml(
        **{"trainer.max_steps": 100000, "checkpoint.every_n_train_steps": 1, "trainer.limit_val_batches": 0},
        **{"trainer.logger": csv_logger, "trainer.log_every_n_steps": 1},
    )
    env = python_env()
    proc = zygote.popen(
        [sys.executable, "-m", "lightning_gpt", "fit", "--config", cfg],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    deadline = time.time() + 240
    while not last.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.5)
    assert last.exists(), "training did not start"
    time.sleep(1.0)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode != 0  # interrupted, not finished
    assert "Interrupted at step" in out, out[-3000:]
    step = _global_step(last)  # the Ctrl-C checkpoint loads with the safe (weights-only) loader
    assert 0 < step < 100000
    assert (tmp_path / "run" / "loss.png").stat().st_size > 0, out[-3000:]  # drawn although fit did not finish
    (tmp_path / "run" / "loss.png").unlink()

    # Resume two more steps and compare with an uninterrupted run of step + 2 steps (in this process).
    from lightning_gpt.cli import main

    resumed = zygote.run(
        [sys.executable, "-m", "lightning_gpt", "fit", "--config", cfg, "--ckpt_path", "last"]
        + ["--trainer.max_steps", str(step + 2)],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert _global_step(last) == step + 2
    assert (tmp_path / "run" / "loss.png").is_file()
    assert sorted(p.name for p in (logs / "lightning_logs").iterdir()) == ["version_0"]  # not a second version
    import csv

    with open(logs / "lightning_logs" / "version_0" / "metrics.csv", newline="") as f:
        steps = {int(row["step"]) for row in csv.DictReader(f) if row.get("train/loss")}
    # The first run's rows kept, the resumed run's appended: one curve. (The interrupted step's own row, step - 1, is
    # never logged: the stop is raised before Lightning logs that step.)
    assert set(range(step - 1)) | {step, step + 1} <= steps, steps
    straight = run_yaml("straight.yaml", **{"trainer.max_steps": step + 2, "trainer.limit_val_batches": 0})
    straight_root = tmp_path / "straight"
    old_argv = sys.argv
    try:
        sys.argv = ["lightning-gpt"]
        main(["fit", "--config", straight, "--trainer.default_root_dir", str(straight_root)])
    finally:
        sys.argv = old_argv
    a, b = _weights(straight_root / "checkpoints" / "last.ckpt"), _weights(last)
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=1e-5, msg=name)


def test_validate_and_test_from_a_run_directory(cli, run_yaml, tmp_path):
    cfg = run_yaml()
    assert cli("fit", "--config", cfg).code == 0
    for sub in ("validate", "test"):
        result = cli(sub, "--config", cfg, "--ckpt_path", tmp_path / "run")  # a run directory: its last.ckpt
        assert result.code == 0, result.err
        assert f"{'val' if sub == 'validate' else 'test'}/loss" in result.out


def test_a_subclass_gets_the_same_command_line(run_yaml, monkeypatch):
    from lightning_gpt.cli import GPTLightningCLI
    from lightning_gpt.training.module import GPTModule

    class ZLossModule(GPTModule):
        def __init__(self, z_weight: float = 1e-4, **kwargs) -> None:
            super().__init__(**kwargs)
            self.z_weight = z_weight

    monkeypatch.setattr(sys, "argv", ["lightning-gpt"])
    cli = GPTLightningCLI(ZLossModule, args=["--config", run_yaml(), "--model.z_weight", "0.5"], run=False)
    assert isinstance(cli.model, ZLossModule) and cli.model.z_weight == 0.5
    assert cli.model.config.n_layer == 2  # the recipe's GPTModule arguments still apply
