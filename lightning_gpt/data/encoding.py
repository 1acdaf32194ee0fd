"""The one definition of how text becomes training tokens, shared by the token cache and ``lightning-gpt prepare``.

- A document is encoded as ``[BOS] ids EOS`` (BOS only with ``add_bos``; EOS always, it separates documents).
- Ids are stored as ``uint16`` when the vocabulary fits, else ``uint32`` (``token_dtype``).
- Packing cuts the concatenated documents into windows of ``block_size + 1`` tokens (input = the first
  ``block_size``, target = the last ``block_size``); padding puts one document per row (``datasets.PaddedDataset``).
- The validation documents are a seeded random sample: document ``key`` is held out when a hash of ``(seed, key)``
  falls below ``fraction`` (``is_held_out``), so the split needs no list of documents, is the same on every rank and
  process, and does not change on resume.
"""

from __future__ import annotations

import hashlib
from typing import Sequence

import numpy as np

from lightning_gpt.data.tokenizers import CharTokenizer, Tokenizer

__all__ = ["check_separators", "encode_documents", "is_held_out", "token_dtype"]


def token_dtype(vocab_size: int) -> np.dtype:
    """``uint16`` when every id fits, else ``uint32``.

    Args:
        vocab_size: the tokenizer's vocabulary size.
    """
    return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.uint32)


def check_separators(tokenizer: Tokenizer, add_bos: bool) -> None:
    """Raise ``ValueError`` unless ``tokenizer`` has the separator tokens the documents need.

    A vocabulary without EOS (nanoGPT's ``meta.pkl`` characters) is accepted: its documents are joined as they are,
    as nanoGPT's ``prepare.py`` does.

    Args:
        tokenizer: the tokenizer.
        add_bos: whether documents start with BOS.

    Raises:
        ValueError: ``add_bos`` without a BOS token.
    """
    if add_bos and tokenizer.bos_id is None:
        raise ValueError(f"add_bos=True but {tokenizer.describe()} has no BOS token; set add_bos=False.")


def encode_documents(tokenizer: Tokenizer, docs: Sequence[str], add_bos: bool) -> list[np.ndarray]:
    """Encode documents as ``[BOS] ids EOS`` int64 arrays (batched: Rust or tiktoken threads, vectorized ``char``);
    ``ids`` alone when the tokenizer has no EOS (see ``check_separators``).

    Args:
        tokenizer: the tokenizer.
        docs: the documents.
        add_bos: start every document with BOS.

    Returns:
        One ``int64`` array per document.
    """
    eos = tokenizer.eos_id is not None
    if isinstance(tokenizer, CharTokenizer):
        out: list[np.ndarray] = []
        bos = np.asarray([tokenizer.bos_id] if add_bos else [], dtype=np.int64)
        end = np.asarray([tokenizer.eos_id] if eos else [], dtype=np.int64)
        for d in docs:
            out.append(np.concatenate([bos, tokenizer.encode_array(d), end]))
        return out
    return [np.asarray(ids, dtype=np.int64) for ids in tokenizer.encode_batch(list(docs), bos=add_bos, eos=eos)]


def is_held_out(seed: int, key: str, fraction: float) -> bool:
    """Whether document ``key`` belongs to the validation sample (probability ``fraction``, seeded, stateless).

    Args:
        seed: the split seed (derived from the run seed unless set).
        key: a stable name of the document (e.g. ``"<shard>/<index in shard>"``).
        fraction: the expected share of validation documents, in ``[0, 1)``.
    """
    if fraction <= 0:
        return False
    digest = hashlib.blake2b(f"{seed}\0{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") < fraction * 2.0**64
