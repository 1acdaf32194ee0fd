"""The plain half of ``TextDataModule``: settings -> sources, seeds, tokenizer, token caches (no Lightning).

``TextPipeline`` holds what does not depend on a Trainer, so the Lightning class keeps only its hooks, loaders and
checkpoint state (the layering of ``lightning_gpt.training``: policy in plain modules, hooks in the class).
"""

from __future__ import annotations

import zlib
from typing import Any, Optional

from lightning_gpt.data.cache import TokenArray
from lightning_gpt.data.local import local_caches, source_options, trained_tokenizer
from lightning_gpt.data.settings import DataSettings
from lightning_gpt.data.sources import TextSource, resolve_source
from lightning_gpt.data.streaming import (
    check_prepared_tokenizer,
    is_streaming_source,
    prepared_tokenizer,
    read_any_manifest,
)
from lightning_gpt.data.tokenizers import TRAINABLE, Tokenizer, build_tokenizer
from lightning_gpt.seeding import derive_seed, mix_seed

__all__ = ["TextPipeline"]


class TextPipeline:
    """Sources, seeds, tokenizer and token caches of one ``DataSettings`` (mixed into ``TextDataModule``).

    Attributes:
        settings: the grouped settings.
        source: the training source string.
        cache_dir: the token and tokenizer cache root.
    """

    settings: DataSettings
    source: str
    cache_dir: str
    _tokenizer: Optional[Tokenizer] = None
    _seed: Optional[int] = None
    _manifest: Optional[dict[str, Any]] = None
    _sources: dict[str, TextSource]

    def _named_tokenizer(self, name: str) -> Tokenizer:
        """A tokenizer named by a plain spec (``tiktoken:...``, a ``tokenizer.json``, a Hugging Face id)."""
        return build_tokenizer(name)

    @property
    def seed(self) -> int:
        """The seed of the data order: ``seed`` when given, else derived from the run seed (resolved once)."""
        if self._seed is None:
            self._seed = derive_seed("data", self.settings.seed)
        return self._seed

    @property
    def split_seed(self) -> int:
        """The seed of the random validation sample (derived from ``seed``)."""
        return mix_seed(self.seed, zlib.crc32(b"val_holdout")) & 0x7FFFFFFF

    @property
    def streaming(self) -> bool:
        """Whether the source is a prepared dataset (streamed with litdata) rather than text to tokenize here."""
        return is_streaming_source(self.source)

    @property
    def manifest(self) -> dict[str, Any]:
        """The prepared dataset's manifest (tokenizer, token counts, settings); prepared sources only."""
        if self._manifest is None:
            self._manifest = read_any_manifest(self.source)
        return self._manifest

    # ----------------------------------------------------------------------------------------------- sources, tokens
    def train_source(self) -> TextSource:
        """The training ``TextSource`` (an unprepared source)."""
        return self._resolve("train", self.source, self.settings.source.split)

    def val_source(self) -> Optional[TextSource]:
        """The explicit validation source (``val_source`` / ``val_split``), or ``None`` (held out of the source)."""
        v = self.settings.validation
        if v.split is not None:
            return self._resolve("val", self.source, v.split)
        if v.source is not None:
            return self._resolve("val", v.source, self.settings.source.split)
        return None

    def _resolve(self, role: str, source: str, split: str) -> TextSource:
        if role not in self._sources:
            options = source_options(self.settings.source, split, own_source=source == self.source)
            self._sources[role] = resolve_source(source, **options)
        return self._sources[role]

    @property
    def tokenizer(self) -> Tokenizer:
        """The tokenizer: a prepared dataset's own, trained on a seeded sample (cached on disk), or loaded."""
        if self._tokenizer is None:
            t = self.settings.tokenizer
            if self.streaming:
                named = None if t.name in TRAINABLE else self._named_tokenizer(t.name)
                self._tokenizer = prepared_tokenizer(self.manifest, named, self.source)
            elif t.name in TRAINABLE:
                self._tokenizer = trained_tokenizer(self.train_source(), t, self.cache_dir, self.seed)
            else:
                self._tokenizer = self._named_tokenizer(t.name)
        return self._tokenizer

    @tokenizer.setter
    def tokenizer(self, tokenizer: Tokenizer) -> None:
        """Use ``tokenizer`` (e.g. one restored from a checkpoint) instead of building one."""
        if self.streaming:
            check_prepared_tokenizer(self.manifest, tokenizer, "the given tokenizer", self.source)
        self._tokenizer = tokenizer

    @property
    def vocab_size(self) -> int:
        """The tokenizer's vocabulary size (what the model's ``config.vocab_size`` must cover)."""
        return self.tokenizer.vocab_size

    def _local_caches(self) -> tuple[TokenArray, Optional[TokenArray], bool]:
        said = self.__dict__.setdefault("_said", set())  # warnings already given (prepare_data, then setup)
        return local_caches(
            self.train_source(), self.val_source(), self.tokenizer, self.settings, self.cache_dir, self.split_seed, said
        )
