"""The run folder's life through ``lightning-gpt fit``: one ``last.ckpt`` per run, what ``--ckpt_path last`` picks,
re-running ``fit`` into a used folder, the folder lock, an unwritable folder, and the LR schedule on resume."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch
import yaml

from lightning_gpt.training.run_folder import RunFolderLock, inspect_checkpoint, resolve_last_checkpoint
from tests import zygote
from tests.helpers import MORE_WORDS, python_env, write_corpus, yaml_factory

REPO = Path(__file__).resolve().parents[2]
# This file's runs (on tests/helpers.tiny_config): no validation, a short fixed schedule.
RUN = {
    "seed_everything": 7,
    "model.learning_rate": 3e-4,
    "lr_schedule.warmup_steps": 1,
    "lr_schedule.decay_steps": 1000,
}


@pytest.fixture
def run_yaml(tmp_path):
    """``make(name, **dotted_overrides) -> path`` of a tiny fit config writing to ``tmp_path/run``."""
    return yaml_factory(tmp_path, write_corpus(tmp_path / "corpus.txt", n_lines=300, words=MORE_WORDS), **RUN)


def _step(path: Path) -> int:
    return int(torch.load(path, map_location="cpu", weights_only=True)["global_step"])


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


def _lasts(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.glob("last*.ckpt"))


# --------------------------------------------------------------------------------------------- one last.ckpt per run


@pytest.mark.slow
def test_one_last_ckpt_per_run_and_resume_with_larger_max_steps_equals_the_longer_run(cli, run_yaml, tmp_path):
    """A finished 3-step run resumed to 6 steps == 6 steps in one go; never a ``last-v1.ckpt`` beside ``last.ckpt``."""
    full = run_yaml("full.yaml", **{"trainer.max_steps": 6, "trainer.default_root_dir": str(tmp_path / "full")})
    assert cli("fit", "--config", full).code == 0
    part = run_yaml("part.yaml", **{"trainer.max_steps": 3})
    assert cli("fit", "--config", part).code == 0
    folder = tmp_path / "run" / "checkpoints"
    assert _lasts(folder) == ["last.ckpt"] and _step(folder / "last.ckpt") == 3
    result = cli("fit", "--config", part, "--trainer.max_steps", "6", "--ckpt_path", "last")
    assert result.code == 0, result
    assert _lasts(folder) == ["last.ckpt"] and _step(folder / "last.ckpt") == 6
    a, b = _weights(tmp_path / "full" / "checkpoints" / "last.ckpt"), _weights(folder / "last.ckpt")
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=0, msg=name)


# --------------------------------------------------------------------------------------------- --ckpt_path last


def _damage(path: Path, how: str) -> None:
    if how == "missing":
        path.unlink()
    elif how == "truncated":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif how == "weights_only":  # a valid file, but not the training state it claims to be
        state = torch.load(path, map_location="cpu", weights_only=True)
        torch.save({"state_dict": state["state_dict"], "gpt_config": state["gpt_config"]}, path)


@pytest.mark.parametrize("how", ["missing", "truncated", "weights_only"])
def test_unusable_last_resumes_from_the_newest_complete_checkpoint(cli, run_yaml, tmp_path, how):
    cfg = run_yaml(**{"checkpoint.every_n_train_steps": 1, "checkpoint.save_top_k": -1})
    assert cli("fit", "--config", cfg).code == 0
    folder = tmp_path / "run" / "checkpoints"
    _damage(folder / "last.ckpt", how)
    with pytest.warns(UserWarning, match=r"--ckpt_path last: .*resuming from .*step=4\.ckpt \(step 4\)") as record:
        result = cli("fit", "--config", cfg, "--trainer.max_steps", "6", "--ckpt_path", "last")
    assert result.code == 0, result
    assert any("last.ckpt" in str(w.message) for w in record)  # says why last.ckpt was passed over
    assert _step(folder / "last.ckpt") == 6  # went on from step 4, not from step 0


def test_no_resumable_checkpoint_stops_with_a_message(cli, run_yaml, tmp_path):
    cfg = run_yaml()
    assert cli("fit", "--config", cfg).code == 0
    folder = tmp_path / "run" / "checkpoints"
    for path in folder.glob("*.ckpt"):
        _damage(path, "truncated")
    result = cli("fit", "--config", cfg, "--trainer.max_steps", "6", "--ckpt_path", "last")
    assert result.code == 2, result
    assert (
        f"none of the {len(list(folder.glob('*.ckpt')))} checkpoint(s)" in result.err
        and "last.ckpt: it cannot be read" in result.err
    )


def test_resolve_last_prefers_the_highest_step(tmp_path):
    """A ``last.ckpt`` older than a checkpoint beside it is passed over (it is not the newest state of the run)."""
    resumable = {"state_dict": {}, "loops": {}, "optimizer_states": []}
    torch.save({**resumable, "global_step": 3}, tmp_path / "last.ckpt")
    torch.save({**resumable, "global_step": 5}, tmp_path / "epoch=0-step=5.ckpt")
    path, note = resolve_last_checkpoint(str(tmp_path))
    assert path == str(tmp_path / "epoch=0-step=5.ckpt") and "last.ckpt is at step 3" in note
    torch.save({**resumable, "global_step": 5}, tmp_path / "last.ckpt")
    assert resolve_last_checkpoint(str(tmp_path)) == (str(tmp_path / "last.ckpt"), None)
    assert resolve_last_checkpoint(str(tmp_path / "nothing")) == (None, None)
    assert inspect_checkpoint(str(tmp_path / "last.ckpt")).step == 5


# --------------------------------------------------------------------------------------------- fit into a used folder


@pytest.mark.slow
def test_fit_twice_refuses_to_overwrite_the_first_run(cli, run_yaml, tmp_path):
    """``lightning-gpt fit`` twice into one folder: the second is refused (exit 2), the first run's files untouched;
    ``--overwrite true`` starts over; ``--ckpt_path last`` goes on."""
    cfg = run_yaml()
    assert cli("fit", "--config", cfg).code == 0
    folder = tmp_path / "run" / "checkpoints"
    before = {p.name: p.read_bytes() for p in folder.glob("*.ckpt")}
    again = zygote.run(
        [sys.executable, "-m", "lightning_gpt", "fit", "--config", cfg, "--trainer.max_steps", "2"],
        env=python_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert again.returncode == 2, again.stderr[-2000:]
    message = again.stderr
    assert "Traceback" not in message
    assert f"{folder} already holds the checkpoints of an earlier run (last.ckpt at step 4)" in message
    assert "--ckpt_path last" in message and "--overwrite true" in message and "--trainer.default_root_dir" in message
    assert {p.name: p.read_bytes() for p in folder.glob("*.ckpt")} == before  # nothing changed

    result = cli("fit", "--config", cfg, "--trainer.max_steps", "2", "--overwrite", "true")
    assert result.code == 0, result
    assert _lasts(folder) == ["last.ckpt"] and _step(folder / "last.ckpt") == 2
    assert all(_step(p) <= 2 for p in folder.glob("*.ckpt"))  # the earlier run's files are gone
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["overwrite"] is False  # re-running the saved config cannot delete anything
    assert cli("fit", "--config", cfg, "--trainer.max_steps", "3", "--ckpt_path", "last").code == 0
    assert _step(folder / "last.ckpt") == 3


def test_fine_tuning_into_a_used_folder_is_refused_too(cli, run_yaml, tmp_path):
    other = run_yaml("other.yaml", **{"trainer.default_root_dir": str(tmp_path / "other")})
    assert cli("fit", "--config", other).code == 0
    cfg = run_yaml()
    assert cli("fit", "--config", cfg).code == 0
    result = cli("fit", "--config", cfg, "--ckpt_path", tmp_path / "other" / "checkpoints" / "last.ckpt")
    assert result.code == 2 and "already holds the checkpoints of an earlier run" in result.err, result


# --------------------------------------------------------------------------------------------- lock, writability


def test_a_second_fit_in_a_locked_run_folder_is_refused(cli, run_yaml, tmp_path):
    cfg = run_yaml()
    lock = RunFolderLock(str(tmp_path / "run" / "checkpoints")).acquire()  # as a running fit holds it
    try:
        result = cli("fit", "--config", cfg)
    finally:
        lock.release()
    assert result.code == 2, result
    assert "Another lightning-gpt fit is running in" in result.err and "--trainer.default_root_dir" in result.err
    assert not list((tmp_path / "run").rglob("*.ckpt"))
    assert cli("fit", "--config", cfg).code == 0  # free again (and released after that fit: see the next call)
    assert cli("fit", "--config", cfg, "--ckpt_path", "last", "--trainer.max_steps", "5").code == 0


def test_unwritable_checkpoint_folder_is_found_before_training(cli, run_yaml, tmp_path, monkeypatch):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    trained = []
    monkeypatch.setattr("lightning_gpt.training.module.GPTModule.training_step", lambda *a, **k: trained.append(1))
    result = cli("fit", "--config", run_yaml(), "--checkpoint.dirpath", blocker / "checkpoints")
    assert result.code == 2, result
    assert f"Checkpoints cannot be written to {blocker / 'checkpoints'}" in result.err
    assert "--trainer.default_root_dir" in result.err
    assert not trained


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root writes to read-only folders")
def test_read_only_checkpoint_folder_is_found_before_training(cli, run_yaml, tmp_path):
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    (tmp_path / "run" / "checkpoints").chmod(0o500)
    try:
        result = cli("fit", "--config", run_yaml())
    finally:
        (tmp_path / "run" / "checkpoints").chmod(0o700)
    assert result.code == 2 and "Checkpoints cannot be written to" in result.err, result


# --------------------------------------------------------------------------------------------- LR schedule on resume


def test_resuming_with_another_max_steps_warns_about_the_lr_schedule(cli, run_yaml, tmp_path):
    cfg = run_yaml(**{"lr_schedule.decay_steps": None, "trainer.max_steps": 3})
    assert cli("fit", "--config", cfg).code == 0
    with pytest.warns(
        UserWarning,
        match=r"decays over 5 steps \(trainer.max_steps\).*decayed over 3.*"
        r"--lr_schedule.decay_steps 3",
    ):
        result = cli("fit", "--config", cfg, "--trainer.max_steps", "5", "--ckpt_path", "last")
    assert result.code == 0, result
    # Pinned to the length in the checkpoint (now 5): no warning.
    import warnings

    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        result = cli(
            "fit", "--config", cfg, "--trainer.max_steps", "7", "--ckpt_path", "last", "--lr_schedule.decay_steps", "5"
        )
    assert result.code == 0, result
    assert not [w for w in record if "learning-rate schedule" in str(w.message)]


def test_a_requeued_slurm_job_is_not_refused(tmp_path, monkeypatch):
    """Under SLURM auto-requeue the same command runs again without --ckpt_path and Lightning resumes it from its
    ``hpc_ckpt_*.ckpt``: that rerun is a resume, not a new run over the old one."""
    from lightning.fabric.plugins.environments import SLURMEnvironment

    from lightning_gpt.training.run_folder import slurm_requeue_resumes

    monkeypatch.setattr(SLURMEnvironment, "detect", staticmethod(lambda: True))
    assert not slurm_requeue_resumes(str(tmp_path))
    (tmp_path / "hpc_ckpt_1.ckpt").write_bytes(b"")
    assert slurm_requeue_resumes(str(tmp_path))
    monkeypatch.setattr(SLURMEnvironment, "detect", staticmethod(lambda: False))
    assert not slurm_requeue_resumes(str(tmp_path))
