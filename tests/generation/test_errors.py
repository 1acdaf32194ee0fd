"""Bad decoding input raises a ValueError that names the problem and the fix."""

from __future__ import annotations

import pytest
import torch

from lightning_gpt import GPT, GPTConfig
from lightning_gpt.generation import generate, stream_generate


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=50, block_size=16, n_layer=2, n_head=4, n_embd=32)).eval()


PROMPT = torch.tensor([[1, 2, 3]])


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(temperature=-0.5), r"temperature must be a number >= 0, got -0.5"),
        (dict(top_p=0.0), r"top_p must be in \(0, 1\]"),
        (dict(top_p=1.5), r"top_p must be in \(0, 1\]"),
        (dict(top_k=-1), r"top_k must be None or an integer >= 0"),
        (dict(min_p=2.0), r"min_p must be in \[0, 1\]"),
        (dict(repetition_penalty=0.0), r"repetition_penalty must be > 0"),
        (dict(num_beams=2, num_return_sequences=3), r"num_return_sequences \(3\) cannot exceed num_beams \(2\)"),
        (dict(num_return_sequences=2), r"with greedy decoding would return 2 identical rows"),
        (dict(num_beams=0), r"num_beams must be an integer >= 1"),
        (dict(early_stopping="sometimes"), r"early_stopping must be True, False or 'never'"),
        (dict(max_new_tokens=0), r"max_new_tokens must be a positive integer"),
        (dict(eos_token_id=50), r"eos_token_id=50 is not a valid token id"),
        (dict(pad_token_id=-1), r"pad_token_id=-1 must be None or an integer in \[0, 50\)"),
        (dict(stop="\n"), r"String stop sequences .* need a tokenizer"),
        (dict(stop=[[1, 99]]), r"stop sequence \[1, 99\] holds ids outside the vocabulary"),
        (dict(stop=[""]), r"stop contains an empty string"),
    ],
)
def test_bad_arguments(model, kwargs, match):
    kwargs = {"max_new_tokens": 4, **kwargs}
    with pytest.raises(ValueError, match=match):
        generate(model, PROMPT, **kwargs)


def test_empty_prompt(model):
    with pytest.raises(ValueError, match=r"The prompt is empty"):
        generate(model, torch.zeros(1, 0, dtype=torch.long), max_new_tokens=3)
    with pytest.raises(ValueError, match=r"Prompt row\(s\) \[1\] are empty"):
        generate(model, torch.tensor([[1, 2], [0, 0]]), attention_mask=torch.tensor([[1, 1], [0, 0]]), max_new_tokens=3)


def test_ids_outside_vocabulary(model):
    with pytest.raises(ValueError, match=r"contains token id 50, outside the model's vocabulary \[0, 50\)"):
        generate(model, torch.tensor([[1, 50]]), max_new_tokens=3)
    with pytest.raises(ValueError, match=r"contains token id -3"):
        generate(model, torch.tensor([[-3, 1]]), max_new_tokens=3)
    # Ids under padding are never looked up, whatever they are.
    out = generate(model, torch.tensor([[-1, 1]]), attention_mask=torch.tensor([[0, 1]]), max_new_tokens=2)
    assert out.shape == (1, 4)


def test_context_overflow_is_an_error_with_the_numbers(model):
    """Policy: the prompt plus max_new_tokens must fit in block_size (16); nothing is cropped silently."""
    prompt = torch.arange(10)[None]
    match = (
        r"prompt \(10 tokens\) plus max_new_tokens \(7\) is 17 tokens, longer than the model's context "
        r"\(block_size=16\)\. .*its last 9 tokens.*lower max_new_tokens to at most 6"
    )
    with pytest.raises(ValueError, match=match):
        generate(model, prompt, max_new_tokens=7)
    assert generate(model, prompt, max_new_tokens=6).shape == (1, 16)  # exactly full is fine
    with pytest.raises(ValueError, match=r"block_size=16"):
        stream_generate(model, prompt, max_new_tokens=7)  # checked at call time, not on first next()


def test_bad_masks_and_shapes(model):
    with pytest.raises(ValueError, match=r"LEFT padding"):
        generate(model, torch.tensor([[1, 2, 3]]), attention_mask=torch.tensor([[1, 1, 0]]), max_new_tokens=2)
    with pytest.raises(ValueError, match=r"attention_mask shape \(1, 2\) must equal input_ids shape \(1, 3\)"):
        generate(model, PROMPT, attention_mask=torch.ones(1, 2), max_new_tokens=2)
    with pytest.raises(ValueError, match=r"input_ids must be a LongTensor of shape \(B, T\), got list"):
        generate(model, [[1, 2, 3]], max_new_tokens=2)
    with pytest.raises(ValueError, match=r"integer token ids"):
        generate(model, PROMPT.float(), max_new_tokens=2)
    with pytest.raises(ValueError, match=r"shape \(B, T\)"):
        generate(model, PROMPT[None], max_new_tokens=2)


def test_stream_generate_rejects_beams_and_unknown_args(model):
    with pytest.raises(ValueError, match=r"does not support beam search"):
        stream_generate(model, PROMPT, max_new_tokens=2, num_beams=2)
    with pytest.raises(ValueError, match=r"Unknown decoding setting\(s\) \['topk'\]"):
        stream_generate(model, PROMPT, max_new_tokens=2, topk=3)


def test_not_a_gpt():
    with pytest.raises(ValueError, match=r"needs a model with a `config`"):
        generate(torch.nn.Linear(2, 2), PROMPT, max_new_tokens=2)


def test_sampling_knobs_without_do_sample_warn(model, caplog):
    with caplog.at_level("WARNING", logger="lightning_gpt.generation.config"):
        greedy = generate(model, PROMPT, max_new_tokens=4, temperature=0.7, top_k=5)
    assert "temperature, top_k only matter when sampling" in caplog.text
    assert torch.equal(greedy, generate(model, PROMPT, max_new_tokens=4))


def test_context_error_never_suggests_impossible_fixes():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=32, block_size=16, n_layer=1, n_head=2, n_embd=8))
    with pytest.raises(ValueError) as info:
        generate(model, torch.zeros(1, 20, dtype=torch.long), max_new_tokens=30)
    message = str(info.value)
    assert "block_size=16" in message and "last 0" not in message and "-" not in message.split("To fix:")[1]


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(temperature=float("nan")), r"temperature must be a number >= 0, got nan"),
        (dict(do_sample=True, temperature=float("inf")), r"temperature must be a number >= 0, got inf"),
        (dict(repetition_penalty=float("nan")), r"repetition_penalty must be > 0"),
        (dict(length_penalty=float("nan")), r"length_penalty must be a finite number"),
        (dict(top_p=float("nan")), r"top_p must be in \(0, 1\]"),
        (dict(num_return_sequences=0), r"num_return_sequences must be an integer >= 1"),
        (dict(num_beams=True), r"num_beams must be an integer >= 1"),
        (dict(do_sample="yes"), r"do_sample must be True or False"),
        (dict(seed=1.5), r"seed must be None or an integer"),
        (dict(early_stopping=1), r"early_stopping must be True, False or 'never'"),
    ],
)
def test_every_bad_setting_is_rejected_by_the_one_config(model, kwargs, match):
    from lightning_gpt.generation import GenerationConfig

    with pytest.raises(ValueError, match=match):
        GenerationConfig(**kwargs)
    with pytest.raises(ValueError, match=match):
        generate(model, PROMPT, max_new_tokens=2, **kwargs)  # the keywords are folded into the same config


def test_generation_config_is_frozen_and_keywords_win():
    import dataclasses

    from lightning_gpt.generation import GenerationConfig

    config = GenerationConfig(max_new_tokens=5, stop=["\n"])
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.top_k = 3
    assert GenerationConfig.fold(config, top_k=3) == GenerationConfig(max_new_tokens=5, stop=["\n"], top_k=3)
    assert GenerationConfig.fold(None) == GenerationConfig()
    with pytest.raises(ValueError, match=r"Unknown decoding setting\(s\) \['topk'\]"):
        GenerationConfig.fold(config, topk=3)


def test_config_and_keywords_decode_alike(model):
    from lightning_gpt.generation import GenerationConfig

    config = GenerationConfig(max_new_tokens=6, do_sample=True, top_k=5, seed=7)
    a = generate(model, PROMPT, config)
    b = generate(model, PROMPT, max_new_tokens=6, do_sample=True, top_k=5, seed=7)
    c = generate(model, PROMPT, config, max_new_tokens=3)  # a keyword wins over the config
    assert torch.equal(a, b) and c.shape == (1, 6) and torch.equal(c, a[:, :6])


def test_the_keyword_arguments_are_one_typed_definition_that_follows_the_config():
    import dataclasses
    import inspect
    import typing

    from lightning_gpt.generation import GenerationConfig
    from lightning_gpt.generation.config import GenerationSettings
    from lightning_gpt.generation.decode import DecodeOptions

    # The typed keywords (PEP 692) are the config's fields with the config's types: a field added to one and not the
    # other fails here.
    fields = typing.get_type_hints(GenerationConfig)
    assert typing.get_type_hints(GenerationSettings) == fields
    assert [f.name for f in dataclasses.fields(GenerationConfig)] == list(GenerationSettings.__annotations__)
    # generate and stream_generate take that one keyword set (plus generate's return_dict).
    call = {"attention_mask", "eos_token_id", "pad_token_id", "tokenizer", "generator", "compile", "draft_model"}
    assert set(DecodeOptions.__annotations__) == set(fields) | call
    for fn in (generate, stream_generate):
        kwargs = [p for p in inspect.signature(fn).parameters.values() if p.kind is p.VAR_KEYWORD]
        assert [p.annotation for p in kwargs] == ["Unpack[DecodeOptions]"], fn
