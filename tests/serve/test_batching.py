"""``decode_jobs`` (the worker's batching) and the request checks, in this process: every job decoded in a shared
batch gives what ``generate_text`` gives for it alone (greedy, EOS, stop strings and ids, seeded sampling, beams),
streamed pieces add up to the same text, cancelled jobs stop, and a full context starts a second group."""

from __future__ import annotations

from typing import Any, Optional

import pytest
import torch

pytest.importorskip("litserve")

from lightning_gpt import GPT, GPTConfig  # noqa: E402
from lightning_gpt.data.tokenizers import HFTokenizer  # noqa: E402
from lightning_gpt.generation import generate_text  # noqa: E402
from lightning_gpt.serve.batching import decode_jobs  # noqa: E402
from lightning_gpt.serve.requests import Limits, RequestError, parse_completions, parse_predict  # noqa: E402
from lightning_gpt.serve.shared import SharedState  # noqa: E402

CORPUS = "the quick brown fox jumps over the lazy dog. ROMEO: JULIET! caf\u00e9 na\u00efve \u2603 snow " * 20


@pytest.fixture(scope="module")
def model_and_tokenizer():
    # Byte-level BPE: multi-byte characters arrive over several tokens (the stream must hold them back).
    tok = HFTokenizer.train([CORPUS], "bpe", 300)
    torch.manual_seed(3)
    config = GPTConfig(vocab_size=tok.vocab_size, block_size=48, n_layer=2, n_head=2, n_embd=32, tie_weights=False)
    model = GPT(config).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(25.0)
        model.lm_head.weight[tok.eos_id] *= 1.5  # EOS wins now and then: some rows end early
    return model, tok


def _limits(model: GPT, max_rows: int = 16) -> Limits:
    return Limits(model.config.block_size, model.config.vocab_size, "m", max_rows=max_rows)


def _run(model, tok, jobs, **kwargs) -> dict[int, list[dict[str, Any]]]:
    for seq, job in enumerate(jobs, 1):
        job["seq"] = seq
    out: dict[int, list[dict[str, Any]]] = {}
    for updates in decode_jobs(model, tok, jobs, **kwargs):
        assert len(updates) == len(jobs)
        for j, update in enumerate(updates):
            if update is not None:
                assert j not in out or not out[j][-1]["done"], "an update after the last one"
                out.setdefault(j, []).append(update)
    return out


def _texts(job: dict[str, Any], updates: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each choice's text, tokens and finish reason, as generate_text reports them."""
    last = updates[-1]
    assert last["done"]
    if not job["stream"]:
        return [
            {"completion": c["text"], "tokens": c["tokens"], "finish_reason": c["finish_reason"]}
            for c in last["choices"]
        ]
    texts: dict[int, str] = {}
    for update in updates:
        for c in update["choices"]:
            texts[c["index"]] = texts.get(c["index"], "") + c["text"]
    return [
        {"completion": texts.get(c["index"], ""), "tokens": c["tokens"], "finish_reason": c["finish_reason"]}
        for c in last["final"]
    ]


def _strip(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: r[k] for k in ("completion", "tokens", "finish_reason")} for r in results]


def test_jobs_decoded_together_equal_generate_text_alone(model_and_tokenizer):
    model, tok = model_and_tokenizer
    limits = _limits(model)
    cases: list[tuple[dict[str, Any], Optional[dict[str, Any]]]] = [
        ({"prompt": "the quick", "max_tokens": 20, "temperature": 0, "stream": True}, None),
        ({"prompt": "caf", "max_tokens": 30, "temperature": 0}, None),
        (
            {"prompt": ["R", "lazy dog"], "max_tokens": 25, "temperature": 0, "stop": ["IET", "snow"], "stream": True},
            None,
        ),
        ({"prompt": "snow", "max_tokens": 12, "temperature": 0.8, "top_p": 0.9, "seed": 5, "n": 3}, None),
        ({"prompt": "JULIET", "max_tokens": 9, "temperature": 0, "n": 2}, None),
        (None, {"prompt": ["na", "fox jumps over"], "max_new_tokens": 14, "stop": [[tok.encode(" ")[0]]]}),
        (None, {"prompt": "ROMEO", "max_new_tokens": 8, "num_beams": 3, "num_return_sequences": 2}),
        (None, {"prompt": "\u2603", "stream": True, "max_new_tokens": 20, "repetition_penalty": 1.3}),
    ]
    jobs = [parse_completions(c, tok, limits) if c else parse_predict(p, tok, limits) for c, p in cases]
    state = SharedState(slots=8)
    out = _run(model, tok, jobs, state=state)
    reasons = set()
    for (c, p), job, (_j, updates) in zip(cases, jobs, sorted(out.items())):
        if c is not None:  # the same request, as generate_text settings
            settings = dict(max_new_tokens=c["max_tokens"], stop=c.get("stop"))
            if c["temperature"] > 0:
                settings.update(do_sample=True, temperature=c["temperature"], top_p=c.get("top_p"), seed=c.get("seed"))
                settings["num_return_sequences"] = c.get("n", 1)
            prompts = [c["prompt"]] if isinstance(c["prompt"], str) else c["prompt"]
            expected = generate_text(model, tok, prompts, **settings)
            if c["temperature"] == 0 and c.get("n", 1) > 1:
                expected = [r for r in expected for _ in range(c["n"])]
        else:
            prompts = [p["prompt"]] if isinstance(p["prompt"], str) else p["prompt"]
            expected = generate_text(
                model, tok, prompts, **{k: v for k, v in p.items() if k not in ("prompt", "stream")}
            )
        assert _texts(job, updates) == _strip(expected), (c, p)
        reasons |= {r["finish_reason"] for r in expected}
        assert updates[-1]["usage"]["completion_tokens"] == sum(len(r["tokens"]) for r in expected)
    assert reasons == {"eos", "stop", "length"}  # every way a row ends was exercised
    counters = state.counters()
    assert counters["batches"] == 1 and counters["max_batch_requests"] == len(jobs) and counters["active_rows"] == 0
    assert counters["max_batch_rows"] > 1


def test_a_cancelled_job_stops_and_the_others_finish(model_and_tokenizer):
    model, tok = model_and_tokenizer
    limits = _limits(model)
    jobs = [parse_completions({"prompt": p, "max_tokens": 25, "temperature": 0, "stream": True}, tok, limits)
            for p in ("R", "lazy dog")]  # fmt: skip
    for seq, job in enumerate(jobs, 1):
        job["seq"] = seq
    state = SharedState(slots=8)
    seen = {0: 0, 1: 0}
    done = set()
    for step, updates in enumerate(decode_jobs(model, tok, jobs, state=state)):
        if step == 3:
            state.cancel(1)  # the first job's client goes away
        for j, u in enumerate(updates):
            if u is not None:
                seen[j] += 1
                done |= {j} if u["done"] else set()
    assert done == {1} and seen[0] <= 4  # no update after the cancellation, and no last one
    assert state.counters()["cancelled"] == 1


def test_rows_that_cannot_share_the_context_start_another_group(model_and_tokenizer):
    model, tok = model_and_tokenizer
    limits = _limits(model)
    long_prompt = "the quick brown fox jumps over the lazy dog"
    jobs = [
        parse_completions({"prompt": long_prompt, "max_tokens": 48 - len(tok.encode(long_prompt)), "temperature": 0},
                          tok, limits),
        parse_completions({"prompt": "R", "max_tokens": 40, "temperature": 0}, tok, limits),
    ]  # fmt: skip
    state = SharedState(slots=8)
    out = _run(model, tok, jobs, state=state, max_batch_rows=1)  # one row at a time: the second group waits
    assert state.counters()["max_batch_rows"] == 1
    for job, (_j, updates) in zip(jobs, sorted(out.items())):
        prompt = tok.decode(job["prompts"][0])
        assert _texts(job, updates) == _strip(generate_text(model, tok, [prompt], max_new_tokens=job["max_new_tokens"]))


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"prompt": "hi", "max_tokens": True}, "max_tokens"),
        ({"prompt": "hi", "max_tokens": 2.0}, "max_tokens"),
        ({"prompt": "hi", "temperature": float("nan")}, "temperature"),
        ({"prompt": "hi", "seed": "1"}, "seed"),
        ({"prompt": "hi", "top_k": -1, "temperature": 1}, "top_k"),
        ({"prompt": "hi", "presence_penalty": 0.5}, "presence_penalty"),
        ({"prompt": "hi", "stream_options": {"include_usage": True}}, "stream_options"),
        ({"prompt": [], "max_tokens": 2}, "prompt"),
        ({"prompt": "", "max_tokens": 2, "bogus": None}, "bogus"),
        ({"prompt": ["a"] * 5, "n": 4}, "n"),
    ],
)
def test_completions_request_errors_name_the_field(model_and_tokenizer, body, param):
    model, tok = model_and_tokenizer
    with pytest.raises(RequestError) as err:
        parse_completions(body, tok, _limits(model))
    assert err.value.param == param and err.value.status == 400
    assert err.value.body()["error"]["param"] == param


def test_neutral_values_of_unsupported_options_are_accepted(model_and_tokenizer):
    model, tok = model_and_tokenizer
    body = {"prompt": "hi", "logprobs": None, "best_of": 1, "suffix": None, "presence_penalty": 0, "logit_bias": {}}
    job = parse_completions(body, tok, _limits(model))
    assert job["max_new_tokens"] == 16 and job["settings"]["do_sample"]  # OpenAI's defaults: 16 tokens, temperature 1
