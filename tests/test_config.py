"""GPTConfig: presets, serialization and validation messages."""

from __future__ import annotations

import json

import pytest

from lightning_gpt.config import PRESETS, GPTConfig


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_build_and_divide(name):
    config = GPTConfig.from_name(name)
    assert config.n_embd % config.n_head == 0
    assert config.head_size * config.n_head == config.n_embd


def test_gpt2_preset_matches_gpt2_small():
    c = GPTConfig.from_name("gpt2")
    assert (c.n_layer, c.n_head, c.n_embd, c.block_size, c.vocab_size) == (12, 12, 768, 1024, 50257)


def test_from_name_overrides_and_unknown_preset():
    assert GPTConfig.from_name("tiny", n_layer=3, attention="linear").n_layer == 3
    with pytest.raises(ValueError, match="gpt5"):
        GPTConfig.from_name("gpt5")


def test_dict_round_trip_is_json_serializable():
    config = GPTConfig.from_name("tiny", attention="sparse", sparse_pattern="strided", attention_stride=3)
    data = json.loads(json.dumps(config.to_dict()))
    assert GPTConfig.from_dict(data) == config


def test_from_dict_rejects_unknown_keys():
    data = GPTConfig.from_name("tiny").to_dict()
    data["n_heads"] = 4
    with pytest.raises(ValueError, match="n_heads"):
        GPTConfig.from_dict(data)


def test_stride_defaults_to_window():
    assert GPTConfig.from_name("tiny", attention_window=8).stride == 8
    assert GPTConfig.from_name("tiny", attention_window=8, attention_stride=3).stride == 3


@pytest.mark.parametrize(
    "overrides,field",
    [
        (dict(vocab_size=0), "vocab_size"),
        (dict(block_size=-4), "block_size"),
        (dict(n_layer=True), "n_layer"),
        (dict(n_head=0), "n_head"),
        (dict(n_embd=30, n_head=4), "n_head"),
        (dict(dropout=-0.1), "dropout"),
        (dict(dropout=1.0), "dropout"),
        (dict(attention=""), "attention"),
        (dict(attention_window=0), "attention_window"),
        (dict(attention_window=2.5), "attention_window"),
        (dict(attention_stride=0), "attention_stride"),
        (dict(n_global_tokens=-1), "n_global_tokens"),
        (dict(n_global_tokens=65), "n_global_tokens"),
        (dict(feature_map="cosine"), "feature_map"),
        (dict(sparse_pattern="bigbird"), "sparse_pattern"),
        (dict(linear_chunk_size=0), "linear_chunk_size"),
        (dict(activation="relu"), "activation"),
        (dict(layer_norm_eps=0.0), "layer_norm_eps"),
    ],
)
def test_bad_values_raise_naming_the_field(overrides, field):
    with pytest.raises(ValueError, match=field):
        GPTConfig.from_name("tiny", **overrides)


def test_n_embd_error_suggests_a_divisor():
    with pytest.raises(ValueError, match=r"n_head=\d+"):
        GPTConfig.from_name("tiny", n_embd=30, n_head=4)


def test_attention_name_is_checked_where_the_core_is_built():
    from lightning_gpt import GPT

    # A config naming a core whose plugin is not imported (e.g. read from a checkpoint) is still a valid config ...
    config = GPTConfig.from_dict({**GPTConfig.from_name("tiny").to_dict(), "attention": "my-plugin-core"})
    assert config.attention == "my-plugin-core"
    # ... and building the model names the problem and the fix.
    with pytest.raises(ValueError, match="my-plugin-core.*register_attention"):
        GPT(config)
