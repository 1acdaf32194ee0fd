"""The ``Tokenizer`` base class and the special-token names every tokenizer shares.

It sits below ``tokenizers.py`` (the built-in kinds and ``build_tokenizer``) and ``tiktoken_tokenizer.py``, so both
import it and neither imports the other's module back.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any, Callable, Iterable, Optional, Sequence

__all__ = [
    "BOS",
    "EOS",
    "PAD",
    "SPECIALS",
    "UNK",
    "Tokenizer",
    "encode_threads",
    "state_fingerprint",
    "tokenizer_from_state_dict",
]

# state_dict()["kind"] -> the class method that rebuilds it; filled by the subclasses (Tokenizer.state_kinds).
_STATE_KINDS: dict[str, Callable[[dict[str, Any]], "Tokenizer"]] = {}

BOS, EOS, PAD, UNK = "<|bos|>", "<|eos|>", "<|pad|>", "<|unk|>"
SPECIALS = (BOS, EOS, PAD, UNK)


def encode_threads() -> int:
    """Threads a batch encoder may use: ``$LIGHTNING_GPT_ENCODE_THREADS`` (``prepare`` sets it to the CPUs per worker
    process, so N processes do not each start one thread per CPU), else every CPU."""
    value = os.environ.get("LIGHTNING_GPT_ENCODE_THREADS", "")
    return max(1, int(value)) if value.isdigit() else os.cpu_count() or 1


def state_fingerprint(state: dict[str, Any]) -> str:
    """A stable 16-hex-digit hash of a tokenizer ``state_dict()`` (key order and JSON round trips do not change it).

    Args:
        state: what ``Tokenizer.state_dict()`` returned.
    """
    blob = json.dumps(state, sort_keys=True, ensure_ascii=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


class Tokenizer:
    """Base class of every tokenizer: text <-> token ids, with explicit special tokens.

    Attributes:
        vocab_size: number of ids (every id is in ``[0, vocab_size)``).
        bos_id: id of the beginning-of-sequence token, or ``None``.
        eos_id: id of the end-of-sequence token, or ``None``.
        pad_id: id of the padding token, or ``None``.
    """

    kind: str = "base"
    state_kinds: tuple[str, ...] = ()  # the state_dict()["kind"] values this class rebuilds with from_state_dict

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for kind in cls.__dict__.get("state_kinds", ()):
            _STATE_KINDS[kind] = cls.from_state_dict

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> "Tokenizer":
        """Rebuild a tokenizer of this class from its ``state_dict()``."""
        raise NotImplementedError

    vocab_size: int
    bos_id: Optional[int]
    eos_id: Optional[int]
    pad_id: Optional[int]

    def encode(self, text: str, *, bos: bool = False, eos: bool = False) -> list[int]:
        """Encode ``text`` to ids; special-token strings inside ``text`` are treated as plain text where possible.

        Args:
            text: the text.
            bos: prepend ``bos_id``.
            eos: append ``eos_id``.
        """
        return self._wrap(self._encode(text), bos, eos)

    def encode_batch(self, texts: Sequence[str], *, bos: bool = False, eos: bool = False) -> list[list[int]]:
        """Encode several texts (faster than a loop for the library-backed kinds).

        Args:
            texts: the texts.
            bos: prepend ``bos_id`` to each.
            eos: append ``eos_id`` to each.
        """
        return [self.encode(t, bos=bos, eos=eos) for t in texts]

    def decode(self, ids: Iterable[int], *, skip_special: bool = True) -> str:
        """Decode ids to text.

        Args:
            ids: token ids (a list, tuple, numpy array or 1-D tensor).
            skip_special: drop BOS/EOS/PAD (and UNK) ids instead of rendering them as their token strings.
        """
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        """A JSON-serializable, self-contained description; ``tokenizer_from_state_dict`` rebuilds the tokenizer."""
        raise NotImplementedError

    def _encode(self, text: str) -> list[int]:
        raise NotImplementedError

    @property
    def special_ids(self) -> set[int]:
        """Ids of the special tokens (BOS, EOS, PAD, and UNK where present)."""
        return {i for i in (self.bos_id, self.eos_id, self.pad_id, getattr(self, "unk_id", None)) if i is not None}

    def fingerprint(self) -> str:
        """A stable hash of ``state_dict()``: equal fingerprints encode and decode identically."""
        return state_fingerprint(self.state_dict())

    def check_compatible(self, other: "Tokenizer | dict[str, Any]") -> None:
        """Raise ``ValueError`` unless ``other`` (a tokenizer or its ``state_dict``) encodes exactly like this one.

        Args:
            other: the tokenizer (or state) to compare with, e.g. ``checkpoint["tokenizer"]``.
        """
        other_tok = tokenizer_from_state_dict(other) if isinstance(other, dict) else other
        if other_tok.fingerprint() == self.fingerprint():
            return
        raise ValueError(
            f"Tokenizer mismatch: this tokenizer is {self.describe()} but the other (e.g. the checkpoint's) is "
            f"{other_tok.describe()}; ids would mean different text. Use the checkpoint's tokenizer "
            "(TextDataModule(tokenizer='path/to/model.ckpt')) or train from scratch."
        )

    def describe(self) -> str:
        """A one-line human description (kind, vocab size, fingerprint)."""
        return f"{self.kind!r} (vocab_size={self.vocab_size}, fingerprint={self.fingerprint()})"

    def _wrap(self, ids: list[int], bos: bool, eos: bool) -> list[int]:
        if bos:
            if self.bos_id is None:
                raise ValueError(f"{self.describe()} has no BOS token; call encode(..., bos=False).")
            ids = [self.bos_id, *ids]
        if eos:
            if self.eos_id is None:
                raise ValueError(f"{self.describe()} has no EOS token; call encode(..., eos=False).")
            ids = [*ids, self.eos_id]
        return ids

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(vocab_size={self.vocab_size}, bos_id={self.bos_id}, eos_id={self.eos_id}, "
            f"pad_id={self.pad_id})"
        )


def _ids_list(ids: Iterable[int]) -> list[int]:
    if hasattr(ids, "tolist"):
        ids = ids.tolist()  # numpy array or tensor
    return [int(i) for i in ids]


def tokenizer_from_state_dict(state: dict[str, Any]) -> Tokenizer:
    """Rebuild a tokenizer from its ``state_dict()`` (e.g. ``checkpoint["tokenizer"]``).

    Every built-in kind is available once ``lightning_gpt.data`` (or ``lightning_gpt.data.tokenizers``) is imported;
    a ``Tokenizer`` subclass adds its own kinds with ``state_kinds`` and a ``from_state_dict`` class method.

    Args:
        state: the dict a ``Tokenizer.state_dict()`` returned (possibly after a JSON round trip).

    Returns:
        The tokenizer.

    Raises:
        ValueError: ``state`` is not a tokenizer state, or of an unknown kind.
    """
    if not isinstance(state, dict) or "kind" not in state:
        raise ValueError(
            "tokenizer_from_state_dict: expected a dict with a 'kind' key, as Tokenizer.state_dict() gives."
        )
    kind = state["kind"]
    if kind not in _STATE_KINDS:
        raise ValueError(f"tokenizer_from_state_dict: unknown tokenizer kind {kind!r}.")
    return _STATE_KINDS[kind](state)
