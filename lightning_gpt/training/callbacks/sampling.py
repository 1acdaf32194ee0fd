"""Periodic sample generation during training: decode a few prompts, print them, send them to the loggers."""

from __future__ import annotations

import csv
import os
from typing import Any, Optional

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info

from lightning_gpt.generation.config import SAMPLE_CALLBACK_DEFAULTS, GenerationConfig
from lightning_gpt.seeding import derive_seed
from lightning_gpt.training.parallelize import is_sharded

__all__ = ["SampleGeneration"]


class SampleGeneration(Callback):
    """Every ``every_n_steps`` optimizer steps, decode ``prompts`` with the module's tokenizer and show the text.

    Runs on rank zero only (all ranks decode together when the model is FSDP-sharded, since every forward pass needs
    them; rank zero reports). Samples are printed with ``rank_zero_info``, added to TensorBoard as text
    (``samples/<i>``), and appended to ``samples.csv`` in the log directory of CSV loggers; loggers with a
    ``log_text`` method (e.g. W&B) get a table. Decoding uses a dedicated, seeded ``torch.Generator`` and restores
    torch's RNG state and the model's train mode, so the training run is unchanged by it (same losses with or without).

    Args:
        every_n_steps: decode after every this many optimizer steps; ``0`` turns periodic samples off (the callback
            stays in the run, so ``sample()`` can still be called by hand or from a subclass).
        prompts: the texts to continue (an empty string means "from BOS" when the tokenizer has one).
        generation: the decoding settings (``--sampling.generation.temperature 0.9`` on the command line); default
            ``SAMPLE_CALLBACK_DEFAULTS`` (64 sampled tokens, temperature 0.8, top-k 200; see
            ``lightning_gpt.generation.config`` for why it differs from the library's greedy default).
            ``max_new_tokens`` is lowered to what fits the context after the longest prompt (None: all of it).
        seed: seed of the sampling generator, offset by the step (same samples at the same step of a resumed run);
            ``None``: derived from the run seed (``seed_everything``) when fitting starts.

    Raises:
        ValueError: a negative ``every_n_steps``, or decoding settings that are out of range.
    """

    def __init__(
        self,
        every_n_steps: int = 500,
        prompts: Optional[list[str]] = None,
        generation: GenerationConfig = SAMPLE_CALLBACK_DEFAULTS,
        seed: Optional[int] = None,
    ) -> None:
        if every_n_steps < 0:
            raise ValueError(
                f"SampleGeneration.every_n_steps must be >= 1, or 0 to turn samples off; got {every_n_steps!r}."
            )
        self.every_n_steps = every_n_steps
        self.prompts = list(prompts) if prompts is not None else ["\n"]
        self.generation = GenerationConfig.fold(generation)
        if not self.generation.sampling:
            # Greedy/beam samples: the preset's sampling knobs do nothing; drop them rather than warn at every sample.
            self.generation = GenerationConfig.fold(
                self.generation, temperature=1.0, top_k=None, top_p=None, min_p=None
            )
        self.seed = seed
        self._seed: Optional[int] = None  # resolved at fit start
        self._last_step = -1
        self.last_samples: list[dict[str, Any]] = []

    def on_fit_start(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        self._seed = derive_seed("samples", self.seed)
        if self.every_n_steps == 0:
            return
        # Check the prompts now rather than after hours of training, at the first sampling step.
        tokenizer, model = getattr(pl_module, "tokenizer", None), getattr(pl_module, "model", None)
        if tokenizer is None or model is None:
            return
        block_size = model.config.block_size
        for prompt in self.prompts:
            n = len(tokenizer.encode(prompt))
            if n >= block_size:
                raise ValueError(
                    f"SampleGeneration prompt {prompt[:40]!r}... is {n} tokens long, which leaves no room to generate "
                    f"in the model's context (block_size={block_size}). Use shorter prompts."
                )

    def on_train_batch_end(
        self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        step = trainer.global_step
        if self.every_n_steps == 0 or step == 0 or step % self.every_n_steps != 0 or step == self._last_step:
            return
        self._last_step = step
        self.sample(trainer, pl_module)

    def sample(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> list[dict[str, Any]]:
        """Decode the prompts now and report them; returns the result dicts (empty on ranks that do not decode)."""
        tokenizer = getattr(pl_module, "tokenizer", None)
        model = getattr(pl_module, "model", None)
        if tokenizer is None or model is None:
            rank_zero_info("SampleGeneration: the module has no tokenizer or model yet; skipping samples.")
            return []
        if not (trainer.is_global_zero or is_sharded(model)):
            return []
        from lightning_gpt.generation.text import generate_text

        device = pl_module.device
        generator = torch.Generator(device=device).manual_seed(
            derive_seed("samples", self.seed if self._seed is None else self._seed) + trainer.global_step
        )
        was_training = model.training
        fork_devices = [device] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=fork_devices):
            try:
                model.eval()
                # Generate at most up to the context length (the longest prompt decides).
                longest = max(max(len(tokenizer.encode(p)), 1) for p in self.prompts)
                room = max(1, model.config.block_size - longest)
                if self.generation.max_new_tokens is not None:
                    room = min(room, self.generation.max_new_tokens)
                results = generate_text(
                    model, tokenizer, self.prompts, self.generation, max_new_tokens=room, generator=generator
                )
            finally:
                if hasattr(model, "clear_cache"):
                    model.clear_cache()
                model.train(was_training)
        self.last_samples = results
        if trainer.is_global_zero:
            self._report(trainer, results)
        return results

    def _report(self, trainer: "pl.Trainer", results: list[dict[str, Any]]) -> None:
        step = trainer.global_step
        lines = [f"--- samples at step {step} ---"]
        for i, r in enumerate(results):
            lines.append(f"[{i}] {r['prompt']}{r['completion']}")
        bar = trainer.progress_bar_callback
        if bar is not None and (getattr(bar, "is_enabled", False) or getattr(bar, "plain_lines", False)):
            bar.print("\n" + "\n".join(lines))  # above the bar, on lines of its own (never glued to the bar line)
        else:
            rank_zero_info("\n".join(lines))
        for logger in trainer.loggers:
            add_text = getattr(getattr(logger, "experiment", None), "add_text", None)
            if callable(add_text):  # TensorBoard
                for i, r in enumerate(results):
                    add_text(f"samples/{i}", f"**{r['prompt']}**{r['completion']}", global_step=step)
            elif type(logger).__name__ == "CSVLogger" and logger.log_dir:
                path = os.path.join(logger.log_dir, "samples.csv")
                os.makedirs(logger.log_dir, exist_ok=True)
                new = not os.path.exists(path)
                with open(path, "a", newline="", encoding="utf-8") as f:
                    writer = csv.writer(f)
                    if new:
                        writer.writerow(["step", "prompt", "completion"])
                    writer.writerows([step, r["prompt"], r["completion"]] for r in results)
            elif hasattr(logger, "log_text"):
                logger.log_text(
                    key="samples",
                    columns=["step", "prompt", "completion"],
                    data=[[step, r["prompt"], r["completion"]] for r in results],
                )
