"""lm-eval through our adapter equals ``lm_eval --model hf`` on the export; every attention kind evaluates."""

from __future__ import annotations

import json
import math
import sys

import pytest
import torch

from tests.evaluation.conftest import TASKS, run_lm_eval, task_text, tiny_checkpoint
from tests.helpers import user_error

lm_eval = pytest.importorskip("lm_eval")


def _metrics(results: dict) -> dict[tuple[str, str], float]:
    return {
        (task, key): value
        for task, values in results.items()
        for key, value in values.items()
        if "," in key and isinstance(value, (int, float)) and not isinstance(value, bool)
    }


@pytest.mark.slow
def test_evaluate_tasks_equals_lm_eval_hf_on_the_export(eval_setup, hf_results, cli, tmp_path):
    out = tmp_path / "ours.json"
    result = cli(
        "evaluate", "--ckpt_path", eval_setup["ckpt"], "--tasks", TASKS, "--include_path", eval_setup["tasks"],
        "--batch_size", 3, "--output_path", out,
    )  # fmt: skip
    assert result.code == 0, result
    ours, theirs = _metrics(json.loads(out.read_text())), _metrics(hf_results)
    assert set(ours) == set(theirs)
    assert {("lgpt_mc", "acc,none"), ("lgpt_roll", "bits_per_byte,none"), ("lgpt_gen", "exact_match,none")} <= set(ours)
    for key, value in theirs.items():
        assert ours[key] == pytest.approx(value, rel=1e-4, abs=1e-12), key
    assert 0 < ours[("lgpt_mc", "acc,none")] < 1  # the choices are told apart, not all right or all wrong
    assert "| lgpt_roll | bits_per_byte |" in result.out and "sample_len" not in result.out


def _requests(kind: str, args: list[tuple]) -> list:
    from lm_eval.api.instance import Instance

    return [Instance(request_type=kind, doc={}, arguments=a, idx=0) for a in args]


@pytest.mark.slow
def test_each_request_type_equals_hflm_in_process(eval_setup):
    """Raw requests, no task machinery: empty contexts, trailing spaces, texts over the context, and greedy
    generations that stop at an ``until`` string, at EOS or at max_gen_toks."""
    from lm_eval.models.huggingface import HFLM

    from lightning_gpt.evaluation.harness import LightningGPTLM

    ours = LightningGPTLM(checkpoint=str(eval_setup["ckpt"]), batch_size=3, device="cpu")
    hf = HFLM(pretrained=str(eval_setup["export"]), dtype="float32", device="cpu", batch_size=3)
    pairs = [
        ("", "the cat"),
        ("the quick ", "brown fox"),
        ("a dog", " runs"),
        ("x" * 5 + "the lazy dog " * 4, " sings"),
    ]
    texts = ["the quick brown fox jumps over the lazy dog " * 3, "a", "house"]
    contexts = ["the dog", "birds sing to", "a " * 30]
    for a, b in zip(
        ours.loglikelihood(_requests("loglikelihood", pairs)), hf.loglikelihood(_requests("loglikelihood", pairs))
    ):
        assert a[0] == pytest.approx(b[0], rel=1e-5) and a[1] == b[1]
    rolled = [(t,) for t in texts]
    theirs = hf.loglikelihood_rolling(_requests("loglikelihood_rolling", rolled))
    assert ours.loglikelihood_rolling(_requests("loglikelihood_rolling", rolled)) == pytest.approx(theirs, rel=1e-5)
    for kwargs in ({"until": ["o"], "max_gen_toks": 6}, {"until": ["zzz"], "max_gen_toks": 5}):
        reqs = _requests("generate_until", [(c, dict(kwargs)) for c in contexts])
        assert ours.generate_until(reqs) == hf.generate_until(
            _requests("generate_until", [(c, dict(kwargs)) for c in contexts])
        )


@pytest.mark.slow
@pytest.mark.parametrize(
    "kind",
    [
        dict(attention="linear"),
        dict(attention="sparse", attention_window=8),
        dict(attention="sparse", sparse_pattern="longformer", attention_window=6, n_global_tokens=2),
    ],
    ids=["linear", "sparse-local", "sparse-longformer"],
)
def test_every_attention_kind_evaluates_and_batching_changes_nothing(eval_setup, kind, tmp_path):
    """``linear`` and ``sparse`` cannot be exported to Hugging Face; the adapter evaluates them. Independent
    reference: each request scored alone by a plain forward over exactly its tokens (no padding, no batching)."""
    import torch.nn.functional as F

    from lightning_gpt.evaluation import evaluate
    from lightning_gpt.evaluation.harness import LightningGPTLM
    from lightning_gpt.io import load_checkpoint

    ckpt = tiny_checkpoint(tmp_path / "m.ckpt", task_text(eval_setup["tasks"]), **kind)
    model, tok = load_checkpoint(ckpt)
    lm = LightningGPTLM(model=model, tokenizer=tok, batch_size=4)
    pairs = [("the quick ", "brown fox"), ("a", " dog runs"), ("the lazy dog " * 2, " sings"), ("birds", " sing")]
    got = lm.loglikelihood(_requests("loglikelihood", pairs))
    for (ctx, cont), (logprob, _) in zip(pairs, got):
        c, w = tok.encode(ctx.rstrip()), tok.encode(ctx[len(ctx.rstrip()) :] + cont)
        ids = torch.tensor([c + w])
        with torch.no_grad():
            lp = F.log_softmax(model(ids)[0, :-1, : model.config.vocab_size].float(), -1)
        expected = sum(float(lp[len(c) - 1 + j, t]) for j, t in enumerate(w))
        assert logprob == pytest.approx(expected, rel=1e-5, abs=1e-5)
    results = evaluate(model=model, tokenizer=tok, tasks=TASKS, include_path=str(eval_setup["tasks"]), batch_size=4)
    for (task, key), value in _metrics(results).items():
        assert math.isfinite(value), (task, key)
    text_mode = evaluate(model=model, tokenizer=tok, source=str(eval_setup["text"]), batch_size=4)
    # The rolling task scores the same documents as text mode reads from its "text" field.
    assert text_mode["bits_per_byte"] == pytest.approx(results["lgpt_roll"]["bits_per_byte,none"], rel=1e-6)


@pytest.mark.slow
def test_a_wrong_task_or_missing_include_path_is_one_paragraph(eval_setup, cli):
    user_error(cli("evaluate", "--ckpt_path", eval_setup["ckpt"], "--tasks", "no_such_task_xyz", "--include_path",
                   eval_setup["tasks"]), "Unknown lm-eval task", "no_such_task_xyz", "--include_path")  # fmt: skip
    user_error(cli("evaluate", "--ckpt_path", eval_setup["ckpt"], "--tasks", "lgpt_mc", "--include_path",
                   eval_setup["base"] / "nope"), "--include_path", "not a folder")  # fmt: skip
    user_error(cli("evaluate", "--ckpt_path", eval_setup["ckpt"]), "--data.source", "--tasks")
    user_error(cli("evaluate", "--ckpt_path", eval_setup["ckpt"], "--tasks", "lgpt_mc", "--data.source",
                   eval_setup["text"]), "not both")  # fmt: skip


@pytest.mark.slow
def test_lm_eval_command_line_with_our_model_registered(eval_setup, tmp_path):
    """``python -m lightning_gpt.evaluation.harness`` is the ``lm_eval`` command with ``--model lightning-gpt``."""
    out = tmp_path / "out"
    cmd = [
        sys.executable, "-m", "lightning_gpt.evaluation.harness",
        "--model", "lightning-gpt",
        "--model_args", f"checkpoint={eval_setup['ckpt']}",
        "--tasks", "lgpt_mc",
        "--include_path", str(eval_setup["tasks"]),
        "--limit", "4",
        "--output_path", str(out),
    ]  # fmt: skip
    assert "acc,none" in run_lm_eval(cmd, out, eval_setup["base"] / "hf_cache")["lgpt_mc"]
