"""The BPE batch-encode fast path: long documents are cut at safe line breaks and encoded in parallel, same ids."""

from __future__ import annotations

import json
import random

import pytest

from lightning_gpt.data import tokenizers as tokmod
from lightning_gpt.data.tokenizers import HFTokenizer


def _text(seed: int, n: int = 3000) -> str:
    rng = random.Random(seed)
    words = [
        "the",
        "King's",
        "'s",
        "don't",
        "  ",
        " ",
        "\n",
        "\n\n",
        "\n \n",
        "42",
        "3.5",
        "!?",
        "é",
        "\t",
        "\u00a0",
        "x",
    ]
    return "".join(rng.choice(words) + rng.choice(["", " ", "\n"]) for _ in range(n))


@pytest.fixture(scope="module")
def bpe():
    return HFTokenizer.train([_text(0), _text(1)], "bpe", 400)


@pytest.mark.parametrize("engine", ["tiktoken", "tokenizers"])
def test_long_documents_are_split_and_give_the_same_ids(bpe, monkeypatch, engine):
    monkeypatch.setattr(tokmod, "_SPLIT_CHARS", 200)  # cut every ~200 characters
    if engine == "tokenizers":
        monkeypatch.setattr(bpe, "_twin", None)
    else:
        pytest.importorskip("tiktoken")
        monkeypatch.setattr(bpe, "_twin", False)  # rebuilt on first use
    docs = [_text(s) for s in range(2, 6)] + ["", "short", "no newline " * 100]
    assert bpe._splittable
    pieces = tokmod._split_long(docs[0], 200)
    assert len(pieces) > 10 and "".join(pieces) == docs[0]
    expected = [bpe._tok.encode(d, add_special_tokens=False).ids for d in docs]
    assert bpe.encode_batch(docs) == expected
    assert (bpe._twin is not None) == (engine == "tiktoken")
    assert bpe.encode_batch(docs, bos=True, eos=True) == [[bpe.bos_id, *ids, bpe.eos_id] for ids in expected]


def test_non_bytelevel_tokenizers_are_not_split():
    uni = HFTokenizer.train([_text(0)], "unigram", 300)
    assert not uni._splittable


def test_large_cache_builds_show_a_progress_bar(tmp_path, monkeypatch, capsys):
    from lightning_gpt.data import cache

    monkeypatch.setattr(cache, "_CHUNK_CHARS", 1000)
    tok = HFTokenizer.train([_text(0)], "bpe", 300)
    docs = [_text(s, 400) for s in range(30)]  # ~ 60k characters: past 8 chunks
    path = cache.build_token_cache(str(tmp_path), {"k": 1}, docs, tok, description="toy")
    assert "tokenizing toy" in capsys.readouterr().err
    arr = cache.load_token_cache(path)
    assert arr.n_docs == 30
    small = cache.build_token_cache(str(tmp_path), {"k": 2}, docs[:1], tok, description="tiny")
    assert small and "tokenizing tiny" not in capsys.readouterr().err


def test_tiktoken_twin_only_for_plain_bytelevel_bpe(bpe):
    pytest.importorskip("tiktoken")
    assert tokmod._tiktoken_twin(bpe._json) is not None
    spec = json.loads(bpe._json)
    spec["pre_tokenizer"]["add_prefix_space"] = True
    assert tokmod._tiktoken_twin(json.dumps(spec)) is None
    spec = json.loads(bpe._json)
    spec["model"]["merges"] = spec["model"]["merges"][::-1]  # results no longer numbered in merge order
    assert tokmod._tiktoken_twin(json.dumps(spec)) is None
    uni = HFTokenizer.train([_text(0)], "unigram", 300)
    assert tokmod._tiktoken_twin(uni._json) is None
