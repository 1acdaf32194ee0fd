"""Registering your own attention core, without forking lightning-gpt.

A core receives projected ``q, k, v`` of shape ``(B, nh, T, hs)`` and implements the two calls every core has
(``lightning_gpt.attention.base``): a full causal ``forward`` and a decoding ``step`` over its state. Register it
under a name and select it with ``GPTConfig(attention=<name>)`` (or ``attention: <name>`` in a YAML recipe, once the
module defining it is imported).

The example core is ALiBi (Press et al., 2022): softmax attention with no position table needed, where each head
adds ``-slope_h * (i - j)`` to the score of query ``i`` and key ``j``. It reuses the standard core's masking and
KV cache, so cached decoding gives the same tokens as a full pass.

Run: ``python examples/custom_attention.py`` (trains a few steps, then decodes).
"""

from __future__ import annotations

import lightning.pytorch as pl
import torch
from torch import Tensor
from torch.utils.data import DataLoader, TensorDataset

from lightning_gpt import GPTConfig
from lightning_gpt.attention import StandardAttention, register_attention
from lightning_gpt.training.module import GPTModule


class ALiBiAttention(StandardAttention):
    """Causal softmax attention with ALiBi linear distance biases (one slope per head).

    Subclasses the ``standard`` core and overrides only ``scores``: masking, softmax, dropout and the KV cache are
    inherited. A core that is not softmax attention would subclass ``AttentionCore`` and implement ``forward``,
    ``init_state`` and ``_step`` (``step`` with the positions as a tensor) itself (see
    ``lightning_gpt/attention/linear.py``).
    """

    def __init__(self, config: GPTConfig) -> None:
        super().__init__(config)
        n = config.n_head
        slopes = torch.tensor([2 ** (-8.0 * (h + 1) / n) for h in range(n)])
        self.register_buffer("slopes", slopes.view(1, n, 1, 1), persistent=False)  # (1, nh, 1, 1)

    def scores(self, q: Tensor, k: Tensor, start_pos: int) -> Tensor:
        T_q, T_k = q.size(2), k.size(2)
        q_pos = torch.arange(start_pos, start_pos + T_q, device=q.device)
        distance = (q_pos[:, None] - torch.arange(T_k, device=q.device)[None, :]).to(q.dtype)  # (Tq, Tk)
        return super().scores(q, k, start_pos) - self.slopes.to(q.dtype) * distance  # (B, nh, Tq, Tk)


register_attention("alibi", ALiBiAttention, overwrite=True)


def main(max_steps: int = 20, seed: int = 0) -> tuple[GPTModule, list[float]]:
    """Train a tiny GPT with the ``alibi`` core for ``max_steps`` on random tokens, then decode a few tokens."""
    from lightning_gpt.generation import generate

    pl.seed_everything(seed, verbose=False)
    config = GPTConfig(vocab_size=64, block_size=32, n_layer=2, n_head=4, n_embd=32, attention="alibi")
    tokens = torch.randint(0, 64, (8, 33))
    loader = DataLoader(TensorDataset(tokens[:, :-1], tokens[:, 1:]), batch_size=8)
    module = GPTModule(config, learning_rate=3e-3)
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
        callbacks=[Record()],
    )
    trainer.fit(module, loader)
    prompt = tokens[:2, :5]
    cached = generate(module.model, prompt, max_new_tokens=8)
    uncached = generate(module.model, prompt, max_new_tokens=8, use_cache=False)
    assert torch.equal(cached, uncached), "cached decoding must match the full pass"
    print(f"alibi: loss {losses[0]:.3f} -> {losses[-1]:.3f}; decoded {cached[0, 5:].tolist()}")
    return module, losses


if __name__ == "__main__":
    main()
