"""Round two of bad input (issue 11.5, 12.3): every mistake is one paragraph, exit 2, naming the value and the fix.

Disks that are full or read-only, trainer settings Lightning rejects with a traceback, devices that are not there,
offline Hugging Face sources, bad data rows and bytes, and jsonargparse's union messages.
"""

from __future__ import annotations

import errno
import json
from pathlib import Path

import pytest
import torch

from tests.helpers import assert_no_partial_files, user_error

# --------------------------------------------------------------------------------------------- trainer settings


def test_negative_max_steps(cli, run_yaml):
    user_error(cli("fit", "--config", run_yaml(), "--trainer.max_steps", "-5"), "max_steps", "-5", "-1")


@pytest.mark.parametrize("devices", ["0", "-3"])
def test_zero_devices(cli, run_yaml, devices):
    user_error(
        cli("fit", "--config", run_yaml(), "--trainer.devices", devices), "devices", devices, "--trainer.devices 1"
    )


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
@pytest.mark.parametrize("accelerator", ["gpu", "cuda"])
def test_gpu_accelerator_without_a_gpu(cli, run_yaml, accelerator):
    message = user_error(
        cli("fit", "--config", run_yaml(), "--trainer.accelerator", accelerator),
        accelerator,
        "--trainer.accelerator cpu",
    )
    assert "no GPU" in message or "no CUDA" in message


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_gpu_recipe_on_a_cpu_machine(cli, tmp_path):
    recipe = Path(__file__).resolve().parents[2] / "recipes" / "long-context-standard.yaml"
    message = user_error(cli("fit", "--config", recipe, "--trainer.default_root_dir", tmp_path), "gpu")
    assert "--trainer.accelerator cpu" in message
    assert not list(tmp_path.rglob("*.ckpt"))


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_generate_on_cuda_without_cuda(cli, trained):
    message = user_error(cli("generate", "--ckpt_path", trained["ckpt"], "--prompt", "the", "--device", "cuda"), "cuda")
    assert "--device cpu" in message


# --------------------------------------------------------------------------------------------- full / read-only disk


def _fail_writes(monkeypatch, code: int, target: str) -> None:
    """Make writing of ``target`` (a module attribute path) raise OSError ``code``."""

    def boom(*args, **kwargs):
        raise OSError(code, os_strerror(code))

    monkeypatch.setattr(target, boom)


def os_strerror(code: int) -> str:
    import os

    return os.strerror(code)


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS])
def test_disk_full_while_saving_a_checkpoint(cli, tmp_path, run_yaml, monkeypatch, code):
    _fail_writes(monkeypatch, code, "torch.save")
    message = user_error(cli("fit", "--config", run_yaml()), "checkpoint", str(tmp_path / "run" / "checkpoints"))
    assert "default_root_dir" in message
    assert_no_partial_files(tmp_path)


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS])
def test_disk_full_while_writing_the_token_cache(cli, tmp_path, run_yaml, monkeypatch, code):
    _fail_writes(monkeypatch, code, "numpy.save")
    message = user_error(cli("fit", "--config", run_yaml()), "token cache", str(tmp_path / "cache"))
    assert "--data.cache_dir" in message
    assert_no_partial_files(tmp_path)


def test_disk_full_while_writing_predictions(cli, tmp_path, trained, monkeypatch):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("the\na\n")
    out = tmp_path / "out" / "preds.jsonl"
    _fail_writes(monkeypatch, errno.ENOSPC, "json.dumps")
    args = ["predict", "--ckpt_path", trained["ckpt"], "--data.path", prompts, "--writer.output_path", out]
    message = user_error(cli(*args, "--model.generation.max_new_tokens", "2"), "predictions", str(out))
    assert "--writer.output_path" in message
    assert not out.exists()
    assert_no_partial_files(tmp_path)


# --------------------------------------------------------------------------------------------- data


def test_hf_source_offline(cli, run_yaml, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    try:
        import datasets.config

        monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    except ImportError:
        pytest.skip("datasets is not installed")
    message = user_error(cli("fit", "--config", run_yaml(**{"data.source": "hf://no-such-user/no-such-set"})))
    assert "hf://no-such-user/no-such-set" in message
    assert "offline" in message.lower() and "HF_HUB_OFFLINE" in message


@pytest.mark.parametrize("row", ['{"content": "x"}', '["a list"]', '"a string"'])
def test_jsonl_row_without_text_names_file_and_line(cli, tmp_path, run_yaml, row):
    rows = tmp_path / "rows.jsonl"
    good = "".join(json.dumps({"text": f"line {i} of some text"}) + "\n" for i in range(5))
    rows.write_text(good + row + "\n" + good)
    user_error(cli("fit", "--config", run_yaml(**{"data.source": str(rows)})), f"{rows}:6", "text_column")


@pytest.mark.parametrize("suffix", [".txt", ".jsonl"])
def test_invalid_utf8_in_training_text_names_the_file(cli, tmp_path, run_yaml, suffix):
    bad = tmp_path / f"bad{suffix}"
    line = json.dumps({"text": "some good text here"}) if suffix == ".jsonl" else "some good text here"
    bad.write_bytes((line + "\n").encode() * 3 + b'{"text": "caf\xe9"}\n' + (line + "\n").encode())
    message = user_error(cli("fit", "--config", run_yaml(**{"data.source": str(bad)})), str(bad), "UTF-8")
    assert ":4" in message  # the line
    assert "iconv" in message  # the fix


def test_invalid_utf8_in_prompts_file_names_the_file(cli, tmp_path, trained):
    prompts = tmp_path / "prompts.txt"
    prompts.write_bytes(b"the\nand\ncaf\xe9\n")
    args = ["predict", "--ckpt_path", trained["ckpt"], "--data.path", prompts, "--writer.output_path", tmp_path / "p"]
    user_error(cli(*args), str(prompts), ":3", "UTF-8")


# --------------------------------------------------------------------------------------------- config messages


def test_n_head_zero_leads_with_the_reason(cli, run_yaml):
    result = cli("fit", "--config", run_yaml(), "--model.config.n_head", "0")
    message = user_error(result, "n_head must be an integer >= 1, got 0")
    assert "Union subtypes" not in result.err and "Namespace(" not in result.err
    assert len(message.strip().splitlines()) <= 3


def test_misspelled_nested_key_names_the_nearest(cli, run_yaml):
    result = cli("fit", "--config", run_yaml(), "--model.config.n_layr", "2")
    message = user_error(result, "n_layr", "--model.config.n_layer")
    assert "NestedArg" not in result.err and "Namespace(" not in result.err
    assert len(message.strip().splitlines()) == 1
