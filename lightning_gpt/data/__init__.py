"""Data: text sources, tokenizers, the on-disk token cache, packed/padded datasets, and ``TextDataModule``."""

from lightning_gpt.data.datamodule import TextDataModule
from lightning_gpt.data.sources import HFSource, LocalSource, StdlibSource, TextSource, resolve_source
from lightning_gpt.data.tokenizers import (
    CharTokenizer,
    HFTokenizer,
    TiktokenTokenizer,
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
