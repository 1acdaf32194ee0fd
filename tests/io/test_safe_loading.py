"""A checkpoint never runs code unless the user opts in (``trust_checkpoint=True`` / ``--trust_checkpoint``).

Each entry point that reads a file gets a real malicious checkpoint: a valid lightning-gpt checkpoint plus one object
whose ``__reduce__`` writes a marker file when unpickled. The tests assert the marker was NOT written, and that the
refusal says how to opt in.
"""

from __future__ import annotations

import random
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

WORDS = "the quick brown fox jumps over a lazy dog and then some more words appear here".split()


class _Payload:
    """Unpickling this runs ``exec``: it writes ``marker`` (the side effect the tests look for)."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple[Any, ...]:
        return (exec, (f"open({self.marker!r}, 'w').write('code ran')",))


def _config(tmp: Path) -> dict[str, Any]:
    return {
        "seed_everything": 7,
        "trainer": {
            "default_root_dir": str(tmp / "run"),
            "accelerator": "cpu",
            "devices": 1,
            "max_steps": 2,
            "logger": False,
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "num_sanity_val_steps": 0,
            "limit_val_batches": 1,
            "limit_test_batches": 1,
            "val_check_interval": 2,
            "check_val_every_n_epoch": None,
        },
        "model": {"config": {"block_size": 16, "n_layer": 2, "n_head": 4, "n_embd": 32}},
        "data": {"source": str(tmp / "corpus.txt"), "tokenizer": "char", "batch_size": 4, "cache_dir": str(tmp / "c")},
        "lr_schedule": {"warmup_steps": 1, "decay_steps": 1000},
        "sampling": {"every_n_steps": 100000},
    }


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict[str, Path]:
    """One tiny ``fit`` (2 steps): its checkpoint, its YAML, and a malicious copy of the checkpoint."""
    from lightning_gpt.cli import main

    tmp = tmp_path_factory.mktemp("safe")
    rng = random.Random(0)
    (tmp / "corpus.txt").write_text("\n".join(" ".join(rng.choice(WORDS) for _ in range(12)) for _ in range(200)))
    cfg = tmp / "run.yaml"
    cfg.write_text(yaml.safe_dump(_config(tmp), sort_keys=False))
    argv = sys.argv
    sys.argv = ["lightning-gpt"]
    try:
        main(["fit", "--config", str(cfg)])
    finally:
        sys.argv = argv
    good = tmp / "run" / "checkpoints" / "last.ckpt"
    (tmp / "prompts.txt").write_text("the quick\n")
    return {"tmp": tmp, "yaml": cfg, "good": good, "prompts": tmp / "prompts.txt"}


@pytest.fixture
def evil(trained, tmp_path) -> tuple[Path, Path]:
    """``(malicious checkpoint, marker file)``: the good checkpoint plus one code-running object."""
    marker = tmp_path / "pwned.txt"
    ckpt = torch.load(trained["good"], map_location="cpu", weights_only=True)
    ckpt["payload"] = _Payload(marker)
    path = tmp_path / "evil.ckpt"
    torch.save(ckpt, path)
    assert not marker.exists()
    return path, marker


def _refused(text: str) -> bool:
    return "trust_checkpoint" in text and "not loaded" in text


def test_every_checkpoint_fit_writes_loads_with_the_safe_loader(trained):
    # fit's periodic/last checkpoints; the Ctrl-C, DDP and FSDP2 ones are checked where those tests make them.
    folder = trained["good"].parent
    files = sorted(folder.glob("*.ckpt"))
    assert files
    for path in files:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        assert "gpt_config" in ckpt and "loops" in ckpt and "callbacks" in ckpt


def test_load_checkpoint_refuses_code_and_runs_it_only_when_trusted(evil):
    from lightning_gpt.io.checkpoint import UnsafeCheckpointError, load_checkpoint, read_checkpoint

    path, marker = evil
    for call in (load_checkpoint, read_checkpoint):
        with pytest.raises(UnsafeCheckpointError, match="trust_checkpoint") as err:
            call(path)
        assert isinstance(err.value, ValueError)  # the CLI shows it as one paragraph, exit 2
        assert not marker.exists()
    model, tokenizer = load_checkpoint(path, trust_checkpoint=True)  # the explicit opt-in
    assert marker.exists() and tokenizer is not None


def test_generate_refuses_a_malicious_checkpoint(cli, evil):
    path, marker = evil
    result = cli("generate", "--ckpt_path", path, "--prompt", "the", "--max_new_tokens", "2")
    assert result.code == 2 and _refused(result.err), result
    assert "Traceback" not in result.err
    assert not marker.exists()


@pytest.mark.parametrize("command", ["validate", "test", "fit"])
def test_lightning_commands_refuse_a_malicious_checkpoint(cli, trained, evil, command):
    path, marker = evil
    result = cli(command, "--config", trained["yaml"], "--ckpt_path", path, "--trainer.max_steps", "3")
    assert result.code == 2 and _refused(result.err), result
    assert not marker.exists()


def test_predict_refuses_a_malicious_checkpoint(cli, trained, evil, tmp_path):
    path, marker = evil
    out = tmp_path / "out.jsonl"
    result = cli(
        "predict", "--ckpt_path", path, "--data.path", trained["prompts"], "--writer.output_path", out,
        "--trainer.accelerator", "cpu",
    )  # fmt: skip
    assert result.code == 2 and _refused(result.err), result
    assert not marker.exists() and not out.exists()


def test_lightning_resume_hook_is_safe_even_when_lightning_is_asked_for_a_full_unpickle(evil):
    # Lightning passes weights_only through to the CheckpointIO; without --trust_checkpoint ours never unpickles code.
    from lightning_gpt.io.checkpoint import UnsafeCheckpointError
    from lightning_gpt.training.checkpoint_io import AtomicCheckpointIO

    path, marker = evil
    with pytest.raises(UnsafeCheckpointError):
        AtomicCheckpointIO().load_checkpoint(path, weights_only=False)
    assert not marker.exists()
    AtomicCheckpointIO(trust_checkpoint=True).load_checkpoint(path)
    assert marker.exists()


def test_tokenizer_path_refuses_a_malicious_checkpoint(evil, tmp_path):
    from lightning_gpt.io import load_tokenizer as build_tokenizer
    from lightning_gpt.training import TextDataModule

    path, marker = evil
    with pytest.raises(ValueError, match="trust_checkpoint"):
        build_tokenizer(str(path))
    assert not marker.exists()
    dm = TextDataModule(source="python-stdlib", tokenizer=str(path), cache_dir=str(tmp_path / "c"))
    with pytest.raises(ValueError, match="trust_checkpoint"):
        dm.tokenizer  # noqa: B018 - built lazily
    assert not marker.exists()


@pytest.mark.parametrize("command", ["generate", "validate", "fit"])
def test_trust_checkpoint_is_the_documented_opt_in(cli, trained, evil, command, tmp_path):
    path, marker = evil
    if command == "generate":
        argv = ["generate", "--ckpt_path", path, "--prompt", "the", "--max_new_tokens", "2"]
    else:
        argv = [command, "--config", trained["yaml"], "--ckpt_path", path, "--trainer.max_steps", "3"]
        argv += ["--trainer.default_root_dir", tmp_path / "run"]
    result = cli(*argv, "--trust_checkpoint", *([] if command == "generate" else ["true"]))
    assert result.code == 0, result
    assert marker.exists()  # the user asked for it


def _optimizer_folder(folder: Path, param_groups_extra: dict[str, Any], moment: torch.Tensor) -> Path:
    """A real torch.distributed.checkpoint folder holding one optimizer as FSDP2Strategy saves it (name-keyed)."""
    import torch.distributed.checkpoint as dcp

    state: dict[str, Any] = {"state": {"model.w": {"step": torch.tensor(3.0), "exp_avg": moment}}}
    state["param_groups"] = [{"lr": 0.1, "params": ["model.w"], **param_groups_extra}]
    dcp.save({"optimizer_0": state}, storage_writer=dcp.FileSystemWriter(str(folder)), no_dist=True)
    return folder


def test_a_sharded_optimizer_state_is_read_weights_only_and_size_checked(tmp_path):
    from lightning_gpt.io.serialization import UnsafeCheckpointError
    from lightning_gpt.io.sharded import load_sharded_optimizers

    weights = {"model.w": torch.Size([4])}
    good = _optimizer_folder(tmp_path / "good", {}, torch.arange(4.0))
    (state,) = load_sharded_optimizers(good, weights)  # keyed like optimizer.state_dict(): ids in param_groups order
    assert state["param_groups"] == [{"lr": 0.1, "params": [0]}]
    assert torch.equal(state["state"][0]["exp_avg"], torch.arange(4.0)) and float(state["state"][0]["step"]) == 3.0

    marker = tmp_path / "marker"
    evil = _optimizer_folder(tmp_path / "evil", {"extra": _Payload(marker)}, torch.arange(4.0))
    with pytest.raises(UnsafeCheckpointError, match="optimizer_0.param_groups.0.extra.*--trust_checkpoint"):
        load_sharded_optimizers(evil, weights)
    assert not marker.exists()

    huge = _optimizer_folder(tmp_path / "huge", {}, torch.zeros(8))  # a moment that fits no weight
    with pytest.raises(ValueError, match=r"size \(8,\), which fits no weight.*'model.w': \(4,\)"):
        load_sharded_optimizers(huge, weights)
