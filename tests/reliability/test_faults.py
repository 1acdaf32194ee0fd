"""Faults during ``lightning-gpt fit``: SIGKILL while checkpoints are written, Ctrl-C, and non-finite losses.

End to end through the CLI. Training runs that must be interrupted run in a child ``python -m lightning_gpt`` process;
the rest run the CLI in this process (``lightning_gpt.cli.main``), single-threaded so that numbers match the child's.

Resume exactness itself (per-step losses and bit-identical weights, dropout, shuffling, mid-epoch, every callback) is
tested in ``tests/training/test_resume.py``; here the CLI-level variant checks that ``fit --ckpt_path last`` after a
SIGKILL or a Ctrl-C ends with the weights of the uninterrupted run.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import signal
import subprocess
import time
from pathlib import Path
from typing import Any, Iterator, Optional

import pytest
import torch

from lightning_gpt.io.checkpoint import load_checkpoint
from lightning_gpt.training.module import GPTModule
from lightning_gpt.training.run_folder import resolve_last_checkpoint
from tests import zygote
from tests.helpers import PYTHON, REPO, assert_no_partial_files, python_env, tiny_config, write_yaml

MAX_STEPS = 30
EVERY_STEP = {"checkpoint.every_n_train_steps": 1, "checkpoint.save_top_k": -1}


@contextlib.contextmanager
def single_thread() -> Iterator[None]:
    """Match the child processes (OMP_NUM_THREADS=1), so in-process and child runs compute the same floats."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def fault_config(tmp_path: Path, corpus: Path, cache: Path, name: str = "run", **overrides) -> Path:
    cfg = tiny_config(tmp_path / name, corpus, cache, **{"trainer.max_steps": MAX_STEPS, **EVERY_STEP, **overrides})
    return write_yaml(tmp_path / f"{name}.yaml", cfg)


def step_of(path: Path) -> int:
    return int(torch.load(path, map_location="cpu", weights_only=True)["global_step"])


def weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


def check_checkpoint_dir(folder: Path) -> int:
    """Every ``*.ckpt`` loads (model, tokenizer, finite weights); stray temporary files are never ``*.ckpt``.

    Returns the step that ``--ckpt_path last`` resumes from: the newest complete checkpoint (``last.ckpt``, unless a
    kill landed between a periodic save and the update of ``last.ckpt``).
    """
    ckpts = sorted(folder.glob("*.ckpt"))
    assert ckpts, f"no checkpoint in {folder}"
    for path in ckpts:
        model, tokenizer = load_checkpoint(path)
        assert tokenizer is not None
        assert all(torch.isfinite(p).all() for p in model.parameters())
    # A SIGKILL during a save may leave '<name>.ckpt.tmp-<pid>': not a '.ckpt' file, so neither `--ckpt_path last`
    # nor find_checkpoint can pick it, and the next save of that name deletes it.
    for stray in folder.iterdir():
        assert stray.suffix == ".ckpt" or ".ckpt.tmp-" in stray.name, stray
    resume_from, _ = resolve_last_checkpoint(str(folder))
    return step_of(Path(resume_from))


def start_fit(config: Path, *extra: str, log: Path) -> Any:
    with open(log, "w") as f:
        return zygote.popen(
            [PYTHON, "-m", "lightning_gpt", "fit", "--config", str(config), *extra],
            cwd=REPO,
            env=python_env(),
            stdout=f,
            stderr=subprocess.STDOUT,
        )


def wait_for_checkpoint_after(folder: Path, step: int, proc: Any, log: Path, timeout: float = 240) -> float:
    """Block until the child has written checkpoints two steps past ``step`` (so it is training and saving).

    Returns the seconds per training step the child is taking (checkpoint write included).
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        # epoch=E-step=S.ckpt; a resumed run that saves a step again writes epoch=E-step=S-v1.ckpt beside it
        found = {int(re.search(r"step=(\d+)", p.name).group(1)): p for p in folder.glob("epoch=*-step=*.ckpt")}
        newest = sorted(s for s in found if s > step)
        if len(newest) >= 2:  # step + 1 is complete, so last.ckpt is at least at step + 1
            with contextlib.suppress(OSError):
                a, b = found[newest[-2]].stat().st_mtime, found[newest[-1]].stat().st_mtime
                return max(b - a, 0.005) / (newest[-1] - newest[-2])
            return 0.05
        if proc.poll() is not None:
            pytest.fail(f"fit exited early ({proc.returncode}):\n{log.read_text()[-3000:]}")
        time.sleep(0.02)
    proc.kill()
    pytest.fail(f"no new checkpoint within {timeout} s:\n{log.read_text()[-3000:]}")


@pytest.fixture(scope="module")
def reference(tmp_path_factory, corpus) -> dict[str, Path]:
    """The uninterrupted run (in-process CLI, single thread); also fills the token cache the children reuse."""
    import sys

    from lightning_gpt.cli import main

    base = tmp_path_factory.mktemp("reference")
    cache = base / "cache"
    config = fault_config(base, corpus, cache)
    with pytest.MonkeyPatch.context() as mp, single_thread():
        mp.delenv("LIGHTNING_GPT_TRACEBACK", raising=False)
        mp.setattr(sys, "argv", ["lightning-gpt"])
        main(["fit", "--config", str(config)])
    last = base / "run" / "checkpoints" / "last.ckpt"
    assert step_of(last) == MAX_STEPS
    return {"last": last, "cache": cache}


def kill_while_writing(folder: Path, proc: Any, give_up_after: float) -> bool:
    """SIGKILL ``proc`` the moment a checkpoint is being written (its temporary file exists); True if caught so."""
    deadline = time.monotonic() + give_up_after
    while time.monotonic() < deadline and proc.poll() is None:
        with os.scandir(folder) as entries:
            if any(".ckpt.tmp-" in e.name for e in entries):
                proc.send_signal(signal.SIGKILL)
                return True
    return False  # not caught in the act this time: the kill below lands at an arbitrary moment instead


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=lambda m, k=key: f"{k}: {m}")


# --------------------------------------------------------------------------------------------- SIGKILL


@pytest.mark.slow
def test_sigkill_at_random_moments_then_resume_last(tmp_path, corpus, reference, cli):
    """Kill -9 a fit that checkpoints every step twice: at a random moment, then while a checkpoint is being written.

    Every .ckpt left loads; resuming with ``--ckpt_path last`` continues from the newest complete checkpoint and ends
    with the weights of the uninterrupted run.
    """
    rng = random.Random(20261124)
    config = fault_config(tmp_path, corpus, reference["cache"])
    ckpt_dir = tmp_path / "run" / "checkpoints"
    last_step = 0
    for round_ in range(2):
        log = tmp_path / f"round{round_}.log"
        proc = start_fit(config, *(["--ckpt_path", "last"] if round_ else []), log=log)
        per_step = wait_for_checkpoint_after(ckpt_dir, last_step, proc, log)
        if round_ == 0:
            time.sleep(rng.uniform(0.0, 4.0) * per_step)  # a random moment: in a step, or in a checkpoint write
        else:
            caught_mid_write = kill_while_writing(ckpt_dir, proc, give_up_after=max(20 * per_step, 2.0))
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
        assert proc.returncode == -signal.SIGKILL, log.read_text()[-2000:]
        step = check_checkpoint_dir(ckpt_dir)
        assert step > last_step, "the resumed run went on from the previous checkpoint"
        assert step < MAX_STEPS, "killed before the end (else nothing was tested)"
        if round_:
            assert "Restoring states from the checkpoint path at" in log.read_text()
            if caught_mid_write:  # the half-written file is still there, under a name nothing loads
                assert list(ckpt_dir.glob("*.ckpt.tmp-*")), "killed mid-write, yet no temporary file is left"
        last_step = step
    # The recovery command: the same command plus --ckpt_path last (here in-process, to the end).
    with single_thread():
        result = cli("fit", "--config", config, "--ckpt_path", "last")
    assert result.code == 0, result
    assert check_checkpoint_dir(ckpt_dir) == MAX_STEPS
    assert_same_weights(weights(ckpt_dir / "last.ckpt"), weights(reference["last"]))
    assert_no_partial_files(ckpt_dir)  # the saves after the kill removed what the killed writer left


# --------------------------------------------------------------------------------------------- Ctrl-C


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl_c", "sigterm"])
def test_ctrl_c_saves_a_resumable_checkpoint(tmp_path, corpus, reference, cli, sig):
    """Ctrl-C, or SIGTERM (what schedulers send before a kill): the step finishes, last.ckpt is saved, the exit
    status is non-zero (1; 143 for SIGTERM), the message says how to resume, and resuming ends with the weights of
    the uninterrupted run."""
    config = fault_config(tmp_path, corpus, reference["cache"], **{"checkpoint.every_n_train_steps": 2})
    ckpt_dir = tmp_path / "run" / "checkpoints"
    log = tmp_path / "fit.log"
    proc = start_fit(config, log=log)
    wait_for_checkpoint_after(ckpt_dir, 2, proc, log)
    proc.send_signal(sig)
    try:
        proc.wait(timeout=120)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail(f"fit did not stop after {sig.name}:\n{log.read_text()[-3000:]}")
    text = log.read_text()
    assert proc.returncode == (143 if sig == signal.SIGTERM else 1), text[-2000:]
    assert "Traceback" not in text, text[-3000:]
    step = check_checkpoint_dir(ckpt_dir)
    assert 2 < step < MAX_STEPS
    what = "SIGTERM" if sig == signal.SIGTERM else "Interrupted"
    assert f"{what} at step {step}: saved {ckpt_dir / 'last.ckpt'}" in text
    assert "--ckpt_path last" in text  # the message says how to resume
    assert_no_partial_files(ckpt_dir)
    with single_thread():
        result = cli("fit", "--config", config, "--ckpt_path", "last")
    assert result.code == 0, result
    assert step_of(ckpt_dir / "last.ckpt") == MAX_STEPS
    assert_same_weights(weights(ckpt_dir / "last.ckpt"), weights(reference["last"]))


def test_sigterm_during_validation_in_fit_still_saves_and_exits_non_zero(tmp_path, corpus, cli, monkeypatch, caplog):
    """Lightning acts on a SIGTERM that arrives during validation itself (it ends the stage with status 0): the
    training state, at a step boundary, is saved as last.ckpt, the exit status is 143, and the run can be resumed."""
    from lightning_gpt.training.module import GPTModule as Module

    config = fault_config(
        tmp_path,
        corpus,
        tmp_path / "cache",
        **{
            "trainer.max_steps": 8,
            "trainer.limit_val_batches": 2,
            "trainer.val_check_interval": 3,
            "checkpoint.every_n_train_steps": 100,
        },
    )
    original = Module.validation_step

    def validation_step(self, *args, **kwargs):
        if self.trainer.global_step == 3:  # as if SIGTERM came in during the first validation
            self.trainer._signal_connector.received_sigterm = True
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Module, "validation_step", validation_step)
    with single_thread(), caplog.at_level("INFO"):
        result = cli("fit", "--config", config)
    assert result.code == 143, result
    ckpt_dir = tmp_path / "run" / "checkpoints"
    assert step_of(ckpt_dir / "last.ckpt") == 3
    assert f"SIGTERM at step 3: saved {ckpt_dir / 'last.ckpt'}" in caplog.text
    monkeypatch.setattr(Module, "validation_step", original)
    with single_thread():
        result = cli("fit", "--config", config, "--ckpt_path", "last")
    assert result.code == 0, result
    assert step_of(ckpt_dir / "last.ckpt") == 8


@pytest.mark.slow
def test_sigterm_during_predict_stops_and_leaves_no_partial_results(tmp_path, trained):
    """SIGTERM while predict decodes: it stops after the current batch, exit 143, the message says what was kept
    (nothing), and no file is left under the final name or as a temporary."""
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("the cat\n" * 20000)
    out = tmp_path / "out" / "predictions.jsonl"
    log = tmp_path / "predict.log"
    argv = ["predict", "--ckpt_path", str(trained["ckpt"]), "--data.path", str(prompts), "--data.batch_size", "1"]
    argv += ["--model.generation.max_new_tokens", "4", "--writer.output_path", str(out)]
    with open(log, "w") as f:
        proc = zygote.popen(
            [PYTHON, "-m", "lightning_gpt", *argv], cwd=REPO, env=python_env(), stdout=f, stderr=subprocess.STDOUT
        )
    tmp = out.with_name(out.name + ".tmp")
    deadline = time.monotonic() + 240
    while not (tmp.exists() and tmp.stat().st_size > 0) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert proc.poll() is None, f"predict ended before the signal:\n{log.read_text()[-3000:]}"
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail(f"predict did not stop after SIGTERM:\n{log.read_text()[-3000:]}")
    text = log.read_text()
    assert proc.returncode == 143, text[-2000:]
    assert "Traceback" not in text, text[-3000:]
    assert "SIGTERM: stopped after" in text and f"{out} was not written" in text, text[-2000:]
    assert not out.exists()
    assert_no_partial_files(tmp_path / "out")


# --------------------------------------------------------------------------------------------- non-finite loss

NAN_STEP = 3


class NaNAtStep(GPTModule):
    """GPTModule whose loss turns NaN at global step ``NAN_STEP`` (a bad batch, an overflow...)."""

    def compute_loss(self, logits, targets):
        loss = super().compute_loss(logits, targets)
        if self.training and self.trainer.global_step == NAN_STEP:
            loss = loss * float("nan")
        return loss


def all_finite(state: dict[str, torch.Tensor]) -> bool:
    return all(bool(t.isfinite().all()) for t in state.values() if t.is_floating_point())


def _fit_with_nan(cli, monkeypatch, config: Path, *extra: str) -> Optional[object]:
    monkeypatch.setattr("lightning_gpt.training.module.GPTModule", NaNAtStep)  # what the CLI builds
    with single_thread():
        return cli("fit", "--config", config, *extra)


def test_nan_loss_stops_naming_the_step_and_keeps_finite_checkpoints(tmp_path, corpus, cli, monkeypatch):
    config = fault_config(tmp_path, corpus, tmp_path / "cache", **{"trainer.max_steps": 6})
    result = _fit_with_nan(cli, monkeypatch, config)
    # The CLI prints the guard's message (no traceback) and exits 1.
    assert result.code == 1 and "Traceback" not in result.err, result
    message = result.err
    assert f"Non-finite loss at training step {NAN_STEP} (epoch 0)" in message
    assert "Resume from the last checkpoint with a lower learning rate" in message  # the fix
    assert "policy='skip'" in message  # and the alternative
    ckpt_dir = tmp_path / "run" / "checkpoints"
    for path in ckpt_dir.glob("*.ckpt"):
        assert step_of(path) <= NAN_STEP
        assert all_finite(weights(path)), f"{path.name} holds NaN weights"
    assert step_of(ckpt_dir / "last.ckpt") == NAN_STEP  # the last good state, before the bad step
    assert_no_partial_files(ckpt_dir)
    # Recovery: fix the cause (here: the plain module) and resume from the last good checkpoint.
    monkeypatch.setattr("lightning_gpt.training.module.GPTModule", GPTModule)
    with single_thread():
        result = cli("fit", "--config", config, "--ckpt_path", "last")
    assert result.code == 0, result
    assert step_of(ckpt_dir / "last.ckpt") == 6 and all_finite(weights(ckpt_dir / "last.ckpt"))


def test_nan_loss_with_skip_policy_continues_with_finite_weights(tmp_path, corpus, cli, monkeypatch):
    config = fault_config(tmp_path, corpus, tmp_path / "cache", **{"trainer.max_steps": 6})
    with pytest.warns(UserWarning, match=rf"non-finite loss at step {NAN_STEP} .*skipped this optimizer step"):
        result = _fit_with_nan(cli, monkeypatch, config, "--nonfinite.policy", "skip")
    assert result.code == 0, result
    ckpt_dir = tmp_path / "run" / "checkpoints"
    last = torch.load(ckpt_dir / "last.ckpt", map_location="cpu", weights_only=True)
    assert last["global_step"] == 6
    assert all_finite(last["state_dict"])
    skipped = [v for k, v in last["callbacks"].items() if k.startswith("NonFiniteGuard")]
    assert skipped == [{"skipped_steps": 1}]
    for path in ckpt_dir.glob("*.ckpt"):
        assert all_finite(weights(path))
