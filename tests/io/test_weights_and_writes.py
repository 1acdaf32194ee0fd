"""The pieces under the hostile-file and full-disk guarantees: ``check_weights``, the safetensors writer, the unsafe
pickle classification, the temporaries sweep and the storage-error recognition (end to end in
``tests/reliability/test_hostile_files.py``, ``test_full_disk.py`` and ``test_interrupted_writers.py``)."""

from __future__ import annotations

import dataclasses
import errno
import os
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from lightning_gpt import GPT, GPTConfig
from lightning_gpt.errors import StorageError, interruption_in, storage_error
from lightning_gpt.io.atomic import atomic_file, sweep_temporaries, temporary_path
from lightning_gpt.io.serialization import UnsafeCheckpointError, torch_load, write_safetensors
from lightning_gpt.io.weights import check_weights, safetensors_specs

TINY = GPTConfig.from_name("tiny")


@pytest.fixture(scope="module")
def state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return GPT(TINY).state_dict()


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"bias": False, "tie_weights": False},
        {"vocab_size": 100, "padded_vocab_multiple": 64, "mlp_ratio": 2},
        {"attention": "linear"},
        {"attention": "sparse", "sparse_pattern": "longformer"},
        {"attention": "flash"},
    ],
)
def test_the_expected_weights_are_exactly_the_models(overrides):
    """What check_weights expects (one meta block + the outer tensors) is GPT's state dict, name for name."""
    from lightning_gpt.io.weights import _template

    config = dataclasses.replace(TINY, **overrides)
    outer, block = _template(config)
    expected = dict(outer)
    for i in range(config.n_layer):
        expected.update({f"transformer.h.{i}.{k}": v for k, v in block.items()})
    with torch.device("meta"):
        actual = {k: tuple(v.shape) for k, v in GPT(config).state_dict().items()}
    assert expected == actual
    check_weights(config, GPT(config).state_dict(), "w", "c")


def test_check_weights_accepts_the_model_and_a_tied_head_left_out(state):
    check_weights(TINY, state, "w", "c")
    check_weights(TINY, {k: v for k, v in state.items() if k != "lm_head.weight"}, "w", "c")
    meta = {k: torch.empty(v.shape, dtype=torch.bfloat16, device="meta") for k, v in state.items()}
    check_weights(TINY, meta, "w", "c")  # shapes and a float dtype are all it reads


@pytest.mark.parametrize(
    "change, needle",
    [
        (dict(n_layer=100000), "99997 more whole blocks"),
        (dict(n_layer=1), "not part of the model: transformer.h.1."),
        (dict(block_size=10**9), "transformer.wpe.weight (64, 32) where the config needs (1000000000, 32)"),
        (dict(mlp_ratio=8), "transformer.h.0.mlp.c_fc.weight (128, 32) where the config needs (256, 32)"),
        (dict(tie_weights=False, vocab_size=129), "transformer.wte.weight (128, 32)"),
    ],
)
def test_check_weights_names_what_differs_in_milliseconds(state, change, needle):
    config = dataclasses.replace(TINY, **change)
    start = time.perf_counter()
    with pytest.raises(ValueError) as err:
        check_weights(config, state, "model.safetensors", "the model config in config.json")
    assert time.perf_counter() - start < 1.0
    assert needle in str(err.value) and "model.safetensors" in str(err.value) and "config.json" in str(err.value)


def test_check_weights_refuses_integer_values_even_when_not_strict(state):
    bad = dict(state)
    bad["transformer.h.0.ln_1.bias"] = bad["transformer.h.0.ln_1.bias"].to(torch.int8)
    with pytest.raises(ValueError, match=r"transformer\.h\.0\.ln_1\.bias hold int8"):
        check_weights(TINY, bad, "w", "c", strict=False)
    partial = {k: v for k, v in state.items() if not k.startswith("transformer.h.1.")}
    check_weights(TINY, partial, "w", "c", strict=False)  # missing tensors: allowed when not strict
    with pytest.raises(ValueError, match=r"missing: transformer\.h\.1\.\* \(a whole block\)"):
        check_weights(TINY, partial, "w", "c")


def test_own_safetensors_writer_round_trips_every_dtype_and_layout(tmp_path, state):
    tensors = {
        **{k: v for k, v in state.items() if k != "lm_head.weight"},
        "bf16": torch.randn(3, 5).to(torch.bfloat16),
        "fp16": torch.randn(7).half(),
        "transposed": torch.randn(4, 6).t(),
        "scalar": torch.tensor(1.5),
        "empty": torch.zeros(0, 3),
        "ints": torch.arange(5),
    }
    path = tmp_path / "m.safetensors"
    with open(path, "wb") as f:
        write_safetensors(tensors, f, metadata={"format": "pt"})
    back = load_file(str(path))
    assert back.keys() == tensors.keys()
    for name, tensor in tensors.items():
        assert back[name].dtype == tensor.dtype and torch.equal(back[name], tensor), name
    specs = safetensors_specs(path)  # the header alone, as meta tensors
    assert {k: (v.shape, v.dtype) for k, v in specs.items()} == {k: (v.shape, v.dtype) for k, v in tensors.items()}
    assert all(v.device.type == "meta" for v in specs.values())


class _Custom:
    pass


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_unsafe_pickles_are_told_from_damaged_files_by_disassembly(tmp_path, zip_format):
    path = tmp_path / "x.pt"
    torch.save({"w": torch.zeros(2), "x": _Custom()}, path, _use_new_zipfile_serialization=zip_format)
    with pytest.raises(UnsafeCheckpointError, match=r"_Custom.*trust_checkpoint"):
        torch_load(path)
    truncated = tmp_path / "t.pt"
    truncated.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(Exception) as err:
        torch_load(truncated)
    assert not isinstance(err.value, UnsafeCheckpointError)


def test_sweep_removes_only_temporaries_of_dead_writers(tmp_path):
    target = tmp_path / "out"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f".out.tmp-{dead.pid}-abcd"
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"partial")
    parent = tmp_path / f".out.tmp-{os.getppid()}-live"  # a running process (pytest's parent)
    parent.mkdir()
    unrelated = tmp_path / ".other.tmp-1-x"
    unrelated.mkdir()
    assert sweep_temporaries(target, hidden=True) == [stale]
    assert parent.exists() and unrelated.exists()
    assert temporary_path(target, hidden=True).name.startswith(f".out.tmp-{os.getpid()}-")


def test_storage_errors_are_found_behind_a_library_wrapper(tmp_path):
    try:
        try:
            raise OSError(errno.EFBIG, os.strerror(errno.EFBIG))
        except OSError:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598") from None
    except RuntimeError as wrapped:
        err = wrapped
    assert err.__context__ is not None  # "from None" only hides it from the traceback: the chain keeps it
    found = storage_error(err, tmp_path / "a.ckpt", "the checkpoint", "--trainer.default_root_dir")
    assert isinstance(found, StorageError) and "ulimit -f" in str(found) and "a.ckpt" in str(found)
    assert storage_error(RuntimeError("other"), tmp_path, "x", "y") is None
    try:
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt:
            raise RuntimeError("unexpected pos") from None
    except RuntimeError as wrapped:
        assert isinstance(interruption_in(wrapped), KeyboardInterrupt)


def test_atomic_file_keeps_the_previous_file_when_the_write_fails(tmp_path):
    target = tmp_path / "a.txt"
    target.write_text("old")
    with pytest.raises(ZeroDivisionError):
        with atomic_file(target, "the text", "--nowhere", mode="w") as f:
            f.write("new, half")
            1 / 0  # noqa: B018
    assert target.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]
    with atomic_file(target, "the text", "--nowhere", mode="w") as f:
        f.write("new")
    assert target.read_text() == "new" and sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]
