"""Pretrained weights in and out: Hugging Face GPT-2 folders read without transformers, ``fit --model.init_from``,
``lightning-gpt export`` back to a folder that ``transformers`` loads. Only local tiny random models."""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

transformers = pytest.importorskip("transformers")

from lightning_gpt import GPT, GPTConfig  # noqa: E402
from lightning_gpt.data import build_tokenizer  # noqa: E402
from lightning_gpt.io.checkpoint import UnsafeCheckpointError, load_checkpoint  # noqa: E402
from tests.helpers import tiny_hf_gpt2  # noqa: E402

WORDS = "the quick brown fox jumps over a lazy dog and then some more words appear here".split()
TEXTS = ["hello world, the fox", "two\nlines  and  spaces ", "naïve café — 東京 ✓", " leading space"]


def _corpus_lines(n: int = 200) -> list[str]:
    rng = random.Random(0)
    return [" ".join(rng.choice(WORDS) for _ in range(12)) for _ in range(n)]


def _hf_tokenizer() -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus_lines() + TEXTS, trainer=trainer)
    return tok


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory) -> Path:
    """A tiny random ``GPT2LMHeadModel`` and its BPE tokenizer, saved with ``save_pretrained``."""
    folder = tmp_path_factory.mktemp("hf") / "tiny-gpt2"
    tok = _hf_tokenizer()
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>"
    )
    fast.save_pretrained(folder)
    eos = tok.token_to_id("<|endoftext|>")
    tiny_hf_gpt2(0, vocab_size=tok.get_vocab_size(), bos_token_id=eos, eos_token_id=eos).save_pretrained(folder)
    return folder


def _hf_model(folder: Path) -> Any:
    return transformers.AutoModelForCausalLM.from_pretrained(folder).eval()


def _ids(vocab: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, vocab, (2, 20), generator=torch.Generator().manual_seed(seed))


def _assert_same_logits(model: GPT, hf: Any) -> None:
    idx = _ids(model.config.vocab_size)
    with torch.no_grad():
        torch.testing.assert_close(model(idx), hf(idx).logits, atol=1e-5, rtol=0)


# --------------------------------------------------------------------------------------------------- reading a folder


def test_hf_folder_loads_without_transformers_with_the_same_logits_and_ids(hf_dir, monkeypatch):
    hf = _hf_model(hf_dir)
    fast = transformers.AutoTokenizer.from_pretrained(hf_dir)
    monkeypatch.setitem(sys.modules, "transformers", None)  # reading must not import it
    model, tokenizer = load_checkpoint(hf_dir)
    _assert_same_logits(model, hf)
    assert model.config.block_size == 64 and model.config.tie_weights
    for text in TEXTS:
        assert tokenizer.encode(text) == fast.encode(text, add_special_tokens=False)
    assert tokenizer.eos_id == fast.eos_token_id


def test_weights_only_bin_and_vocab_merges_tokenizer(hf_dir, tmp_path):
    folder = tmp_path / "bin"
    hf = _hf_model(hf_dir)
    folder.mkdir()
    (folder / "config.json").write_bytes((hf_dir / "config.json").read_bytes())
    # What save_pretrained(safe_serialization=False) wrote before transformers 5: a plain torch state dict.
    torch.save(hf.state_dict(), folder / "pytorch_model.bin")
    _hf_tokenizer().model.save(str(folder))  # vocab.json + merges.txt only
    model, tokenizer = load_checkpoint(folder)
    _assert_same_logits(model, hf)
    fast = transformers.AutoTokenizer.from_pretrained(hf_dir)
    for text in TEXTS:
        assert tokenizer.encode(text) == fast.encode(text, add_special_tokens=False)


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple[Any, ...]:
        return (exec, (f"open({self.marker!r}, 'w').write('code ran')",))


def test_bin_that_needs_unpickling_is_refused_unless_trusted(hf_dir, tmp_path, cli):
    folder = tmp_path / "evil"
    folder.mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        (folder / name).write_bytes((hf_dir / name).read_bytes())
    marker = tmp_path / "pwned.txt"
    state = dict(_hf_model(hf_dir).state_dict())
    state["payload"] = _Payload(marker)
    torch.save(state, folder / "pytorch_model.bin")
    with pytest.raises(UnsafeCheckpointError):
        load_checkpoint(folder)
    result = cli("generate", "--ckpt_path", folder, "--prompt", "the", "--max_new_tokens", "2")
    assert result.code == 2 and "--trust_checkpoint" in result.err and "Traceback" not in result.err, result
    assert not marker.exists()
    load_checkpoint(folder, trust_checkpoint=True)
    assert marker.exists()


def test_generate_samples_a_hf_folder_directly(hf_dir, cli):
    result = cli("generate", "--ckpt_path", hf_dir, "--prompt", "the fox", "--max_new_tokens", "5", "--temperature", 0)
    assert result.code == 0, result
    assert result.out.startswith("the fox")


@pytest.mark.parametrize(
    "case, needle",
    [
        ("no_config", "not a Hugging Face model folder"),
        ("llama", "model_type='llama'"),
        ("mismatch", "n_layer: init_from has 2, given 3"),
    ],
)
def test_bad_init_from_is_one_paragraph_and_writes_nothing(hf_dir, tmp_path, cli, case, needle):
    folder = tmp_path / "bad"
    if case == "mismatch":
        folder = hf_dir
    else:
        folder.mkdir()
        (folder / "model.safetensors").write_bytes((hf_dir / "model.safetensors").read_bytes())
        if case == "llama":
            (folder / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 32}))
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(_corpus_lines()))
    extra = ["--model.config.n_layer", "3"] if case == "mismatch" else []
    root = tmp_path / "run"
    result = cli(
        "fit", "--model.init_from", folder, *extra, "--data.source", corpus, "--data.cache_dir", tmp_path / "c",
        "--trainer.default_root_dir", root, "--trainer.max_steps", "1", "--trainer.logger", "false",
    )  # fmt: skip
    assert result.code == 2, result
    assert needle in result.err and "Traceback" not in result.err, result.err
    assert result.err.count("lightning-gpt: error:") == 1
    assert not (root / "checkpoints").exists()
    if case != "mismatch":
        result = cli("generate", "--ckpt_path", folder, "--prompt", "x")
        assert result.code == 2 and needle in result.err, result


# ------------------------------------------------------------------------------------------------------ fit init_from


_PROBE = """
import json, torch, torch.nn.functional as F
from lightning.pytorch import Callback
import transformers


class Probe(Callback):
    def __init__(self, hf_dir: str, out: str) -> None:
        self.hf_dir, self.out, self.losses, self.hf_loss = hf_dir, out, [], None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.losses.append(float(outputs["loss"]))
        if self.hf_loss is None:
            hf = transformers.AutoModelForCausalLM.from_pretrained(self.hf_dir).eval()
            idx, targets = pl_module.split_batch(batch)
            with torch.no_grad():
                logits = hf(idx.cpu()).logits
            self.hf_loss = float(F.cross_entropy(logits.flatten(0, 1), targets.cpu().flatten()))

    def on_train_end(self, trainer, pl_module):
        with open(self.out, "w") as f:
            json.dump({"losses": self.losses, "hf_loss": self.hf_loss}, f)
"""


def _fit_config(tmp: Path, **model: Any) -> Path:
    corpus = tmp / "corpus.txt"
    corpus.write_text("\n".join(_corpus_lines()))
    cfg = {
        "seed_everything": 3,
        "trainer": {
            "default_root_dir": str(tmp / "run"),
            "accelerator": "cpu",
            "max_steps": 6,
            "logger": False,
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "limit_val_batches": 0,
        },
        "model": {"learning_rate": 3e-3, **model},
        "data": {"source": str(corpus), "batch_size": 4, "cache_dir": str(tmp / "c"), "val_fraction": 0.0},
        "lr_schedule": {"warmup_steps": 0, "decay_steps": 1000},
        "sampling": {"every_n_steps": 100000},
    }
    path = tmp / "fit.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_fit_init_from_hf_folder_starts_at_the_hf_loss_and_lowers_it(hf_dir, tmp_path, cli, monkeypatch):
    (tmp_path / "probe_callback.py").write_text(_PROBE)
    monkeypatch.syspath_prepend(str(tmp_path))
    out = tmp_path / "probe.json"
    config = _fit_config(tmp_path, init_from=str(hf_dir))
    result = cli(
        "fit", "--config", config, "--trainer.callbacks+=probe_callback.Probe",
        "--trainer.callbacks.hf_dir", hf_dir, "--trainer.callbacks.out", out,
    )  # fmt: skip
    assert result.code == 0, result
    probe = json.loads(out.read_text())
    assert abs(probe["losses"][0] - probe["hf_loss"]) < 1e-5, probe  # the weights really arrived
    assert probe["losses"][-1] < probe["losses"][0] - 0.1, probe
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["gpt_config"]["n_embd"] == 32 and ckpt["gpt_config"]["block_size"] == 64
    fast = transformers.AutoTokenizer.from_pretrained(hf_dir)
    tokenizer = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.ckpt")[1]
    assert tokenizer.encode(TEXTS[2]) == fast.encode(TEXTS[2], add_special_tokens=False)


def _own_checkpoint(path: Path, config: GPTConfig, tokenizer: Any, seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    model = GPT(config).eval()
    torch.save(
        {
            "gpt_config": config.to_dict(),
            "state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
            "tokenizer": tokenizer.state_dict(),
        },
        path,
    )
    return model


def test_init_from_own_checkpoint_with_another_attention_kind_trains(tmp_path, cli):
    tokenizer = build_tokenizer("char", _corpus_lines())
    config = GPTConfig(vocab_size=tokenizer.vocab_size, block_size=32, n_layer=2, n_head=4, n_embd=32)
    _own_checkpoint(tmp_path / "base.ckpt", config, tokenizer)
    fit = _fit_config(tmp_path, init_from=str(tmp_path / "base.ckpt"))
    result = cli("fit", "--config", fit, "--model.config.attention", "linear", "--model.config.block_size", "16")
    assert result.code == 0, result
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["gpt_config"]["attention"] == "linear" and ckpt["gpt_config"]["block_size"] == 16
    assert ckpt["global_step"] == 6
    assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values() if v.is_floating_point())
    # The fine-tuned checkpoint stands alone: predict works after the init source is gone.
    (tmp_path / "base.ckpt").unlink()
    (tmp_path / "prompts.txt").write_text("the fox\n")
    out = tmp_path / "pred.jsonl"
    result = cli(
        "predict", "--ckpt_path", tmp_path / "run" / "checkpoints" / "last.ckpt", "--data.path",
        tmp_path / "prompts.txt", "--writer.output_path", out, "--model.generation.max_new_tokens", "3",
    )  # fmt: skip
    assert result.code == 0 and out.is_file(), result


def test_init_from_with_another_tokenizer_is_an_error(tmp_path, cli):
    tokenizer = build_tokenizer("char", ["abc"])
    config = GPTConfig(vocab_size=tokenizer.vocab_size, block_size=16, n_layer=2, n_head=4, n_embd=32)
    _own_checkpoint(tmp_path / "base.ckpt", config, tokenizer)
    fit = _fit_config(tmp_path, init_from=str(tmp_path / "base.ckpt"))
    result = cli("fit", "--config", fit, "--data.tokenizer", "bpe", "--data.tokenizer_vocab_size", "300")
    assert result.code == 2 and "not the one of init_from" in result.err, result
    assert not (tmp_path / "run" / "checkpoints").exists()


# ----------------------------------------------------------------------------------------------------------- export


@pytest.mark.parametrize("kind", ["char", "bpe", "unigram", "pretrained"])
def test_export_loads_in_transformers_with_same_logits_ids_and_generation(kind, hf_dir, tmp_path, cli):
    texts = _corpus_lines() + TEXTS
    if kind == "pretrained":
        tokenizer = build_tokenizer(str(hf_dir / "tokenizer.json"))
    else:
        tokenizer = build_tokenizer(kind, texts, vocab_size=300)
    config = GPTConfig(vocab_size=tokenizer.vocab_size, block_size=32, n_layer=2, n_head=4, n_embd=32)
    model = _own_checkpoint(tmp_path / "model.ckpt", config, tokenizer)
    out = tmp_path / "exported"
    result = cli("export", "--ckpt_path", tmp_path / "model.ckpt", "--output_dir", out)
    assert result.code == 0, result
    for name in ("config.json", "model.safetensors", "generation_config.json", "tokenizer.json"):
        assert (out / name).is_file(), name
    _assert_same_logits(model, _hf_model(out))
    fast = transformers.AutoTokenizer.from_pretrained(out)
    for text in TEXTS:
        assert fast.encode(text, add_special_tokens=False) == tokenizer.encode(text), (kind, text)
    args = ["--prompt", "the fox", "--max_new_tokens", "8", "--temperature", "0"]
    from_ckpt = cli("generate", "--ckpt_path", tmp_path / "model.ckpt", *args)
    from_folder = cli("generate", "--ckpt_path", out, *args)
    assert from_ckpt.code == 0 and from_folder.code == 0
    assert from_folder.out == from_ckpt.out


def test_export_refuses_what_gpt2_cannot_express_and_writes_weights_alone(tmp_path, cli):
    tokenizer = build_tokenizer("char", _corpus_lines())
    config = GPTConfig(
        vocab_size=tokenizer.vocab_size, block_size=32, n_layer=2, n_head=4, n_embd=32, attention="linear"
    )
    model = _own_checkpoint(tmp_path / "linear.ckpt", config, tokenizer)
    result = cli("export", "--ckpt_path", tmp_path / "linear.ckpt", "--output_dir", tmp_path / "hf")
    assert result.code == 2 and "attention='linear'" in result.err and "--format safetensors" in result.err, result
    assert not (tmp_path / "hf").exists() and not list(tmp_path.glob(".hf.tmp-*"))
    args = ["--ckpt_path", tmp_path / "linear.ckpt", "--output_dir", tmp_path / "st", "--format", "safetensors"]
    assert cli("export", *args).code == 0
    loaded, tok = load_checkpoint(tmp_path / "st" / "model.safetensors")
    idx = _ids(config.vocab_size)
    with torch.no_grad():
        torch.testing.assert_close(loaded(idx), model(idx), atol=0, rtol=0)
    assert tok.encode("the fox") == tokenizer.encode("the fox")
    from safetensors.torch import load_file

    assert "transformer.h.0.attn.c_attn.weight" in load_file(str(tmp_path / "st" / "model.safetensors"))


def test_predict_accepts_an_exported_folder(hf_dir, tmp_path, cli):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("the fox\n")
    out = tmp_path / "pred.jsonl"
    result = cli(
        "predict", "--ckpt_path", hf_dir, "--data.path", prompts, "--writer.output_path", out,
        "--model.generation.max_new_tokens", "4", "--trainer.accelerator", "cpu",
    )  # fmt: skip
    assert result.code == 0, result
    row = json.loads(out.read_text().splitlines()[0])
    assert row["prompt"] == "the fox" and row["completion"]


def test_validate_takes_config_and_tokenizer_from_a_hf_folder(hf_dir, tmp_path, cli):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(_corpus_lines()))
    result = cli(
        "validate", "--ckpt_path", hf_dir, "--data.source", corpus, "--data.cache_dir", tmp_path / "c",
        "--trainer.logger", "false", "--trainer.enable_progress_bar", "false", "--trainer.limit_val_batches", "2",
        "--trainer.default_root_dir", tmp_path / "run",
    )  # fmt: skip
    assert result.code == 0, result
    assert "val/loss" in result.out


def test_hub_style_keys_without_the_transformer_prefix(hf_dir, tmp_path):
    # The hub's gpt2 files were saved from GPT2Model: "h.0.attn.c_attn.weight", "wte.weight", plus old attn.bias masks.
    from safetensors.torch import load_file, save_file

    folder = tmp_path / "hub"
    folder.mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        (folder / name).write_bytes((hf_dir / name).read_bytes())
    state = {k.removeprefix("transformer."): v for k, v in load_file(str(hf_dir / "model.safetensors")).items()}
    state.pop("lm_head.weight", None)
    state["h.0.attn.bias"] = torch.ones(1, 1, 64, 64)
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    model, _ = load_checkpoint(folder)
    _assert_same_logits(model, _hf_model(hf_dir))
