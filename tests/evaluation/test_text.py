"""Text mode of ``evaluate`` and the bits-per-byte primitives, against independent references."""

from __future__ import annotations

import json
import math
import pickle
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from lightning_gpt.data import CharTokenizer, TiktokenTokenizer, build_tokenizer
from lightning_gpt.data.vocab_tokenizer import VocabTokenizer
from lightning_gpt.evaluation import bits_per_byte, evaluate, perplexity, token_byte_lengths, utf8_length
from lightning_gpt.evaluation.scoring import rolling_windows
from lightning_gpt.io import load_checkpoint
from tests.helpers import assert_no_partial_files, user_error

TEXTS = ["héllo wörld — naïve café ☕ " * 3, "plain ascii text\nwith lines\n", "ünïcödé ✓✓ 𝄞 end"]


def _reference_nats(model, ids: list[int], prefix: int) -> float:
    """One plain forward over ``[prefix] + ids`` (the text fits the context): -sum log p(id_t | before)."""
    x = torch.tensor([[prefix] + ids])
    with torch.no_grad():
        lp = F.log_softmax(model(x)[0, :-1, : model.config.vocab_size].float(), -1)
    return -float(lp[torch.arange(len(ids)), torch.tensor(ids)].sum())


def test_text_mode_matches_a_plain_forward_and_the_definitions(eval_setup, tmp_path, cli):
    model, tok = load_checkpoint(eval_setup["ckpt"])
    docs = ["the quick brown fox", "a lazy dog runs to its house", "birds sing"]  # each within block_size=32
    src = tmp_path / "docs.jsonl"
    src.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    out = tmp_path / "res" / "r.json"
    result = cli("evaluate", "--ckpt_path", eval_setup["ckpt"], "--data.source", src, "--output_path", out)
    assert result.code == 0, result
    got = json.loads(out.read_text())
    nats = sum(_reference_nats(model, tok.encode(d), tok.bos_id) for d in docs)
    tokens = sum(len(tok.encode(d)) for d in docs)
    n_bytes = sum(len(d.encode()) for d in docs)
    assert got["tokens"] == tokens and got["bytes"] == n_bytes and got["documents"] == 3
    assert got["loss"] == pytest.approx(nats / tokens, rel=1e-6)
    assert got["perplexity"] == pytest.approx(math.exp(nats / tokens), rel=1e-6)
    assert got["bits_per_byte"] == pytest.approx(nats / math.log(2) / n_bytes, rel=1e-6)
    assert "| bits_per_byte |" in result.out and "| perplexity |" in result.out
    assert_no_partial_files(out.parent)


@pytest.mark.slow
def test_text_mode_bpb_equals_lm_evals_rolling_task_on_the_export(eval_setup, hf_results):
    """The same documents through ``lm_eval --model hf`` (task ``lgpt_roll``) and through text mode: equal bpb."""
    ours = evaluate(str(eval_setup["ckpt"]), source=str(eval_setup["text"]))
    assert ours["documents"] == 8
    assert ours["bits_per_byte"] == pytest.approx(hf_results["lgpt_roll"]["bits_per_byte,none"], rel=1e-6)
    assert 2 ** ours["bits_per_byte"] == pytest.approx(hf_results["lgpt_roll"]["byte_perplexity,none"], rel=1e-6)


def test_rolling_windows_cover_every_token_once_with_full_context():
    ids = list(range(100, 175))  # 75 tokens, block 32
    windows = rolling_windows(ids, prefix_id=7, block_size=32)
    assert [t for _, cont in windows for t in cont] == ids
    assert windows[0] == ([7], ids[:32])
    for ctx, cont in windows[1:]:
        inp = (ctx + cont)[-33:][:-1]
        assert len(inp) == 32 and inp[-len(cont) :] == [ids[ids.index(cont[0]) - 1]] + cont[:-1]


def test_a_vocabulary_without_bos_or_eos_scores_from_the_second_token(tmp_path):
    from tests.io.test_nanogpt import CHARS, model_args, save_nanogpt, write_meta

    ref = save_nanogpt(tmp_path, model_args(vocab_size=len(set(CHARS))))
    write_meta(tmp_path, CHARS)
    model, tok = load_checkpoint(tmp_path / "ckpt.pt")
    doc = "the end.\nTHE END!"
    ids = tok.encode(doc)
    with torch.no_grad():
        lp = F.log_softmax(ref(torch.tensor([ids]))[0, :-1], -1)
    nats = -float(lp[torch.arange(len(ids) - 1), torch.tensor(ids[1:])].sum())
    src = tmp_path / "doc.txt"
    src.write_text(doc)
    got = evaluate(str(tmp_path), source=str(src))
    assert got["tokens"] == len(ids) - 1 and got["bytes"] == len(doc.encode()) - 1
    assert got["bits_per_byte"] == pytest.approx(nats / math.log(2) / (len(doc.encode()) - 1), rel=1e-5)


def test_bits_per_byte_and_perplexity_definitions():
    assert bits_per_byte(math.log(2) * 12, 6) == pytest.approx(2.0)
    t = bits_per_byte(torch.tensor(math.log(2) * 8), torch.tensor(4))
    assert isinstance(t, torch.Tensor) and float(t) == pytest.approx(2.0)
    assert perplexity(3.0, 3) == pytest.approx(math.e)
    assert perplexity(1e6, 1) == math.inf
    with pytest.raises(ValueError, match="nothing was scored"):
        bits_per_byte(1.0, 0)
    assert utf8_length("é☕𝄞") == 2 + 3 + 4


def _byte_tokenizers(tmp_path: Path):
    corpus = TEXTS * 4
    yield "char", CharTokenizer.train(corpus)
    yield "bpe", build_tokenizer("bpe", corpus, vocab_size=300)
    yield "unigram", build_tokenizer("unigram", corpus, vocab_size=300)
    ranks = {bytes([i]): i for i in range(256)}
    ranks[b"\xc3\xa9"] = 256  # "é" as one token, "☕" as three single bytes
    yield (
        "tiktoken",
        TiktokenTokenizer("toy", pat_str=r"\S+|\s+", mergeable_ranks=ranks, special_tokens={"<|endoftext|>": 257}),
    )
    yield "vocab", VocabTokenizer(sorted(set("".join(corpus))))


def test_token_byte_lengths_sum_to_the_texts_utf8_length(tmp_path):
    """What the training side needs for val/bpb: summed over a text's ids, the table gives its UTF-8 length (also
    for byte-level tokens that hold part of a character); special and padding ids count 0."""
    for name, tok in _byte_tokenizers(tmp_path):
        table = token_byte_lengths(tok, size=tok.vocab_size + 5)
        assert table.shape == (tok.vocab_size + 5,) and int(table[tok.vocab_size :].sum()) == 0, name
        for sid in tok.special_ids:
            assert table[sid] == 0, name
        for text in TEXTS:
            ids = torch.tensor(tok.encode(text))
            assert int(table[ids].sum()) == utf8_length(text), (name, text)


def test_bad_text_mode_inputs_are_one_paragraph(eval_setup, tmp_path, cli):
    user_error(
        cli("evaluate", "--ckpt_path", eval_setup["ckpt"], "--data.source", tmp_path / "missing.txt"), "missing.txt"
    )
    (tmp_path / "d").mkdir()
    user_error(
        cli(
            "evaluate",
            "--ckpt_path",
            eval_setup["ckpt"],
            "--data.source",
            eval_setup["text"],
            "--output_path",
            tmp_path / "d",
        ),
        "is a directory",
    )
    user_error(
        cli("evaluate", "--ckpt_path", tmp_path / "nothing", "--data.source", eval_setup["text"]), "does not exist"
    )
    meta = tmp_path / "nano"
    from tests.io.test_nanogpt import model_args, save_nanogpt

    save_nanogpt(meta, model_args(vocab_size=40))
    (meta / "meta.pkl").write_bytes(pickle.dumps({"stoi": {"a": 0}, "itos": {0: "a"}}))
    user_error(
        cli("evaluate", "--ckpt_path", meta, "--data.source", eval_setup["text"]), "is not in this model's vocabulary"
    )
