"""Every recipe in recipes/ parses with the CLI; each one also trains two steps when shrunk to CPU size."""

from __future__ import annotations

import random
import sys
from pathlib import Path

import pytest
import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
RECIPES = sorted((REPO / "recipes").glob("*.yaml"))
WORDS = "to be or not to be that is the question whether tis nobler in the mind".split()


def test_there_is_a_recipe_per_attention_kind_and_the_named_ones():
    names = {p.stem for p in RECIPES}
    expected = {"quickstart", "shakespeare-char", "gpt2-124m", "gpt2-fsdp"}
    expected |= {f"long-context-{kind}" for kind in ("standard", "flash", "linear", "sparse")}
    assert expected <= names
    for kind in ("standard", "flash", "linear", "sparse"):
        cfg = yaml.safe_load((REPO / "recipes" / f"long-context-{kind}.yaml").read_text())
        assert cfg["model"]["config"]["attention"] == kind


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.stem)
def test_recipe_parses(cli, recipe):
    result = cli("fit", "--config", recipe, "--print_config")
    assert result.code == 0, result.err[-2000:]
    cfg = yaml.safe_load(result.out)
    assert cfg["model"]["config"]["block_size"] >= 64
    assert "block_size" not in (cfg.get("data") or {}) or cfg["data"]["block_size"] is None  # declared once
    raw = yaml.safe_load(recipe.read_text())
    assert "vocab_size" not in raw["model"]["config"]  # the tokenizer decides
    assert raw["trainer"]["default_root_dir"] == f"runs/{recipe.stem}"


def _shrunk(recipe: Path, tmp_path: Path) -> list[str]:
    """Command-line overrides that turn any recipe into a 2-step CPU run on a local text file."""
    corpus = tmp_path / "corpus.txt"
    rng = random.Random(0)
    corpus.write_text("\n".join(" ".join(rng.choice(WORDS) for _ in range(10)) for _ in range(200)))
    args = ["fit", "--config", str(recipe)]
    args += ["--trainer.accelerator", "cpu", "--trainer.devices", "1", "--trainer.num_nodes", "1"]
    args += ["--trainer.strategy", "auto", "--trainer.precision", "32-true", "--trainer.max_steps", "2"]
    args += ["--trainer.accumulate_grad_batches", "1", "--trainer.logger", "false"]
    args += ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]
    args += ["--trainer.limit_val_batches", "1", "--trainer.val_check_interval", "2"]
    args += ["--trainer.default_root_dir", str(tmp_path / "run")]
    args += ["--model.config.block_size", "32", "--model.config.n_layer", "2", "--model.config.n_head", "2"]
    args += ["--model.config.n_embd", "32", "--model.config.attention_window", "8"]
    args += ["--model.config.linear_chunk_size", "8"]
    args += ["--data.source", str(corpus), "--data.tokenizer", "char", "--data.streaming", "false"]
    args += ["--data.max_chars", "null", "--data.val_split", "null", "--data.dataset_config", "null"]
    args += ["--data.num_workers", "0", "--data.pin_memory", "false", "--data.batch_size", "2"]
    args += ["--data.val_fraction", "0.1", "--data.cache_dir", str(tmp_path / "cache")]
    args += ["--sampling.every_n_steps", "2", "--sampling.generation.max_new_tokens", "4"]
    return args


def _tiny_gpt2_folder(folder: Path) -> Path:
    """A random 2-layer GPT-2 of the shrunk size and a byte-level BPE tokenizer, as save_pretrained writes them."""
    transformers = pytest.importorskip("transformers")
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    trainer = trainers.BpeTrainer(vocab_size=280, special_tokens=["<|endoftext|>"], initial_alphabet=alphabet)
    tok.train_from_iterator(WORDS, trainer=trainer)
    transformers.PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>").save_pretrained(folder)
    config = transformers.GPT2Config(vocab_size=tok.get_vocab_size(), n_positions=64, n_embd=32, n_layer=2, n_head=2)
    transformers.GPT2LMHeadModel(config).save_pretrained(folder)
    return folder


@pytest.mark.slow
@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.stem)
def test_recipe_trains_two_steps_when_shrunk(cli, recipe, tmp_path):
    torch.manual_seed(0)
    extra = []
    if yaml.safe_load(recipe.read_text())["model"].get("init_from"):
        extra = ["--model.init_from", str(_tiny_gpt2_folder(tmp_path / "init"))]
    result = cli(*_shrunk(recipe, tmp_path), *extra)
    assert result.code == 0, result.err[-3000:]
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 2
    raw = yaml.safe_load(recipe.read_text())["model"]["config"]
    assert ckpt["gpt_config"]["attention"] == raw.get("attention", "standard")


def test_distributed_recipes_build_their_strategies(monkeypatch):
    from lightning_gpt.cli import GPTLightningCLI
    from lightning_gpt.training.strategies import DDPStrategy, FSDP2Strategy

    monkeypatch.setattr(sys, "argv", ["lightning-gpt"])
    cpu = ["--trainer.accelerator", "cpu", "--trainer.devices", "1", "--trainer.num_nodes", "1"]
    cpu += ["--trainer.precision", "32-true", "--trainer.logger", "false"]
    ddp = GPTLightningCLI(args=["--config", str(REPO / "recipes" / "gpt2-124m.yaml"), *cpu], run=False)
    assert isinstance(ddp.trainer.strategy, DDPStrategy) and ddp.trainer.strategy.timeout_minutes == 30
    fsdp = GPTLightningCLI(args=["--config", str(REPO / "recipes" / "gpt2-fsdp.yaml"), *cpu], run=False)
    strategy = fsdp.trainer.strategy
    assert isinstance(strategy, FSDP2Strategy)
    assert strategy.activation_checkpointing is True
    assert strategy.param_dtype == torch.bfloat16 and strategy.reduce_dtype == torch.float32
