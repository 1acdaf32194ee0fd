"""``tiktoken`` encodings as ``Tokenizer``s (optional dependency: ``pip install 'lightning-gpt[tiktoken]'``)."""

from __future__ import annotations

import base64
from typing import Any, Iterable, Optional, Sequence

from lightning_gpt.data.tokenizer_base import BOS, EOS, PAD, Tokenizer, _ids_list, encode_threads

__all__ = ["TiktokenTokenizer"]


class TiktokenTokenizer(Tokenizer):
    """A ``tiktoken`` encoding; its ranks are embedded in the state so a checkpoint decodes without the file.

    Args:
        name: encoding name (``gpt2``, ``r50k_base``, ``cl100k_base``, ...).
        pat_str: the pre-tokenization regex; ``None`` loads the named encoding through ``tiktoken.get_encoding``.
        mergeable_ranks: bytes -> rank; required with ``pat_str``.
        special_tokens: special token -> id; the EOS/BOS is ``<|endoftext|>`` when present.
    """

    kind = "tiktoken"
    state_kinds = ("tiktoken",)

    def __init__(
        self,
        name: str,
        pat_str: Optional[str] = None,
        mergeable_ranks: Optional[dict[bytes, int]] = None,
        special_tokens: Optional[dict[str, int]] = None,
    ) -> None:
        try:
            import tiktoken
        except ImportError as err:  # pragma: no cover - tiktoken is an optional extra
            raise ImportError(
                "tokenizer='tiktoken:...' needs tiktoken: pip install 'lightning-gpt[tiktoken]'."
            ) from err
        if pat_str is None:
            try:
                enc = tiktoken.get_encoding(name)
            except Exception as err:
                raise ValueError(
                    f"tiktoken encoding {name!r} could not be loaded ({type(err).__name__}: {err}). tiktoken downloads "
                    "encoding files on first use: run once with network access, or point TIKTOKEN_CACHE_DIR at a "
                    "directory that holds the cached file, or use tokenizer='bpe'."
                ) from err
            pat_str, mergeable_ranks, special_tokens = enc._pat_str, enc._mergeable_ranks, enc._special_tokens
        if mergeable_ranks is None:
            raise ValueError("TiktokenTokenizer: mergeable_ranks is required when pat_str is given.")
        self.name = name
        self._pat_str = pat_str
        self._ranks = dict(mergeable_ranks)
        self._specials = dict(special_tokens or {})
        self._enc = tiktoken.Encoding(
            name=f"lightning_gpt_{name}", pat_str=pat_str, mergeable_ranks=self._ranks, special_tokens=self._specials
        )
        self.vocab_size = self._enc.n_vocab
        eot = self._specials.get("<|endoftext|>")
        self.bos_id = self._specials.get(BOS, eot)
        self.eos_id = self._specials.get(EOS, eot)
        self.pad_id = self._specials.get(PAD)

    def _encode(self, text: str) -> list[int]:
        return self._enc.encode_ordinary(text)

    def encode_batch(self, texts: Sequence[str], *, bos: bool = False, eos: bool = False) -> list[list[int]]:
        return [
            self._wrap(ids, bos, eos)
            for ids in self._enc.encode_ordinary_batch(list(texts), num_threads=encode_threads())
        ]

    def decode(self, ids: Iterable[int], *, skip_special: bool = True) -> str:
        ids = _ids_list(ids)
        if skip_special:
            special = set(self._specials.values())
            ids = [i for i in ids if i not in special]
        return self._enc.decode(ids)

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> "TiktokenTokenizer":
        """Rebuild from ``state_dict()`` without the encoding file (the ranks are in the state).

        Args:
            state: what ``state_dict()`` returned.
        """
        ranks = {base64.b64decode(b): int(r) for b, r in state["mergeable_ranks"]}
        return cls(state["name"], state["pat_str"], ranks, state.get("special_tokens"))

    def state_dict(self) -> dict[str, Any]:
        ranks = sorted(self._ranks.items(), key=lambda kv: kv[1])
        return {
            "kind": "tiktoken",
            "name": self.name,
            "pat_str": self._pat_str,
            "mergeable_ranks": [[base64.b64encode(b).decode("ascii"), r] for b, r in ranks],
            "special_tokens": dict(sorted(self._specials.items())),
        }
