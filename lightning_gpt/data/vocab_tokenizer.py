"""``VocabTokenizer``: a fixed character vocabulary without special tokens, as nanoGPT's ``meta.pkl`` describes one.

nanoGPT's character datasets (``data/shakespeare_char/prepare.py``) save ``{"vocab_size", "stoi", "itos"}`` with
``stoi = {ch: i for i, ch in enumerate(sorted(set(text)))}`` and train a model with exactly ``vocab_size`` rows: there
is no BOS, EOS, PAD or UNK id. ``CharTokenizer`` adds four specials after the characters, which such a model has no
rows for, so a nanoGPT vocabulary gets this class: the same ids as nanoGPT's ``encode``/``decode``, no specials, and
a ``ValueError`` (instead of an out-of-range id) for a character outside the vocabulary.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

from lightning_gpt.data.tokenizer_base import Tokenizer, _ids_list

__all__ = ["VocabTokenizer"]


class VocabTokenizer(Tokenizer):
    """One id per character of a given vocabulary (``itos[i]`` is the character of id ``i``); no special tokens.

    Args:
        itos: the characters in id order (id ``i`` decodes to ``itos[i]``); each a single character, no repeats.

    Raises:
        ValueError: an empty vocabulary, a multi-character entry or a repeated character.
    """

    kind = "vocab"
    state_kinds = ("vocab",)

    def __init__(self, itos: Iterable[str]) -> None:
        self.itos: list[str] = list(itos)
        if not self.itos:
            raise ValueError("VocabTokenizer: the vocabulary is empty.")
        bad = [c for c in self.itos if not isinstance(c, str) or len(c) != 1]
        if bad:
            raise ValueError(f"VocabTokenizer: every entry must be one character, got {bad[0]!r}.")
        self.stoi: dict[str, int] = {c: i for i, c in enumerate(self.itos)}
        if len(self.stoi) != len(self.itos):
            raise ValueError("VocabTokenizer: the vocabulary repeats a character.")
        self.vocab_size = len(self.itos)
        self.bos_id = self.eos_id = self.pad_id = None

    @classmethod
    def from_mappings(cls, stoi: Mapping[str, int], itos: Mapping[int, str]) -> "VocabTokenizer":
        """Build from nanoGPT's ``stoi`` / ``itos`` dicts, checking that they are each other's inverse over
        ``0 .. len - 1``.

        Args:
            stoi: character -> id.
            itos: id -> character.

        Raises:
            ValueError: the two mappings disagree or leave gaps in the ids.
        """
        n = len(itos)
        if sorted(itos) != list(range(n)) or len(stoi) != n or any(stoi.get(itos[i]) != i for i in range(n)):
            raise ValueError(
                "The vocabulary's stoi and itos are not inverse mappings over the ids 0..vocab_size-1, so it is not "
                "a nanoGPT character vocabulary."
            )
        return cls(itos[i] for i in range(n))

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> "VocabTokenizer":
        """Rebuild from ``state_dict()``.

        Args:
            state: what ``state_dict()`` returned.
        """
        return cls(state["itos"])

    def _encode(self, text: str) -> list[int]:
        try:
            return [self.stoi[c] for c in text]
        except KeyError as err:
            raise ValueError(
                f"The character {err.args[0]!r} is not in this model's vocabulary of {self.vocab_size} characters "
                "(a nanoGPT character vocabulary has no unknown-token id). Remove it from the text, or use a model "
                "trained on text that contains it."
            ) from None

    def decode(self, ids: Iterable[int], *, skip_special: bool = True) -> str:
        out = []
        for i in _ids_list(ids):
            if not 0 <= i < self.vocab_size:
                raise ValueError(f"VocabTokenizer.decode: id {i} is outside the vocabulary [0, {self.vocab_size}).")
            out.append(self.itos[i])
        return "".join(out)

    def state_dict(self) -> dict[str, Any]:
        return {"kind": "vocab", "itos": "".join(self.itos)}
