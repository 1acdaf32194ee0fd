"""``lightning-gpt generate``: its decoding settings are one validated GenerationConfig, beam search fits the context
like sampling slides, and the sliding stream counts tokens on the ids it generated (never by re-encoding text)."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from lightning_gpt import GPT, GPTConfig

CYCLE = "or "  # the model below continues o -> r -> " " -> o ..., one byte-level token each


@pytest.fixture(scope="module")
def bpe_ckpt(tmp_path_factory):
    """A checkpoint whose greedy continuation of ``o`` is ``r or or or ...`` emitted one byte token at a time, with a
    byte-level BPE tokenizer that merges ``or`` and `` or``: re-encoding the text gives fewer tokens than generated."""
    from lightning_gpt.data.tokenizers import HFTokenizer

    tok = HFTokenizer.train(["or or or for more or nor " * 30], "bpe", 280)
    ids = [tok.encode(c)[0] for c in CYCLE]
    assert len(tok.encode("or or or")) < len("or or or")  # the merges exist
    torch.manual_seed(0)
    config = GPTConfig(vocab_size=tok.vocab_size, block_size=16, n_layer=1, n_head=2, n_embd=32, tie_weights=False)
    model = GPT(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.startswith("transformer.h.") or name == "transformer.wpe.weight":
                p.zero_()  # blocks add nothing: the logits depend on the current token only
        model.lm_head.weight.zero_()
        for i, src in enumerate(ids):
            h = model.transformer.ln_f(model.transformer.wte.weight[src])
            model.lm_head.weight[ids[(i + 1) % len(ids)]] = 50.0 * h / h.norm()
    path = tmp_path_factory.mktemp("ckpt") / "cycle.ckpt"
    state = {f"model.{k}": v for k, v in model.state_dict().items()}
    torch.save({"gpt_config": dataclasses.asdict(config), "state_dict": state, "tokenizer": tok.state_dict()}, path)
    return str(path)


def test_sliding_stream_generates_max_new_tokens_even_when_text_reencodes_shorter(cli, bpe_ckpt):
    # 40 new tokens through a 16-token context: the old command re-encoded each window's text to count its tokens,
    # found fewer (BPE merges "or"), took that for EOS and stopped after the first window.
    out = cli("generate", "--ckpt_path", bpe_ckpt, "--prompt", "o", "--max_new_tokens", "40", "--temperature", "0")
    assert out.code == 0, out.err
    assert out.out == "o" + (CYCLE * 20)[1:41] + "\n"


@pytest.mark.parametrize(
    "flag,value,name",
    [
        ("--num_beams", "0", "num_beams"),
        ("--num_return_sequences", "0", "num_return_sequences"),
        ("--temperature", "nan", "temperature"),
        ("--temperature", "-1", "temperature"),
        ("--top_p", "nan", "top_p"),
        ("--top_k", "-3", "top_k"),
        ("--min_p", "1.5", "min_p"),
        ("--repetition_penalty", "nan", "repetition_penalty"),
        ("--repetition_penalty", "0", "repetition_penalty"),
        ("--length_penalty", "inf", "length_penalty"),
        ("--max_new_tokens", "0", "max_new_tokens"),
        ("--stop", "", "stop"),
    ],
)
def test_bad_decoding_settings_are_one_paragraph_and_exit_2(cli, tmp_path, flag, value, name):
    # Checked by GenerationConfig before the checkpoint is even looked at (the path here does not exist).
    out = cli("generate", "--ckpt_path", tmp_path / "missing.ckpt", "--prompt", "o", flag, value)
    assert out.code == 2, out
    assert f"--{name}" in out.err and "does not exist" not in out.err and "Traceback" not in out.err
    assert out.err.startswith("lightning-gpt: error: ") and out.err.count("\n") <= 3


def test_beam_search_with_the_default_max_new_tokens_fits_the_context(cli, bpe_ckpt):
    # Sampling slides past the 16-token context; beam search cannot, so the default 200 shrinks to what fits, and
    # the command says so instead of failing.
    out = cli("generate", "--ckpt_path", bpe_ckpt, "--prompt", "o", "--num_beams", "2")
    assert out.code == 0, out.err
    assert out.out == "o" + (CYCLE * 6)[1:16] + "\n"
    assert "15" in out.err and "block_size=16" in out.err and "beam" in out.err
    # A prompt that fills the context keeps its last block_size // 2 tokens, as the sliding stream does.
    long = cli("generate", "--ckpt_path", bpe_ckpt, "--prompt", "o" * 30, "--num_beams", "2", "--echo", "false")
    assert long.code == 0, long.err
    assert "last 8" in long.err


def test_generate_defaults_come_from_the_documented_presets():
    from lightning_gpt.cli.generate import _generate_parser
    from lightning_gpt.generation.config import (
        CLI_DEFAULTS,
        DOCUMENTED_DIFFERENCES,
        SAMPLE_CALLBACK_DEFAULTS,
        GenerationConfig,
    )
    from lightning_gpt.training.callbacks import SampleGeneration
    from lightning_gpt.training.module import GPTModule

    base = GenerationConfig()
    fields = [f.name for f in dataclasses.fields(GenerationConfig)]

    def differs(config):
        return {f for f in fields if getattr(config, f) != getattr(base, f)}

    assert differs(CLI_DEFAULTS) == DOCUMENTED_DIFFERENCES["cli"]
    assert differs(SAMPLE_CALLBACK_DEFAULTS) == DOCUMENTED_DIFFERENCES["sample_callback"]
    assert DOCUMENTED_DIFFERENCES["library"] == set()
    # The generate command's flags: every setting it exposes defaults to CLI_DEFAULTS (do_sample: automatic).
    parser = _generate_parser()
    exposed = {a.dest: a.default for a in parser._actions if a.dest in fields}
    assert set(exposed) >= set(fields) - {"early_stopping", "use_cache", "do_sample"}
    for name, default in exposed.items():
        if name == "do_sample":
            assert default is None  # resolved: sample unless temperature 0 or beam search (documented)
        else:
            assert default == getattr(CLI_DEFAULTS, name), name
    # The callback, the Lightning module (predict) and the library functions.
    assert SampleGeneration().generation == SAMPLE_CALLBACK_DEFAULTS
    assert GPTModule().generation == base
    import inspect

    from lightning_gpt.generation import generate, generate_text, stream_generate, stream_text

    for fn in (generate, stream_generate, generate_text, stream_text):
        params = inspect.signature(fn).parameters
        assert params["config"].default is None  # None means GenerationConfig()
        assert not set(params) & (set(fields) - {"config"})  # no setting spelled out again with its own default
    assert not math.isnan(CLI_DEFAULTS.temperature)


def test_sliding_stream_ends_at_eos_or_a_stop_string_on_a_window_edge(bpe_ckpt):
    from lightning_gpt.generation import stream_text
    from lightning_gpt.io.checkpoint import load_checkpoint

    model, tok = load_checkpoint(bpe_ckpt)
    prompt = "o" * 13  # 13 tokens: the first window holds 3 new tokens, "r o"
    assert len(tok.encode(prompt)) == 13
    o_id = tok.encode("o")[0]
    # EOS as the last token of the first window: the stream ends there instead of sliding on.
    text = "".join(stream_text(model, tok, prompt, max_new_tokens=40, eos_token_id=o_id, slide=True))
    assert text == "r o"
    # "or" first appears across the first window's edge ("r o" | "r"): the stream ends before it.
    text = "".join(stream_text(model, tok, prompt, max_new_tokens=40, eos_token_id=None, stop=["or"], slide=True))
    assert text == "r "
    # Without a stop, 40 tokens through several windows.
    assert (
        "".join(stream_text(model, tok, prompt, max_new_tokens=40, eos_token_id=None, slide=True))
        == ((CYCLE * 14)[1:41])
    )


def test_draft_checkpoint_gives_the_same_stream_and_a_foreign_draft_is_refused(cli, bpe_ckpt, tmp_path):
    args = ["generate", "--ckpt_path", bpe_ckpt, "--prompt", "o", "--max_new_tokens", "40", "--temperature", "0"]
    out = cli(*args, "--draft_ckpt_path", bpe_ckpt, "--num_draft_tokens", "3")
    assert out.code == 0, out.err
    assert out.out == "o" + (CYCLE * 20)[1:41] + "\n"  # the sliding stream, speculative in each window
    config = GPTConfig(vocab_size=50, block_size=16, n_layer=1, n_head=2, n_embd=16)
    foreign = tmp_path / "foreign.ckpt"
    state = {f"model.{k}": v for k, v in GPT(config).state_dict().items()}
    torch.save({"gpt_config": dataclasses.asdict(config), "state_dict": state}, foreign)
    bad = cli(*args, "--draft_ckpt_path", str(foreign))
    assert bad.code == 2 and "vocab_size" in bad.err and "Traceback" not in bad.err
