"""Tokenizers that travel with the checkpoint.

Every tokenizer is deterministic (the char vocabulary is sorted, never read from an unordered set; the ``tokenizers``
trainers are seeded by the corpus order only) and serializes to a self-contained, JSON-serializable ``state_dict()``
(trained vocabulary and merges included), so ``tokenizer_from_state_dict(tok.state_dict())`` decodes exactly as
training encoded, in any process, under any ``PYTHONHASHSEED``.

Kinds (``build_tokenizer(kind, ...)``):

- ``char``: one id per character seen in the corpus (sorted by code point), then ``<|bos|>``, ``<|eos|>``,
  ``<|pad|>``, ``<|unk|>`` (characters never seen map to ``<|unk|>``).
- ``bpe``: byte-level BPE trained with the ``tokenizers`` library to a requested vocab size (lossless).
- ``unigram``: SentencePiece-style unigram model trained with ``tokenizers`` over byte-level pieces (lossless).
- a path to a ``tokenizer.json`` or a Hugging Face tokenizer id: a pretrained ``tokenizers`` tokenizer.
- ``tiktoken:<encoding>`` (e.g. ``tiktoken:gpt2``): a tiktoken encoding, when its file is available offline.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any, Iterable, Optional, Sequence

import numpy as np

from lightning_gpt.data.tiktoken_tokenizer import TiktokenTokenizer
from lightning_gpt.data.tokenizer_base import (
    BOS,
    EOS,
    PAD,
    SPECIALS,
    UNK,
    Tokenizer,
    _ids_list,
    encode_threads,
    tokenizer_from_state_dict,
)
from lightning_gpt.data.vocab_tokenizer import VocabTokenizer  # noqa: F401 - registers the 'vocab' state kind

__all__ = [
    "BOS",
    "EOS",
    "PAD",
    "UNK",
    "CharTokenizer",
    "HFTokenizer",
    "Tokenizer",
    "build_tokenizer",
    "tokenizer_from_state_dict",
]

TRAINABLE = ("char", "bpe", "unigram")
# Names pretrained tokenizers commonly use for their special tokens (first match wins).
_BOS_NAMES = (BOS, "<|endoftext|>", "<s>", "[CLS]", "<bos>", "<|begin_of_text|>")
_EOS_NAMES = (EOS, "<|endoftext|>", "</s>", "[SEP]", "<eos>", "<|end_of_text|>")
_PAD_NAMES = (PAD, "<pad>", "[PAD]", "<|padding|>")

# Batch encoding: documents longer than this are cut into pieces of about this many characters, so the Rust
# tokenizer encodes them in parallel (one huge document, e.g. a whole book, would otherwise use one thread).
_SPLIT_CHARS = 1 << 16
# A cut point that no GPT-2-style (byte-level, regex) pre-tokenization crosses: just after a single newline that
# follows a non-space and precedes a non-space. There the pattern always ends a piece ("\n" alone) and starts the
# next one, so encoding the two sides separately gives the same ids. (Python's \s covers Unicode's White_Space, so
# the test is, if anything, stricter than the tokenizer's.)
_SAFE_CUT = re.compile(r"(?<=\S\n)(?=\S)")


def _split_long(text: str, size: int) -> list[str]:
    """``text`` cut at safe line breaks into pieces of about ``size`` characters (one piece when there is none)."""
    pieces, start = [], 0
    while len(text) - start > size:
        m = _SAFE_CUT.search(text, start + size)
        if m is None:
            break
        pieces.append(text[start : m.start()])
        start = m.start()
    pieces.append(text[start:])
    return pieces


_GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


def _byte_alphabet() -> dict[str, int]:
    """GPT-2's byte-level alphabet, character -> byte: printable bytes stand for themselves, the rest are shifted past
    255 in byte order."""
    printable = {*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAD), *range(0xAE, 0x100)}
    out, extra = {}, 0
    for b in range(256):
        if b in printable:
            out[chr(b)] = b
        else:
            out[chr(256 + extra)] = b
            extra += 1
    return out


def _tiktoken_twin(tokenizer_json: str) -> Any:
    """A ``tiktoken`` encoding that segments like this byte-level BPE, or ``None`` where that is not guaranteed by
    construction (tiktoken missing, another pre-tokenizer, or merges whose results are not numbered in merge order).

    tiktoken merges the adjacent pair whose concatenation has the lowest rank; with rank = id and ids assigned in merge
    order (true for BpeTrainer output and GPT-2's vocabulary), that is the merge order the BPE model applies. It encodes
    ~5-8x faster than ``tokenizers`` on this machine (benchmarks/results/data_encoders.md).
    """
    try:
        import tiktoken
    except ImportError:
        return None
    spec = json.loads(tokenizer_json)
    pre, model = spec.get("pre_tokenizer") or {}, spec.get("model") or {}
    if not _bytelevel_regex_only(tokenizer_json) or pre.get("add_prefix_space") or model.get("dropout"):
        return None
    vocab: dict[str, int] = model.get("vocab") or {}
    merges = model.get("merges") or []
    specials = {t["content"]: t["id"] for t in spec.get("added_tokens") or []}
    alphabet = _byte_alphabet()
    try:
        ranks = {bytes(alphabet[c] for c in tok): i for tok, i in vocab.items() if tok not in specials}
        merged = [vocab["".join(m) if isinstance(m, list) else m.replace(" ", "", 1)] for m in merges]
    except KeyError:
        return None
    singles = [ranks.get(bytes([b])) for b in range(256)]
    if len(ranks) != len(vocab) - len(specials) or None in singles or len(merged) != len(ranks) - 256:
        return None
    top_single = max(r for r in singles if r is not None)  # all 256 bytes have a rank (checked above)
    if any(b <= a for a, b in zip(merged, merged[1:])) or (merged and top_single >= merged[0]):
        return None
    try:
        return tiktoken.Encoding("lightning-gpt-bpe", pat_str=_GPT2_PATTERN, mergeable_ranks=ranks, special_tokens={})
    except Exception:  # noqa: BLE001 - any refusal by tiktoken just means: use tokenizers
        return None


def _bytelevel_regex_only(tokenizer_json: str) -> bool:
    """Whether a tokenizer is a BPE whose only text processing is the GPT-2 byte-level regex pre-tokenizer."""
    spec = json.loads(tokenizer_json)
    pre = spec.get("pre_tokenizer") or {}
    return (
        (spec.get("model") or {}).get("type") == "BPE"
        and spec.get("normalizer") is None
        and pre.get("type") == "ByteLevel"
        and bool(pre.get("use_regex", True))
    )


class CharTokenizer(Tokenizer):
    """One id per character (sorted by code point), then ``<|bos|>``, ``<|eos|>``, ``<|pad|>``, ``<|unk|>``.

    Args:
        chars: the vocabulary characters; sorted and de-duplicated here, so any order gives the same tokenizer.
    """

    kind = "char"
    state_kinds = ("char",)

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> "CharTokenizer":
        """Rebuild from ``state_dict()``.

        Args:
            state: what ``state_dict()`` returned.
        """
        return cls(state["chars"])

    def __init__(self, chars: Iterable[str]) -> None:
        chars = sorted(set(chars))
        if any(len(c) != 1 for c in chars):
            raise ValueError("CharTokenizer: every vocabulary entry must be a single character.")
        self.chars: list[str] = chars
        n = len(chars)
        self.bos_id, self.eos_id, self.pad_id, self.unk_id = n, n + 1, n + 2, n + 3
        self.vocab_size = n + len(SPECIALS)
        self._codepoints = np.array([ord(c) for c in chars], dtype=np.uint32)
        self._itos = chars + list(SPECIALS)

    @classmethod
    def train(cls, texts: Iterable[str]) -> "CharTokenizer":
        """Build the vocabulary from every character of ``texts`` (sorted; independent of text order).

        Args:
            texts: the corpus documents.
        """
        seen: set[int] = set()
        for text in texts:
            seen.update(np.unique(np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)).tolist())
        if not seen:
            raise ValueError("CharTokenizer.train: the corpus is empty; give a source with some text.")
        return cls(chr(c) for c in sorted(seen))

    def encode_array(self, text: str) -> np.ndarray:
        """Encode to a numpy int64 array (vectorized: a sorted-code-point lookup).

        Args:
            text: the text.
        """
        cps = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
        if len(self._codepoints) == 0:
            return np.full(len(cps), self.unk_id, dtype=np.int64)
        pos = np.searchsorted(self._codepoints, cps)
        pos_clipped = np.minimum(pos, len(self._codepoints) - 1)
        known = self._codepoints[pos_clipped] == cps
        return np.where(known, pos_clipped, self.unk_id).astype(np.int64)

    def _encode(self, text: str) -> list[int]:
        return self.encode_array(text).tolist()

    def decode(self, ids: Iterable[int], *, skip_special: bool = True) -> str:
        n = len(self.chars)
        out = []
        for i in _ids_list(ids):
            if not 0 <= i < self.vocab_size:
                raise ValueError(f"CharTokenizer.decode: id {i} is outside the vocabulary [0, {self.vocab_size}).")
            if i >= n and skip_special:
                continue
            out.append(self._itos[i])
        return "".join(out)

    def state_dict(self) -> dict[str, Any]:
        return {"kind": "char", "chars": "".join(self.chars), "specials": list(SPECIALS)}


class HFTokenizer(Tokenizer):
    """A ``tokenizers.Tokenizer`` (trained BPE/unigram or a pretrained ``tokenizer.json``) with explicit specials.

    Args:
        tokenizer_json: the serialized tokenizer (``tokenizers.Tokenizer.to_str()``).
        kind: ``bpe``, ``unigram`` or ``pretrained`` (informational; saved in the state).
        bos_token: BOS token string; ``None`` detects a common name (``<|bos|>``, ``<|endoftext|>``, ``<s>``, ...).
        eos_token: EOS token string; ``None`` detects a common name.
        pad_token: PAD token string; ``None`` detects a common name (may stay unset).
    """

    state_kinds = ("bpe", "unigram", "pretrained")

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> "HFTokenizer":
        """Rebuild from ``state_dict()`` (the trained vocabulary and merges are in it).

        Args:
            state: what ``state_dict()`` returned.
        """
        return cls(
            state["tokenizer_json"],
            kind=state["kind"],
            bos_token=state.get("bos_token"),
            eos_token=state.get("eos_token"),
            pad_token=state.get("pad_token"),
        )

    def __init__(
        self,
        tokenizer_json: str,
        kind: str = "pretrained",
        bos_token: Optional[str] = None,
        eos_token: Optional[str] = None,
        pad_token: Optional[str] = None,
    ) -> None:
        from tokenizers import Tokenizer as _RustTokenizer

        self.kind = kind
        self._json = tokenizer_json
        self._tok = _RustTokenizer.from_str(tokenizer_json)
        self._tok.no_padding()
        self._tok.no_truncation()
        # Special-token strings inside a text are plain text: a corpus that contains "<|endoftext|>" must not inject
        # EOS ids (BOS/EOS are added explicitly through encode(..., bos=, eos=)).
        self._tok.encode_special_tokens = True
        self.vocab_size = self._tok.get_vocab_size(with_added_tokens=True)
        self.bos_token = self._find(bos_token, _BOS_NAMES, "bos_token")
        self.eos_token = self._find(eos_token, _EOS_NAMES, "eos_token")
        self.pad_token = self._find(pad_token, _PAD_NAMES, "pad_token")
        self.bos_id = None if self.bos_token is None else self._tok.token_to_id(self.bos_token)
        self.eos_id = None if self.eos_token is None else self._tok.token_to_id(self.eos_token)
        self.pad_id = None if self.pad_token is None else self._tok.token_to_id(self.pad_token)
        self.unk_id = self._tok.token_to_id(UNK)
        self._splittable = _bytelevel_regex_only(tokenizer_json)
        self._twin: Any = False  # the tiktoken twin of a byte-level BPE (built on first batch use), None: none

    def _find(self, explicit: Optional[str], names: Sequence[str], field: str) -> Optional[str]:
        if explicit is not None:
            if self._tok.token_to_id(explicit) is None:
                raise ValueError(f"{field}={explicit!r} is not in the tokenizer's vocabulary; pick an existing token.")
            return explicit
        return next((n for n in names if self._tok.token_to_id(n) is not None), None)

    @classmethod
    def train(cls, texts: Iterable[str], kind: str, vocab_size: int) -> "HFTokenizer":
        """Train a byte-level ``bpe`` or ``unigram`` tokenizer with BOS/EOS/PAD specials (and UNK for unigram).

        Args:
            texts: the corpus documents (iterated once, in order).
            kind: ``bpe`` or ``unigram``.
            vocab_size: requested vocabulary size, specials included (at least 256 bytes + the specials).
        """
        from tokenizers import Tokenizer as _RustTokenizer
        from tokenizers import decoders, models, pre_tokenizers, trainers

        specials = [BOS, EOS, PAD] if kind == "bpe" else list(SPECIALS)
        minimum = 256 + len(specials)
        if vocab_size < minimum:
            raise ValueError(
                f"tokenizer_vocab_size={vocab_size} is too small for a byte-level {kind} tokenizer: it needs the 256 "
                f"byte symbols plus {len(specials)} special tokens; use tokenizer_vocab_size >= {minimum}."
            )
        alphabet = pre_tokenizers.ByteLevel.alphabet()
        if kind == "bpe":
            tok = _RustTokenizer(models.BPE())
            trainer = trainers.BpeTrainer(
                vocab_size=vocab_size, special_tokens=specials, initial_alphabet=alphabet, show_progress=False
            )
        elif kind == "unigram":
            from lightning_gpt.data.unigram import train_unigram

            # tokenizers' UnigramTrainer is not reproducible across processes; this trainer is.
            return cls(
                train_unigram(texts, vocab_size, specials, UNK), kind=kind, bos_token=BOS, eos_token=EOS, pad_token=PAD
            )
        else:
            raise ValueError(f"HFTokenizer.train: kind must be 'bpe' or 'unigram', got {kind!r}.")
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        tok.decoder = decoders.ByteLevel()
        tok.train_from_iterator(texts, trainer=trainer)
        return cls(tok.to_str(), kind=kind, bos_token=BOS, eos_token=EOS, pad_token=PAD)

    def _encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str], *, bos: bool = False, eos: bool = False) -> list[list[int]]:
        """Encode many texts in parallel (Rust threads); long GPT-2-style texts are cut at safe line breaks first so
        that they spread over the threads too (same ids as encoding each text whole). A byte-level BPE is encoded by
        its ``tiktoken`` twin when tiktoken is installed (same segmentation by construction, several times faster)."""
        texts = list(texts)
        if self._twin is False:
            self._twin = _tiktoken_twin(self._json) if self._splittable else None
        pieces, owner = texts, None
        if self._splittable and any(len(t) > _SPLIT_CHARS for t in texts):
            pieces, owner = [], []
            for i, text in enumerate(texts):
                parts = _split_long(text, _SPLIT_CHARS) if len(text) > _SPLIT_CHARS else [text]
                pieces += parts
                owner += [i] * len(parts)
        if self._twin is not None:
            encoded = self._twin.encode_ordinary_batch(pieces, num_threads=encode_threads())
        else:
            # encode_batch_fast (tokenizers >= 0.20) skips the character offsets we never read.
            encode = getattr(self._tok, "encode_batch_fast", self._tok.encode_batch)
            encoded = [e.ids for e in encode(pieces, add_special_tokens=False)]
        if owner is None:
            return [self._wrap(ids, bos, eos) for ids in encoded]
        out: list[list[int]] = [[] for _ in texts]
        for i, ids in zip(owner, encoded):
            out[i] += ids
        return [self._wrap(ids, bos, eos) for ids in out]

    def decode(self, ids: Iterable[int], *, skip_special: bool = True) -> str:
        ids = _ids_list(ids)
        if skip_special:
            special = self.special_ids
            ids = [i for i in ids if i not in special]
        return self._tok.decode(ids, skip_special_tokens=False)

    def state_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "tokenizer_json": self._json,
            "bos_token": self.bos_token,
            "eos_token": self.eos_token,
            "pad_token": self.pad_token,
        }


def build_tokenizer(
    kind: str,
    texts: Optional[Iterable[str]] = None,
    *,
    vocab_size: int = 4096,
) -> Tokenizer:
    """Build a tokenizer from a plain specification: train one on ``texts`` or load a pretrained one.

    Files that hold weights too (a ``.ckpt``, a weights folder) are read by ``lightning_gpt.io.load_tokenizer``,
    which accepts every specification this function does.

    Args:
        kind: ``char``, ``bpe`` or ``unigram`` (trained on ``texts``); ``tiktoken:<encoding>``; a path to a
            ``tokenizer.json`` (or a folder holding one); or a Hugging Face tokenizer id (``hf:<id>`` or a bare id
            such as ``gpt2``, loaded through ``Tokenizer.from_pretrained``).
        texts: the corpus documents, required for the trained kinds.
        vocab_size: vocabulary size of ``bpe``/``unigram`` (specials included); ignored otherwise.

    Raises:
        ValueError: a trainable kind without ``texts``; an unknown kind or id.
        FileNotFoundError: a ``tokenizer.json`` path that does not exist.
    """
    if kind in TRAINABLE:
        if texts is None:
            raise ValueError(f"build_tokenizer({kind!r}) trains on a corpus: pass texts=<iterable of documents>.")
        if kind == "char":
            return CharTokenizer.train(texts)
        return HFTokenizer.train(texts, kind, vocab_size)
    if kind.startswith("tiktoken:"):
        return TiktokenTokenizer(kind.split(":", 1)[1])
    path = os.path.expanduser(kind)
    if path.endswith(".json") or os.path.isdir(path):
        file = os.path.join(path, "tokenizer.json") if os.path.isdir(path) else path
        if not os.path.isfile(file):
            raise FileNotFoundError(f"tokenizer={kind!r}: no tokenizer.json found at {file!r}.")
        with open(file, encoding="utf-8") as f:
            return HFTokenizer(f.read(), kind="pretrained")
    from tokenizers import Tokenizer as _RustTokenizer

    hub_id = kind[3:] if kind.startswith("hf:") else kind
    try:
        tok = _RustTokenizer.from_pretrained(hub_id)
    except Exception as err:
        raise ValueError(
            f"tokenizer={kind!r} is not a known kind ({', '.join(TRAINABLE)}, tiktoken:<encoding>), not an existing "
            f"tokenizer.json/.ckpt path, and could not be loaded as a Hugging Face tokenizer id ({err})."
        ) from err
    return HFTokenizer(tok.to_str(), kind="pretrained")
