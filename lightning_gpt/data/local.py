"""The token-cache path's pieces (plain PyTorch): dataset construction, the size limit of unprepared sources, the
context length, and a loader that leaves its position to the data module."""

from __future__ import annotations

import logging
import os
from typing import Any, Iterator, Optional

import numpy as np
from torch.utils.data import DataLoader, Dataset

from lightning_gpt.data.cache import TokenArray, build_token_cache, cached_tokenizer, load_token_cache
from lightning_gpt.data.datasets import PackedDataset, PaddedDataset
from lightning_gpt.data.encoding import is_held_out
from lightning_gpt.data.settings import DataSettings, SourceSettings, TokenizerSettings
from lightning_gpt.data.shards import sample_documents
from lightning_gpt.data.sources import HFSource, LocalSource, StdlibSource, TextSource
from lightning_gpt.data.tokenizers import Tokenizer, build_tokenizer

__all__ = [
    "PositionedLoader",
    "source_options",
    "check_unprepared_size",
    "local_caches",
    "make_local_datasets",
    "resolve_block_size",
    "token_cache",
    "trained_tokenizer",
]

log = logging.getLogger(__name__)


def source_options(settings: SourceSettings, split: str, own_source: bool = True) -> dict[str, Any]:
    """The ``resolve_source`` keyword arguments of ``settings`` for one Hugging Face ``split``.

    Args:
        settings: the source settings.
        split: the split (the training one, or ``val_split``).
        own_source: whether the source resolved is ``settings.source`` (``data_files`` belong to it, not to a
            separate ``val_source``).
    """
    return {
        "data_files": settings.data_files if own_source else None,
        "text_column": settings.text_column,
        "max_chars": settings.max_chars,
        "dataset_config": settings.dataset_config,
        "split": split,
        "streaming": settings.streaming,
    }


def _nonempty(docs: Iterator[str], name: str) -> Iterator[str]:
    n = 0
    for doc in docs:
        n += 1
        yield doc
    if n == 0:
        raise ValueError(
            f"source {name!r} has no text (it is empty or only whitespace); point source at a corpus with some text."
        )


def trained_tokenizer(src: TextSource, settings: TokenizerSettings, cache_dir: str, seed: int) -> Tokenizer:
    """A ``char`` / ``bpe`` / ``unigram`` tokenizer trained on a seeded sample of ``settings.sample_chars``
    characters of ``src`` (``shards.sample_documents``), cached on disk under everything it depends on.

    Args:
        src: the training source.
        settings: the tokenizer settings.
        cache_dir: the cache root.
        seed: the data seed (picks the sample).
    """
    import tokenizers

    key = {
        "source": src.identity(),
        "kind": settings.name,
        "vocab_size": None if settings.name == "char" else settings.vocab_size,
        "tokenizers": None if settings.name == "char" else tokenizers.__version__,
        "sample": [settings.sample_chars, seed],
    }
    docs = _nonempty(sample_documents(src, settings.sample_chars, seed), src.name)
    tok = cached_tokenizer(cache_dir, key, lambda: build_tokenizer(settings.name, docs, vocab_size=settings.vocab_size))
    log.info("tokenizer %s for %s", tok.describe(), src.name)
    return tok


def token_cache(
    src: TextSource,
    tokenizer: Tokenizer,
    settings: DataSettings,
    cache_dir: str,
    part: str = "all",
    split_seed: int = 0,
) -> TokenArray:
    """The cached ids of ``src`` (built once); ``part`` ``train`` / ``val`` keeps only the documents on that side of
    the random validation sample (``encoding.is_held_out`` of the document's index).

    Args:
        src: the source.
        tokenizer: the tokenizer.
        settings: the data settings (``add_bos``, the validation fraction).
        cache_dir: the cache root.
        part: ``all``, ``train`` or ``val``.
        split_seed: the seed of the validation sample.
    """
    add_bos, fraction = settings.tokenizer.add_bos, settings.validation.fraction
    key: dict[str, Any] = {"source": src.identity(), "tokenizer": tokenizer.fingerprint(), "add_bos": add_bos}
    docs: Iterator[str] = src.documents()
    if part != "all":
        key["holdout"] = {"part": part, "seed": split_seed, "fraction": fraction}
        held = part == "val"
        docs = (d for i, d in enumerate(docs) if is_held_out(split_seed, str(i), fraction) == held)
    path = build_token_cache(
        cache_dir, key, docs, tokenizer, add_bos=add_bos, description=src.name, allow_empty=part != "all"
    )
    return load_token_cache(path)


def local_caches(
    train_src: TextSource,
    val_src: Optional[TextSource],
    tokenizer: Tokenizer,
    settings: DataSettings,
    cache_dir: str,
    split_seed: int,
    said: Optional[set[str]] = None,
) -> tuple[TokenArray, Optional[TokenArray], bool]:
    """(train ids, explicit or held-out validation ids, whether the tail split applies) of the token-cache path.

    ``val_holdout='random'`` falls back to the tail split, with a warning, when the documents cannot be split into
    non-empty sides (e.g. a single ``.txt`` file is one document). ``said``: the warnings given already by earlier
    calls of the same data module (its ``prepare_data``, then ``setup``); each is given once.
    """
    if val_src is not None:
        return (
            token_cache(train_src, tokenizer, settings, cache_dir),
            token_cache(val_src, tokenizer, settings, cache_dir),
            False,
        )
    v = settings.validation
    if v.holdout == "random" and v.fraction > 0:
        train = token_cache(train_src, tokenizer, settings, cache_dir, "train", split_seed)
        val = token_cache(train_src, tokenizer, settings, cache_dir, "val", split_seed)
        if train.n_docs > 0 and val.n_docs > 0:
            return train, val, False
        if said is None or "tail fallback" not in said:
            if said is not None:
                said.add("tail fallback")
            log.warning(
                "val_holdout='random': the %d documents of %s cannot be split into non-empty training and validation "
                "samples; holding out the tail (val_holdout='tail') instead.",
                train.n_docs + val.n_docs,
                train_src.name,
            )
    return token_cache(train_src, tokenizer, settings, cache_dir), None, v.fraction > 0


class PositionedLoader(DataLoader):
    """A DataLoader that tells Lightning it is resumable: its position is saved and restored by the data module
    (``TextDataModule.state_dict``), so Lightning has nothing to store here."""

    def state_dict(self) -> dict[str, Any]:
        """Nothing: the data module holds the position."""
        return {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Nothing to restore (see ``state_dict``)."""


def _source_chars(src: TextSource) -> Optional[int]:
    """An upper bound on the characters of ``src`` from metadata (file sizes), or ``None`` when unknown."""
    cap = getattr(src, "max_chars", None)
    if isinstance(src, StdlibSource):
        return cap
    if isinstance(src, LocalSource):
        size = sum(os.path.getsize(f) for f in src.files())
        return size if cap is None else min(cap, size)
    if isinstance(src, HFSource) and not src.streaming:
        nbytes = getattr(getattr(src.dataset(), "data", None), "nbytes", None)
        if nbytes is None:
            return cap
        return int(nbytes) if cap is None else min(int(cap), int(nbytes))
    return cap  # a stream: only its cap bounds it


def check_unprepared_size(src: TextSource, settings: SourceSettings, source: str) -> None:
    """Refuse, at once, to tokenize inside ``fit`` a source past ``settings.max_unprepared_chars`` characters.

    Tokenizing runs on one process per node before step 0 (~2M tokens per CPU-second): past ~2 GB that is tens of
    minutes while every GPU idles. ``lightning-gpt prepare`` does it in parallel, once, for every later run.

    Args:
        src: the resolved source.
        settings: the source settings (the limit).
        source: the ``source`` string, for the message.

    Raises:
        ValueError: the source is larger than the limit (or a stream without ``max_chars``), with the command to run.
    """
    size = _source_chars(src)
    limit = settings.max_unprepared_chars
    if size is not None and size <= limit:
        return
    what = "an unbounded stream (no max_chars)" if size is None else f"about {size / 1e9:.1f} GB of text"
    raise ValueError(
        f"source {source!r} is {what}, more than max_unprepared_chars={limit:,} characters: tokenizing it inside fit "
        "would keep every device waiting before step 0. Prepare it once, in parallel: lightning-gpt prepare "
        "--config <your fit config> --output_dir data/prepared (same --data.* options as fit), then fit with "
        "--data.source data/prepared. Or raise --data.max_unprepared_chars to tokenize it here anyway."
    )


def resolve_block_size(explicit: Optional[int], trainer: Any) -> int:
    """The context length: the attached model's ``config.block_size``, else ``explicit``.

    Args:
        explicit: the data module's ``block_size`` (``None``: follow the model).
        trainer: the attached Trainer, or ``None``.

    Raises:
        ValueError: both are set and disagree, or neither is known.
    """
    model_bs = None
    if trainer is not None:
        config = getattr(trainer.lightning_module, "config", None)
        model_bs = getattr(config, "block_size", None)
    if model_bs is not None:
        if explicit is not None and explicit != model_bs:
            raise ValueError(
                f"TextDataModule(block_size={explicit}) disagrees with the model's config.block_size={model_bs}; "
                "leave the data module's block_size unset (None) so it follows the model."
            )
        return int(model_bs)
    if explicit is None:
        raise ValueError(
            "TextDataModule.block_size is unknown: attach the data module to a Trainer whose LightningModule has "
            "config.block_size (e.g. GPTModule), or pass TextDataModule(block_size=...) for standalone use."
        )
    return explicit


def _too_short(cache: TokenArray, name: str, block_size: int) -> ValueError:
    return ValueError(
        f"source {name!r} has {cache.n_tokens} tokens, shorter than one block of block_size + 1 = "
        f"{block_size + 1} tokens; use a smaller block_size or a larger corpus."
    )


def _n_tail(n: int, fraction: float, what: str) -> int:
    if fraction == 0:
        return 0
    n_val = max(1, int(round(n * fraction)))
    if n - n_val < 1:
        raise ValueError(
            f"the corpus yields only {n} {what}; val_fraction={fraction} leaves none for training. Use a larger "
            "corpus, a smaller block_size, val_fraction=0, or an explicit val_source."
        )
    return n_val


def make_local_datasets(
    train: TokenArray,
    val: Optional[TokenArray],
    tail: bool,
    settings: DataSettings,
    block_size: int,
    seed: int,
    pad_id: Optional[int],
    name: str,
) -> tuple[Dataset, Optional[Dataset]]:
    """The train and validation datasets of the token-cache path.

    Args:
        train: the training ids (all of the source when ``tail``).
        val: separate validation ids (an explicit source or the random held-out documents), or ``None``.
        tail: hold out the last ``val_fraction`` of ``train`` (windows in ``pack`` mode, documents in ``pad`` mode).
        settings: the data settings.
        block_size: the context length.
        seed: the data seed (window shifts).
        pad_id: the padding id (``pad`` mode).
        name: the source's name, for messages.

    Raises:
        ValueError: a corpus shorter than one window, or a split that leaves no training data.
    """
    bs, fraction = block_size, settings.validation.fraction
    shift = seed if settings.batch.shift_windows else None
    if settings.batch.mode == "pack":
        total = PackedDataset.total_windows(train.n_tokens, bs)
        if total == 0:
            raise _too_short(train, name, bs)
        if val is not None:
            if PackedDataset.total_windows(val.n_tokens, bs) == 0:
                raise _too_short(val, f"{name} (validation)", bs)
            return PackedDataset(train, bs, shift_seed=shift), PackedDataset(val, bs)
        n_val = _n_tail(total, fraction, f"windows of block_size + 1 = {bs + 1} tokens") if tail else 0
        train_ds = PackedDataset(train, bs, 0, total - n_val, shift_seed=shift)
        return train_ds, (PackedDataset(train, bs, total - n_val, n_val) if n_val else None)
    assert pad_id is not None
    if val is not None:
        return PaddedDataset(train, bs, pad_id), PaddedDataset(val, bs, pad_id)
    n_val = _n_tail(train.n_docs, fraction, "documents") if tail else 0
    docs = np.arange(train.n_docs)
    val_ds = PaddedDataset(train, bs, pad_id, docs[train.n_docs - n_val :]) if n_val else None
    return PaddedDataset(train, bs, pad_id, docs[: train.n_docs - n_val]), val_ds
