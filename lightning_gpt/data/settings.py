"""The data settings, grouped by idea into typed, frozen objects (as ``GenerationConfig`` groups the decoding ones).

``TextDataModule`` keeps its flat keyword arguments (they are what users type: ``--data.source``,
``--data.tokenizer``, ``--data.batch_size``, ...) and builds one ``DataSettings`` from them, once, validated here;
everything else reads the typed groups.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional, Union

__all__ = [
    "DEFAULT_MAX_UNPREPARED_CHARS",
    "DEFAULT_TOKENIZER_SAMPLE_CHARS",
    "BatchSettings",
    "DataSettings",
    "SourceSettings",
    "TokenizerSettings",
    "ValidationSettings",
]

DEFAULT_TOKENIZER_SAMPLE_CHARS = 100_000_000  # 100M characters: ~1-2 min of BPE training, ~1 GB of RAM
DEFAULT_MAX_UNPREPARED_CHARS = 2_000_000_000  # past ~2 GB of text, fit asks for lightning-gpt prepare first


@dataclass(frozen=True)
class SourceSettings:
    """Where the text comes from.

    Attributes:
        source: ``python-stdlib``, a local file / folder / glob, ``hf://<id>``, a prepared folder or ``s3://...``.
        text_column: the text field of ``.jsonl`` / ``.parquet`` / Hugging Face rows.
        max_chars: cap on the characters read (``None``: the source's default).
        dataset_config: the Hugging Face configuration name.
        split: the Hugging Face split to train on.
        streaming: stream the Hugging Face dataset instead of downloading it.
        data_files: for an ``hf://`` source, the files to load as ``datasets.load_dataset`` takes them (a path or
            glob, a list, or a mapping from split to them).
        max_unprepared_chars: an unprepared source larger than this is refused by ``fit`` with the ``prepare`` command.
    """

    source: str = "python-stdlib"
    text_column: str = "text"
    max_chars: Optional[int] = None
    dataset_config: Optional[str] = None
    split: str = "train"
    streaming: bool = False
    max_unprepared_chars: int = DEFAULT_MAX_UNPREPARED_CHARS
    data_files: Optional[Union[str, list[str], dict[str, Union[str, list[str]]]]] = None


@dataclass(frozen=True)
class TokenizerSettings:
    """Which tokenizer, and how a trainable one is trained.

    Attributes:
        name: ``char``, ``bpe``, ``unigram``, ``tiktoken:<encoding>``, a ``tokenizer.json`` / ``.ckpt`` path or a
            Hugging Face tokenizer id.
        vocab_size: vocabulary of a trained ``bpe`` / ``unigram`` (special tokens included).
        sample_chars: a trainable tokenizer reads at most this many characters: a seeded sample of the source's shards.
        add_bos: start every document with BOS (documents always end with EOS).
        trust_checkpoint: allow a ``.ckpt`` tokenizer that needs a full unpickle.
    """

    name: str = "char"
    vocab_size: int = 4096
    sample_chars: int = DEFAULT_TOKENIZER_SAMPLE_CHARS
    add_bos: bool = False
    trust_checkpoint: bool = False


@dataclass(frozen=True)
class ValidationSettings:
    """What is held out for validation.

    Attributes:
        fraction: share of the documents (``random``) or of the packed stream (``tail``) held out; ``0``: none.
        holdout: ``random``: a seeded random sample of documents; ``tail``: the end of the corpus (nanoGPT's split).
        source: an explicit validation source (then nothing is held out of ``source``).
        split: an explicit Hugging Face validation split (likewise).
    """

    fraction: float = 0.05
    holdout: Literal["random", "tail"] = "random"
    source: Optional[str] = None
    split: Optional[str] = None


@dataclass(frozen=True)
class BatchSettings:
    """How token ids become batches.

    Attributes:
        block_size: the context length (``None``: the model's).
        batch_size: sequences per batch per device.
        mode: ``pack`` (windows of ``block_size + 1`` over the document stream) or ``pad`` (one document per row).
        shift_windows: move the packed window grid by a seeded offset each epoch.
        num_workers: DataLoader worker processes.
        pin_memory: page-locked batches (GPU training).
    """

    block_size: Optional[int] = None
    batch_size: int = 8
    mode: Literal["pack", "pad"] = "pack"
    shift_windows: bool = True
    num_workers: int = 0
    pin_memory: bool = False


@dataclass(frozen=True)
class DataSettings:
    """Every data setting, in groups; ``seed`` (``None``: derived from the run seed) and ``cache_dir`` stand alone.

    Raises:
        ValueError: a value out of range (named, with the fix).
    """

    source: SourceSettings
    tokenizer: TokenizerSettings
    validation: ValidationSettings
    batch: BatchSettings
    seed: Optional[int] = None
    cache_dir: Optional[str] = None

    def __post_init__(self) -> None:
        b, v, s, t = self.batch, self.validation, self.source, self.tokenizer
        if b.mode not in ("pack", "pad"):
            raise ValueError(f"mode must be 'pack' or 'pad', got {b.mode!r}.")
        if b.block_size is not None and (isinstance(b.block_size, bool) or b.block_size < 1):
            raise ValueError(
                f"block_size must be a positive integer or None (take it from the model), got {b.block_size!r}."
            )
        if b.batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {b.batch_size!r}.")
        if not 0.0 <= v.fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {v.fraction!r}.")
        if v.holdout not in ("random", "tail"):
            raise ValueError(f"val_holdout must be 'random' or 'tail', got {v.holdout!r}.")
        if b.num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {b.num_workers!r}.")
        if t.sample_chars < 1:
            raise ValueError(f"tokenizer_sample_chars must be a positive number of characters, got {t.sample_chars!r}.")
        if v.split is not None and not s.source.startswith("hf://"):
            raise ValueError(
                "val_split selects a Hugging Face split; for other sources use val_source or val_fraction."
            )
