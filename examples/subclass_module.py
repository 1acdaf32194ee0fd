"""Subclassing GPTModule: add a loss term and change the optimizer, keeping everything else (logging, checkpoints,
predict, callbacks) as it is.

* ``compute_loss`` is the hook for loss terms: here the z-loss of PaLM (``z_weight * log(Z)^2`` with ``Z`` the softmax
  normaliser), which keeps the logits from drifting.
* ``configure_optimizers`` is ordinary Lightning: here the embeddings get their own learning rate, on top of
  ``parameter_groups()`` (the decay / no-decay split).

Run: ``python examples/subclass_module.py`` (a few CPU seconds on random tokens).
"""

from __future__ import annotations

from typing import Optional

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader, TensorDataset

from lightning_gpt import GPTConfig
from lightning_gpt.training.callbacks import GradientClipping, LRSchedule
from lightning_gpt.training.module import IGNORE_INDEX, GPTModule


class ZLossGPTModule(GPTModule):
    """GPTModule with a z-loss term and a separate learning rate for the embeddings.

    Args:
        config: the model architecture.
        z_weight: weight of the z-loss term.
        embedding_lr_scale: learning rate of the embedding tables relative to ``learning_rate``.
        learning_rate: peak AdamW learning rate.
    """

    def __init__(
        self,
        config: Optional[GPTConfig] = None,
        z_weight: float = 1e-4,
        embedding_lr_scale: float = 0.5,
        learning_rate: float = 3e-4,
    ) -> None:
        super().__init__(config=config, learning_rate=learning_rate)
        self.z_weight = z_weight
        self.embedding_lr_scale = embedding_lr_scale

    def compute_loss(self, logits: Tensor, targets: Tensor) -> Tensor:
        ce = super().compute_loss(logits, targets)
        mask = targets != IGNORE_INDEX  # (B, T)
        log_z = torch.logsumexp(logits.float(), dim=-1)  # (B, T)
        z_loss = (log_z.square() * mask).sum() / mask.sum().clamp(min=1)
        self._z_loss = z_loss.detach()
        return ce + self.z_weight * z_loss

    def training_step(self, batch, batch_idx: int) -> Tensor:
        loss = super().training_step(batch, batch_idx)
        self.log("train/z_loss", self._z_loss)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        embeddings = {id(m.weight) for m in self.modules() if isinstance(m, torch.nn.Embedding)}
        groups = []
        for group in self.parameter_groups():
            emb = [p for p in group["params"] if id(p) in embeddings]
            rest = [p for p in group["params"] if id(p) not in embeddings]
            groups.append({**group, "params": rest})
            if emb:
                groups.append({**group, "params": emb, "lr": self.learning_rate * self.embedding_lr_scale})
        return torch.optim.AdamW(groups, lr=self.learning_rate, betas=self.betas, eps=self.eps)


def main(max_steps: int = 30, seed: int = 0) -> tuple[ZLossGPTModule, list[float]]:
    """Train the subclass for ``max_steps`` on a repeated batch of random tokens; returns the module and the losses."""
    pl.seed_everything(seed, verbose=False)
    config = GPTConfig(vocab_size=64, block_size=32, n_layer=2, n_head=2, n_embd=32)
    tokens = torch.randint(0, 64, (8, 33))
    loader = DataLoader(TensorDataset(tokens[:, :-1], tokens[:, 1:]), batch_size=8)
    module = ZLossGPTModule(config, learning_rate=3e-3)
    losses: list[float] = []

    class Record(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            losses.append(float(outputs["loss"]))

    trainer = pl.Trainer(
        accelerator="cpu",
        max_steps=max_steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[LRSchedule(warmup_steps=5), GradientClipping(1.0), Record()],
    )
    trainer.fit(module, loader)
    with torch.no_grad():
        logits = module.model(tokens[:, :-1])
        ce = F.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten())
    print(f"loss {losses[0]:.3f} -> {losses[-1]:.3f} (cross-entropy alone now {ce:.3f})")
    return module, losses


if __name__ == "__main__":
    main()
