"""``val/bpb`` and ``test/bpb``: the validation loss in bits per UTF-8 byte of the text, logged at each validation of
``fit`` and by ``validate``/``test``, checked against a computation of its own over the same loader."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from lightning_gpt.config import IGNORE_INDEX
from lightning_gpt.training import GPTModule, TextDataModule
from tests.helpers import plain_trainer, tiny_gpt_config


def test_val_bpb_is_the_summed_loss_in_bits_per_utf8_byte_of_the_targets(tmp_path):
    text = tmp_path / "text.txt"
    # multi-byte characters (2-, 3- and 4-byte UTF-8) so that bytes != characters != tokens
    text.write_text("".join(f"line {i}: café – naïve 🙂 ok\n" for i in range(300)), encoding="utf-8")
    data = TextDataModule(
        source=str(text),
        tokenizer="char",
        block_size=32,
        batch_size=4,
        val_source=str(text),
        cache_dir=str(tmp_path / "cache"),
        seed=0,
    )
    torch.manual_seed(0)
    module = GPTModule(tiny_gpt_config(block_size=32), learning_rate=1e-2)
    trainer = plain_trainer(tmp_path, max_steps=3, limit_val_batches=3)
    trainer.fit(module, data)
    logged = trainer.validate(module, data, verbose=False)[0]

    # independent: cross-entropy sum over the same 3 validation batches; bytes from decoding each target token
    module.eval()
    tok = data.tokenizer
    special = set(tok.special_ids)
    nats, n_bytes = 0.0, 0
    with torch.no_grad():
        for i, (x, y) in enumerate(data.val_dataloader()):
            if i == 3:
                break
            logits = module(x)
            nats += float(
                F.cross_entropy(logits.flatten(0, 1), y.flatten(), ignore_index=IGNORE_INDEX, reduction="sum")
            )
            n_bytes += sum(
                len(tok.decode([t]).encode("utf-8"))
                for t in y.flatten().tolist()
                if t != IGNORE_INDEX and t not in special
            )
    assert n_bytes > 0
    assert logged["val/bpb"] == pytest.approx(nats / math.log(2) / n_bytes, rel=1e-5)
    assert "val/bpb" in trainer.callback_metrics
