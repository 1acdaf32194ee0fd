"""Deployment exports (issue 20, item 5): ``torch.export`` with a dynamic sequence length and ONNX in onnxruntime, for
every attention kind, at lengths other than the traced example; ``lightning-gpt export --format onnx|torch_export``."""

from __future__ import annotations

import json
import signal
import subprocess
import sys

import pytest
import torch

from lightning_gpt import GPT, GPTConfig
from lightning_gpt.attention import AttentionCore, register_attention
from lightning_gpt.attention import base as attention_base
from lightning_gpt.data import CharTokenizer
from lightning_gpt.io.deploy import (
    compare_with_eager,
    example_input,
    export_onnx,
    export_program,
    write_deployment,
)
from lightning_gpt.io.hf import write_pretrained
from tests.helpers import (
    PYTHON,
    REPO,
    assert_no_partial_files,
    fill_disk,
    mount_tmpfs,
    python_env,
    unmount,
    user_error,
)

pytest.importorskip("onnx")
pytest.importorskip("onnxscript")  # torch.onnx's dynamo exporter
ort = pytest.importorskip("onnxruntime")

BLOCK = 32
KINDS = {
    "standard": dict(attention="standard"),
    "flash": dict(attention="flash"),  # PyTorch SDPA on CPU
    "linear": dict(attention="linear", linear_chunk_size=8),
    "sparse-local": dict(attention="sparse", attention_window=8, sparse_pattern="local"),
    "sparse-strided": dict(attention="sparse", attention_window=8, sparse_pattern="strided", attention_stride=4),
    "sparse-longformer": dict(attention="sparse", attention_window=8, sparse_pattern="longformer", n_global_tokens=3),
}
# (batch, length): none is the example's (2, 16); 1 token, one not a multiple of the window/chunk, the whole context.
SHAPES = [(3, 1), (1, 13), (2, BLOCK)]


def tiny(kind: str, **overrides) -> GPT:
    torch.manual_seed(0)
    fields = dict(vocab_size=48, block_size=BLOCK, n_layer=1, n_head=2, n_embd=16, **KINDS[kind])
    return GPT(GPTConfig(**{**fields, **overrides})).eval()


def ids(batch: int, length: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, 48, (batch, length), generator=torch.Generator().manual_seed(seed + length))


@pytest.mark.parametrize("kind", list(KINDS))
def test_torch_export_and_onnxruntime_equal_eager_at_other_lengths(kind, tmp_path):
    """The old linear/sparse cores failed here: torch.export raised a constraint violation (Python's min() of the
    chunk/window and the traced length, and the block count, pinned the graph to the example's case)."""
    model = tiny(kind)
    assert example_input(model.config).shape == (2, 16)
    program = export_program(model)
    onnx_program = export_onnx(model, program)
    onnx_program.save(str(tmp_path / "model.onnx"))
    session = ort.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    (graph_input,) = session.get_inputs()
    assert graph_input.name == "input_ids" and [d for d in graph_input.shape if isinstance(d, int)] == []
    for batch, length in SHAPES:
        x = ids(batch, length)
        with torch.no_grad():
            expected = model(x)  # (B, T, V)
            exported = program.module()(x)
        (from_onnx,) = session.run(["logits"], {"input_ids": x.numpy()})
        torch.testing.assert_close(exported, expected, atol=1e-5, rtol=0)
        torch.testing.assert_close(torch.from_numpy(from_onnx), expected, atol=1e-5, rtol=0)


def test_the_pattern_matters_at_the_exported_lengths():
    """The sparse patterns' extra keys (strided summaries, longformer globals) are live in the lengths checked above:
    at the whole context the three patterns give different logits, so an export that dropped them would fail."""
    x = ids(2, BLOCK)
    with torch.no_grad():
        local, strided, longformer = (tiny(k)(x) for k in ("sparse-local", "sparse-strided", "sparse-longformer"))
    assert (local - strided).abs().max() > 1e-3 and (local - longformer).abs().max() > 1e-3


def test_a_training_bf16_model_is_exported_as_its_float32_eval_copy_and_left_as_it_was():
    model = tiny("linear").train().to(torch.bfloat16)
    program = export_program(model)
    assert model.training and model.lm_head.weight.dtype == torch.bfloat16
    reference = tiny("linear").eval()
    reference.load_state_dict({k: v.float() for k, v in model.state_dict().items()})
    x = ids(1, 7)
    with torch.no_grad():
        torch.testing.assert_close(program.module()(x), reference(x), atol=1e-5, rtol=0)


def test_an_export_fixed_to_the_example_length_is_caught():
    """What issue 20 saw for sparse ONNX: an export that succeeds but holds only the example's length. A real one: the
    same model exported without dynamic shapes."""
    model = tiny("sparse-local")
    fixed = torch.export.export(model, (example_input(model.config),))  # static (2, 16)
    with pytest.raises(ValueError, match="fails at sequence length 1 .* fixed to the example's shape"):
        compare_with_eager(fixed.module(), model, "static program")
    compare_with_eager(export_program(model).module(), model)  # the dynamic one passes


class _BranchOnLength(AttentionCore):
    """A user's core that chooses its code by the sequence length in Python (as linear/sparse did with min())."""

    def forward(self, q, k, v, key_mask=None):
        causal = torch.ones(q.size(2), q.size(2), dtype=torch.bool).tril()
        if q.size(2) > 4:  # a Python branch on a traced size
            return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=causal)


@pytest.fixture
def branchy():
    register_attention("branchy", _BranchOnLength, overwrite=True)
    yield "branchy"
    attention_base._REGISTRY.pop("branchy", None)  # other tests run every registered kind


def test_a_core_that_branches_on_the_length_is_refused_naming_it(tmp_path, branchy):
    model = GPT(GPTConfig(vocab_size=48, block_size=BLOCK, n_layer=1, n_head=2, n_embd=16, attention="branchy"))
    with pytest.raises(ValueError, match="could not trace attention 'branchy' with a dynamic sequence length"):
        write_deployment(model, None, tmp_path / "out", format="torch_export")
    assert not (tmp_path / "out").exists()
    assert_no_partial_files(tmp_path)


def test_cli_export_onnx_of_a_sparse_model_runs_in_onnxruntime(cli, tmp_path):
    tok = CharTokenizer.train(["the quick brown fox jumps over the lazy dog\n"])
    model = tiny("sparse-strided", vocab_size=tok.vocab_size)
    weights = write_pretrained(model, tok, tmp_path / "weights", format="safetensors")
    out = tmp_path / "deploy"
    result = cli("export", "--ckpt_path", weights, "--output_dir", out, "--format", "onnx")
    assert result.code == 0, result
    assert sorted(p.name for p in out.iterdir()) == [
        "deploy.json", "model.onnx", "special_tokens_map.json", "tokenizer.json", "tokenizer_config.json"
    ]  # fmt: skip
    meta = json.loads((out / "deploy.json").read_text())
    assert meta["format"] == "onnx" and meta["inputs"]["input_ids"]["seq"] == [1, BLOCK]
    assert meta["gpt_config"]["sparse_pattern"] == "strided"
    assert CharTokenizer.from_state_dict(meta["tokenizer"]).encode("the fox") == tok.encode("the fox")
    hf_tokenizer = pytest.importorskip("tokenizers").Tokenizer.from_file(str(out / "tokenizer.json"))
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    for text in ("the lazy dog", "the quick brown fox jumps over"):  # lengths 12 and 30 (the example is 16)
        assert hf_tokenizer.encode(text).ids == tok.encode(text)
        x = torch.tensor([hf_tokenizer.encode(text).ids])
        (logits,) = session.run(["logits"], {"input_ids": x.numpy()})
        with torch.no_grad():
            torch.testing.assert_close(torch.from_numpy(logits), model(x), atol=1e-5, rtol=0)
    again = cli("export", "--ckpt_path", weights, "--output_dir", out, "--format", "torch_export")
    user_error(again, "already exists and is not empty")


def test_torch_export_folder_loads_with_torch_export_load(tmp_path):
    model = tiny("linear")
    out = write_deployment(model, None, tmp_path / "pt2", format="torch_export")
    assert sorted(p.name for p in out.iterdir()) == ["deploy.json", "model.pt2"]
    loaded = torch.export.load(str(out / "model.pt2")).module()
    x = ids(2, 21)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), atol=1e-5, rtol=0)


def test_cli_names_the_deploy_extra_when_onnxscript_is_missing(tmp_path):
    """A real missing package: ``sys.modules[name] = None`` makes Python's import fail as for an absent one."""
    model = tiny("standard")
    weights = write_pretrained(model, None, tmp_path / "weights", format="safetensors")
    code = (
        "import sys; sys.modules['onnxscript'] = None; from lightning_gpt.cli import main; "
        f"main(['export', '--ckpt_path', {str(weights)!r}, '--output_dir', {str(tmp_path / 'out')!r}, "
        "'--format', 'onnx'])"
    )
    done = subprocess.run([PYTHON, "-c", code], cwd=REPO, env=python_env(), capture_output=True, text=True)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert "onnxscript" in done.stderr and "pip install 'lightning-gpt[deploy]'" in done.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("format", ["onnx", "torch_export"])
def test_a_full_disk_is_one_paragraph_and_leaves_nothing(cli, tmp_path, format):
    """A real full disk (a 2 MB tmpfs filled to 16 KB of room; root only): exit 2 naming the disk, no folder, no
    temporary."""
    disk = tmp_path / "disk"
    why = mount_tmpfs(disk, "2m")
    if why:
        pytest.skip(why)
    try:
        weights = write_pretrained(tiny("sparse-local"), None, tmp_path / "weights", format="safetensors")
        fill_disk(disk, leave=16384)
        result = cli("export", "--ckpt_path", weights, "--output_dir", disk / "out", "--format", format)
        user_error(result, "disk is full", "out", "--output_dir")
        assert not (disk / "out").exists()
        assert_no_partial_files(disk)
    finally:
        unmount(disk)


@pytest.mark.slow
@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_sigterm_during_the_write_leaves_nothing(tmp_path):
    """SIGTERM while the temporary folder exists (the program is being saved and checked): exit 143, no folder,
    no temporary."""
    from tests.reliability.test_interrupted_writers import finish, litter, start, wait_for

    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=48, block_size=64, n_layer=4, n_head=4, n_embd=256, attention="linear"))
    weights = write_pretrained(model, None, tmp_path / "weights", format="safetensors")
    out = tmp_path / "exports" / "out"
    out.parent.mkdir()
    log = tmp_path / "export.log"
    proc = start(["export", "--ckpt_path", weights, "--output_dir", out, "--format", "torch_export"], log)
    wait_for(out.parent, ".out.tmp-", proc, log)
    proc.send_signal(signal.SIGTERM)
    text = finish(proc, log)
    assert proc.returncode == 143, text[-3000:]
    assert "Traceback" not in text and "stopped by SIGTERM" in text, text[-3000:]
    assert not out.exists() and not litter(out.parent), litter(out.parent)
