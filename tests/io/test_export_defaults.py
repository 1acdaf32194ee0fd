"""The export's ``generation_config.json`` carries ``lightning-gpt generate``'s decoding defaults, so that
``transformers.pipeline("text-generation")`` with its defaults samples the same text as ``generate`` (same seed)."""

from __future__ import annotations

import json

import pytest
import torch

from lightning_gpt import GPT, GPTConfig
from lightning_gpt.data import CharTokenizer
from lightning_gpt.generation import generate_text
from lightning_gpt.generation.config import CLI_DEFAULTS
from lightning_gpt.io.hf import write_pretrained

transformers = pytest.importorskip("transformers")

TEXT = "the quick brown fox jumps over the lazy dog. THE END!\n"


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    tok = CharTokenizer.train([TEXT])
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=48, n_layer=2, n_head=2, n_embd=32)).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.mul_(5.0)  # peaked distributions: a sampled token is not a coin flip between near-equal ones
    folder = write_pretrained(model, tok, tmp_path_factory.mktemp("export") / "hf")
    return model, tok, folder


def test_generation_config_json_holds_the_cli_defaults(exported):
    _, _, folder = exported
    gen = json.loads((folder / "generation_config.json").read_text())
    assert gen["do_sample"] is CLI_DEFAULTS.do_sample is True
    assert gen["temperature"] == CLI_DEFAULTS.temperature == 0.8
    assert gen["top_k"] == 0 and gen["top_p"] == 1.0 and gen["repetition_penalty"] == 1.0  # transformers' own off
    assert gen["max_length"] == 48  # fill the context: transformers cannot slide past it as generate does
    config = transformers.GenerationConfig.from_pretrained(folder)
    assert config.do_sample and config.temperature == 0.8 and config.top_k == 0


def test_pipeline_defaults_sample_the_text_of_generate_with_its_defaults(exported):
    model, tok, folder = exported
    pipe = transformers.pipeline("text-generation", model=str(folder), device="cpu")
    prompt = "the "
    room = model.config.block_size - len(tok.encode(prompt))
    (greedy,) = generate_text(model, tok, [prompt], max_new_tokens=room)
    samples = []
    for seed in range(4):
        torch.manual_seed(seed)
        theirs = pipe(prompt)[0]["generated_text"]  # defaults only: everything from generation_config.json
        torch.manual_seed(seed)
        (ours,) = generate_text(model, tok, [prompt], CLI_DEFAULTS, max_new_tokens=room)
        assert theirs == prompt + ours["completion"], seed
        samples.append(ours)
    # Real samples: not the greedy text, and longer than transformers' own default length (20 tokens in all).
    assert any(s["completion"] != greedy["completion"] for s in samples)
    assert any(len(s["tokens"]) > 20 for s in samples)


def test_cli_generate_with_a_seed_equals_the_pipeline_with_the_same_length(exported, tmp_path, cli):
    model, tok, folder = exported
    result = cli("generate", "--ckpt_path", folder, "--prompt", "the ", "--max_new_tokens", 20, "--seed", 7)
    assert result.code == 0, result
    pipe = transformers.pipeline("text-generation", model=str(folder), device="cpu")
    torch.manual_seed(7)  # the CLI seeds its own generator with --seed; a fresh CPU generator draws the same numbers
    assert result.out == pipe("the ", max_new_tokens=20)[0]["generated_text"] + "\n"
