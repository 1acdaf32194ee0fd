"""``GPTModule``: the LightningModule that trains a ``GPT`` and decodes with it.

The module keeps the Lightning hooks and owns the loss, the metrics, the optimizer's parameter groups and the default
callbacks; the rules live beside it: the token-weighted loss in ``loss.py``, activation checkpointing / compile / FSDP2
in ``parallelize.py``, the config and tokenizer that travel with the weights (and ``predict_step``) in its base class,
``adoption.ConfigAndTokenizer``, the default callbacks in ``callbacks/defaults.py``. The model itself is plain PyTorch
(``lightning_gpt.model.GPT``), built in ``configure_model`` so that FSDP2 can shard it block by block there.

Subclassing is a first-class use: override ``compute_loss`` to add a loss term, or ``configure_optimizers`` /
``parameter_groups`` for a different optimizer (see ``examples/subclass_module.py``).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

import torch
from lightning.pytorch import Callback
from torch import Tensor

from lightning_gpt.attention import get_attention
from lightning_gpt.batch import split_batch
from lightning_gpt.config import IGNORE_INDEX, GPTConfig
from lightning_gpt.generation.config import GenerationConfig
from lightning_gpt.model import GPT
from lightning_gpt.seeding import derive_seed, mix_seed
from lightning_gpt.training._lightning_internals import attached_trainer, should_update_logs
from lightning_gpt.training.adoption import ConfigAndTokenizer, load_init_weights
from lightning_gpt.training.callbacks.defaults import missing_default_callbacks
from lightning_gpt.training.callbacks.throughput import batch_flops
from lightning_gpt.training.loss import (
    AccumulationWindow,
    TargetBytes,
    TokenMeanLoss,
    check_accumulation,
    normalize_gradients,
    token_mean_cross_entropy,
)
from lightning_gpt.training.parallelize import CompiledForward, build_parallel, parallelize

__all__ = ["GPTModule", "GenerationConfig", "IGNORE_INDEX", "is_logging_step"]


def is_logging_step(trainer: Any) -> bool:
    """Whether the current training step is one whose metrics the loggers record (every ``log_every_n_steps``)."""
    return should_update_logs(trainer)


class GPTModule(ConfigAndTokenizer):
    """Trains a GPT with next-token cross-entropy and AdamW; decodes prompts in ``predict``.

    Args:
        config: the model architecture. ``vocab_size`` is taken from the data module's tokenizer when one is attached,
            so recipes need not set it; set ``config.padded_vocab_multiple`` (e.g. 64) for a padded table. When
            resuming, a checkpoint's config must match an explicitly given one.
        learning_rate: peak learning rate of AdamW (the ``LRSchedule`` callback scales it per step).
        weight_decay: decoupled weight decay, applied to weight matrices only (not biases, LayerNorms, embeddings).
        betas: AdamW's ``(beta1, beta2)``.
        eps: AdamW's epsilon.
        fused: use the fused AdamW kernel. ``None``: on when every parameter is on CUDA.
        generation: decoding settings for ``predict`` (see ``GenerationConfig``).
        dropout_seed: base seed of the per-step random streams (dropout). Each training step reseeds torch's RNG
            from ``(dropout_seed, rank, global_step, batch_idx)``, so a run resumed from a checkpoint draws exactly
            the dropout masks of the uninterrupted run. ``None``: derived from the run seed (``seed_everything``) at
            fit start, see ``lightning_gpt.seeding``.
        init_from: start from the weights at this path instead of random ones: a Hugging Face GPT-2 folder
            (``save_pretrained`` layout), a ``lightning-gpt export`` folder or a ``.ckpt`` of this package. The
            architecture comes from there (``config`` may change only dropout and the attention kind, and shrink
            ``block_size``); the data module must use its tokenizer. Only weights are taken: not a resume.
        compile: run the training/validation/test forward through ``torch.compile`` (the first steps pay the
            compilation); decoding keeps the eager model, checkpoints the plain ``GPT``'s parameter names
            (``lightning_gpt.training.parallelize`` documents the order with FSDP2 and activation checkpointing).
        default_callbacks: at ``fit``, add each default callback the ``Trainer`` lacks (``configure_callbacks``;
            ``lightning_gpt.training.callbacks.defaults`` lists them and how to switch each off). A callback of the
            same type given to the ``Trainer`` wins. ``False``: add none.

    Every target token of a step weighs the same, whatever the padding, accumulation and ranks (``training.loss``):
    ``train/loss``, ``val/loss``, ``test/loss`` are token-weighted means, ``train/tokens_seen`` counts target tokens.
    The config and tokenizer travel in checkpoints and serve ``predict_step``: see the base, ``ConfigAndTokenizer``.
    """

    def __init__(
        self,
        config: Optional[GPTConfig] = None,
        learning_rate: float = 3e-4,
        weight_decay: float = 0.1,
        betas: tuple[float, float] = (0.9, 0.95),
        eps: float = 1e-8,
        fused: Optional[bool] = None,
        generation: Optional[GenerationConfig] = None,
        dropout_seed: Optional[int] = None,
        init_from: Optional[str] = None,
        compile: bool = False,
        default_callbacks: bool = True,
    ) -> None:
        super().__init__()
        config = GPTConfig.from_dict(config) if isinstance(config, dict) else config
        generation = GenerationConfig(**generation) if isinstance(generation, dict) else generation
        _check_arguments(config, learning_rate, weight_decay, betas, compile, default_callbacks)
        if init_from is not None:
            from lightning_gpt.io.init_from import resolve_init_config

            config = resolve_init_config(init_from, config)
        self.init_from = init_from
        self._config_given = config is not None
        self.config: GPTConfig = config if config is not None else GPTConfig()
        get_attention(self.config.attention)  # the model is built later: fail now on an unregistered attention kind
        self.learning_rate = learning_rate
        self.weight_decay = weight_decay
        self.betas: tuple[float, float] = (betas[0], betas[1])
        self.eps = eps
        self.fused = fused
        self.generation = generation if generation is not None else GenerationConfig()
        self.dropout_seed = dropout_seed
        self.default_callbacks = default_callbacks
        # Hyperparameters stay plain (dicts, numbers) so checkpoints load with torch.load(weights_only=True).
        # init_from is not saved: the checkpoint holds the resolved config and the weights, so it stands alone.
        self.save_hyperparameters(ignore=["config", "generation", "init_from"])
        self.hparams["config"] = config.to_dict() if config is not None else None
        self.hparams["generation"] = dataclasses.asdict(self.generation)

        self.model: Optional[GPT] = None
        self.tokenizer: Any = None
        self.last_loss: Optional[Tensor] = None  # the last step's loss, read by NonFiniteGuard before the update
        self.tokens_seen: Tensor
        self.register_buffer("tokens_seen", torch.zeros((), dtype=torch.long), persistent=False)
        self._compiled = CompiledForward(compile)  # (not self.compile: that would hide nn.Module.compile)
        self._window = AccumulationWindow()
        self._step_loss: Optional[Tensor] = None
        self._step_seed: Optional[int] = None
        self.val_loss = TokenMeanLoss()
        self.test_loss = TokenMeanLoss()
        self._target_bytes = TargetBytes()  # UTF-8 bytes behind the targets, for <stage>/bpb

    def configure_model(self) -> None:
        """Build the GPT (once), from ``init_from``'s weights when given; under a ``ModelParallelStrategy`` (FSDP2),
        shard it (``lightning_gpt.training.parallelize``): without ``init_from`` it is built on the meta device and
        each rank allocates only its shards, initialized as a one-process build with the same seed would be."""
        trainer = attached_trainer(self)
        strategy = trainer.strategy if trainer is not None else None
        if self.model is None and self.init_from is not None:
            self.model = GPT(self.config)
            load_init_weights(self.model, self.init_from, self._trust_checkpoint())
        elif self.model is None:  # under FSDP2: built on meta, sharded, then initialized
            device = getattr(strategy, "root_device", torch.device("cpu"))
            self.model = build_parallel(lambda: GPT(self.config), self.device_mesh, strategy, device)
        parallelize(self.model, self.device_mesh, strategy)

    def configure_callbacks(self) -> list[Callback]:
        """The default training callbacks the ``Trainer`` lacks, for ``fit`` (see ``default_callbacks``)."""
        trainer = attached_trainer(self)
        if not self.default_callbacks or trainer is None or trainer.state.fn != "fit":
            return []
        return missing_default_callbacks(trainer)

    def forward(self, idx: Tensor, **kwargs: Any) -> Tensor:
        """Logits ``(B, T, vocab_size)`` for token ids ``(B, T)``; kwargs go to ``GPT.forward``."""
        return self._gpt()(idx, **kwargs)

    split_batch = staticmethod(split_batch)  # (input_ids, targets) from any accepted batch form; see batch.py

    def compute_loss(self, logits: Tensor, targets: Tensor) -> Tensor:
        """Mean next-token cross-entropy over the targets that are not ``IGNORE_INDEX`` (padding, prompts): a scalar.

        Override to add terms (e.g. a z-loss); called by the training, validation and test steps. Keep it a mean per
        target token: the steps weigh it by the batch's target-token count (``lightning_gpt.training.loss``), and a
        batch without any target token must give ``0`` (a mean over no tokens, with a zero gradient), not NaN.

        Args:
            logits: ``(B, T, vocab_size)``.
            targets: ``(B, T)`` next-token ids, ``IGNORE_INDEX`` where ignored.
        """
        return token_mean_cross_entropy(logits, targets)

    def _gpt(self) -> GPT:
        if self.model is None:
            raise RuntimeError("GPTModule has no model yet: configure_model builds it (the Trainer calls it).")
        return self.model

    def _shared_step(self, idx: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
        logits = self._compiled(self._gpt())(idx)  # (B, T, vocab_size)
        self._batch_shape = tuple(idx.shape)
        return self.compute_loss(logits, targets), (targets != IGNORE_INDEX).sum()

    @property
    def flops_per_batch(self) -> Optional[int]:
        """Training FLOPs of the last batch, ``GPT.flops_per_token(T) * B * T`` (read by the throughput monitors)."""
        shape = getattr(self, "_batch_shape", None)
        return batch_flops(self.model, shape) if shape is not None and self.model is not None else None

    def on_train_start(self) -> None:
        """Check the accumulation against the epoch's length and seed the per-step random streams."""
        trainer = attached_trainer(self)
        if trainer is not None:
            check_accumulation(trainer.accumulate_grad_batches, trainer.num_training_batches)
        self._window.reset()
        if self._step_seed is None:
            self._step_seed = derive_seed("dropout", self.dropout_seed)

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        """Seed the step's random streams from ``(dropout_seed, rank, global_step, batch_idx)``: a pure function of the
        step, so a resumed run draws the same dropout masks."""
        # Not torch.manual_seed: it queues seeds for every uninitialized backend too (~1 ms of stack traces per step).
        seed = mix_seed(self._step_seed or 0, self.global_rank, self.global_step, batch_idx)
        torch.default_generator.manual_seed(seed)
        if self.device.type == "cuda":
            torch.cuda.manual_seed(seed)
        elif self.device.type != "cpu":
            torch.manual_seed(seed)

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        """One micro-batch: its mean token loss, with the gradient of its token sum / ``config.block_size`` (the
        optimizer step divides by the tokens of the whole step; ``lightning_gpt.training.loss``)."""
        return self._window.add(*self._shared_step(*self.split_batch(batch)), scale=self.config.block_size)

    def optimizer_step(self, epoch: int, batch_idx: int, optimizer: Any, optimizer_closure: Any = None) -> None:
        """Step the optimizer on gradients divided by the accumulated batch's target tokens over all ranks: right after
        the closure (the step's last ``training_step``, backward and DDP/FSDP reduction), before clipping and the
        ``on_before_optimizer_step`` callbacks. A subclass that overrides it must call ``super().optimizer_step``."""

        def closure() -> Any:
            result = optimizer_closure() if optimizer_closure is not None else None
            step = normalize_gradients(self._window, optimizer, self.trainer, self.device)
            if step is not None:
                self.last_loss = step.loss
                self._step_loss = step.loss if step.n_tokens else None
                self.tokens_seen += step.n_tokens
            return result

        optimizer.step(closure=closure)

    def on_before_optimizer_step(self, optimizer: Any) -> None:
        """Log the step's loss: the token-weighted mean over the whole accumulated batch and every rank."""
        if self.automatic_optimization:
            self._window.check_normalized()
        loss, self._step_loss = self._step_loss, None
        # self.log costs ~1 ms of Python: log on logging steps, and the loss every step when a progress bar shows it.
        log_now = is_logging_step(self.trainer)
        if loss is not None and (log_now or self.trainer.progress_bar_callback is not None):
            self.log("train/loss", loss, prog_bar=True)
        if loss is not None and log_now:
            self.log("train/ppl", loss.exp())
        if log_now:
            self.log("train/tokens_seen", self.tokens_seen.float())  # target tokens, all ranks

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._evaluation_step(batch, self.val_loss)

    def on_validation_epoch_end(self) -> None:
        self._log_evaluation("val", self.val_loss)

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self._evaluation_step(batch, self.test_loss)

    def _evaluation_step(self, batch: Any, metric: TokenMeanLoss) -> None:
        idx, targets = self.split_batch(batch)
        n_bytes = self._target_bytes(self.tokenizer, self.config.padded_vocab_size, targets)
        metric.update(*self._shared_step(idx, targets), n_bytes)

    def on_test_epoch_end(self) -> None:
        self._log_evaluation("test", self.test_loss)

    def _log_evaluation(self, stage: str, metric: TokenMeanLoss) -> None:
        """``<stage>/loss`` (token-weighted over the whole set), ``<stage>/ppl`` and ``<stage>/bpb``."""
        for name, value in metric.summary().items():
            self.log(f"{stage}/{name}", value, prog_bar=stage == "val" and name == "loss", sync_dist=False)
        metric.reset()

    def parameter_groups(self) -> list[dict[str, Any]]:
        """AdamW groups: weight decay on matrices; none on biases, LayerNorms and embeddings (each parameter once)."""
        embedding_ids = {id(m.weight) for m in self.modules() if isinstance(m, torch.nn.Embedding)}
        decay: list[torch.nn.Parameter] = []
        no_decay: list[torch.nn.Parameter] = []
        for _, param in self.named_parameters():  # named_parameters() yields a tied weight once
            if param.requires_grad:
                (no_decay if param.dim() < 2 or id(param) in embedding_ids else decay).append(param)
        return [{"params": decay, "weight_decay": self.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]

    def configure_optimizers(self) -> torch.optim.Optimizer:
        """AdamW over ``parameter_groups()``; no scheduler here (the LR schedule is the ``LRSchedule`` callback)."""
        groups = self.parameter_groups()
        params = [p for g in groups for p in g["params"]]
        fused = self.fused if self.fused is not None else bool(params) and all(p.device.type == "cuda" for p in params)
        kwargs: dict[str, Any] = {"fused": True} if fused else {}
        return torch.optim.AdamW(groups, lr=self.learning_rate, betas=self.betas, eps=self.eps, **kwargs)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """The config and tokenizer (``ConfigAndTokenizer``), the target tokens seen and the step seed."""
        super().on_save_checkpoint(checkpoint)
        checkpoint["tokens_seen"] = int(self.tokens_seen)
        checkpoint["step_seed"] = self._step_seed

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Adopt the checkpoint's config and tokenizer (``ConfigAndTokenizer``); restore the training counters."""
        super().on_load_checkpoint(checkpoint)
        self.tokens_seen.fill_(int(checkpoint.get("tokens_seen", 0)))
        if checkpoint.get("step_seed") is not None:
            self._step_seed = int(checkpoint["step_seed"])


def _check_arguments(
    config: Any, learning_rate: float, weight_decay: float, betas: Any, compile: Any, default_callbacks: Any
) -> None:
    """``GPTModule``'s argument checks, before anything is built (one paragraph each)."""
    if config is not None and not isinstance(config, GPTConfig):
        raise TypeError(f"GPTModule(config=...) expects a GPTConfig or a dict of its fields, got {type(config)}.")
    if learning_rate <= 0:
        raise ValueError(f"GPTModule.learning_rate must be > 0, got {learning_rate!r}.")
    if weight_decay < 0:
        raise ValueError(f"GPTModule.weight_decay must be >= 0, got {weight_decay!r}.")
    if len(betas) != 2 or not all(0.0 <= b < 1.0 for b in betas):
        raise ValueError(f"GPTModule.betas must be two numbers in [0, 1), got {betas!r}.")
    if not isinstance(compile, bool):
        raise ValueError(f"GPTModule.compile must be true or false, got {compile!r}.")
    if not isinstance(default_callbacks, bool):
        raise ValueError(f"GPTModule.default_callbacks must be true or false, got {default_callbacks!r}.")
