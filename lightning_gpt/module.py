"""``GPTModule``: the LightningModule that trains a ``GPT`` and decodes with it.

The module owns the loss, the metrics, the optimizer's parameter groups, ``predict_step`` and what travels in the
checkpoint (the model config and the tokenizer). The model itself is plain PyTorch (``lightning_gpt.model.GPT``),
built in ``configure_model`` so that FSDP2 can shard it block by block there.

Subclassing is a first-class use: override ``compute_loss`` to add a loss term, or ``configure_optimizers`` /
``parameter_groups`` for a different optimizer (see ``examples/subclass_module.py``).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from typing import Any, Optional

import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor
from torchmetrics import MeanMetric

from lightning_gpt.checkpoint import resolve_checkpoint_config
from lightning_gpt.config import GPTConfig
from lightning_gpt.generation.config import GenerationConfig
from lightning_gpt.model import GPT, Block

__all__ = ["GPTModule", "GenerationConfig", "IGNORE_INDEX", "is_logging_step"]

log = logging.getLogger(__name__)

IGNORE_INDEX = -100


def is_logging_step(trainer: Any) -> bool:
    """Whether the current training step is one whose metrics the loggers record (every ``log_every_n_steps``)."""
    connector = getattr(trainer, "_logger_connector", None)
    if connector is None:
        return True
    return bool(connector.should_update_logs)


def _mix_seed(*values: int) -> int:
    """A 63-bit seed from several integers (splitmix64 rounds): distinct inputs give unrelated streams."""
    x = 0x9E3779B97F4A7C15
    for v in values:
        x = (x ^ (int(v) & 0xFFFFFFFFFFFFFFFF)) * 0xBF58476D1CE4E5B9 & 0xFFFFFFFFFFFFFFFF
        x = (x ^ (x >> 27)) * 0x94D049BB133111EB & 0xFFFFFFFFFFFFFFFF
        x ^= x >> 31
    return x & 0x7FFFFFFFFFFFFFFF


def _json_normal(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, default=str)


class GPTModule(LightningModule):
    """Trains a GPT with next-token cross-entropy and AdamW; decodes prompts in ``predict``.

    Args:
        config: the model architecture. ``vocab_size`` is taken from the data module's tokenizer when one is attached,
            so recipes need not set it. When resuming, a checkpoint's config must match an explicitly given one.
        learning_rate: peak learning rate of AdamW (the ``LRSchedule`` callback scales it per step).
        weight_decay: decoupled weight decay, applied to weight matrices only (not biases, LayerNorms, embeddings).
        betas: AdamW's ``(beta1, beta2)``.
        eps: AdamW's epsilon.
        fused: use the fused AdamW kernel. ``None``: on when every parameter is on CUDA.
        generation: decoding settings for ``predict`` (see ``GenerationConfig``).
        dropout_seed: base seed of the per-step random streams (dropout). Each training step reseeds torch's RNG
            from ``(dropout_seed, rank, global_step, batch_idx)``, so a run resumed from a checkpoint draws exactly
            the dropout masks of the uninterrupted run. ``None``: ``torch.initial_seed()`` at fit start (what
            ``seed_everything`` set).
        compile: run the training/validation/test forward through ``torch.compile`` (inductor: the system C compiler
            on CPU, Triton on CUDA). The first steps pay the compilation; decoding (``predict``, ``generate``) keeps
            the eager model, and checkpoints hold the plain ``GPT``'s parameter names. Under FSDP2 the sharded model
            is compiled.
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
        compile: bool = False,
    ) -> None:
        super().__init__()
        if isinstance(config, dict):
            config = GPTConfig.from_dict(config)
        if isinstance(generation, dict):
            generation = GenerationConfig(**generation)
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
        self._config_given = config is not None
        self.config: GPTConfig = config if config is not None else GPTConfig()
        self.learning_rate = learning_rate
        self.weight_decay = weight_decay
        self.betas = tuple(betas)
        self.eps = eps
        self.fused = fused
        self.generation = generation if generation is not None else GenerationConfig()
        self.dropout_seed = dropout_seed
        self._compile_forward = compile  # (not self.compile: that would hide nn.Module.compile)
        # Hyperparameters stay plain (dicts, numbers) so checkpoints load with torch.load(weights_only=True).
        self.save_hyperparameters(ignore=["config", "generation"])
        self.hparams["config"] = config.to_dict() if config is not None else None
        self.hparams["generation"] = dataclasses.asdict(self.generation)

        self.model: Optional[GPT] = None
        self._compiled: Optional[tuple[GPT, Any]] = None  # (model, its torch.compile wrapper), not a submodule
        self.tokenizer: Any = None
        self._step_seed: Optional[int] = None
        self.register_buffer("tokens_seen", torch.zeros((), dtype=torch.long), persistent=False)
        self.val_loss = MeanMetric()
        self.test_loss = MeanMetric()

    @classmethod
    def from_model(cls, model: GPT, **kwargs: Any) -> "GPTModule":
        """Wrap an existing ``GPT`` (e.g. converted from Hugging Face) for training or prediction.

        Args:
            model: the model; its config becomes the module's config.
            kwargs: other ``GPTModule`` arguments.
        """
        module = cls(config=model.config, **kwargs)
        module.model = model
        return module

    # ------------------------------------------------------------------ building

    def setup(self, stage: str) -> None:
        """Take the tokenizer from the data module and size the vocabulary from it."""
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        tokenizer = getattr(datamodule, "tokenizer", None) if datamodule is not None else None
        if tokenizer is None:
            return
        self.tokenizer = tokenizer
        vocab = int(tokenizer.vocab_size)
        if vocab != self.config.vocab_size:
            if self.model is not None:
                raise ValueError(
                    f"The model was built with vocab_size={self.config.vocab_size} but the data module's tokenizer has "
                    f"{vocab} tokens. Build GPTModule without a model (it sizes the vocabulary from the tokenizer) or "
                    f"use a tokenizer of {self.config.vocab_size} tokens."
                )
            rank_zero_info(f"GPTModule: vocab_size {self.config.vocab_size} -> {vocab} (from the tokenizer).")
            self.config = dataclasses.replace(self.config, vocab_size=vocab)
            self.hparams["config"] = self.config.to_dict()

    def configure_model(self) -> None:
        """Build the GPT (once). Under ``ModelParallelStrategy`` (FSDP2), shard each Block and then the root."""
        if self.model is None:
            self.model = GPT(self.config)
        if self.device_mesh is not None and not getattr(self.model, "_lightning_gpt_sharded", False):
            self._apply_fsdp2()

    def _apply_fsdp2(self) -> None:
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        strategy = self.trainer.strategy if self._trainer is not None else None
        mesh = self.device_mesh
        if "data_parallel" in (mesh.mesh_dim_names or ()):
            mesh = mesh["data_parallel"]

        def dtype(name: Any) -> Optional[torch.dtype]:
            if name is None or isinstance(name, torch.dtype):
                return name
            value = getattr(torch, str(name), None)
            if not isinstance(value, torch.dtype):
                raise ValueError(f"Unknown dtype {name!r} for FSDP2 mixed precision; use e.g. 'bfloat16' or 'float32'.")
            return value

        policy = MixedPrecisionPolicy(
            param_dtype=dtype(getattr(strategy, "param_dtype", None)),
            reduce_dtype=dtype(getattr(strategy, "reduce_dtype", None)),
        )
        activation_checkpointing = bool(getattr(strategy, "activation_checkpointing", False))
        reshard = bool(getattr(strategy, "reshard_after_forward", True))
        for module in self.model.modules():
            if isinstance(module, Block):
                if activation_checkpointing:
                    # The composable API keeps parameter names unchanged (checkpoints stay portable).
                    from torch.distributed._composable import checkpoint

                    checkpoint(module)
                fully_shard(module, mesh=mesh, mp_policy=policy, reshard_after_forward=reshard)
        fully_shard(self.model, mesh=mesh, mp_policy=policy)
        self.model._lightning_gpt_sharded = True

    # ------------------------------------------------------------------ loss and steps

    def forward(self, idx: Tensor, **kwargs: Any) -> Tensor:
        """Logits ``(B, T, vocab_size)`` for token ids ``(B, T)``; kwargs go to ``GPT.forward``."""
        return self.model(idx, **kwargs)

    @staticmethod
    def split_batch(batch: Any) -> tuple[Tensor, Tensor]:
        """``(input_ids, targets)`` from a tuple/list pair, a dict (``input_ids`` + ``targets``/``labels``) or a
        ``(B, T + 1)`` tensor of tokens (targets are the inputs shifted by one)."""
        if isinstance(batch, Tensor):
            return batch[:, :-1], batch[:, 1:]
        if isinstance(batch, dict):
            targets = batch.get("targets", batch.get("labels"))
            if "input_ids" not in batch or targets is None:
                raise ValueError(
                    f"A dict batch needs 'input_ids' and 'targets' (or 'labels'); got keys {sorted(batch)}."
                )
            return batch["input_ids"], targets
        if isinstance(batch, (tuple, list)) and len(batch) == 2:
            return batch[0], batch[1]
        raise ValueError(
            f"GPTModule cannot read a batch of type {type(batch).__name__}: expected (input_ids, targets), a dict with "
            "'input_ids' and 'targets', or a (B, T + 1) tensor of token ids."
        )

    def compute_loss(self, logits: Tensor, targets: Tensor) -> Tensor:
        """Mean next-token cross-entropy over the targets that are not ``IGNORE_INDEX`` (padding).

        Override to add terms (e.g. a z-loss); called by the training, validation and test steps.

        Args:
            logits: ``(B, T, vocab_size)``.
            targets: ``(B, T)`` next-token ids, ``IGNORE_INDEX`` where ignored.
        """
        return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=IGNORE_INDEX)

    def _shared_step(self, batch: Any) -> tuple[Tensor, Tensor]:
        idx, targets = self.split_batch(batch)
        logits = self._training_model()(idx)  # (B, T, vocab_size)
        n_tokens = (targets != IGNORE_INDEX).sum()
        self._batch_shape = tuple(idx.shape)
        return self.compute_loss(logits, targets), n_tokens

    def _training_model(self) -> Any:
        """The model the loss steps call: ``self.model``, or its ``torch.compile`` wrapper when ``compile`` is on."""
        if not self._compile_forward:
            return self.model
        if self._compiled is None or self._compiled[0] is not self.model:
            # Kept in a tuple so the wrapper is no submodule: state_dict keys stay the plain GPT's (no _orig_mod.).
            self._compiled = (self.model, torch.compile(self.model))
        return self._compiled[1]

    @property
    def flops_per_batch(self) -> Optional[int]:
        """Training FLOPs of the last batch, ``(6N + 12 L T d) * B * T`` (read by Lightning's ``ThroughputMonitor``)."""
        shape = getattr(self, "_batch_shape", None)
        if shape is None:
            return None
        from lightning_gpt.callbacks.throughput import flops_per_token

        batch_size, seq_len = shape
        return flops_per_token(self.config, seq_len=seq_len) * batch_size * seq_len

    def on_train_start(self) -> None:
        if self._step_seed is None:
            self._step_seed = int(self.dropout_seed) if self.dropout_seed is not None else torch.initial_seed()

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        # The RNG state of a step is a pure function of the step, so resuming reproduces dropout exactly.
        seed = _mix_seed(self._step_seed or 0, self.global_rank, self.global_step, batch_idx)
        # Not torch.manual_seed: it also queues seeds for every uninitialized backend (CUDA, XPU, MTIA), formatting a
        # stack trace each time (~1 ms per step). Seed only the generators this step draws from.
        torch.default_generator.manual_seed(seed)
        if self.device.type == "cuda":
            torch.cuda.manual_seed(seed)
        elif self.device.type != "cpu":
            torch.manual_seed(seed)

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        loss, n_tokens = self._shared_step(batch)
        self.tokens_seen += n_tokens
        self.last_loss = loss.detach()  # read by NonFiniteGuard before the optimizer step
        # Lightning's self.log costs ~1 ms of Python per call: log on logging steps (Trainer(log_every_n_steps)),
        # plus the loss every step when a progress bar shows it.
        log_now = is_logging_step(self.trainer)
        if log_now or self.trainer.progress_bar_callback is not None:
            self.log("train/loss", loss.detach(), prog_bar=True)
        if log_now:
            self.log("train/ppl", loss.detach().exp())
            # Tokens over all ranks, assuming every rank sees as many (true for packed batches).
            self.log("train/tokens_seen", self.tokens_seen.float() * self.trainer.world_size)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        loss, n_tokens = self._shared_step(batch)
        self.val_loss.update(loss, weight=n_tokens.clamp(min=1))

    def on_validation_epoch_end(self) -> None:
        loss = self.val_loss.compute()
        self.log("val/loss", loss, prog_bar=True, sync_dist=False)
        self.log("val/ppl", loss.exp())
        self.val_loss.reset()

    def test_step(self, batch: Any, batch_idx: int) -> None:
        loss, n_tokens = self._shared_step(batch)
        self.test_loss.update(loss, weight=n_tokens.clamp(min=1))

    def on_test_epoch_end(self) -> None:
        loss = self.test_loss.compute()
        self.log("test/loss", loss)
        self.log("test/ppl", loss.exp())
        self.test_loss.reset()

    # ------------------------------------------------------------------ optimizer

    def parameter_groups(self) -> list[dict[str, Any]]:
        """AdamW groups: weight decay on matrices; none on biases, LayerNorms and embeddings (each parameter once)."""
        embedding_ids = {id(m.weight) for m in self.modules() if isinstance(m, torch.nn.Embedding)}
        decay, no_decay = [], []
        for _, param in self.named_parameters():  # named_parameters() yields a tied weight once
            if not param.requires_grad:
                continue
            (no_decay if param.dim() < 2 or id(param) in embedding_ids else decay).append(param)
        return [
            {"params": decay, "weight_decay": self.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ]

    def configure_optimizers(self) -> torch.optim.Optimizer:
        """AdamW over ``parameter_groups()``; no scheduler here (the LR schedule is the ``LRSchedule`` callback)."""
        groups = self.parameter_groups()
        params = [p for g in groups for p in g["params"]]
        fused = self.fused
        if fused is None:
            fused = bool(params) and all(p.device.type == "cuda" for p in params)
        kwargs: dict[str, Any] = {"fused": True} if fused else {}
        return torch.optim.AdamW(groups, lr=self.learning_rate, betas=self.betas, eps=self.eps, **kwargs)

    # ------------------------------------------------------------------ prediction

    def predict_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> list[dict[str, Any]]:
        """Decode a batch of prompts: a list of strings or a dict with ``prompt``/``prompts``.

        Returns one dict per completion: ``prompt``, ``completion``, ``tokens``, ``finish_reason``.
        """
        if isinstance(batch, dict):
            batch = batch.get("prompts", batch.get("prompt"))
        if isinstance(batch, str):
            batch = [batch]
        if not isinstance(batch, (list, tuple)) or not all(isinstance(p, str) for p in batch):
            raise ValueError(
                f"predict expects batches of prompt strings (a list of str, or a dict with 'prompt'), got "
                f"{type(batch).__name__}."
            )
        return self.generate_text(list(batch))

    def generate_text(self, prompts: list[str], **overrides: Any) -> list[dict[str, Any]]:
        """Decode ``prompts`` with the module's tokenizer and ``generation`` settings (``overrides`` win)."""
        if self.tokenizer is None:
            raise ValueError(
                "GPTModule has no tokenizer: train with a data module that provides one, or load a checkpoint that "
                "holds one (checkpoints saved by GPTModule do)."
            )
        from lightning_gpt.generation.text import generate_text

        kwargs = {**self.generation.to_kwargs(self.device), **overrides}
        return generate_text(self.model, self.tokenizer, prompts, **kwargs)

    # ------------------------------------------------------------------ checkpoint

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["gpt_config"] = self.config.to_dict()
        if self.tokenizer is not None:
            checkpoint["tokenizer"] = self.tokenizer.state_dict()
        checkpoint["tokens_seen"] = int(self.tokens_seen)
        checkpoint["step_seed"] = self._step_seed

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if "gpt_config" not in checkpoint:
            raise ValueError(
                "This checkpoint has no 'gpt_config' entry, so it was not saved by lightning_gpt's GPTModule. Load "
                "plain weights into a GPT yourself, or convert Hugging Face weights with lightning_gpt.convert."
            )
        # The tokenizer first: a different tokenizer also changes vocab_size, and its error names the real cause.
        self._restore_tokenizer(checkpoint.get("tokenizer"))
        saved = resolve_checkpoint_config(checkpoint["gpt_config"], self.config if self._config_given else None)
        self._adopt_config(saved)
        self.tokens_seen.fill_(int(checkpoint.get("tokens_seen", 0)))
        if checkpoint.get("step_seed") is not None:
            self._step_seed = int(checkpoint["step_seed"])

    def _adopt_config(self, config: GPTConfig) -> None:
        old = self.config
        self.config = config
        self.hparams["config"] = config.to_dict()
        if self.model is None or old == config:
            return
        if getattr(self.model, "_lightning_gpt_sharded", False) or (
            self._trainer is not None and self.trainer.optimizers
        ):
            raise ValueError(
                "The checkpoint's model config differs from the model already built and sharded/optimized; pass the "
                "checkpoint's config as model.config (see checkpoint['gpt_config'])."
            )
        device = next(self.model.parameters()).device
        self.model = GPT(config).to(device)

    def _restore_tokenizer(self, state: Optional[dict[str, Any]]) -> None:
        if state is None:
            return
        if self.tokenizer is not None:
            if hasattr(self.tokenizer, "check_compatible"):
                self.tokenizer.check_compatible(state)
            elif _json_normal(self.tokenizer.state_dict()) != _json_normal(state):
                raise ValueError(
                    "The data module's tokenizer differs from the one saved in the checkpoint, so token ids would not "
                    "mean the same thing. Use the same tokenizer settings (and corpus, for trained tokenizers) as the "
                    "run that saved the checkpoint, or start a new run without ckpt_path."
                )
            return
        try:
            from lightning_gpt.data import tokenizer_from_state_dict
        except ImportError:  # the data package is optional for loading weights
            log.warning("lightning_gpt.data is not importable; the checkpoint's tokenizer was not restored.")
            return
        self.tokenizer = tokenizer_from_state_dict(state)
