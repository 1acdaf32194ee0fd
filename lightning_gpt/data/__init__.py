"""Data: text sources, tokenizers, the on-disk token cache, packed/padded datasets, and ``TextDataModule``.

``TextDataModule`` is imported lazily, so ``from lightning_gpt.data import Tokenizer`` (e.g. for decoding) does not
import Lightning.
"""

from typing import Any

from lightning_gpt.data.sources import HFSource, LocalSource, StdlibSource, TextSource, resolve_source
from lightning_gpt.data.tiktoken_tokenizer import TiktokenTokenizer
from lightning_gpt.data.tokenizers import (
    CharTokenizer,
    HFTokenizer,
    Tokenizer,
    build_tokenizer,
    tokenizer_from_state_dict,
)

__all__ = [
    "CharTokenizer",
    "HFSource",
    "HFTokenizer",
    "LocalSource",
    "StdlibSource",
    "TextDataModule",
    "TextSource",
    "TiktokenTokenizer",
    "Tokenizer",
    "build_tokenizer",
    "resolve_source",
    "tokenizer_from_state_dict",
]


def __getattr__(name: str) -> Any:
    if name == "TextDataModule":
        from lightning_gpt.training.datamodule import TextDataModule

        return TextDataModule
    raise AttributeError(f"module 'lightning_gpt.data' has no attribute {name!r}")
