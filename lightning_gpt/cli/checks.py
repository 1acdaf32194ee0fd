"""Checks of a parsed ``fit | validate | test | predict`` configuration that run before anything is built: settings
Lightning would reject only later with a traceback, or accept without a word although the run would not be what was
asked for. Each failure is one paragraph naming the setting and the fix (exit status 2)."""

from __future__ import annotations

import glob
import os
from typing import Any

__all__ = ["check_clipping", "check_data_paths", "check_trainer_settings", "check_training_length"]


def check_trainer_settings(cfg: Any) -> None:
    """Reject trainer settings Lightning would only reject later with a traceback (or after building the model).

    Args:
        cfg: the subcommand's parsed configuration (keys ``trainer.*``).

    Raises:
        ValueError: ``max_steps`` below -1; ``accumulate_grad_batches`` below 1; ``devices`` 0 or below -1; a GPU
            accelerator on a machine without one.
    """
    import torch

    accumulate = cfg.get("trainer.accumulate_grad_batches")
    if isinstance(accumulate, int) and accumulate < 1:
        # Lightning takes 0 (a ZeroDivisionError at the first batch) and negative numbers (gradients of the wrong sign).
        raise ValueError(
            f"--trainer.accumulate_grad_batches {accumulate}: must be a number of micro-batches >= 1 per optimizer "
            "step (1: no accumulation)."
        )
    max_steps = cfg.get("trainer.max_steps")
    if isinstance(max_steps, int) and max_steps < -1:
        raise ValueError(
            f"--trainer.max_steps {max_steps}: must be a number of optimizer steps >= 1 (e.g. --trainer.max_steps "
            "1000), or -1 for no step limit (then --trainer.max_epochs ends training)."
        )
    devices = cfg.get("trainer.devices")
    count = int(devices) if isinstance(devices, str) and devices.strip().lstrip("-").isdigit() else devices
    if (isinstance(count, int) and not isinstance(count, bool) and (count == 0 or count < -1)) or devices == []:
        raise ValueError(
            f"--trainer.devices {devices!r}: needs a positive number of devices, -1 or 'auto' (all of them), or a "
            "list of GPU indices such as [0, 1]. Use --trainer.devices 1 for one device."
        )
    accelerator = cfg.get("trainer.accelerator")
    if not isinstance(accelerator, str):
        return
    name = accelerator.lower()
    mps = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    missing = {
        "cuda": not torch.cuda.is_available(),
        "gpu": not (torch.cuda.is_available() or mps),
        "mps": not mps,
    }.get(name, False)
    if not missing:
        return
    why = "no CUDA GPU" if name == "cuda" else "no Apple MPS device" if name == "mps" else "no GPU"
    if name != "mps" and torch.version.cuda is None:
        why += " (this torch is a CPU-only build)"
    extra = []
    if isinstance(count, int) and count > 1 or isinstance(devices, (list, tuple)):
        extra.append("--trainer.devices 1")
    precision = str(cfg.get("trainer.precision") or "")
    if precision.startswith("16") or precision.endswith("true") and "16" in precision:
        extra.append("--trainer.precision 32-true")
    strategy = cfg.get("trainer.strategy")
    if strategy not in (None, "auto"):
        extra.append("--trainer.strategy auto")
    fix = " ".join(["--trainer.accelerator cpu", *extra])
    raise ValueError(
        f"--trainer.accelerator {accelerator!r}: this machine has {why}. Run on the CPU with {fix} (a GPU recipe "
        "then runs, slowly; shrink it with e.g. --model.config.n_layer 2 --trainer.max_steps 20), or run on a machine "
        "with a GPU."
    )


def check_training_length(cfg: Any) -> None:
    """``fit`` needs to know how long it trains before anything is built: the LR schedule decays over ``max_steps``.

    Args:
        cfg: the ``fit`` configuration.

    Raises:
        ValueError: neither ``--trainer.max_steps`` nor ``--lr_schedule.decay_steps`` is set (a bare ``fit``); or
            ``max_steps``, ``max_epochs`` or ``limit_train_batches`` is 0 (a fit that trains nothing and exits 0).
    """
    for key in ("max_steps", "max_epochs", "limit_train_batches"):
        value = cfg.get(f"trainer.{key}")
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value == 0:
            raise ValueError(
                f"--trainer.{key} 0: fit would train nothing and end as if it had succeeded. Give it a length (e.g. "
                "--trainer.max_steps 1000); to only measure a checkpoint, use lightning-gpt validate --ckpt_path RUN."
            )
    max_steps = cfg.get("trainer.max_steps")
    schedule = cfg.get("lr_schedule.schedule")
    if cfg.get("lr_schedule.decay_steps") is not None or schedule == "constant":
        return
    if max_steps is None or max_steps < 0:
        raise ValueError(
            "fit needs a training length: the learning-rate schedule decays over --trainer.max_steps, which is not "
            "set. Start from a recipe, e.g. lightning-gpt fit --config recipes/quickstart.yaml (a 4-layer character "
            "model on the Python standard library, minutes on a CPU), or set --trainer.max_steps N (and a model size "
            "such as --model.config.n_layer 4 --model.config.n_head 4 --model.config.n_embd 128; the default is GPT-2 "
            "small, 124M parameters)."
        )


def check_clipping(cfg: Any) -> None:
    """The command line clips with ``GradientClipping`` (``--clip.*``); Lightning's own clipping would clip twice.

    Raises:
        ValueError: ``--trainer.gradient_clip_val`` is set.
    """
    value = cfg.get("trainer.gradient_clip_val")
    if value:
        raise ValueError(
            f"--trainer.gradient_clip_val {value}: lightning-gpt clips gradients itself (and logs the norm), so they "
            f"would be clipped twice. Use --clip.max_norm {value} instead (--clip.max_norm null: no clipping)."
        )


def check_data_paths(cfg: Any, subcommand: str) -> None:
    """A data file or folder that does not exist is named before the model and the Trainer are built (not seconds
    later, when the first batch is read): ``--data.source`` / ``--data.val_source`` of fit, validate and test when they
    name a local path, ``--data.path`` (the prompts file) of predict; an ``s3://`` ``--data.source``'s manifest is read.

    Args:
        cfg: the subcommand's parsed configuration (keys ``data.*``).
        subcommand: ``fit``, ``validate``, ``test`` or ``predict``.

    Raises:
        FileNotFoundError: nothing exists at a named local path (the message of the reader that would fail later),
            or no prepared dataset at an ``s3://`` source.
        ValueError: an ``s3://`` source that cannot be read (``lightning_gpt.data.object_store``).
    """
    if subcommand == "predict":
        if cfg.get("data.path"):
            from lightning_gpt.training.prompts import check_prompts_file

            check_prompts_file(str(cfg["data.path"]))
        return
    from lightning_gpt.data.sources.files import find_files

    if isinstance(cfg.get("data.source"), str) and cfg["data.source"].startswith("s3://"):
        from lightning_gpt.data.streaming import read_any_manifest

        read_any_manifest(cfg["data.source"])  # a missing bucket or manifest, refused credentials: one paragraph now
    for key in ("data.source", "data.val_source"):
        source = cfg.get(key)
        # python-stdlib, hf://, s3:// and globs are resolved by their readers; a plain path must exist.
        if not isinstance(source, str) or source == "python-stdlib" or "://" in source or glob.has_magic(source):
            continue
        if source.strip() and not os.path.lexists(os.path.expanduser(source)):
            find_files(source, source)  # raises its one-paragraph FileNotFoundError (a broken link included)
