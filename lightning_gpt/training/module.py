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
from torchmetrics import Metric

from lightning_gpt.attention import get_attention
from lightning_gpt.batch import split_batch
from lightning_gpt.config import IGNORE_INDEX, GPTConfig
from lightning_gpt.generation.config import GenerationConfig
from lightning_gpt.io.checkpoint import resolve_checkpoint_config
from lightning_gpt.model import GPT, Block
from lightning_gpt.seeding import derive_seed, mix_seed
from lightning_gpt.training._lightning_internals import attached_trainer, should_update_logs

__all__ = ["GPTModule", "GenerationConfig", "IGNORE_INDEX", "is_logging_step"]

log = logging.getLogger(__name__)


def is_logging_step(trainer: Any) -> bool:
    """Whether the current training step is one whose metrics the loggers record (every ``log_every_n_steps``)."""
    return should_update_logs(trainer)


def _json_normal(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, default=str)


class TokenMeanLoss(Metric):
    """Token-weighted mean of per-batch mean losses: (sum over batches of mean x tokens) / (sum of tokens), summed
    over ranks. A batch without target tokens adds nothing; a real NaN stays NaN (torchmetrics' ``MeanMetric`` drops
    NaN values by default)."""

    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        self.add_state("loss_sum", torch.zeros(()), dist_reduce_fx="sum")
        self.add_state("tokens", torch.zeros(()), dist_reduce_fx="sum")

    def update(self, loss: Tensor, n_tokens: Tensor) -> None:
        """Add one batch.

        Args:
            loss: the batch's mean loss per target token (a scalar; ``0`` when it has none).
            n_tokens: the batch's target-token count.
        """
        n_tokens = torch.as_tensor(n_tokens, device=self.tokens.device).float()
        self.loss_sum += loss.detach().float() * n_tokens
        self.tokens += n_tokens

    def compute(self) -> Tensor:
        """The mean loss per target token (NaN when no batch had any target token)."""
        return self.loss_sum / self.tokens


class GPTModule(LightningModule):
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
        compile: run the training/validation/test forward through ``torch.compile`` (inductor: the system C compiler
            on CPU, Triton on CUDA). The first steps pay the compilation; decoding (``predict``, ``generate``) keeps
            the eager model, and checkpoints hold the plain ``GPT``'s parameter names. Under FSDP2 the sharded model
            is compiled.

    Loss weighting. The loss of one optimizer step is (sum of the token losses) / (number of target tokens), both
    over the whole accumulated batch (``Trainer(accumulate_grad_batches)`` micro-batches) and over every rank, so each
    target token weighs the same whatever the padding, the batch split or the number of devices: batch 8 x
    accumulation 1 on one device, 2 x 2 on two devices and 1 x 8 on one device give the same gradient. How: the
    token count of a whole window is only known once its last micro-batch is seen, and gradients are linear, so each
    ``training_step`` backpropagates its token sum divided by a run constant (``config.block_size``), the two counts
    (loss sum, tokens) accumulate on the side, and ``optimizer_step`` all-reduces them once per step and rescales the
    gradients right after the last backward (and the DDP/FSDP reduction), before clipping, the non-finite check and
    the update. This needs nothing from the data side (no look-ahead, any data module works). A micro-batch whose
    targets are all ``IGNORE_INDEX`` adds zero loss and zero gradient; a step without any target token changes no
    weight. The logged ``train/loss`` (and ``train/ppl``) is the token-weighted mean of the step over all ranks,
    ``val/loss`` and ``test/loss`` the token-weighted mean over the whole set, and ``train/tokens_seen`` counts target
    tokens over all ranks.
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
        if init_from is not None:
            from lightning_gpt.io.init_from import resolve_init_config

            config = resolve_init_config(init_from, config)
        self.init_from = init_from
        self._config_given = config is not None
        self.config: GPTConfig = config if config is not None else GPTConfig()
        get_attention(self.config.attention)  # the model is built later: fail now on an unregistered attention kind
        self.learning_rate = learning_rate
        self.weight_decay = weight_decay
        self.betas = tuple(betas)
        self.eps = eps
        self.fused = fused
        self.generation = generation if generation is not None else GenerationConfig()
        self.dropout_seed = dropout_seed
        self._compile_forward = compile  # (not self.compile: that would hide nn.Module.compile)
        # Hyperparameters stay plain (dicts, numbers) so checkpoints load with torch.load(weights_only=True).
        # init_from is not saved: the checkpoint holds the resolved config and the weights, so it stands alone.
        self.save_hyperparameters(ignore=["config", "generation", "init_from"])
        self.hparams["config"] = config.to_dict() if config is not None else None
        self.hparams["generation"] = dataclasses.asdict(self.generation)

        self.model: Optional[GPT] = None
        self._compiled: Optional[tuple[GPT, Any]] = None  # (model, its torch.compile wrapper), not a submodule
        self.tokenizer: Any = None
        self._step_seed: Optional[int] = None
        self.register_buffer("tokens_seen", torch.zeros((), dtype=torch.long), persistent=False)
        self._window: Optional[Tensor] = None  # (summed token losses, target tokens) of the accumulating step
        self._step_loss: Optional[Tensor] = None
        self.val_loss = TokenMeanLoss()
        self.test_loss = TokenMeanLoss()

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
        datamodule = getattr(self.trainer, "datamodule", None) if attached_trainer(self) is not None else None
        tokenizer = getattr(datamodule, "tokenizer", None) if datamodule is not None else None
        if tokenizer is None:
            return
        self.tokenizer = tokenizer
        vocab = int(tokenizer.vocab_size)
        if self.init_from is not None:
            self._check_init_tokenizer(tokenizer)
        if vocab == self.config.vocab_size:
            return
        if self.model is not None:
            # A built model keeps its table; the tokenizer only has to fit in it.
            rows = self.model.config.padded_vocab_size
            if vocab > rows:
                raise ValueError(
                    f"The model was built with a vocabulary table of {rows} ids but the data module's tokenizer has "
                    f"{vocab} tokens. Build GPTModule without a model (it sizes the vocabulary from the tokenizer) or "
                    f"use a tokenizer of at most {rows} tokens."
                )
            return
        # vocab_size counts the tokenizer's ids; the table is that rounded up to padded_vocab_multiple (the padding
        # the user asked for survives, and the table always fits the tokenizer).
        new = dataclasses.replace(self.config, vocab_size=vocab)
        rank_zero_info(
            f"GPTModule: vocab_size {self.config.vocab_size} -> {vocab} (from the tokenizer); embedding table of "
            f"{new.padded_vocab_size} rows (padded_vocab_multiple={new.padded_vocab_multiple})."
        )
        self.config = new
        self.hparams["config"] = self.config.to_dict()

    def _check_init_tokenizer(self, tokenizer: Any) -> None:
        from lightning_gpt.io.init_from import init_tokenizer_state

        state = init_tokenizer_state(self.init_from, trust_checkpoint=self._trust_checkpoint())
        try:
            if state is not None:
                tokenizer.check_compatible(state)
            if int(tokenizer.vocab_size) != self.config.vocab_size:
                raise ValueError(f"{tokenizer.vocab_size} tokens vs {self.config.vocab_size} rows in the embedding")
        except ValueError as err:
            raise ValueError(
                f"The data module's tokenizer is not the one of init_from={self.init_from!r} ({err}). Leave the data "
                "tokenizer unset on the command line (it then defaults to init_from's) or pass "
                f"data.tokenizer={self.init_from!r}."
            ) from None

    def _trust_checkpoint(self) -> bool:
        # --trust_checkpoint reaches the trainer's checkpoint IO; the same opt-in covers init_from.
        io = getattr(self.trainer.strategy, "checkpoint_io", None) if self._trainer is not None else None
        return bool(getattr(io, "trust_checkpoint", False))

    def configure_model(self) -> None:
        """Build the GPT (once), from ``init_from``'s weights when given. Under ``ModelParallelStrategy`` (FSDP2),
        shard each Block and then the root."""
        if self.model is None:
            self.model = GPT(self.config)
            if self.init_from is not None:
                from lightning_gpt.io.init_from import init_state_dict

                state = init_state_dict(self.init_from, self.config, trust_checkpoint=self._trust_checkpoint())
                try:
                    self.model.load_state_dict(state)
                except RuntimeError as err:
                    raise ValueError(
                        f"The weights of init_from={self.init_from!r} do not fit {self.config}: {err}"
                    ) from None
        if self.device_mesh is not None and not getattr(self.model, "_lightning_gpt_sharded", False):
            self._apply_fsdp2()

    def _apply_fsdp2(self) -> None:
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        strategy = self.trainer.strategy if attached_trainer(self) is not None else None
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

    split_batch = staticmethod(split_batch)  # (input_ids, targets) from any accepted batch form; see batch.py

    def compute_loss(self, logits: Tensor, targets: Tensor) -> Tensor:
        """Mean next-token cross-entropy over the targets that are not ``IGNORE_INDEX`` (padding, prompts).

        Override to add terms (e.g. a z-loss); called by the training, validation and test steps. Keep it a mean per
        target token: the steps weigh it by the batch's target-token count (see the class docstring), and a batch
        without any target token must give ``0`` (a mean over no tokens), not NaN.

        Args:
            logits: ``(B, T, vocab_size)``.
            targets: ``(B, T)`` next-token ids, ``IGNORE_INDEX`` where ignored.

        Returns:
            A scalar: the mean loss per target token, ``0`` (with a zero gradient) when every target is ignored.
        """
        targets = targets.flatten()
        total = F.cross_entropy(logits.flatten(0, 1).float(), targets, ignore_index=IGNORE_INDEX, reduction="sum")
        return total / (targets != IGNORE_INDEX).sum().clamp(min=1)

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
        """Training FLOPs of the last batch, ``GPT.flops_per_token(T) * B * T`` (read by ``ThroughputMonitor``)."""
        shape = getattr(self, "_batch_shape", None)
        if shape is None or self.model is None:
            return None
        batch_size, seq_len = shape
        key = (id(self.model), seq_len)
        if getattr(self, "_flops_key", None) != key:  # the parameter count walks the model: once per model and T
            self._flops_key, self._flops = key, self.model.flops_per_token(seq_len)
        return self._flops * batch_size * seq_len

    def on_train_start(self) -> None:
        self._window = None
        if self._step_seed is None:
            self._step_seed = derive_seed("dropout", self.dropout_seed)

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        # The RNG state of a step is a pure function of the step, so resuming reproduces dropout exactly.
        seed = mix_seed(self._step_seed or 0, self.global_rank, self.global_step, batch_idx)
        # Not torch.manual_seed: it also queues seeds for every uninitialized backend (CUDA, XPU, MTIA), formatting a
        # stack trace each time (~1 ms per step). Seed only the generators this step draws from.
        torch.default_generator.manual_seed(seed)
        if self.device.type == "cuda":
            torch.cuda.manual_seed(seed)
        elif self.device.type != "cpu":
            torch.manual_seed(seed)

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        """One micro-batch: backpropagate its summed token losses; the optimizer step divides by the token count of
        the whole accumulated batch over all ranks (see the class docstring).

        Returns:
            A scalar whose value is this micro-batch's mean token loss and whose gradient is that of its summed token
            losses divided by ``config.block_size`` (a fixed scale, corrected in ``optimizer_step``).
        """
        loss, n_tokens = self._shared_step(batch)
        loss_sum = loss * n_tokens  # compute_loss is a per-token mean (0 over no tokens), so this is the token sum
        if self._window is None:  # float64 keeps token counts exact (MPS has no float64)
            dtype = torch.float32 if loss.device.type == "mps" else torch.float64
            self._window = torch.zeros(2, dtype=dtype, device=loss.device)
        self._window += torch.stack([loss_sum.detach(), n_tokens]).to(self._window.dtype)
        scaled = loss_sum / self.config.block_size
        return scaled + (loss - scaled).detach()

    def optimizer_step(self, epoch: int, batch_idx: int, optimizer: Any, optimizer_closure: Any = None) -> None:
        """Step the optimizer on gradients divided by the accumulated batch's target tokens over all ranks.

        The closure runs the window's last ``training_step`` and backward (for DDP/FSDP, the gradient reduction too);
        right after it, before clipping and the ``on_before_optimizer_step`` callbacks, the gradients are rescaled.
        A subclass that overrides this hook must call ``super().optimizer_step(...)``.
        """

        def closure() -> Any:
            result = optimizer_closure() if optimizer_closure is not None else None
            self._normalize_gradients(optimizer)
            return result

        optimizer.step(closure=closure)

    def _normalize_gradients(self, optimizer: Any) -> None:
        window, self._window = self._window, None
        if window is None:
            return
        trainer = self.trainer
        world = trainer.world_size
        if world > 1:
            window = trainer.strategy.reduce(window, reduce_op="sum")
        loss_sum, n_tokens = window.tolist()
        n_tokens = int(n_tokens)
        params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        if n_tokens == 0:
            # No target token in the whole step: nothing to learn from. Drop the (zero) gradients so that AdamW
            # changes nothing, not even by weight decay or momentum.
            for p in params:
                p.grad = None
            self.last_loss = torch.tensor(loss_sum, device=self.device)  # 0, or NaN for a real fault
            self._step_loss = None
            return
        # Each micro-batch backpropagated sum / block_size; Lightning divided it by accumulate_grad_batches and DDP /
        # FSDP average the gradients over the ranks.
        factor = self.config.block_size * trainer.accumulate_grad_batches * world / n_tokens
        grads = [p.grad for p in params]
        if any(hasattr(g, "to_local") for g in grads):  # FSDP2 DTensor gradients
            for g in grads:
                g.mul_(factor)
        elif grads:
            torch._foreach_mul_(grads, factor)
        loss = torch.tensor(loss_sum / n_tokens, dtype=torch.float32, device=self.device)
        self.last_loss = loss  # read by NonFiniteGuard before the optimizer step
        self._step_loss = loss
        self.tokens_seen += n_tokens

    def on_before_optimizer_step(self, optimizer: Any) -> None:
        """Log the step's loss: the token-weighted mean over the whole accumulated batch and every rank."""
        if self._window is not None and self.automatic_optimization:
            raise RuntimeError(
                "GPTModule's gradients were not normalized before the optimizer step: a subclass overrides "
                "optimizer_step without calling "
                "super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)."
            )
        loss, self._step_loss = self._step_loss, None
        # Lightning's self.log costs ~1 ms of Python per call: log on logging steps (Trainer(log_every_n_steps)),
        # plus the loss every step when a progress bar shows it.
        log_now = is_logging_step(self.trainer)
        if loss is not None and (log_now or self.trainer.progress_bar_callback is not None):
            self.log("train/loss", loss, prog_bar=True)
        if loss is not None and log_now:
            self.log("train/ppl", loss.exp())
        if log_now:
            self.log("train/tokens_seen", self.tokens_seen.float())  # target tokens, all ranks

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        loss, n_tokens = self._shared_step(batch)
        self.val_loss.update(loss, n_tokens)

    def on_validation_epoch_end(self) -> None:
        loss = self.val_loss.compute()
        self.log("val/loss", loss, prog_bar=True, sync_dist=False)
        self.log("val/ppl", loss.exp())
        self.val_loss.reset()

    def test_step(self, batch: Any, batch_idx: int) -> None:
        loss, n_tokens = self._shared_step(batch)
        self.test_loss.update(loss, n_tokens)

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

    def on_predict_start(self) -> None:
        """Before decoding anything: every prompt of the data module must fit the context (a data module with
        ``check_prompt_lengths``, such as ``PromptDataModule``, names the file and line of one that does not)."""
        check = getattr(getattr(self.trainer, "datamodule", None), "check_prompt_lengths", None)
        if callable(check) and self.tokenizer is not None:
            check(self.tokenizer, self.config.block_size, self.generation.max_new_tokens)

    def generate_text(self, prompts: list[str], **overrides: Any) -> list[dict[str, Any]]:
        """Decode ``prompts`` with the module's tokenizer and ``generation`` settings (``overrides`` win)."""
        if self.tokenizer is None and self.init_from is not None:
            from lightning_gpt.data import tokenizer_from_state_dict
            from lightning_gpt.io.init_from import init_tokenizer_state

            state = init_tokenizer_state(self.init_from, trust_checkpoint=self._trust_checkpoint())
            self.tokenizer = tokenizer_from_state_dict(state) if state is not None else None
        if self.tokenizer is None:
            raise ValueError(
                "GPTModule has no tokenizer: train with a data module that provides one, or load a checkpoint that "
                "holds one (checkpoints saved by GPTModule do)."
            )
        from lightning_gpt.generation.text import generate_text

        # The module's one GenerationConfig travels down as is; overrides are folded into it once, in generate_text.
        return generate_text(self.model, self.tokenizer, prompts, self.generation, **overrides)

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
                "plain weights into a GPT yourself, or convert Hugging Face weights with lightning_gpt.io.convert."
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
            attached_trainer(self) is not None and self.trainer.optimizers
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
