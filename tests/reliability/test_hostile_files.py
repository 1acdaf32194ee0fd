"""Hostile and damaged model files through the ``lightning-gpt`` command (issue 22, items 1, 2, 5, 8, 11).

Each case is a real file on disk, edited as a user (or an attacker) would: a config that claims a huge model, weights
with an extra layer or integer values, malformed tokenizer files, pickles that would run code. Every one must be one
paragraph and exit status 2, fast, with nothing built from the bad sizes and no code run.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from lightning_gpt.io.checkpoint import load_checkpoint
from lightning_gpt.io.hf import write_pretrained
from tests.helpers import PYTHON, REPO, python_env, tiny_config, user_error, write_yaml

FAST = 5.0  # seconds: "well under a second" of work, with room for a loaded machine


@pytest.fixture(scope="module")
def exported(trained, tmp_path_factory) -> dict[str, Path]:
    """The trained tiny run exported both ways: ``hf`` (config.json + lightning_gpt.json) and ``safetensors``."""
    base = tmp_path_factory.mktemp("exported")
    model, tokenizer = load_checkpoint(trained["ckpt"])
    out = {fmt: write_pretrained(model, tokenizer, base / fmt, format=fmt) for fmt in ("hf", "safetensors")}
    hf_only = base / "hf-only"  # a Hugging Face folder as save_pretrained writes it: no lightning_gpt.json
    shutil.copytree(out["hf"], hf_only)
    (hf_only / "lightning_gpt.json").unlink()
    return {**out, "hf-only": hf_only}


def copy_of(folder: Path, tmp_path: Path, name: str = "model") -> Path:
    target = tmp_path / name
    shutil.copytree(folder, target)
    return target


def edit_json(path: Path, change: Callable[[dict[str, Any]], Any]) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def timed(cli, *argv: Any) -> tuple[Any, float]:
    start = time.perf_counter()
    result = cli(*argv)
    return result, time.perf_counter() - start


def generate(cli, path: Path) -> tuple[Any, float]:
    return timed(cli, "generate", "--ckpt_path", path, "--prompt", "the", "--max_new_tokens", "2")


# ------------------------------------------------------------------------ item 1: sizes checked before allocation


@pytest.mark.parametrize(
    "folder, edit, needles",
    [
        ("hf-only", lambda d: d.update(n_layer=100000), ["config.json", "n_layer=100000", "transformer.h.2"]),
        ("hf-only", lambda d: d.update(n_positions=10**9), ["config.json", "transformer.wpe.weight"]),
        ("safetensors", lambda d: d["gpt_config"].update(n_layer=100000), ["lightning_gpt.json", "transformer.h.2"]),
        ("safetensors", lambda d: d["gpt_config"].update(block_size=10**9), ["lightning_gpt.json", "(1000000000, 32)"]),
        ("hf", lambda d: d["gpt_config"].update(n_embd=4096, n_head=32), ["lightning_gpt.json", "shapes differ"]),
        ("safetensors", lambda d: d.pop("gpt_config"), ["lightning_gpt.json", "no 'gpt_config' entry"]),
        ("safetensors", lambda d: d.update(gpt_config=[1, 2]), ["lightning_gpt.json", "should be a dict"]),
    ],
    ids=[
        "hf-n_layer",
        "hf-n_positions",
        "native-n_layer",
        "native-block_size",
        "native-n_embd",
        "no-gpt_config",
        "list",
    ],
)
def test_generate_refuses_a_config_that_does_not_describe_the_weights_at_once(
    cli, exported, tmp_path, folder, edit, needles
):
    model = copy_of(exported[folder], tmp_path)
    edit_json(model / ("config.json" if folder == "hf-only" else "lightning_gpt.json"), edit)
    result, seconds = generate(cli, model)
    user_error(result, *needles)
    assert seconds < FAST, f"{seconds:.1f} s"


def test_a_100_byte_config_json_is_refused_before_building_gpt2_small(cli, exported, tmp_path):
    """``{"model_type": "gpt2"}`` alone means GPT-2 small's defaults (124M parameters): compared with the tiny
    weights first, it is refused before any of them is allocated, through generate and fit --model.init_from."""
    model = copy_of(exported["hf-only"], tmp_path)
    (model / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    assert (model / "config.json").stat().st_size < 100
    result, seconds = generate(cli, model)
    user_error(result, "config.json", "n_layer=12", "shapes differ")
    assert seconds < FAST


def test_fit_init_from_refuses_a_config_that_does_not_describe_the_weights(cli, exported, tmp_path, corpus):
    model = copy_of(exported["hf-only"], tmp_path)
    edit_json(model / "config.json", lambda d: d.update(n_layer=100000))
    cfg = tiny_config(tmp_path / "run", corpus, tmp_path / "cache")
    del cfg["model"]["config"]
    config = write_yaml(tmp_path / "run.yaml", cfg)
    result, seconds = timed(cli, "fit", "--config", config, "--model.init_from", model)
    user_error(result, "config.json", "n_layer=100000", "transformer.h.2")
    assert seconds < FAST
    assert not (tmp_path / "run").exists()


def _hostile_checkpoint(trained, tmp_path: Path, **gpt_config: Any) -> Path:
    ckpt = torch.load(trained["ckpt"], map_location="cpu", weights_only=True)
    ckpt["gpt_config"].update(gpt_config)
    ckpt["hyper_parameters"]["config"].update(gpt_config)
    path = tmp_path / "edited.ckpt"
    torch.save(ckpt, path)
    return path


@pytest.mark.parametrize("command", ["generate", "export", "validate", "test", "predict"])
def test_a_checkpoint_whose_config_claims_a_huge_model_is_refused_at_once(cli, trained, tmp_path, corpus, command):
    path = _hostile_checkpoint(trained, tmp_path, n_layer=100000)
    if command == "generate":
        result, seconds = generate(cli, path)
    elif command == "export":
        result, seconds = timed(cli, "export", "--ckpt_path", path, "--output_dir", tmp_path / "out")
    elif command == "predict":
        (tmp_path / "p.txt").write_text("the\n")
        argv = ["--data.path", tmp_path / "p.txt", "--writer.output_path", tmp_path / "out.jsonl"]
        result, seconds = timed(cli, "predict", "--ckpt_path", path, *argv, "--trainer.accelerator", "cpu")
    else:
        argv = ["--data.source", corpus, "--data.tokenizer", "char", "--data.cache_dir", tmp_path / "cache"]
        result, seconds = timed(cli, command, "--ckpt_path", path, *argv, "--trainer.accelerator", "cpu")
    user_error(result, "edited.ckpt", "n_layer=100000", "transformer.h.2")
    assert seconds < FAST
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.jsonl").exists()


@pytest.mark.parametrize("command", ["validate", "test", "predict"])
def test_ckpt_path_of_a_weights_folder_with_a_huge_config_is_refused_at_once(cli, exported, tmp_path, corpus, command):
    model = copy_of(exported["safetensors"], tmp_path)
    edit_json(model / "lightning_gpt.json", lambda d: d["gpt_config"].update(n_layer=100000))
    if command == "predict":
        (tmp_path / "p.txt").write_text("the\n")
        argv = ["--data.path", tmp_path / "p.txt", "--writer.output_path", tmp_path / "out.jsonl"]
    else:
        argv = ["--data.source", corpus, "--data.cache_dir", tmp_path / "cache"]
    result, seconds = timed(cli, command, "--ckpt_path", model, *argv, "--trainer.accelerator", "cpu")
    user_error(result, "lightning_gpt.json", "n_layer=100000")
    assert seconds < FAST


@pytest.mark.slow
def test_a_huge_config_costs_neither_time_nor_memory(exported, tmp_path):
    """In a fresh process: ``n_layer: 100000`` is refused within the time of a plain start-up plus a little, and
    the process's peak memory stays that of the imports (the old code built the model for minutes, into GBs)."""
    model = copy_of(exported["safetensors"], tmp_path)
    edit_json(model / "lightning_gpt.json", lambda d: d["gpt_config"].update(n_layer=100000))
    probe = (
        "import resource, subprocess, sys, time\n"
        "argv = [sys.executable, '-m', 'lightning_gpt', *sys.argv[1:]]\n"
        "p = subprocess.run(argv, capture_output=True, text=True, timeout=120)\n"
        "print(p.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss // 1024)\n"
        "sys.stderr.write(p.stderr)\n"
    )
    args = ["generate", "--ckpt_path", str(model), "--prompt", "the"]
    bad = subprocess.run([PYTHON, "-c", probe, *args], cwd=REPO, env=python_env(), capture_output=True, text=True)
    good = subprocess.run(
        [PYTHON, "-c", probe, "generate", "--ckpt_path", str(exported["safetensors"]), "--prompt", "the"],
        cwd=REPO,
        env=python_env(),
        capture_output=True,
        text=True,
    )
    code, peak_mb = map(int, bad.stdout.split())
    assert code == 2 and "n_layer=100000" in bad.stderr, bad.stderr[-2000:]
    good_code, good_peak_mb = map(int, good.stdout.split())
    assert good_code == 0, good.stderr[-2000:]
    assert peak_mb < good_peak_mb + 100, (peak_mb, good_peak_mb)  # MB: nothing of the claimed model was allocated


# ------------------------------------------------------------------------ item 2: weights that do not match


def _edit_weights(folder: Path, change: Callable[[dict[str, torch.Tensor]], Any]) -> None:
    tensors = load_file(str(folder / "model.safetensors"))
    change(tensors)
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})


def _extra_layer(t: dict[str, torch.Tensor]) -> None:
    for name in [k for k in t if k.startswith("transformer.h.1.")]:
        t[name.replace(".h.1.", ".h.2.")] = t[name].clone()


WEIGHT_EDITS = {
    "extra-layer": (_extra_layer, ["transformer.h.2.", "not part of the model"]),
    "int-weights": (
        lambda t: t.update({"transformer.h.0.mlp.c_fc.weight": t["transformer.h.0.mlp.c_fc.weight"].to(torch.int64)}),
        ["transformer.h.0.mlp.c_fc.weight", "int64"],
    ),
    "bool-weights": (
        lambda t: t.update({"transformer.ln_f.weight": t["transformer.ln_f.weight"] > 0}),
        ["transformer.ln_f.weight", "bool"],
    ),
    "missing": (lambda t: t.pop("transformer.h.1.attn.c_proj.bias"), ["missing", "transformer.h.1.attn.c_proj.bias"]),
}


@pytest.mark.parametrize("edit", list(WEIGHT_EDITS))
@pytest.mark.parametrize("fmt", ["safetensors", "hf-only"])
def test_generate_and_export_refuse_weights_that_do_not_match_naming_the_tensor(cli, exported, tmp_path, edit, fmt):
    change, needles = WEIGHT_EDITS[edit]
    model = copy_of(exported[fmt], tmp_path)
    if fmt == "hf-only":  # Hugging Face names: h.<i>.mlp.c_fc.weight transposed (Conv1D), no lm_head when tied
        tensors = load_file(str(model / "model.safetensors"))
        ours = {
            k: (v.t() if k.endswith(("c_attn.weight", "c_proj.weight", "c_fc.weight")) else v)
            for k, v in tensors.items()
        }
        change(ours)
        back = {
            k: (v.t() if k.endswith(("c_attn.weight", "c_proj.weight", "c_fc.weight")) else v) for k, v in ours.items()
        }
        save_file({k: v.contiguous() for k, v in back.items()}, str(model / "model.safetensors"))
    else:
        _edit_weights(model, change)
    result, _ = generate(cli, model)
    user_error(result, "model.safetensors", *needles)
    result = cli("export", "--ckpt_path", model, "--output_dir", tmp_path / "out")
    user_error(result, *needles)
    assert not (tmp_path / "out").exists()
    with pytest.raises(ValueError, match=needles[0].replace(".", r"\.")):
        load_checkpoint(model)


def test_init_from_and_validate_refuse_an_extra_layer(cli, exported, tmp_path, corpus):
    model = copy_of(exported["safetensors"], tmp_path)
    _edit_weights(model, _extra_layer)
    cfg = tiny_config(tmp_path / "run", corpus, tmp_path / "cache")
    del cfg["model"]["config"]
    config = write_yaml(tmp_path / "run.yaml", cfg)
    user_error(cli("fit", "--config", config, "--model.init_from", model), "transformer.h.2.")
    argv = ["--data.source", corpus, "--data.cache_dir", tmp_path / "cache", "--trainer.accelerator", "cpu"]
    user_error(cli("validate", "--ckpt_path", model, *argv), "transformer.h.2.")


def test_a_checkpoint_with_integer_weights_is_refused_everywhere(cli, trained, tmp_path):
    ckpt = torch.load(trained["ckpt"], map_location="cpu", weights_only=True)
    key = "model.transformer.h.0.attn.c_attn.weight"
    ckpt["state_dict"][key] = (ckpt["state_dict"][key] * 100).to(torch.int32)
    path = tmp_path / "ints.ckpt"
    torch.save(ckpt, path)
    user_error(generate(cli, path)[0], "transformer.h.0.attn.c_attn.weight", "int32")
    user_error(cli("export", "--ckpt_path", path, "--output_dir", tmp_path / "out"), "int32")
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------ item 5: malformed or huge tokenizers

TOKENIZER_FILES = {
    "not-json": ("{ this is not json", ["tokenizer.json", "not JSON"]),
    "json-list": ("[1, 2, 3]", ["tokenizer.json", "JSON list"]),
    "no-model": (json.dumps({"version": "1.0", "added_tokens": []}), ["tokenizer.json", "no 'model'"]),
    "missing-unk": (
        json.dumps({"version": "1.0", "model": {"type": "WordLevel", "vocab": {"a": 0, "b": 1}, "unk_token": "[UNK]"}}),
        ["tokenizer.json", "cannot encode text"],
    ),
    "wrong-types": (
        json.dumps({"version": "1.0", "model": {"type": "BPE", "vocab": [1, 2], "merges": 7}}),
        ["tokenizer.json", "not a usable tokenizer"],
    ),
}


@pytest.mark.parametrize("case", list(TOKENIZER_FILES))
def test_malformed_tokenizer_json_in_a_model_folder(cli, exported, tmp_path, case):
    text, needles = TOKENIZER_FILES[case]
    model = copy_of(exported["hf-only"], tmp_path)
    (model / "tokenizer.json").write_text(text)
    user_error(generate(cli, model)[0], *needles)


@pytest.mark.parametrize("case", list(TOKENIZER_FILES))
def test_malformed_tokenizer_json_as_data_tokenizer(cli, tmp_path, run_yaml, case):
    text, needles = TOKENIZER_FILES[case]
    file = tmp_path / "tokenizer.json"
    file.write_text(text)
    result = cli("fit", "--config", run_yaml(), "--data.tokenizer", file)
    user_error(result, *needles)
    assert not list(tmp_path.rglob("*.ckpt"))


@pytest.mark.parametrize("case", ["not-json", "no-model", "missing-unk"])
def test_malformed_tokenizer_state_in_a_checkpoint(cli, trained, tmp_path, run_yaml, case):
    text, needles = TOKENIZER_FILES[case]
    ckpt = torch.load(trained["ckpt"], map_location="cpu", weights_only=True)
    ckpt["tokenizer"] = {"kind": "pretrained", "tokenizer_json": text}
    path = tmp_path / "tok.ckpt"
    torch.save(ckpt, path)
    user_error(generate(cli, path)[0], "tok.ckpt", needles[1])
    user_error(cli("fit", "--config", run_yaml(), "--data.tokenizer", path), "tok.ckpt", needles[1])
    user_error(cli("validate", "--config", run_yaml(), "--ckpt_path", path), "tok.ckpt", needles[1])


@pytest.mark.parametrize(
    "name, variable",
    [("tokenizer.json", "LIGHTNING_GPT_MAX_TOKENIZER_MB"), ("config.json", "LIGHTNING_GPT_MAX_JSON_MB")],
)
def test_a_file_over_its_size_limit_is_refused_with_the_fix(cli, exported, tmp_path, monkeypatch, name, variable):
    """A real file over the (lowered) limit: refused before it is parsed, naming the file and the variable."""
    model = copy_of(exported["hf-only"], tmp_path)
    size = (model / name).stat().st_size
    monkeypatch.setenv(variable, str(size / 2e6))
    message = user_error(generate(cli, model)[0], name, f"{variable}=")
    assert "MB" in message
    monkeypatch.setenv(variable, str(size * 2 / 1e6))
    assert generate(cli, model)[0].code == 0


# ------------------------------------------------------------------------ item 8: unsafe pickles name the opt-in


class _Custom:
    """An object of a class outside PyTorch's allowlist."""


class _System:
    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {self.marker}",))


class _Eval:
    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple[Any, ...]:
        return (eval, (f"open({self.marker!r}, 'w')",))


class _Popen:
    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple[Any, ...]:
        return (subprocess.Popen, (["touch", self.marker],))


PAYLOADS: dict[str, Callable[[Path], Any]] = {
    "os.system": _System,
    "eval": _Eval,
    "subprocess": _Popen,
    "custom-class": lambda marker: _Custom(),
    "function": lambda marker: math.sqrt,
    "numpy-object-array": lambda marker: np.array([1, "a"], dtype=object),
}


def _refused(result: Any) -> None:
    message = user_error(result, "not loaded", "--trust_checkpoint")
    assert "truncated or corrupt" not in message and "Weights only load failed" not in message, message


def _evil(trained, tmp_path: Path, kind: str) -> tuple[Path, Path, Any]:
    """``(checkpoint with a payload, marker file a code-running payload would create, the payload)``."""
    marker = tmp_path / "pwned"
    ckpt = torch.load(trained["ckpt"], map_location="cpu", weights_only=True)
    payload = PAYLOADS[kind](marker)
    ckpt["payload"] = payload
    path = tmp_path / "evil.ckpt"
    torch.save(ckpt, path)
    return path, marker, payload


@pytest.fixture
def evil(trained, tmp_path) -> tuple[Path, Path, Any]:
    """An ``os.system`` payload: the one torch 2.13 words differently ("module posix is blocked")."""
    return _evil(trained, tmp_path, "os.system")


@pytest.mark.parametrize("kind", list(PAYLOADS))
def test_every_kind_of_unsafe_payload_is_refused_naming_trust_checkpoint(cli, trained, tmp_path, kind):
    path, marker, _ = _evil(trained, tmp_path, kind)
    _refused(generate(cli, path)[0])
    assert not marker.exists()


@pytest.mark.parametrize("command", ["validate", "test", "fit", "predict", "export"])
def test_unsafe_checkpoint_is_refused_naming_trust_checkpoint(cli, evil, tmp_path, run_yaml, command):
    path, marker, _ = evil
    if command in ("validate", "test", "fit"):
        result = cli(command, "--config", run_yaml(), "--ckpt_path", path, "--trainer.max_steps", "3")
    elif command == "predict":
        (tmp_path / "p.txt").write_text("the\n")
        argv = ["--data.path", tmp_path / "p.txt", "--writer.output_path", tmp_path / "o.jsonl"]
        result = cli("predict", "--ckpt_path", path, *argv, "--trainer.accelerator", "cpu")
    else:
        result = cli("export", "--ckpt_path", path, "--output_dir", tmp_path / "out")
    _refused(result)
    assert not marker.exists()


def test_unsafe_init_from_tokenizer_ckpt_and_bin_name_trust_checkpoint(cli, evil, exported, tmp_path, corpus):
    path, marker, payload = evil
    cfg = tiny_config(tmp_path / "run", corpus, tmp_path / "cache")
    config = write_yaml(tmp_path / "run.yaml", cfg)
    _refused(cli("fit", "--config", config, "--data.tokenizer", path))
    del cfg["model"]["config"]
    config = write_yaml(tmp_path / "run2.yaml", cfg)
    _refused(cli("fit", "--config", config, "--model.init_from", path))
    model = copy_of(exported["hf-only"], tmp_path)
    state = load_file(str(model / "model.safetensors"))
    (model / "model.safetensors").unlink()
    torch.save({**state, "payload": payload}, model / "pytorch_model.bin")
    _refused(generate(cli, model)[0])
    assert not marker.exists()


# ------------------------------------------------------------------------ item 11: load_checkpoint of a run folder


def test_load_checkpoint_of_a_run_folder_loads_its_newest_complete_checkpoint(trained, tmp_path, caplog):
    model, tokenizer = load_checkpoint(trained["root"])
    expected, _ = load_checkpoint(trained["ckpt"])
    assert tokenizer is not None
    for (name, a), (_, b) in zip(model.state_dict().items(), expected.state_dict().items()):
        assert torch.equal(a, b), name
    # last.ckpt damaged (copied mid-write): the complete checkpoint beside it is used, with a warning.
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    shutil.copy(trained["ckpt"], run / "checkpoints" / "epoch=0-step=2.ckpt")
    (run / "checkpoints" / "last.ckpt").write_bytes(trained["ckpt"].read_bytes()[:300])
    with caplog.at_level("WARNING"):
        model, _ = load_checkpoint(run)
    assert "last.ckpt" in caplog.text
    for (name, a), (_, b) in zip(model.state_dict().items(), expected.state_dict().items()):
        assert torch.equal(a, b), name


def test_generate_of_a_run_folder_still_works(cli, trained):
    result, _ = generate(cli, trained["root"])
    assert result.code == 0, result


def test_trust_checkpoint_is_the_opt_in_for_init_from_and_export(cli, trained, tmp_path, corpus):
    marker = tmp_path / "ran"
    ckpt = torch.load(trained["ckpt"], map_location="cpu", weights_only=True)
    ckpt["payload"] = _System(marker)
    path = tmp_path / "trusted.ckpt"
    torch.save(ckpt, path)
    result = cli("export", "--ckpt_path", path, "--output_dir", tmp_path / "out", "--trust_checkpoint")
    assert result.code == 0 and marker.exists(), result
    marker.unlink()
    cfg = tiny_config(tmp_path / "run", corpus, tmp_path / "cache", **{"trainer.max_steps": 1})
    del cfg["model"]["config"]
    config = write_yaml(tmp_path / "run.yaml", cfg)
    result = cli("fit", "--config", config, "--model.init_from", path, "--trust_checkpoint", "true")
    assert result.code == 0 and marker.exists(), result


def test_a_checkpoint_whose_saved_arguments_alone_claim_a_huge_model_is_refused_at_once(cli, trained, tmp_path, corpus):
    """``hyper_parameters.config`` edited, ``gpt_config`` intact: the model Lightning would build from the saved
    arguments is compared with the checkpoint before it is built."""
    ckpt = torch.load(trained["ckpt"], map_location="cpu", weights_only=True)
    ckpt["hyper_parameters"]["config"]["n_layer"] = 100000
    path = tmp_path / "args.ckpt"
    torch.save(ckpt, path)
    argv = ["--data.source", corpus, "--data.tokenizer", "char", "--data.cache_dir", tmp_path / "cache"]
    result, seconds = timed(cli, "validate", "--ckpt_path", path, *argv, "--trainer.accelerator", "cpu")
    user_error(result, "n_layer: checkpoint 2 vs given 100000")
    assert seconds < FAST
