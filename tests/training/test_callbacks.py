"""Callbacks: LR schedule values, clipping, the non-finite guard, sample generation, FLOPs per token."""

from __future__ import annotations

import math
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger

from lightning_gpt import GPT, GPTConfig
from lightning_gpt.data import CharTokenizer
from lightning_gpt.generation.config import SAMPLE_CALLBACK_DEFAULTS, GenerationConfig
from lightning_gpt.training.callbacks import (
    GradientClipping,
    LRSchedule,
    ModelCheckpoint,
    NonFiniteError,
    NonFiniteGuard,
    SampleGeneration,
    clip_grad_norm,
    flops_per_token,
    lr_at,
    num_parameters,
)
from lightning_gpt.training.module import GPTModule
from tests import helpers

TINY = dict(vocab_size=33, block_size=16, n_layer=2, n_head=2, n_embd=32)


def ToyData(**kwargs):
    """This file's data: 64 shuffled rows of 16 tokens below 29, in batches of 4."""
    return helpers.ToyData(**{"vocab": 29, "batch_size": 4, "shuffle": True, **kwargs})


def make_trainer(tmp_path, callbacks=(), **kwargs) -> pl.Trainer:
    return helpers.plain_trainer(tmp_path, callbacks, **{"max_steps": 6, **kwargs})


class Recorder(pl.Callback):
    """Records losses, the lr used and the gradient norm seen (after the callbacks listed before it)."""

    def __init__(self) -> None:
        self.losses, self.lrs, self.grad_norms = [], [], []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        grads = [p.grad for p in pl_module.parameters() if p.grad is not None]
        self.grad_norms.append(float(torch.nn.utils.get_total_norm(grads)) if grads else None)
        self.lrs.append(optimizer.param_groups[0]["lr"])

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.losses.append(float(outputs["loss"]))


class NaNAtStep(GPTModule):
    """Injects a non-finite loss at one global step."""

    def __init__(self, *args, nan_step: int = 3, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.nan_step = nan_step

    def compute_loss(self, logits, targets):
        loss = super().compute_loss(logits, targets)
        if self.training and self.trainer.global_step == self.nan_step:
            loss = loss * float("nan")
        return loss


# ---------------------------------------------------------------------------------------------- LR schedule


def test_lr_schedule_values():
    kw = dict(base_lr=1e-3, warmup_steps=10, decay_steps=110, min_lr=1e-4)
    assert lr_at(0, **kw) == pytest.approx(1e-3 / 11)
    assert lr_at(9, **kw) == pytest.approx(1e-3 * 10 / 11)
    assert lr_at(10, **kw) == pytest.approx(1e-3)  # peak right after warmup
    assert lr_at(60, **kw) == pytest.approx(1e-4 + 0.5 * (1e-3 - 1e-4))  # cosine half-way
    assert lr_at(110, **kw) == pytest.approx(1e-4) and lr_at(10_000, **kw) == pytest.approx(1e-4)  # the floor
    assert lr_at(60, **kw, schedule="linear") == pytest.approx(1e-4 + 0.5 * (1e-3 - 1e-4))
    assert lr_at(35, **kw, schedule="linear") == pytest.approx(1e-4 + 0.75 * (1e-3 - 1e-4))
    assert lr_at(500, **kw, schedule="constant") == pytest.approx(1e-3)
    values = [lr_at(s, **kw) for s in range(10, 111)]
    assert all(a >= b for a, b in zip(values, values[1:]))  # monotone decay


def test_lr_schedule_sets_the_optimizer_each_step(tmp_path):
    torch.manual_seed(0)
    rec = Recorder()
    sched = LRSchedule(warmup_steps=2, decay_steps=6, min_lr_ratio=0.1)
    make_trainer(tmp_path, [sched, rec], max_steps=8).fit(GPTModule(GPTConfig(**TINY), learning_rate=1e-3), ToyData())
    expected = [lr_at(s, base_lr=1e-3, warmup_steps=2, decay_steps=6, min_lr=1e-4) for s in range(8)]
    assert rec.lrs == pytest.approx(expected)


def test_lr_schedule_errors():
    with pytest.raises(ValueError, match="schedule must be one of"):
        LRSchedule(schedule="exp")
    with pytest.raises(ValueError, match=r"decay_steps \(5\) must be >= warmup_steps \(10\)"):
        LRSchedule(warmup_steps=10, decay_steps=5)


# ---------------------------------------------------------------------------------------------- clipping


def test_clipping_logs_pre_clip_norm_and_clips(tmp_path):
    torch.manual_seed(0)
    before, after = Recorder(), Recorder()
    logged = []

    class Grab(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            logged.append(float(trainer.callback_metrics["train/grad_norm"]))

    clip = GradientClipping(max_norm=0.05)
    make_trainer(tmp_path, [before, clip, after, Grab()], max_steps=4, log_every_n_steps=1).fit(
        GPTModule(GPTConfig(**TINY)), ToyData()
    )
    assert all(n > 0.05 for n in before.grad_norms)  # the test really clips
    assert logged == pytest.approx(before.grad_norms, rel=1e-5)  # logged value is the norm before clipping
    assert all(n <= 0.05 * (1 + 1e-4) for n in after.grad_norms)
    assert after.grad_norms == pytest.approx([0.05] * 4, rel=1e-3)


def test_metrics_are_logged_on_logging_steps_only(tmp_path):
    torch.manual_seed(0)
    seen = []

    class Grab(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            seen.append((trainer.global_step, sorted(trainer.callback_metrics)))

    callbacks = [LRSchedule(warmup_steps=1), GradientClipping(), Grab()]
    module = GPTModule(GPTConfig(**TINY), default_callbacks=False)  # exactly the callbacks above
    make_trainer(tmp_path, callbacks, max_steps=4, log_every_n_steps=2).fit(module, ToyData())
    expected = ["train/grad_norm", "train/loss", "train/lr", "train/ppl", "train/tokens_seen"]
    assert seen[0] == (1, []) and seen[1] == (2, expected)  # step 2 is a logging step
    assert seen[3] == (4, expected)


def test_clipping_refuses_trainer_gradient_clip_val(tmp_path):
    with pytest.raises(ValueError, match="clipped twice"):
        make_trainer(tmp_path, [GradientClipping()], gradient_clip_val=1.0).fit(GPTModule(GPTConfig(**TINY)), ToyData())


# ---------------------------------------------------------------------------------------------- non-finite guard


def test_nonfinite_stop_names_the_step_and_keeps_checkpoints_finite(tmp_path):
    torch.manual_seed(0)
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=1, save_top_k=-1, save_last=True)
    module = NaNAtStep(GPTConfig(**TINY), nan_step=3)
    trainer = make_trainer(tmp_path, [NonFiniteGuard(), ckpt], max_steps=6, enable_checkpointing=True)
    with pytest.raises(NonFiniteError, match=r"Non-finite loss at training step 3 \(epoch 0\)"):
        trainer.fit(module, ToyData())
    assert trainer.global_step == 3  # the failing step was not taken
    assert all(torch.isfinite(p).all() for p in module.parameters())
    saved = sorted((tmp_path / "ckpt").glob("*.ckpt"))
    assert saved, "the good checkpoints before the NaN step exist"
    for path in saved:
        state = torch.load(path, weights_only=True)
        assert state["global_step"] <= 3
        assert all(torch.isfinite(t).all() for t in state["state_dict"].values() if t.is_floating_point())
    assert torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=True)["global_step"] == 3


def test_nonfinite_skip_policy_skips_the_update(tmp_path):
    torch.manual_seed(0)
    guard = NonFiniteGuard(policy="skip")
    snapshots = {}

    class Snap(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            snapshots[trainer.global_step] = [p.detach().clone() for p in pl_module.parameters()]

    module = NaNAtStep(GPTConfig(**TINY), nan_step=2)
    rec = Recorder()
    with pytest.warns(UserWarning, match="skipped this optimizer step"):
        make_trainer(tmp_path, [guard, Snap(), rec], max_steps=5).fit(module, ToyData())
    assert guard.skipped_steps == 1
    assert math.isnan(rec.losses[2]) and all(math.isfinite(x) for i, x in enumerate(rec.losses) if i != 2)
    # the NaN step (global step 2) changed no weight: its "after" equals its "before"
    for a, b in zip(snapshots[2], snapshots[3]):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    for a, b in zip(snapshots[1], snapshots[2]):  # while a normal step does change them
        if not torch.equal(a, b):
            break
    else:
        pytest.fail("a normal step changed nothing")


def test_guard_refuses_to_save_nan_weights(tmp_path):
    torch.manual_seed(0)
    trainer = make_trainer(tmp_path, [NonFiniteGuard()], max_steps=1)
    module = GPTModule(GPTConfig(**TINY))
    trainer.fit(module, ToyData())
    with torch.no_grad():
        module.model.transformer.h[0].mlp.c_fc.weight[0, 0] = float("inf")
    with pytest.raises(NonFiniteError, match="Refusing to save a checkpoint: weight 'model.transformer.h.0.mlp"):
        trainer.save_checkpoint(tmp_path / "bad.ckpt")
    assert not (tmp_path / "bad.ckpt").exists()


def test_guard_policy_error():
    with pytest.raises(ValueError, match="policy must be one of"):
        NonFiniteGuard(policy="ignore")


# ---------------------------------------------------------------------------------------------- samples


@pytest.mark.slow
def test_sample_generation_runs_and_does_not_change_training(tmp_path):
    tok = CharTokenizer("abcdefghijklmnopqrstuvwxyz .\n")
    losses = []
    for with_samples in (False, True):
        torch.manual_seed(0)
        rec = Recorder()
        sampler = SampleGeneration(
            every_n_steps=2,
            prompts=["ab", "the "],
            generation=GenerationConfig.fold(SAMPLE_CALLBACK_DEFAULTS, max_new_tokens=6, top_k=5),
        )
        callbacks = [sampler, rec] if with_samples else [rec]
        logger = CSVLogger(tmp_path / f"logs{with_samples}")
        make_trainer(tmp_path, callbacks, max_steps=5, logger=logger).fit(
            GPTModule(GPTConfig(**TINY, dropout=0.1)), ToyData(tokenizer=tok)
        )
        losses.append(rec.losses)
    assert losses[0] == losses[1]  # bit-identical training with or without sampling
    assert len(sampler.last_samples) == 2 and sampler.last_samples[1]["prompt"] == "the "
    csv_text = (tmp_path / "logsTrue" / "lightning_logs" / "version_0" / "samples.csv").read_text()
    assert csv_text.startswith("step,prompt,completion") and csv_text.count("\n4,") == 2  # steps 2 and 4


# ---------------------------------------------------------------------------------------------- FLOPs


def test_flops_per_token_matches_nanogpt_estimate():
    with torch.device("meta"):  # no memory, no init: only shapes are counted
        model = GPT(GPTConfig.from_name("gpt2"))
    n = num_parameters(model)
    assert n == 123_653_376  # nanoGPT: "number of parameters: 123.65M" (position table excluded)
    assert flops_per_token(model) == 6 * n + 12 * 12 * 1024 * 768 == 855_166_464
    assert num_parameters(model, non_embedding=False) == n + 1024 * 768
    assert num_parameters(GPTConfig.from_name("gpt2")) == n  # a config is counted through a meta-device model
    assert flops_per_token(GPTConfig.from_name("gpt2")) == 855_166_464


def test_each_attention_kind_counts_its_own_flops():
    d, L, T = TINY["n_embd"], TINY["n_layer"], 64
    models = {
        "standard": GPT(GPTConfig(**TINY)),
        "flash": GPT(GPTConfig(**TINY, attention="flash")),
        "local": GPT(GPTConfig(**TINY, attention="sparse", attention_window=8)),
        "strided": GPT(GPTConfig(**TINY, attention="sparse", sparse_pattern="strided", attention_window=8)),
        "longformer": GPT(GPTConfig(**TINY, attention="sparse", sparse_pattern="longformer", attention_window=8)),
        "linear": GPT(GPTConfig(**TINY, attention="linear", linear_chunk_size=16)),
    }
    attention = {k: flops_per_token(m, T) - 6 * num_parameters(m) for k, m in models.items()}
    assert attention["standard"] == attention["flash"] == 12 * L * T * d  # full causal attention
    assert attention["local"] == 12 * L * 8 * d  # a window of 8 keys per query
    # strided: the window plus the summary keys 7, 15, ..., 55 (those that can lie outside some query's window)
    assert attention["strided"] == 12 * L * (8 + 7) * d
    assert attention["longformer"] == 12 * L * (8 + 1) * d  # the window plus one global token
    assert attention["linear"] == 12 * L * d * (16 + d // TINY["n_head"])  # chunk + head size
    assert max(attention[k] for k in ("local", "strided", "longformer", "linear")) < attention["standard"]


def test_a_custom_cores_parameters_and_flops_are_counted():
    from lightning_gpt.attention import StandardAttention, register_attention
    from lightning_gpt.attention import base as attention_base

    class GatedAttention(StandardAttention):
        def __init__(self, config):
            super().__init__(config)
            self.gate = torch.nn.Parameter(torch.ones(config.n_head, 1, 1))

        def flops_per_token(self, seq_len):
            return 7

    register_attention("test-gated", GatedAttention)
    try:
        plain, gated = GPT(GPTConfig(**TINY)), GPT(GPTConfig(**TINY, attention="test-gated"))
        extra = TINY["n_layer"] * TINY["n_head"]
        assert num_parameters(gated) == num_parameters(plain) + extra
        assert flops_per_token(gated, 16) == 6 * num_parameters(gated) + 7 * TINY["n_layer"]
    finally:
        attention_base._REGISTRY.pop("test-gated", None)


@pytest.mark.parametrize("fused", [False, True])
def test_clipping_unscales_fp16_gradients_first(fused):
    """Under fp16 AMP a fused optimizer's grads reach the hook still scaled; the clip must see true units."""
    from types import SimpleNamespace

    from lightning_gpt.training.callbacks.clipping import _ensure_unscaled

    results = []
    for scaled in (True, False):
        p = torch.nn.Parameter(torch.ones(4))
        opt = torch.optim.AdamW([p], lr=0.1, fused=fused)
        scaler = torch.amp.GradScaler("cpu", init_scale=1024.0, enabled=scaled)
        scaler.scale((p * 2).sum()).backward()
        trainer = SimpleNamespace(precision_plugin=SimpleNamespace(scaler=scaler if scaled else None))
        _ensure_unscaled(trainer, opt)
        _ensure_unscaled(trainer, opt)  # idempotent
        assert float(clip_grad_norm([p], 1.0)) == pytest.approx(4.0)  # true norm of grad 2 * ones(4)
        scaler.step(opt)
        scaler.update()
        results.append(p.detach().clone())
    torch.testing.assert_close(results[0], results[1])  # same update with or without the scaler


def test_throughput_monitor_logs_tokens_and_flops(tmp_path):
    import csv

    from lightning_gpt.training.callbacks import GPTThroughputMonitor

    torch.manual_seed(0)
    module = GPTModule(GPTConfig(**TINY))
    logger = CSVLogger(tmp_path)
    monitor = GPTThroughputMonitor(peak_flops=1e12)  # a made-up peak: CPUs have none in Lightning's table
    make_trainer(tmp_path, [monitor], max_steps=4, log_every_n_steps=2, logger=logger).fit(module, ToyData())
    assert module.flops_per_batch == flops_per_token(module.model, seq_len=16) * 4 * 16
    with open(Path(logger.log_dir) / "metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r.get("train/tokens_per_sec")]
    assert [int(r["step"]) for r in rows] == [1, 3]  # from the first logging step (global step 2; CSV counts from 0)
    for r in rows:
        tokens, flops, mfu = float(r["train/tokens_per_sec"]), float(r["train/flops_per_sec"]), float(r["train/mfu"])
        assert tokens > 0
        assert flops == pytest.approx(tokens * flops_per_token(module.model, seq_len=16), rel=1e-6)  # tokens x F/tok
        assert mfu == pytest.approx(flops / 1e12, rel=1e-6)


def test_samples_go_to_tensorboard_as_text(tmp_path):
    from lightning.pytorch.loggers import TensorBoardLogger
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    torch.manual_seed(0)
    tok = CharTokenizer("abcdefghijklmnopqrstuvwxyz .\n")
    logger = TensorBoardLogger(tmp_path)
    sampler = SampleGeneration(every_n_steps=2, prompts=["ab"], generation=GenerationConfig(max_new_tokens=3))
    make_trainer(tmp_path, [sampler], max_steps=2, logger=logger).fit(
        GPTModule(GPTConfig(**TINY)), ToyData(tokenizer=tok)
    )
    logger.experiment.flush()
    events = EventAccumulator(logger.log_dir, size_guidance={"tensors": 0}).Reload()
    texts = events.Tensors("samples/0/text_summary")
    assert len(texts) == 1 and texts[0].step == 2
    assert texts[0].tensor_proto.string_val[0].decode().startswith("**ab**")


def test_sample_prompts_are_checked_at_fit_start(tmp_path):
    tok = CharTokenizer("abcdefghijklmnopqrstuvwxyz .\n")
    long_prompt = "a" * 16  # block_size is 16
    sampler = SampleGeneration(every_n_steps=1000, prompts=["ok", long_prompt])
    with pytest.raises(ValueError, match=r"is 16 tokens long, which leaves no room .*block_size=16"):
        make_trainer(tmp_path, [sampler], max_steps=1).fit(GPTModule(GPTConfig(**TINY)), ToyData(tokenizer=tok))
    # a prompt near the context length generates only what fits
    near = SampleGeneration(every_n_steps=1, prompts=["a" * 13], generation=GenerationConfig(max_new_tokens=50))
    make_trainer(tmp_path, [near], max_steps=1).fit(GPTModule(GPTConfig(**TINY)), ToyData(tokenizer=tok))
    assert len(near.last_samples[0]["tokens"]) <= 3


def test_sample_generation_zero_turns_samples_off(tmp_path):
    tok = CharTokenizer("abcdefghijklmnopqrstuvwxyz .\n")
    off = SampleGeneration(every_n_steps=0, prompts=["a" * 20])  # too long, but never decoded, so not checked
    make_trainer(tmp_path, [off], max_steps=3).fit(GPTModule(GPTConfig(**TINY)), ToyData(tokenizer=tok))
    assert off.last_samples == []
    with pytest.raises(ValueError, match="or 0 to turn samples off"):
        SampleGeneration(every_n_steps=-1)
