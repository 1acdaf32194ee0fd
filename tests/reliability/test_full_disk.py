"""A real full disk for every writer (issue 22, item 3): a small tmpfs filled to the brim (ENOSPC), and a file size
limit (``RLIMIT_FSIZE``, EFBIG) in a child process. Each write is one paragraph naming the file and the setting that
moves it, exit status 2, the previous file unchanged and no temporary left.

The tmpfs tests need root (or the mount capability); elsewhere they skip and say why.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Iterator

import pytest
import torch

from tests import zygote
from tests.helpers import (
    PYTHON,
    REPO,
    fill_disk,
    mount_tmpfs,
    python_env,
    tiny_config,
    unmount,
    user_error,
    write_yaml,
)


@pytest.fixture
def disk(tmp_path) -> Iterator[Path]:
    """A real 2 MB tmpfs (a small disk) at ``tmp_path / "disk"``."""
    path = tmp_path / "disk"
    why = mount_tmpfs(path, "2m")
    if why:
        pytest.skip(why)
    try:
        yield path
    finally:
        unmount(path)


def leftovers(folder: Path) -> list[Path]:
    """Temporaries of any writer (``*.tmp*``, ``.<name>.tmp-*``) under ``folder``."""
    return [p for p in folder.rglob("*") if ".tmp" in p.name]


def run_config(tmp_path: Path, root: Path, cache: Path, corpus: Path, **overrides) -> Path:
    return write_yaml(tmp_path / "run.yaml", tiny_config(root, corpus, cache, **overrides))


def test_checkpoint_save_on_a_full_disk(cli, tmp_path, disk, corpus, trained):
    """``fit --ckpt_path last`` with its checkpoint folder on a full disk: torch.save's ``RuntimeError: [enforce fail
    at inline_container.cc] unexpected pos`` is recognised as ENOSPC; last.ckpt keeps the previous step."""
    ckpts = disk / "checkpoints"
    overrides = {"trainer.max_steps": 2, "checkpoint.dirpath": str(ckpts)}
    config = run_config(tmp_path, tmp_path / "run", trained["cache"], corpus, **overrides)
    assert cli("fit", "--config", config).code == 0
    before = (ckpts / "last.ckpt").read_bytes()
    # Room for a third of a checkpoint: the save fails inside torch.save (with less room, closing the file fails
    # first with a plain OSError and hides the RuntimeError).
    fill_disk(disk, leave=len(before) // 3)
    result = cli("fit", "--config", config, "--ckpt_path", "last", "--trainer.max_steps", "4")
    user_error(result, "disk is full", "last.ckpt", "--trainer.default_root_dir")
    assert "unexpected pos" not in result.err
    assert (ckpts / "last.ckpt").read_bytes() == before
    assert not leftovers(disk)


def test_export_on_a_full_disk(cli, disk, trained):
    fill_disk(disk, leave=16384)
    result = cli("export", "--ckpt_path", trained["ckpt"], "--output_dir", disk / "out")
    user_error(result, "disk is full", "out", "--output_dir")
    assert "SafetensorError" not in result.err
    assert not (disk / "out").exists() and not leftovers(disk)


def test_token_and_tokenizer_cache_on_a_full_disk(cli, tmp_path, disk, corpus):
    fill_disk(disk, leave=4096)
    for tokenizer, what in (("char", "token cache"), ("bpe", "tokenizer cache")):
        config = run_config(tmp_path, tmp_path / "run", disk / "cache", corpus, **{"data.tokenizer": tokenizer})
        user_error(cli("fit", "--config", config, "--data.tokenizer_vocab_size", "300"), "disk is full", what)
        assert not leftovers(disk)


def test_predictions_on_a_full_disk_keep_the_previous_file(cli, tmp_path, disk, trained):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("the cat\n" * 200)
    out = disk / "predictions.jsonl"
    out.write_text('{"previous": true}\n')
    fill_disk(disk, leave=4096)
    argv = ["--data.path", prompts, "--writer.output_path", out, "--model.generation.max_new_tokens", "8"]
    result = cli("predict", "--ckpt_path", trained["ckpt"], *argv, "--trainer.accelerator", "cpu")
    user_error(result, "disk is full", "predictions.jsonl", "--writer.output_path")
    assert out.read_text() == '{"previous": true}\n'
    assert not leftovers(disk)


def test_config_yaml_and_loss_png_on_a_full_disk(cli, tmp_path, disk, corpus, trained, caplog):
    """The run folder's own small files. config.yaml at the start of fit: one paragraph, exit 2, the previous file
    whole. loss.png at the end of a finished fit: the run is saved, so it still succeeds, with one line saying why the
    plot was not drawn; the previous plot stays whole."""
    config = run_config(
        tmp_path, disk / "run", trained["cache"], corpus,
        **{"trainer.max_steps": 2, "trainer.log_every_n_steps": 1, "checkpoint.dirpath": str(tmp_path / "ckpts")},
    )  # fmt: skip
    assert cli("fit", "--config", config).code == 0
    config_yaml, png = disk / "run" / "config.yaml", disk / "run" / "loss.png"
    before = {p: p.read_bytes() for p in (config_yaml, png)}
    fill_disk(disk)
    result = cli("fit", "--config", config, "--ckpt_path", "last", "--trainer.max_steps", "4")
    user_error(result, "disk is full", "config.yaml")
    assert config_yaml.read_bytes() == before[config_yaml] and not leftovers(disk)
    (disk / "filler.bin").unlink()
    fill_disk(disk, leave=len(before[config_yaml]) + 8192)  # room for config.yaml, not for the plot
    with caplog.at_level("INFO"):
        result = cli("fit", "--config", config, "--ckpt_path", "last", "--trainer.max_steps", "4")
    assert result.code == 0, result
    assert "Loss curve not drawn: could not write the loss curve" in caplog.text and "disk is full" in caplog.text
    assert png.read_bytes() == before[png] and not leftovers(disk)
    assert torch.load(tmp_path / "ckpts" / "last.ckpt", weights_only=True)["global_step"] == 4


# --------------------------------------------------------------------------------------------- RLIMIT_FSIZE


def _run_limited(argv: list, max_bytes: int) -> subprocess.CompletedProcess:
    """The command under ``ulimit -f max_bytes``, ``SIGXFSZ`` ignored: a write past it fails with ``EFBIG``."""
    return zygote.run(
        [PYTHON, "-m", "lightning_gpt", *map(str, argv)],
        cwd=REPO,
        env=python_env(),
        capture_output=True,
        text=True,
        file_size_limit=max_bytes,
        timeout=300,
    )


@pytest.mark.slow
def test_file_size_limit_during_checkpoint_save_and_export(tmp_path, corpus, trained):
    """EFBIG (``ulimit -f``): a checkpoint or export larger than the limit is one paragraph, no temporary left."""
    limit = 20_000  # bytes: room for config.yaml (the tokens are cached already), not for a checkpoint or the weights
    assert trained["ckpt"].stat().st_size > 5 * limit
    config = run_config(tmp_path, tmp_path / "run", trained["cache"], corpus, **{"trainer.max_steps": 2})
    fit = _run_limited(["fit", "--config", config], limit)
    assert fit.returncode == 2, fit.stderr[-3000:]
    assert "Traceback" not in fit.stderr and "ulimit -f" in fit.stderr and "last.ckpt" in fit.stderr, fit.stderr[-3000:]
    assert not leftovers(tmp_path / "run")
    export = _run_limited(["export", "--ckpt_path", trained["ckpt"], "--output_dir", tmp_path / "out"], limit)
    assert export.returncode == 2, export.stderr[-3000:]
    assert "Traceback" not in export.stderr and "ulimit -f" in export.stderr, export.stderr[-3000:]
    assert not (tmp_path / "out").exists() and not leftovers(tmp_path)


@pytest.mark.slow
def test_ctrl_c_save_on_a_full_disk(tmp_path, disk, corpus, trained):
    """Ctrl-C during fit when the disk has filled up meanwhile: the interrupt checkpoint cannot be written, which is
    one paragraph (exit 2), and the earlier last.ckpt is kept."""
    overrides = {"trainer.max_steps": 100000, "trainer.enable_progress_bar": True, "trainer.log_every_n_steps": 1}
    overrides["checkpoint.every_n_train_steps"] = 2
    config = run_config(tmp_path, disk / "run", trained["cache"], corpus, **overrides)
    log = tmp_path / "fit.log"
    last = disk / "run" / "checkpoints" / "last.ckpt"
    with open(log, "w") as f:
        proc = zygote.popen(
            [PYTHON, "-m", "lightning_gpt", "fit", "--config", str(config)],
            cwd=REPO, env=python_env(), stdout=f, stderr=subprocess.STDOUT,
        )  # fmt: skip
    deadline = time.monotonic() + 240
    while not last.is_file() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, log.read_text()[-3000:]
    fill_disk(disk, leave=4096)
    # A periodic save may now fail on its own; the Ctrl-C save certainly does. Either way: one paragraph.
    before = torch.load(last, map_location="cpu", weights_only=True)["global_step"]
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=120)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail(log.read_text()[-3000:])
    text = log.read_text()
    assert proc.returncode == 2, text[-3000:]
    assert "Traceback" not in text and "disk is full" in text, text[-3000:]
    assert torch.load(last, map_location="cpu", weights_only=True)["global_step"] >= before
    assert not leftovers(disk)
    shutil.rmtree(disk / "run", ignore_errors=True)
