"""``TextDataModule``: text source -> tokenizer -> cached token ids -> packed or padded windows -> batches."""

from __future__ import annotations

import logging
import math
from typing import Any, Iterator, Literal, Optional, Union

import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from lightning_gpt.data.cache import (
    TokenArray,
    build_token_cache,
    cached_tokenizer,
    default_cache_dir,
    load_token_cache,
)
from lightning_gpt.data.datasets import PackedDataset, PaddedDataset
from lightning_gpt.data.sampler import ResumableSampler
from lightning_gpt.data.sources import TextSource, resolve_source
from lightning_gpt.data.tokenizers import TRAINABLE, Tokenizer
from lightning_gpt.io.tokenizer import load_tokenizer
from lightning_gpt.seeding import derive_seed
from lightning_gpt.training._lightning_internals import batches_processed_this_epoch

__all__ = ["TextDataModule"]

log = logging.getLogger(__name__)


def _nonempty(src: TextSource) -> Iterator[str]:
    """``src.documents()``, raising a clear error at the end if there were none."""
    n = 0
    for doc in src.documents():
        n += 1
        yield doc
    if n == 0:
        raise ValueError(
            f"source {src.name!r} has no text (it is empty or only whitespace); point source at a corpus with "
            "some text."
        )


class _PositionedLoader(DataLoader):
    """A DataLoader that tells Lightning it is resumable: its position is saved and restored by the data module
    (``TextDataModule.state_dict``), so Lightning has nothing to store here."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        pass


class TextDataModule(pl.LightningDataModule):
    """Batches of fixed-length token windows for next-token training, configured by its typed arguments.

    The context length is not configured twice: attached to a Trainer whose LightningModule has a ``config`` with a
    ``block_size`` (``GPTModule`` does), ``setup()`` takes it from there. Standalone, pass ``block_size``.

    The train sampler is a DDP-aware :class:`~lightning_gpt.data.sampler.ResumableSampler` (a ``DistributedSampler``,
    so Lightning keeps it under DDP): each rank reads a distinct shard, and the data module's ``state_dict()`` (saved
    in every Lightning checkpoint) holds the epoch and the number of batches consumed, so a run resumed mid-epoch sees
    exactly the batches it would have seen (with the same ``batch_size`` and number of devices).

    Args:
        source: ``python-stdlib`` (the embedded default: the running Python's standard library, offline everywhere),
            ``hf://<dataset id or path>``, or a local ``.txt`` / ``.jsonl`` / ``.parquet`` file, directory or glob.
        tokenizer: ``char``, ``bpe`` or ``unigram`` (trained on all of ``source``, the ``val_fraction`` tail included,
            and cached), ``tiktoken:<encoding>``, a
            ``tokenizer.json`` path, a ``.ckpt`` path (reuse that checkpoint's tokenizer), or a Hugging Face
            tokenizer id.
        block_size: context length; leave ``None`` to take it from the model's config (an explicit value must agree).
        batch_size: sequences per batch, per device.
        mode: ``pack`` (documents joined with EOS and cut into ``block_size + 1`` windows) or ``pad`` (one document
            per row, truncated and padded with PAD; padded targets are ``-100``).
        val_fraction: fraction of the data (the tail of the packed stream, or the last documents in ``pad`` mode)
            held out for validation; ignored when ``val_source`` or ``val_split`` is given; ``0`` for no validation.
        val_source: an explicit validation source (same forms as ``source``).
        val_split: for a Hugging Face source, the split to validate on (e.g. ``validation``).
        text_column: the text field of ``.jsonl`` / ``.parquet`` / Hugging Face data.
        max_chars: cap on the characters read from a source; ``None``: 5,000,000 for ``python-stdlib``, all otherwise.
        dataset_name: a Hugging Face dataset id or path (same as ``source="hf://<dataset_name>"``).
        dataset_config: the Hugging Face dataset configuration name.
        split: the Hugging Face split to train on.
        data_files: for an ``hf://`` source, the files to load as ``datasets.load_dataset`` takes them: a path or
            glob, a list, or a mapping from split to them (e.g. ``{train: a.jsonl, validation: b.jsonl}`` with
            ``source: hf://json`` and ``val_split: validation``).
        streaming: stream the Hugging Face dataset instead of downloading it whole (combine with ``max_chars``).
        tokenizer_vocab_size: vocabulary size of a trained ``bpe``/``unigram`` tokenizer (special tokens included).
        add_bos: start every document with BOS (documents always end with EOS).
        shift_windows: in ``pack`` mode, move the training window grid by a seeded random offset each epoch, so
            repeated epochs see differently cut sequences (validation windows never move).
        seed: seed of the shuffling and of the window shifts. ``None`` (default): derived from the run seed
            (``seed_everything`` / ``--seed_everything``), so changing the run seed changes the data order too.
        num_workers: DataLoader worker processes.
        pin_memory: pin batches in page-locked memory (for GPU training).
        cache_dir: where token ids and trained tokenizers are cached; ``None``: ``$LIGHTNING_GPT_CACHE`` or
            ``~/.cache/lightning_gpt``.
        trust_checkpoint: let ``tokenizer=<file>.ckpt`` load a checkpoint that needs a full unpickle (code in the
            file may run); only for files from a trusted source. Off: such a file is refused.
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
    ) -> None:
        super().__init__()
        if mode not in ("pack", "pad"):
            raise ValueError(f"mode must be 'pack' or 'pad', got {mode!r}.")
        if block_size is not None and (isinstance(block_size, bool) or block_size < 1):
            raise ValueError(
                f"block_size must be a positive integer or None (take it from the model), got {block_size!r}."
            )
        if batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}.")
        if not 0.0 <= val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction!r}.")
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers!r}.")
        if dataset_name is not None:
            if source not in ("python-stdlib", f"hf://{dataset_name}"):
                raise ValueError(f"Give either source={source!r} or dataset_name={dataset_name!r}, not both.")
            source = f"hf://{dataset_name}"
        if val_split is not None and not source.startswith("hf://"):
            raise ValueError(
                "val_split selects a Hugging Face split; for other sources use val_source or val_fraction."
            )
        self.save_hyperparameters()
        self.source = source
        self.data_files = data_files
        self.block_size: Optional[int] = block_size
        self.cache_dir = cache_dir or default_cache_dir()
        self._tokenizer: Optional[Tokenizer] = None
        self._train_src: Optional[TextSource] = None
        self._val_src: Optional[TextSource] = None
        self.train_dataset: Optional[Dataset] = None
        self.val_dataset: Optional[Dataset] = None
        self._sampler: Optional[ResumableSampler] = None
        self._resume: Optional[dict[str, Any]] = None
        self._seed: Optional[int] = None

    @property
    def seed(self) -> int:
        """The seed of the data order: ``seed`` when given, else derived from the run seed (resolved once)."""
        if self._seed is None:
            self._seed = derive_seed("data", self.hparams.seed)
        return self._seed

    # ----------------------------------------------------------------------------------------------- sources, tokens
    def train_source(self) -> TextSource:
        """The training ``TextSource``."""
        if self._train_src is None:
            self._train_src = self._resolve(self.source, self.hparams.split, self.data_files)
        return self._train_src

    def val_source(self) -> Optional[TextSource]:
        """The explicit validation source (``val_source`` / ``val_split``), or ``None`` (split by ``val_fraction``)."""
        if self._val_src is None:
            if self.hparams.val_split is not None:
                self._val_src = self._resolve(self.source, self.hparams.val_split, self.data_files)
            elif self.hparams.val_source is not None:
                self._val_src = self._resolve(self.hparams.val_source, self.hparams.split)
        return self._val_src

    def _resolve(self, source: str, split: str, data_files: Any = None) -> TextSource:
        hp = self.hparams
        return resolve_source(
            source,
            text_column=hp.text_column,
            max_chars=hp.max_chars,
            dataset_config=hp.dataset_config,
            split=split,
            streaming=hp.streaming,
            data_files=data_files,
        )

    @property
    def tokenizer(self) -> Tokenizer:
        """The tokenizer: trained on the train source (deterministically, cached on disk) or loaded; built lazily."""
        if self._tokenizer is None:
            kind = self.hparams.tokenizer
            if kind in TRAINABLE:
                src = self.train_source()
                import tokenizers

                key = {
                    "source": src.identity(),
                    "kind": kind,
                    "vocab_size": None if kind == "char" else self.hparams.tokenizer_vocab_size,
                    "tokenizers": None if kind == "char" else tokenizers.__version__,
                }
                size = self.hparams.tokenizer_vocab_size
                self._tokenizer = cached_tokenizer(
                    self.cache_dir, key, lambda: load_tokenizer(kind, _nonempty(src), vocab_size=size)
                )
                log.info("tokenizer %s for %s", self._tokenizer.describe(), src.name)
            else:
                self._tokenizer = load_tokenizer(kind, trust_checkpoint=self.hparams.trust_checkpoint)
        return self._tokenizer

    @tokenizer.setter
    def tokenizer(self, tokenizer: Tokenizer) -> None:
        """Use ``tokenizer`` (e.g. one restored from a checkpoint) instead of building one."""
        self._tokenizer = tokenizer

    @property
    def vocab_size(self) -> int:
        """The tokenizer's vocabulary size (what the model's ``config.vocab_size`` must cover)."""
        return self.tokenizer.vocab_size

    def _token_cache(self, src: TextSource) -> TokenArray:
        tok = self.tokenizer
        key = {"source": src.identity(), "tokenizer": tok.fingerprint(), "add_bos": self.hparams.add_bos}
        path = build_token_cache(
            self.cache_dir, key, src.documents(), tok, add_bos=self.hparams.add_bos, description=src.name
        )
        return load_token_cache(path)

    # ------------------------------------------------------------------------------------------------ Lightning hooks
    def prepare_data(self) -> None:
        """Train/load the tokenizer and tokenize every source into the on-disk cache (once per node)."""
        self._token_cache(self.train_source())
        if (vs := self.val_source()) is not None:
            self._token_cache(vs)

    def setup(self, stage: Optional[str] = None) -> None:
        """Fix ``block_size`` (from the model's config when attached to a Trainer) and build the datasets."""
        self.block_size = self._resolve_block_size()
        train = self._token_cache(self.train_source())
        vs = self.val_source()
        val = self._token_cache(vs) if vs is not None else None
        self.train_dataset, self.val_dataset = self._make_datasets(train, val)

    def _resolve_block_size(self) -> int:
        explicit = self.hparams.block_size
        model_bs = None
        trainer = self.trainer
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

    def _too_short(self, cache: TokenArray, name: str) -> ValueError:
        return ValueError(
            f"source {name!r} has {cache.n_tokens} tokens, shorter than one block of block_size + 1 = "
            f"{self.block_size + 1} tokens; use a smaller block_size or a larger corpus."
        )

    def _n_val(self, n: int, what: str) -> int:
        frac = self.hparams.val_fraction
        if frac == 0:
            return 0
        n_val = max(1, int(round(n * frac)))
        if n - n_val < 1:
            raise ValueError(
                f"the corpus yields only {n} {what}; val_fraction={frac} leaves none for training. Use a larger "
                "corpus, a smaller block_size, val_fraction=0, or an explicit val_source."
            )
        return n_val

    def _make_datasets(self, train: TokenArray, val: Optional[TokenArray]) -> tuple[Dataset, Optional[Dataset]]:
        bs = self.block_size
        src_name = self.train_source().name
        if self.hparams.mode == "pack":
            total = PackedDataset.total_windows(train.n_tokens, bs)
            if total == 0:
                raise self._too_short(train, src_name)
            if val is not None:
                if PackedDataset.total_windows(val.n_tokens, bs) == 0:
                    raise self._too_short(val, self.val_source().name)
                return PackedDataset(train, bs, shift_seed=self._shift_seed()), PackedDataset(val, bs)
            n_val = self._n_val(total, f"windows of block_size + 1 = {bs + 1} tokens")
            train_ds = PackedDataset(train, bs, 0, total - n_val, shift_seed=self._shift_seed())
            return train_ds, (PackedDataset(train, bs, total - n_val, n_val) if n_val else None)
        pad_id = self.tokenizer.pad_id if self.tokenizer.pad_id is not None else self.tokenizer.eos_id
        if val is not None:
            return PaddedDataset(train, bs, pad_id), PaddedDataset(val, bs, pad_id)
        n_val = self._n_val(train.n_docs, "documents")
        docs = np.arange(train.n_docs)
        val_ds = PaddedDataset(train, bs, pad_id, docs[train.n_docs - n_val :]) if n_val else None
        return PaddedDataset(train, bs, pad_id, docs[: train.n_docs - n_val]), val_ds

    def _shift_seed(self) -> Optional[int]:
        return self.seed if self.hparams.shift_windows else None

    def _rank_world(self) -> tuple[int, int]:
        if self.trainer is not None:
            return self.trainer.global_rank, self.trainer.world_size
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            return torch.distributed.get_rank(), torch.distributed.get_world_size()
        return 0, 1

    def _loader(self, dataset: Dataset, sampler: ResumableSampler) -> DataLoader:
        workers = self.hparams.num_workers
        return _PositionedLoader(
            dataset,
            batch_size=self.hparams.batch_size,
            sampler=sampler,
            num_workers=workers,
            pin_memory=self.hparams.pin_memory,
            persistent_workers=workers > 0,
            drop_last=False,
        )

    def _require_setup(self) -> None:
        if self.train_dataset is None:
            self.setup("fit")

    def train_dataloader(self) -> DataLoader:
        """Shuffled (seeded per epoch), rank-sharded windows; resumes mid-epoch after ``load_state_dict``."""
        self._require_setup()
        rank, world = self._rank_world()
        if len(self.train_dataset) < world:
            raise ValueError(
                f"the training set has {len(self.train_dataset)} sequences, fewer than the {world} ranks; use more "
                "data or a smaller block_size."
            )
        shifting = getattr(self.train_dataset, "shift_seed", None) is not None
        previous = self._sampler
        self._sampler = ResumableSampler(
            len(self.train_dataset), world, rank, shuffle=True, seed=self.seed, epoch_in_index=shifting
        )
        if self._resume is not None:  # a restored position is used once, by the first loader built after it
            self._apply_resume(self._resume)
            self._resume = None
        elif previous is not None:  # rebuilt (e.g. reload_dataloaders_every_n_epochs): keep the epoch and its position
            self._sampler.epoch_offset = previous.epoch_offset
            if previous.pending_start:
                self._sampler.set_start(previous.start_epoch, previous.start_index)
            else:
                self._sampler.epoch = previous.epoch
        return self._loader(self.train_dataset, self._sampler)

    def val_dataloader(self) -> Any:
        """Validation windows in order, sharded across ranks (``[]`` when there is no validation set)."""
        self._require_setup()
        if self.val_dataset is None or len(self.val_dataset) == 0:
            return []
        rank, world = self._rank_world()
        sampler = ResumableSampler(len(self.val_dataset), world, rank, shuffle=False, drop_last=False)
        return self._loader(self.val_dataset, sampler)

    def test_dataloader(self) -> Any:
        """The validation data (there is no separate test split)."""
        return self.val_dataloader()

    # ------------------------------------------------------------------------------------------------------ resuming
    def _batches_per_epoch(self) -> int:
        return math.ceil(len(self._sampler) / self.hparams.batch_size)

    def state_dict(self) -> dict[str, Any]:
        """Position in the data (epoch, batches consumed this epoch) and what it depends on; Lightning checkpoints it.

        The consumed count comes from the Trainer's own progress tracking, not from the sampler (which runs ahead of
        training when workers prefetch).
        """
        epoch, consumed = 0, 0
        trainer = self.trainer
        if self._resume is not None:  # restored but not yet used
            epoch, consumed = self._resume["epoch"], self._resume["batches_consumed"]
        elif self._sampler is not None and self._sampler.pending_start:
            # Restored and applied, but no batch drawn from it yet (e.g. Lightning is still closing the epoch it
            # re-entered on restart, with that epoch's counters): the restored position is still where the data is.
            epoch = self._sampler.start_epoch
            consumed = self._sampler.start_index // self.hparams.batch_size
        elif self._sampler is not None and trainer is not None:
            epoch = self._sampler.epoch
            consumed = batches_processed_this_epoch(trainer)
            per_epoch = trainer.num_training_batches  # honours limit_train_batches
            if not isinstance(per_epoch, int) or per_epoch <= 0:
                per_epoch = self._batches_per_epoch()
            if consumed >= per_epoch:  # the epoch is over: the next one starts at its beginning
                epoch, consumed = epoch + 1, 0
        elif self._sampler is not None:
            epoch = self._sampler.epoch
        _, world = self._rank_world()
        return {
            "epoch": int(epoch),
            "batches_consumed": int(consumed),
            "batch_size": self.hparams.batch_size,
            "world_size": world,
            "seed": self.seed,
            "tokenizer_fingerprint": self.tokenizer.fingerprint() if self._tokenizer is not None else None,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the data position saved by ``state_dict()`` (applied when the train loader is next built).

        Args:
            state_dict: what ``state_dict()`` returned (Lightning passes the checkpoint's entry).
        """
        saved_fp = state_dict.get("tokenizer_fingerprint")
        if saved_fp is not None and saved_fp != self.tokenizer.fingerprint():
            raise ValueError(
                f"the checkpoint was trained with a tokenizer (fingerprint {saved_fp}) that differs from this data "
                f"module's {self.tokenizer.describe()}; resume with the same source/tokenizer settings, or pass "
                "tokenizer='<the checkpoint path>' to reuse the checkpoint's tokenizer."
            )
        now = {"batch_size": self.hparams.batch_size, "world_size": self._rank_world()[1], "seed": self.seed}
        for name, value in now.items():
            if state_dict.get(name) is not None and state_dict[name] != value:
                log.warning(
                    "resuming with %s=%s but the checkpoint used %s: the data order will differ from the original run",
                    name,
                    value,
                    state_dict[name],
                )
        self._resume = {"epoch": int(state_dict["epoch"]), "batches_consumed": int(state_dict["batches_consumed"])}
        if self._sampler is not None:
            self._apply_resume(self._resume)

    def _apply_resume(self, resume: dict[str, Any]) -> None:
        self._sampler.set_start(resume["epoch"], resume["batches_consumed"] * self.hparams.batch_size)
