"""``TextDataModule``: text source -> tokenizer -> token ids -> packed or padded windows -> batches.

Two paths, chosen by the source (README "Training at scale" says when each is used):

- a prepared dataset (a folder written by ``lightning-gpt prepare``, or ``s3://...``): streamed with litdata
  (``lightning_gpt.data.streaming``); nothing is tokenized at start-up and no corpus byte is read before the first
  batch; the loader's position travels in the checkpoint (Lightning saves ``StreamingDataLoader.state_dict()``);
- any other source (the embedded default, local files, a Hugging Face dataset): tokenized once into the on-disk token
  cache (``lightning_gpt.data.cache``) by ``prepare_data`` on one process per node, while the other ranks wait in
  Lightning's barrier without a timeout (``_InfiniteBarrier``); a source past ``max_unprepared_chars`` is refused at
  once with the ``prepare`` command to run instead.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Literal, Optional, Union

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader

from lightning_gpt.data.cache import default_cache_dir
from lightning_gpt.data.local import (
    PositionedLoader,
    check_unprepared_size,
    make_local_datasets,
    resolve_block_size,
)
from lightning_gpt.data.pipeline import TextPipeline
from lightning_gpt.data.sampler import ResumableSampler, restored_position, sampler_position, train_sampler
from lightning_gpt.data.settings import (
    DEFAULT_MAX_UNPREPARED_CHARS,
    DEFAULT_TOKENIZER_SAMPLE_CHARS,
    BatchSettings,
    DataSettings,
    SourceSettings,
    TokenizerSettings,
    ValidationSettings,
)
from lightning_gpt.data.sources import TextSource
from lightning_gpt.data.streaming import (
    check_streaming_resume,
    streaming_dataset,
    streaming_loader,
)
from lightning_gpt.data.tokenizers import Tokenizer
from lightning_gpt.io.tokenizer import load_tokenizer
from lightning_gpt.training._lightning_internals import batches_processed_this_epoch

__all__ = ["TextDataModule"]

log = logging.getLogger(__name__)


def rank_and_world(trainer: Any) -> tuple[int, int]:
    """``(global rank, world size)`` of the attached Trainer, else of an initialized process group, else ``(0, 1)``."""
    if trainer is not None:
        return trainer.global_rank, trainer.world_size
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


class TextDataModule(TextPipeline, pl.LightningDataModule):
    """Batches of fixed-length token windows for next-token training, configured by its typed arguments.

    The arguments are grouped into one frozen ``settings`` object (``lightning_gpt.data.settings``: source,
    tokenizer, validation, batch); the flat names stay what users type (``--data.source``, ``--data.batch_size``...).
    The context length is not configured twice: attached to a Trainer whose LightningModule has ``config.block_size``
    (``GPTModule`` does), ``setup()`` takes it from there. Standalone, pass ``block_size``.

    Token-cache path: the train sampler is a DDP-aware :class:`~lightning_gpt.data.sampler.ResumableSampler`; the
    data module's ``state_dict()`` holds the epoch and the global samples consumed, so a resumed run sees exactly the
    samples it would have seen, also on another number of devices. Prepared path: litdata's loader state does this.

    Args:
        source: ``python-stdlib`` (embedded default), ``hf://<dataset>``, a local ``.txt`` / ``.jsonl`` /
            ``.parquet`` file, directory or glob, a prepared folder (``lightning-gpt prepare``) or ``s3://...``.
        tokenizer: ``char``, ``bpe`` or ``unigram`` (trained on a seeded sample of ``tokenizer_sample_chars``
            characters of ``source``, cached), ``tiktoken:<encoding>``, a ``tokenizer.json`` path, a ``.ckpt`` path,
            or a Hugging Face tokenizer id. A prepared source brings its own (a named one must match it).
        block_size: context length; ``None`` takes it from the model's config (an explicit value must agree).
        batch_size: sequences per batch, per device.
        mode: ``pack`` (documents joined, cut into ``block_size + 1`` windows) or ``pad`` (one document per row).
        val_fraction: share held out for validation; ignored with ``val_source`` / ``val_split``; ``0``: none.
        val_source: an explicit validation source (same forms as ``source``).
        val_split: for a Hugging Face source, the split to validate on.
        text_column: the text field of ``.jsonl`` / ``.parquet`` / Hugging Face data.
        max_chars: cap on the characters read from a source; ``None``: 5,000,000 for ``python-stdlib``, all otherwise.
        dataset_name: a Hugging Face dataset id or path (same as ``source="hf://<dataset_name>"``).
        dataset_config: the Hugging Face dataset configuration name.
        split: the Hugging Face split to train on.
        data_files: for an ``hf://`` source, the files to load as ``datasets.load_dataset`` takes them: a path or
            glob, a list, or a mapping from split to them (e.g. ``{train: a.jsonl, validation: b.jsonl}`` with
            ``source: hf://json`` and ``val_split: validation``).
        streaming: stream the Hugging Face dataset instead of downloading it whole.
        tokenizer_vocab_size: vocabulary size of a trained ``bpe``/``unigram`` tokenizer (special tokens included).
        add_bos: start every document with BOS (documents always end with EOS).
        shift_windows: in ``pack`` mode, move the training window grid by a seeded offset each epoch.
        seed: seed of the shuffling, window shifts and validation sample; ``None``: derived from the run seed.
        num_workers: DataLoader worker processes.
        pin_memory: pin batches in page-locked memory (for GPU training).
        cache_dir: token and tokenizer cache; ``None``: ``$LIGHTNING_GPT_CACHE`` or ``~/.cache/lightning_gpt``.
        trust_checkpoint: let ``tokenizer=<file>.ckpt`` load a checkpoint that needs a full unpickle.
        val_holdout: ``random`` (a seeded random sample of documents, the default) or ``tail`` (the end of the
            corpus, nanoGPT's split). ``random`` falls back to ``tail``, with a warning, when the corpus has too few
            documents to leave both parts non-empty (e.g. one ``.txt`` file).
        tokenizer_sample_chars: characters a trainable tokenizer is trained on (a seeded sample of the source's
            shards); characters outside the sample map to ``<|unk|>`` (``char``) or to bytes (``bpe``, ``unigram``).
        max_unprepared_chars: an unprepared source larger than this is refused with the ``lightning-gpt prepare``
            command to run instead (tokenizing it before step 0 would take too long).
    """

    def __init__(
        self,
        source: str = "python-stdlib",
        tokenizer: str = "char",
        block_size: Optional[int] = None,
        batch_size: int = 8,
        mode: Literal["pack", "pad"] = "pack",
        val_fraction: float = 0.05,
        val_source: Optional[str] = None,
        val_split: Optional[str] = None,
        text_column: str = "text",
        max_chars: Optional[int] = None,
        dataset_name: Optional[str] = None,
        dataset_config: Optional[str] = None,
        split: str = "train",
        data_files: Optional[Union[str, list[str], dict[str, Union[str, list[str]]]]] = None,
        streaming: bool = False,
        tokenizer_vocab_size: int = 4096,
        add_bos: bool = False,
        shift_windows: bool = True,
        seed: Optional[int] = None,
        num_workers: int = 0,
        pin_memory: bool = False,
        cache_dir: Optional[str] = None,
        trust_checkpoint: bool = False,
        val_holdout: Literal["random", "tail"] = "random",
        tokenizer_sample_chars: int = DEFAULT_TOKENIZER_SAMPLE_CHARS,
        max_unprepared_chars: int = DEFAULT_MAX_UNPREPARED_CHARS,
    ) -> None:
        super().__init__()
        if dataset_name is not None:
            if source not in ("python-stdlib", f"hf://{dataset_name}"):
                raise ValueError(f"Give either source={source!r} or dataset_name={dataset_name!r}, not both.")
            source = f"hf://{dataset_name}"
        self.settings = DataSettings(
            source=SourceSettings(
                source, text_column, max_chars, dataset_config, split, streaming, max_unprepared_chars, data_files
            ),
            tokenizer=TokenizerSettings(
                tokenizer, tokenizer_vocab_size, tokenizer_sample_chars, add_bos, trust_checkpoint
            ),
            validation=ValidationSettings(val_fraction, val_holdout, val_source, val_split),
            batch=BatchSettings(block_size, batch_size, mode, shift_windows, num_workers, pin_memory),
            seed=seed,
            cache_dir=cache_dir,
        )
        self.save_hyperparameters()
        self.source = source
        self.block_size: Optional[int] = block_size
        self.cache_dir = cache_dir or default_cache_dir()
        self._tokenizer: Optional[Tokenizer] = None
        self._sources: dict[str, TextSource] = {}
        self.train_dataset: Any = None  # a map-style Dataset (token cache) or a litdata StreamingDataset
        self.val_dataset: Any = None
        self._sampler: Optional[ResumableSampler] = None
        self._resume: Optional[dict[str, Any]] = None
        self._seed: Optional[int] = None
        self._manifest: Optional[dict[str, Any]] = None

    def _named_tokenizer(self, name: str) -> Tokenizer:
        # Also a checkpoint's or a weights folder's tokenizer (lightning_gpt.io reads those).
        return load_tokenizer(name, trust_checkpoint=self.settings.tokenizer.trust_checkpoint)

    # ------------------------------------------------------------------------------------------------ Lightning hooks
    def prepare_data(self) -> None:
        """Tokenize the source into the on-disk cache (once per node); a prepared source needs nothing."""
        if self.streaming:
            self.manifest  # noqa: B018 - fails here, in one paragraph, when the folder is incomplete
            return
        check_unprepared_size(self.train_source(), self.settings.source, self.source)
        self._local_caches()

    def setup(self, stage: Optional[str] = None) -> None:
        """Fix ``block_size`` (from the model's config when attached to a Trainer) and build the datasets."""
        self.block_size = resolve_block_size(self.settings.batch.block_size, self.trainer)
        if self.streaming:
            if self.settings.batch.mode != "pack":
                raise ValueError(f"mode='pad' needs the token cache; a prepared dataset ({self.source!r}) is packed.")
            val = self.manifest["splits"].get("val") and self.settings.validation.fraction > 0
            cache = os.path.join(self.cache_dir, "streamed")  # an object store's chunks, downloaded as needed
            kw: dict[str, Any] = dict(seed=self.seed, cache_dir=cache)
            self.train_dataset = streaming_dataset(self.source, "train", self.block_size, shuffle=True, **kw)
            self.val_dataset = (
                streaming_dataset(self.source, "val", self.block_size, shuffle=False, **kw) if val else None
            )
            return
        train, val, tail = self._local_caches()
        pad = self.tokenizer.pad_id if self.tokenizer.pad_id is not None else self.tokenizer.eos_id
        self.train_dataset, self.val_dataset = make_local_datasets(
            train, val, tail, self.settings, self.block_size, self.seed, pad, self.train_source().name
        )

    def _rank_world(self) -> tuple[int, int]:
        return rank_and_world(self.trainer)

    def _loader(self, dataset: Any, sampler: Optional[ResumableSampler] = None) -> DataLoader:
        b = self.settings.batch
        if self.streaming:
            return streaming_loader(dataset, b.batch_size, b.num_workers, b.pin_memory)
        return PositionedLoader(
            dataset,
            batch_size=b.batch_size,
            sampler=sampler,
            num_workers=b.num_workers,
            pin_memory=b.pin_memory,
            persistent_workers=b.num_workers > 0,
            drop_last=False,
        )

    def _require_setup(self) -> None:
        if self.train_dataset is None:
            self.setup("fit")

    def train_dataloader(self) -> DataLoader:
        """Shuffled (seeded per epoch), rank-sharded windows; resumes mid-epoch after ``load_state_dict``."""
        self._require_setup()
        if self.streaming:
            return self._loader(self.train_dataset)
        rank, world = self._rank_world()
        if len(self.train_dataset) < world:
            raise ValueError(
                f"the training set has {len(self.train_dataset)} sequences, fewer than the {world} ranks; use more "
                "data or a smaller block_size."
            )
        shifting = getattr(self.train_dataset, "shift_seed", None) is not None
        n = len(self.train_dataset)
        self._sampler = train_sampler(n, world, rank, self.seed, shifting, self._resume, self._sampler)
        self._resume = None  # a restored position is used once, by the first loader built after it
        return self._loader(self.train_dataset, self._sampler)

    def val_dataloader(self) -> Any:
        """Validation windows in order, sharded across ranks (``[]`` when there is no validation set)."""
        self._require_setup()
        if self.val_dataset is None or (not self.streaming and len(self.val_dataset) == 0):
            return []
        if self.streaming:
            return self._loader(self.val_dataset)
        rank, world = self._rank_world()
        return self._loader(self.val_dataset, ResumableSampler(len(self.val_dataset), world, rank, False, None, False))

    def test_dataloader(self) -> Any:
        """The validation data (there is no separate test split)."""
        return self.val_dataloader()

    # ------------------------------------------------------------------------------------------------------ resuming
    def state_dict(self) -> dict[str, Any]:
        """The data position (epoch, global samples consumed) and what it depends on; Lightning checkpoints it.

        The consumed count comes from the Trainer's own progress tracking, not from the sampler (which runs ahead of
        training when workers prefetch). A prepared source's position is in its loader's state (saved by Lightning).
        """
        _, world = self._rank_world()
        bs = self.settings.batch.batch_size
        state: dict[str, Any] = {
            "batch_size": bs,
            "world_size": world,
            "seed": self.seed,
            "tokenizer_fingerprint": self._tokenizer.fingerprint() if self._tokenizer is not None else None,
        }
        if self.streaming:
            return {**state, "streaming": True}
        trainer = self.trainer
        done = batches_processed_this_epoch(trainer) if trainer is not None else None
        per_epoch = trainer.num_training_batches if trainer is not None else None
        return {**state, **sampler_position(self._sampler, self._resume, done, per_epoch, bs, world)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the data position saved by ``state_dict()`` (applied when the train loader is next built).

        Args:
            state_dict: what ``state_dict()`` returned (Lightning passes the checkpoint's entry).

        Raises:
            ValueError: the checkpoint was trained with another tokenizer, or from the other kind of source.
        """
        saved_fp = state_dict.get("tokenizer_fingerprint")
        if saved_fp is not None and saved_fp != self.tokenizer.fingerprint():
            raise ValueError(
                f"the checkpoint was trained with a tokenizer (fingerprint {saved_fp}) that differs from this data "
                f"module's {self.tokenizer.describe()}; resume with the same source/tokenizer settings, or pass "
                "tokenizer='<the checkpoint path>' to reuse the checkpoint's tokenizer."
            )
        if bool(state_dict.get("streaming")) != self.streaming:
            raise ValueError(
                "the checkpoint's data position belongs to a "
                + ("prepared (streamed)" if state_dict.get("streaming") else "token-cache")
                + f" source, but source={self.source!r} is not one; resume with the source the run was trained on."
            )
        if self.streaming:
            check_streaming_resume(state_dict, self.source, self._rank_world()[1])
            return  # litdata restores its loader's own state (Lightning passes it the saved loader state)
        fitting = self.trainer is None or self.trainer.state.fn == "fit"  # validate/test: the order does not matter
        if fitting and (
            state_dict.get("batch_size") not in (None, self.settings.batch.batch_size)
            or state_dict.get("seed") not in (None, self.seed)
        ):
            log.warning("resuming with another batch_size or data seed than the checkpoint's: the data order differs.")
        self._resume = restored_position(state_dict, self.settings.batch.batch_size)
        if self._sampler is not None:  # a loader exists already: move its sampler now
            r = self._resume
            self._sampler.set_start(r["epoch"], r["global_consumed"], r["local_consumed"])
