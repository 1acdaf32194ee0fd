"""``AtomicCheckpointIO``: a Lightning ``CheckpointIO`` plugin that never leaves a half-written checkpoint, and never
runs code from a checkpoint it reads unless told to trust it; ``AtomicSaveConfigCallback``: the run's ``config.yaml``
written the same way."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional

import lightning
import torch
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.pytorch.cli import SaveConfigCallback
from lightning.pytorch.plugins.io import TorchCheckpointIO

from lightning_gpt.io.atomic import atomic_file

__all__ = ["AtomicCheckpointIO", "AtomicSaveConfigCallback"]


class AtomicCheckpointIO(TorchCheckpointIO):
    """Write each checkpoint to ``<path>.tmp-<pid>-<tag>``, fsync it, then ``os.replace`` it onto ``<path>``
    (``lightning_gpt.io.atomic.atomic_file``).

    The rename is atomic on POSIX and Windows, so the file under the final name is always a complete checkpoint: a
    crash or SIGKILL mid-save leaves the previous file (and at worst a stray ``.tmp-<pid>...`` file, removed on the
    next save of the same path, but only when the process that wrote it is gone: a live writer's file is never
    touched). A full or read-only disk is a ``StorageError`` paragraph with no temporary left. Remote filesystems
    (``s3://``...) fall back to the plain write.

    Reading (``fit --ckpt_path``, ``validate``/``test``/``predict``) is weights-only whatever Lightning asks for: a file
    that needs a full unpickle is refused (``UnsafeCheckpointError``) unless ``trust_checkpoint`` is set. A weights
    folder (``lightning-gpt export`` or Hugging Face GPT-2) reads as a checkpoint of weights, config and tokenizer; a
    sharded ``FSDP2Strategy`` folder read by another strategy (DDP, one process) as the whole training state,
    consolidated (``fit --ckpt_path`` resumes from it). The
    ``gpt_config`` is checked against the weights, and the tokenizer state parsed, before Lightning sees either.

    Args:
        trust_checkpoint: allow full unpickling of checkpoints that need it (code in the file may run).
    """

    def __init__(self, trust_checkpoint: bool = False) -> None:
        super().__init__()
        self.trust_checkpoint = trust_checkpoint

    def load_checkpoint(
        self, path: Any, map_location: Optional[Any] = lambda storage, loc: storage, weights_only: Optional[bool] = None
    ) -> dict[str, Any]:
        from lightning_gpt.io.checkpoint import check_checkpoint_contents, read_checkpoint, torch_load
        from lightning_gpt.io.hf import is_pretrained_path
        from lightning_gpt.io.sharded import is_sharded_checkpoint

        fs = get_filesystem(path)
        if "file" not in (fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)):
            if not fs.exists(path):
                raise FileNotFoundError(f"Checkpoint file not found: {path}")
            with fs.open(path, "rb") as f:
                return torch_load(f, map_location=map_location, trust_checkpoint=self.trust_checkpoint, name=path)
        if is_pretrained_path(path):
            return _as_lightning_checkpoint(path, trust_checkpoint=self.trust_checkpoint)
        if is_sharded_checkpoint(path):  # FSDP2's folder under another strategy: its whole state, consolidated
            return _sharded_as_lightning_checkpoint(path, trust_checkpoint=self.trust_checkpoint)
        checkpoint = read_checkpoint(path, map_location=map_location, trust_checkpoint=self.trust_checkpoint)
        if isinstance(checkpoint, dict) and "gpt_config" in checkpoint:  # a GPTModule's (others: Lightning's checks)
            check_checkpoint_contents(checkpoint, path)
        return checkpoint

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Optional[Any] = None) -> None:
        if storage_options is not None:
            raise TypeError(
                "`Trainer.save_checkpoint(..., storage_options=...)` with `storage_options` arg"
                f" is not supported for `{self.__class__.__name__}`."
            )
        fs = get_filesystem(path)
        if "file" not in (fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)):
            super().save_checkpoint(checkpoint, path)
            return
        # A full or read-only disk is one paragraph naming the file (torch.save wraps the OSError in a RuntimeError);
        # a second Ctrl-C during the save stays a KeyboardInterrupt (Lightning then exits quietly); SIGTERM outside
        # Lightning's own handling removes the temporary too.
        with atomic_file(path, "the checkpoint", "--trainer.default_root_dir (or --checkpoint.dirpath)") as f:
            torch.save(checkpoint, f)


def _as_lightning_checkpoint(path: str | Path, trust_checkpoint: bool = False) -> dict[str, Any]:
    """A weights folder as the dict a ``GPTModule`` checkpoint holds (weights, ``gpt_config``, ``tokenizer``), so
    Lightning's ``predict``/``validate``/``test`` can take the folder as ``ckpt_path``."""
    from lightning_gpt.io.hf import read_pretrained

    config, state, tokenizer = read_pretrained(path, trust_checkpoint=trust_checkpoint)  # checked against each other
    return {
        "state_dict": {f"model.{k}": v for k, v in state.items()},
        "gpt_config": config.to_dict(),
        "tokenizer": tokenizer,
        "pytorch-lightning_version": lightning.__version__,
        "epoch": 0,
        "global_step": 0,
    }


def _sharded_as_lightning_checkpoint(path: str | Path, trust_checkpoint: bool = False) -> dict[str, Any]:
    """A sharded ``FSDP2Strategy`` folder as the checkpoint dict a consolidated ``.ckpt`` holds: weights and optimizer
    states consolidated (``lightning_gpt.io.sharded``: sizes checked against ``.metadata`` before anything is read),
    and its ``meta.pt`` entries (loops, callbacks such as the LR schedule, the loader state). ``fit --ckpt_path`` under
    DDP or one process resumes from it as from the ``.ckpt`` of ``save_distributed_checkpoint: false``."""
    from lightning_gpt.io.checkpoint import read_model_checkpoint, read_sharded_checkpoint
    from lightning_gpt.io.sharded import load_sharded_optimizers

    meta = read_sharded_checkpoint(path, trust_checkpoint=trust_checkpoint)[3]
    _, state, _ = read_model_checkpoint(path, trust_checkpoint=trust_checkpoint)  # sizes checked, then read
    weights = {f"model.{k}": v for k, v in state.items()}
    checkpoint = {**meta, "state_dict": weights}
    optimizers = load_sharded_optimizers(path, {k: v.shape for k, v in weights.items()}, trust_checkpoint)
    if optimizers:
        checkpoint["optimizer_states"] = optimizers
    return checkpoint


class AtomicSaveConfigCallback(SaveConfigCallback):
    """``SaveConfigCallback`` that writes the run's ``config.yaml`` like a checkpoint: to a temporary, renamed into
    place (``lightning_gpt.io.atomic.atomic_file``). Lightning's own writes the file in place, so a full disk
    truncated the previous run's ``config.yaml`` and the error named no file; here it is one ``StorageError``
    paragraph and the previous file stays whole.

    Args:
        args: as ``SaveConfigCallback`` (``save_to_log_dir`` is handled here: the file still goes to the log dir).
        kwargs: as ``SaveConfigCallback``.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["save_to_log_dir"] = False  # Lightning's in-place write off; save_config below writes the file
        super().__init__(*args, **kwargs)
        self._log_dir: Optional[str] = None

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        if not self.already_saved:
            self._log_dir = trainer.log_dir  # a collective under DDP: every rank asks, as Lightning's setup does
        super().setup(trainer, pl_module, stage)

    def save_config(self, trainer: Any, pl_module: Any, stage: str) -> None:
        """Write ``<log_dir>/config.yaml`` atomically (rank zero only; Lightning calls this there)."""
        if self._log_dir is None:
            return
        path = os.path.join(self._log_dir, self.config_filename)
        if get_filesystem(path).protocol not in ("file", ("file", "local")):
            self.parser.save(self.config, path, skip_none=False, overwrite=self.overwrite, multifile=self.multifile)
            return
        if not self.overwrite and os.path.isfile(path):
            raise RuntimeError(f"{path} exists; not overwriting the config of a previous run.")
        text = self.parser.dump(self.config, skip_none=False)
        with atomic_file(path, "the run's config", "--trainer.default_root_dir", mode="w") as f:
            f.write(text)
