"""Tokenizers: round trips, specials, serialization, determinism across processes, errors."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from lightning_gpt.data import TiktokenTokenizer
from lightning_gpt.data.tokenizers import (
    BOS,
    EOS,
    PAD,
    UNK,
    CharTokenizer,
    HFTokenizer,
    build_tokenizer,
    tokenizer_from_state_dict,
)

REPO = Path(__file__).resolve().parents[2]
CORPUS = [
    "def add(a, b):\n    return a + b\n",
    "The quick brown fox jumps over the lazy dog. Ünïcödé ✓ 日本語!\n",
    "class Foo:\n    pass\n\n\nprint(Foo())\n",
] * 20
SAMPLE = "def foo(x):\n    return 'Ünïcödé ✓' + x  # 日本語\n\n"


def json_round_trip(tok):
    return tokenizer_from_state_dict(json.loads(json.dumps(tok.state_dict())))


def test_char_vocab_sorted_with_specials_appended():
    tok = build_tokenizer("char", ["cab", "bca  "])
    assert tok.chars == [" ", "a", "b", "c"]
    assert (tok.bos_id, tok.eos_id, tok.pad_id, tok.unk_id) == (4, 5, 6, 7)
    assert tok.vocab_size == 8
    assert tok.encode("abc ", bos=True, eos=True) == [4, 1, 2, 3, 0, 5]
    assert tok.decode([4, 1, 2, 5, 6]) == "ab"
    assert tok.decode([4, 1, 5], skip_special=False) == f"{BOS}a{EOS}"
    # Order of the corpus does not matter.
    assert build_tokenizer("char", ["bca  ", "cab"]).state_dict() == tok.state_dict()


def test_char_round_trip_and_unknown_chars():
    tok = build_tokenizer("char", CORPUS)
    text = CORPUS[1]
    assert tok.decode(tok.encode(text)) == text
    ids = tok.encode("a€b")  # '€' never seen
    assert ids[1] == tok.unk_id and tok.decode(ids) == "ab"
    again = json_round_trip(tok)
    assert again.encode(text) == tok.encode(text) and again.fingerprint() == tok.fingerprint()


@pytest.mark.parametrize("kind", ["bpe", "unigram"])
def test_trained_tokenizers_round_trip(kind):
    tok = build_tokenizer(kind, CORPUS, vocab_size=300)
    assert isinstance(tok, HFTokenizer) and tok.kind == kind
    assert tok.vocab_size <= 300
    assert tok.decode(tok.encode(SAMPLE)) == SAMPLE  # byte-level: lossless even on unseen characters
    assert [tok.bos_id, tok.eos_id, tok.pad_id] == [0, 1, 2]
    ids = tok.encode(SAMPLE, bos=True, eos=True)
    assert ids[0] == tok.bos_id and ids[-1] == tok.eos_id and tok.decode(ids) == SAMPLE
    assert tok.encode_batch([SAMPLE, "x"], eos=True) == [tok.encode(SAMPLE, eos=True), tok.encode("x", eos=True)]
    again = json_round_trip(tok)
    assert again.encode(SAMPLE) == tok.encode(SAMPLE) and again.fingerprint() == tok.fingerprint()
    # Special-token strings inside a text are plain text, never the special ids.
    literal = f"a{EOS}b"
    assert tok.eos_id not in tok.encode(literal) and tok.decode(tok.encode(literal)) == literal
    assert tok.decode([tok.eos_id], skip_special=False) == EOS


def test_bpe_compresses_better_than_bytes():
    tok = build_tokenizer("bpe", CORPUS, vocab_size=400)
    assert len(tok.encode(CORPUS[0])) < len(CORPUS[0].encode()) / 2


def test_pretrained_tokenizer_json(tmp_path):
    trained = build_tokenizer("bpe", CORPUS, vocab_size=300)
    path = tmp_path / "tokenizer.json"
    path.write_text(trained.state_dict()["tokenizer_json"])
    for spec in (str(path), str(tmp_path)):
        tok = build_tokenizer(spec)
        assert tok.kind == "pretrained"
        assert tok.encode(SAMPLE) == trained.encode(SAMPLE)
        assert (tok.bos_id, tok.eos_id, tok.pad_id) == (trained.bos_id, trained.eos_id, trained.pad_id)
        assert json_round_trip(tok).fingerprint() == tok.fingerprint()


def test_pretrained_detects_endoftext_as_bos_eos(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"]))
    raw.save(str(tmp_path / "tokenizer.json"))
    tok = build_tokenizer(str(tmp_path / "tokenizer.json"))
    assert tok.bos_id == tok.eos_id == 0 and tok.pad_id is None


def test_tiktoken_toy_encoding_serializes_offline():
    ranks = {bytes([i]): i for i in range(256)}
    ranks[b"ab"] = 256
    tok = TiktokenTokenizer("toy", pat_str=r"\S+|\s+", mergeable_ranks=ranks, special_tokens={"<|endoftext|>": 257})
    assert tok.vocab_size == 258 and tok.eos_id == tok.bos_id == 257 and tok.pad_id is None
    assert tok.encode("ab c", eos=True) == [256, 32, 99, 257]
    assert tok.decode([256, 32, 99, 257]) == "ab c"
    assert json_round_trip(tok).encode("abab") == [256, 256]


def test_tiktoken_named_encoding_or_clear_error():
    try:
        tok = build_tokenizer("tiktoken:gpt2")
    except ValueError as err:
        assert "TIKTOKEN_CACHE_DIR" in str(err) and "gpt2" in str(err)
        pytest.skip("tiktoken's gpt2 encoding file is not available offline")
    assert tok.decode(tok.encode("hello world")) == "hello world"
    assert tok.eos_id == 50256


def test_vocab_too_small_for_specials():
    with pytest.raises(ValueError, match=r"tokenizer_vocab_size=100 is too small.*>= 259"):
        build_tokenizer("bpe", CORPUS, vocab_size=100)


def test_check_compatible():
    a = build_tokenizer("char", ["abc"])
    a.check_compatible(a.state_dict())
    a.check_compatible(build_tokenizer("char", ["cba"]))
    with pytest.raises(ValueError, match="Tokenizer mismatch"):
        a.check_compatible(build_tokenizer("char", ["abcd"]).state_dict())


def test_unknown_kind_and_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="no tokenizer.json"):
        build_tokenizer(str(tmp_path / "nope.json"))
    with pytest.raises(ValueError, match="trains on a corpus"):
        build_tokenizer("bpe")
    with pytest.raises(ValueError, match="unknown tokenizer kind"):
        tokenizer_from_state_dict({"kind": "wordpiece"})


def test_specials_constants_distinct():
    assert len({BOS, EOS, PAD, UNK}) == 4
    assert CharTokenizer("ab").state_dict()["specials"] == [BOS, EOS, PAD, UNK]


DETERMINISM_SCRIPT = textwrap.dedent(
    """
    import json, sys
    from lightning_gpt.data.tokenizers import build_tokenizer
    corpus = json.loads(sys.argv[1])
    out = {}
    for kind in ("char", "bpe", "unigram"):
        tok = build_tokenizer(kind, corpus, vocab_size=300)
        out[kind] = [tok.fingerprint(), tok.encode(corpus[1])]
    print(json.dumps(out))
    """
)


@pytest.mark.slow
def test_determinism_across_processes_with_different_hash_seeds():
    outputs = []
    for seed in ("1", "12345"):
        env = {**os.environ, "PYTHONHASHSEED": seed, "TOKENIZERS_PARALLELISM": "true"}
        res = subprocess.run(
            [sys.executable, "-c", DETERMINISM_SCRIPT, json.dumps(CORPUS)],
            env=env,
            capture_output=True,
            text=True,
            cwd=REPO,
            timeout=120,
        )
        assert res.returncode == 0, res.stderr
        outputs.append(json.loads(res.stdout.strip().splitlines()[-1]))
    assert outputs[0] == outputs[1]
    assert set(outputs[0]) == {"char", "bpe", "unigram"}
