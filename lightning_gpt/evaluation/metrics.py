"""Tokenizer-independent language-model metrics: bits per byte, and how many UTF-8 bytes each token id stands for.

Bits per byte (bpb) is the total negative log-likelihood of a text in bits divided by the text's length in UTF-8
bytes: ``bpb = total_nats / ln(2) / total_bytes``. Unlike the per-token loss it does not depend on the tokenizer, so a
character model and a BPE model can be compared on the same text. Definition: Gao et al. 2020, "The Pile: An 800GB
Dataset of Diverse Text for Language Modeling", section 4.1 (bits per UTF-8 encoded byte), and lm-evaluation-harness's
``bits_per_byte`` metric (``lm_eval.api.metrics.bits_per_byte``: ``-sum(loglikelihoods) / sum(bytes) / ln 2``).

The training side can log ``val/bpb`` from the token losses it already has with ``token_byte_lengths`` (a table of
the bytes each id decodes to, built once per tokenizer, as nanochat's ``token_bytes`` does for its ``evaluate_bpb``):

```python
table = token_byte_lengths(tokenizer, model.config.padded_vocab_size)   # (V,) int64, once
nats = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-100, reduction="sum")
n_bytes = table[targets.clamp(min=0)].masked_fill(targets < 0, 0).sum()
bpb = bits_per_byte(nats, n_bytes)
```
"""

from __future__ import annotations

import math
from typing import Any, Union

import torch
from torch import Tensor

__all__ = ["bits_per_byte", "perplexity", "token_byte_lengths", "utf8_length"]

Number = Union[int, float, Tensor]


def bits_per_byte(total_nats: Number, total_bytes: Number) -> Number:
    """``total_nats / ln(2) / total_bytes``: the text's negative log-likelihood in bits per UTF-8 byte.

    Source: Gao et al. 2020 (The Pile), section 4.1; lm-evaluation-harness ``bits_per_byte``.

    Args:
        total_nats: summed negative log-likelihood (natural log) of every scored token; a float or a tensor.
        total_bytes: UTF-8 bytes of the scored text (``utf8_length`` or ``token_byte_lengths``); > 0.

    Returns:
        Bits per byte, of the type of ``total_nats`` (a 0-d tensor stays a tensor, e.g. for ``self.log``).

    Raises:
        ValueError: ``total_bytes`` is not positive (nothing was scored).
    """
    if float(total_bytes) <= 0:
        raise ValueError(f"bits_per_byte needs a positive byte count, got {float(total_bytes)}: nothing was scored.")
    return total_nats / math.log(2) / total_bytes


def perplexity(total_nats: float, total_tokens: int) -> float:
    """``exp(total_nats / total_tokens)``: the per-token perplexity (``inf`` when it overflows a float).

    Args:
        total_nats: summed negative log-likelihood of the scored tokens (natural log).
        total_tokens: the number of scored tokens; > 0.

    Raises:
        ValueError: ``total_tokens`` is not positive.
    """
    if total_tokens <= 0:
        raise ValueError(f"perplexity needs at least one scored token, got {total_tokens}.")
    mean = total_nats / total_tokens
    return math.exp(mean) if mean < 709.0 else math.inf


def utf8_length(text: str) -> int:
    """The length of ``text`` in UTF-8 bytes (lone surrogates count as their 3-byte encoding)."""
    return len(text.encode("utf-8", "surrogatepass"))


def _byte_level_tokens(tokenizer: Any) -> dict[int, bytes]:
    """id -> raw bytes of a byte-level ``tokenizers`` vocabulary (GPT-2's alphabet), or ``{}`` when it is not one."""
    import json

    from lightning_gpt.data.tokenizers import _byte_alphabet

    spec = json.loads(tokenizer.state_dict()["tokenizer_json"])
    decoder = spec.get("decoder") or {}
    if decoder.get("type") != "ByteLevel":
        return {}
    alphabet = _byte_alphabet()
    out = {}
    vocab = (spec.get("model") or {}).get("vocab") or {}
    pairs = vocab.items() if isinstance(vocab, dict) else ((piece, i) for i, (piece, _) in enumerate(vocab))  # unigram
    for token, i in pairs:
        if all(c in alphabet for c in token):
            out[int(i)] = bytes(alphabet[c] for c in token)
    return out


def token_byte_lengths(tokenizer: Any, size: int | None = None) -> Tensor:
    """How many UTF-8 bytes of text each token id stands for: ``(size,)`` int64, 0 for special and padding ids.

    Summed over the target ids of a text it gives the text's UTF-8 length for the lossless tokenizers (byte-level
    ``bpe``/``unigram``/GPT-2, ``tiktoken``, ``char`` without unknown characters), so ``bits_per_byte(nats, table[
    targets].sum())`` is the bits per byte of what was scored.

    Args:
        tokenizer: a ``lightning_gpt`` tokenizer (``CharTokenizer``, ``HFTokenizer``, ``TiktokenTokenizer``,
            ``VocabTokenizer``, or any with ``decode``).
        size: length of the table, e.g. ``config.padded_vocab_size`` (ids past the tokenizer's count 0); default
            ``tokenizer.vocab_size``.

    Returns:
        The table, on the CPU (move it to the logits' device once).
    """
    n = int(tokenizer.vocab_size)
    size = n if size is None else int(size)
    special = set(tokenizer.special_ids)
    lengths = torch.zeros(max(size, n), dtype=torch.long)
    raw: dict[int, bytes] = {}
    kind = tokenizer.state_dict().get("kind")
    if kind == "tiktoken":
        raw = {i: tokenizer._enc.decode_single_token_bytes(i) for i in range(n) if i not in special}
    elif "tokenizer_json" in tokenizer.state_dict():
        raw = _byte_level_tokens(tokenizer)
    for i in range(n):
        if i in special:
            continue
        if i in raw:
            lengths[i] = len(raw[i])
        else:  # one-character (char, nanoGPT meta.pkl) or whole-word vocabularies: the token's own text
            lengths[i] = utf8_length(tokenizer.decode([i]))
    return lengths[:size]
