"""Data (plain, no Lightning): text sources, tokenizers, the on-disk token cache, packed/padded datasets, samplers.

The Lightning data modules that use them live in ``lightning_gpt.training`` (``TextDataModule``, ``PromptDataModule``).
"""

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
    "TextSource",
    "TiktokenTokenizer",
    "Tokenizer",
    "build_tokenizer",
    "resolve_source",
    "tokenizer_from_state_dict",
]
