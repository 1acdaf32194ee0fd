"""GPTModule: loss goes down, optimizer groups, checkpoint contents, load_checkpoint, predict round trip."""

from __future__ import annotations

import dataclasses

import lightning.pytorch as pl
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from lightning_gpt import GPT, GPTConfig
from lightning_gpt.data import CharTokenizer
from lightning_gpt.io.checkpoint import load_checkpoint
from lightning_gpt.training.module import GPTModule
from tests.helpers import TINY_GPT as TINY
from tests.helpers import ToyDataWithVal as ToyData
from tests.helpers import plain_trainer as trainer


def ToyTokenizer():
    """The package's character tokenizer over a small alphabet (ids 0..28 for chars, then 4 specials)."""
    return CharTokenizer("abcdefghijklmnopqrstuvwxyz .\n")


class LossRecorder(pl.Callback):
    def __init__(self) -> None:
        self.losses = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.losses.append(float(outputs["loss"]))


def test_loss_decreases_on_a_repeated_batch(tmp_path):
    torch.manual_seed(0)
    data = ToyData(n=8, batch_size=8)
    module = GPTModule(GPTConfig(**TINY), learning_rate=3e-3, weight_decay=0.0, default_callbacks=False)  # plain AdamW
    rec = LossRecorder()
    trainer(tmp_path, max_steps=20, callbacks=[rec]).fit(module, data)
    assert len(rec.losses) == 20
    assert rec.losses[-1] < 0.75 * rec.losses[0], rec.losses
    assert int(module.tokens_seen) == 20 * 8 * 16


def test_optimizer_groups_are_exact():
    module = GPTModule(GPTConfig(**TINY), weight_decay=0.1)
    module.configure_model()
    opt = module.configure_optimizers()
    names = {id(p): n for n, p in module.named_parameters()}
    decay = {names[id(p)] for p in opt.param_groups[0]["params"]}
    no_decay = {names[id(p)] for p in opt.param_groups[1]["params"]}
    assert opt.param_groups[0]["weight_decay"] == 0.1 and opt.param_groups[1]["weight_decay"] == 0.0
    assert not decay & no_decay
    assert decay | no_decay == set(names.values())  # every parameter once (the tied lm_head is wte)
    assert "model.transformer.wte.weight" in no_decay and "model.transformer.wpe.weight" in no_decay
    assert all(n.endswith("bias") or ".ln_" in n or "wte" in n or "wpe" in n for n in no_decay)
    assert all(n.endswith("weight") and ".ln_" not in n and "wte" not in n and "wpe" not in n for n in decay)
    assert len(decay) == 4 * TINY["n_layer"]  # c_attn, attn.c_proj, c_fc, mlp.c_proj per block
    n_params = sum(p.numel() for g in opt.param_groups for p in g["params"])
    assert n_params == sum(p.numel() for p in module.model.parameters())


def test_untied_head_decays_and_fused_flag():
    module = GPTModule(GPTConfig(**{**TINY, "tie_weights": False}), fused=False)
    module.configure_model()
    opt = module.configure_optimizers()
    decay_ids = {id(p) for p in opt.param_groups[0]["params"]}
    assert id(module.model.lm_head.weight) in decay_ids
    assert not opt.defaults.get("fused")


def test_checkpoint_holds_config_and_tokenizer_and_loads(tmp_path):
    torch.manual_seed(0)
    tok = ToyTokenizer()
    data = ToyData(n=16, vocab=tok.vocab_size, tokenizer=tok)
    module = GPTModule(GPTConfig(**TINY))  # vocab_size 40 is replaced by the tokenizer's 32
    tr = trainer(tmp_path, max_steps=3)
    tr.fit(module, data)
    assert module.config.vocab_size == tok.vocab_size and module.model.config.vocab_size == tok.vocab_size
    path = tmp_path / "m.ckpt"
    tr.save_checkpoint(path)
    ckpt = torch.load(path, weights_only=True)  # plain contents: loadable without unpickling classes
    assert ckpt["gpt_config"] == module.config.to_dict()
    assert ckpt["tokenizer"] == tok.state_dict()
    assert ckpt["tokens_seen"] == 3 * 8 * 16

    model, tokenizer = load_checkpoint(path)
    assert isinstance(model, GPT) and not model.training
    assert tokenizer.state_dict() == tok.state_dict() and tokenizer.encode("hi z") == tok.encode("hi z")
    x = torch.randint(0, tok.vocab_size, (2, 10))
    module.model.eval()
    torch.testing.assert_close(model(x), module.model(x), rtol=0, atol=0)

    restored = GPTModule.load_from_checkpoint(path, weights_only=True)
    assert restored.config == module.config
    torch.testing.assert_close(restored.model(x), module.model(x), rtol=0, atol=0)


def test_resume_with_a_different_explicit_config_is_a_clear_error(tmp_path):
    torch.manual_seed(0)
    tr = trainer(tmp_path, max_steps=1)
    tr.fit(GPTModule(GPTConfig(**TINY)), ToyData())
    tr.save_checkpoint(tmp_path / "a.ckpt")
    other = GPTModule(GPTConfig(**{**TINY, "n_layer": 3}))
    with pytest.raises(ValueError, match=r"n_layer: checkpoint 2 vs given 3"):
        trainer(tmp_path, max_steps=2).fit(other, ToyData(), ckpt_path=tmp_path / "a.ckpt")


def test_resume_with_a_different_tokenizer_is_a_clear_error(tmp_path):
    torch.manual_seed(0)
    tok = ToyTokenizer()
    tr = trainer(tmp_path, max_steps=1)
    tr.fit(GPTModule(GPTConfig(**TINY)), ToyData(vocab=tok.vocab_size, tokenizer=tok))
    tr.save_checkpoint(tmp_path / "a.ckpt")
    other = CharTokenizer("ABCDEFGHIJKLMNOPQRSTUVWXYZ ,\n")  # same size, other characters
    assert other.vocab_size == tok.vocab_size
    with pytest.raises(ValueError, match="Tokenizer mismatch"):
        trainer(tmp_path, max_steps=2).fit(
            GPTModule(GPTConfig(**TINY)), ToyData(vocab=tok.vocab_size, tokenizer=other), ckpt_path=tmp_path / "a.ckpt"
        )


def test_checkpoint_config_is_adopted_when_none_is_given(tmp_path):
    torch.manual_seed(0)
    tr = trainer(tmp_path, max_steps=1)
    module = GPTModule(GPTConfig(**TINY))
    tr.fit(module, ToyData())
    tr.save_checkpoint(tmp_path / "a.ckpt")
    ckpt = torch.load(tmp_path / "a.ckpt", weights_only=True)
    fresh = GPTModule(GPTConfig.from_name("tiny"))
    fresh._config_given = False  # as if built with config=None (avoid building the 124M default)
    fresh.configure_model()
    fresh.on_load_checkpoint(ckpt)
    fresh.load_state_dict(ckpt["state_dict"])
    assert fresh.config == module.config and fresh.model.config == module.config


def test_predict_step_round_trip(tmp_path):
    torch.manual_seed(0)
    tok = ToyTokenizer()
    module = GPTModule(GPTConfig(**{**TINY, "vocab_size": tok.vocab_size}), generation={"max_new_tokens": 5})
    module.configure_model()
    module.tokenizer = tok
    loader = DataLoader(["ab", "hello", "z"], batch_size=2, collate_fn=list)
    out = trainer(tmp_path).predict(module, loader)
    rows = [r for batch in out for r in batch]
    assert [r["prompt"] for r in rows] == ["ab", "hello", "z"]
    for r in rows:
        assert len(r["tokens"]) <= 5 and r["finish_reason"] in ("length", "eos")
        assert r["completion"] == tok.decode(r["tokens"])
    # greedy predict equals greedy decoding of the same model directly
    from lightning_gpt.generation import generate

    ids = torch.tensor([tok.encode("hello")])
    direct = generate(module.model, ids, max_new_tokens=5, eos_token_id=tok.eos_id)[0, ids.size(1) :].tolist()
    assert rows[1]["tokens"] == direct[: len(rows[1]["tokens"])]


def test_bad_batch_and_missing_tokenizer_errors():
    with pytest.raises(ValueError, match="cannot read a batch"):
        GPTModule.split_batch(42)
    with pytest.raises(ValueError, match="needs 'input_ids' and 'targets'"):
        GPTModule.split_batch({"x": 1})
    module = GPTModule(GPTConfig(**TINY))
    module.configure_model()
    with pytest.raises(ValueError, match="has no tokenizer"):
        module.predict_step(["a"], 0)
    with pytest.raises(ValueError, match="learning_rate must be > 0"):
        GPTModule(learning_rate=0.0)


def test_python_api_with_text_datamodule_and_a_logger(tmp_path):
    # Module and data module hyperparameters are logged together: no key may clash (Lightning refuses that).
    from lightning.pytorch.loggers import CSVLogger

    from lightning_gpt.training import TextDataModule

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("to be or not to be, that is the question.\n" * 40)
    data = TextDataModule(source=str(corpus), batch_size=4, cache_dir=str(tmp_path / "cache"))
    module = GPTModule(GPTConfig(vocab_size=64, block_size=16, n_layer=1, n_head=2, n_embd=16))
    trainer = pl.Trainer(
        max_steps=2,
        logger=CSVLogger(tmp_path),
        enable_progress_bar=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        limit_val_batches=1,
    )
    trainer.fit(module, data)
    assert trainer.global_step == 2
    assert module.config.vocab_size == data.tokenizer.vocab_size


def test_vocab_from_tokenizer_and_hparams_are_plain():
    module = GPTModule(GPTConfig(**TINY))
    assert module.hparams["config"] == GPTConfig(**TINY).to_dict()
    assert isinstance(module.hparams["generation"], dict)
    cfg = dataclasses.replace(GPTConfig(**TINY), vocab_size=77)
    assert GPTModule(cfg.to_dict()).config == cfg  # a dict config (as in a checkpoint's hparams) works


_FSDP2_SCRIPT = """
import sys, torch, lightning.pytorch as pl
from torch.utils.data import DataLoader, TensorDataset
from lightning_gpt import GPTConfig
from lightning_gpt.training.module import GPTModule
from lightning_gpt.training.strategies import FSDP2Strategy
from lightning_gpt.training.callbacks import GradientClipping, NonFiniteGuard
torch.set_num_threads(1)
pl.seed_everything(0)
tokens = torch.randint(0, 40, (32, 17))
loader = DataLoader(TensorDataset(tokens[:, :-1], tokens[:, 1:]), batch_size=4)
strategy = FSDP2Strategy(activation_checkpointing=True, process_group_backend="gloo")
trainer = pl.Trainer(accelerator="cpu", devices=2, strategy=strategy, max_steps=3, logger=False,
    enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
    callbacks=[GradientClipping(0.5), NonFiniteGuard()])
module = GPTModule(GPTConfig(vocab_size=40, block_size=16, n_layer=2, n_head=2, n_embd=32))
trainer.fit(module, loader)
trainer.save_checkpoint(sys.argv[1])
weight = module.model.transformer.h[0].mlp.c_fc.weight
print(f"RANK{trainer.global_rank} {type(weight).__name__} local={tuple(weight.to_local().shape)}", flush=True)
"""


@pytest.mark.slow
def test_fsdp2_two_cpu_processes_shard_each_block_and_save_a_loadable_checkpoint(tmp_path):
    import subprocess
    import sys

    script, ckpt = tmp_path / "fsdp2.py", tmp_path / "fsdp2.ckpt"
    script.write_text(_FSDP2_SCRIPT)
    proc = subprocess.run(
        [sys.executable, str(script), str(ckpt)], capture_output=True, text=True, timeout=300, cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    # each rank holds half of the (128, 32) matrix: sharded on dim 0, activation checkpointing kept the names
    assert "RANK0 DTensor local=(64, 32)" in proc.stdout and "RANK1 DTensor local=(64, 32)" in proc.stdout
    model, _ = load_checkpoint(ckpt)  # a sharded folder by default, consolidated by a strict single-process load
    assert model.transformer.h[0].mlp.c_fc.weight.shape == (128, 32)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert ckpt.is_dir() and torch.load(ckpt / "meta.pt", weights_only=True)["global_step"] == 3


# ------------------------------------------------------------------------- token weighting across accumulation

DOCS = ["abc", "the quick brown fox jumps over the lazy dog", "hello world", "a b c d e f g h i j k l"]


class GradsAtFirstStep(pl.Callback):
    """The gradients (after accumulation) and the logged loss of the first optimizer step."""

    def __init__(self) -> None:
        self.grads, self.initial, self.loss = None, None, None

    def on_train_start(self, trainer, pl_module):
        self.initial = {k: v.detach().clone() for k, v in pl_module.model.state_dict().items()}

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        if self.grads is None:
            params = pl_module.model.named_parameters()
            self.grads = {n: p.grad.detach().clone() for n, p in params if p.grad is not None}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if self.loss is None and trainer.global_step == 1 and "train/loss" in trainer.callback_metrics:
            self.loss = float(trainer.callback_metrics["train/loss"])


def _docs_file(tmp_path):
    import json

    path = tmp_path / "docs.jsonl"
    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in DOCS))
    return path


def _first_step(tmp_path, mode: str, batch_size: int, accumulate: int):
    from lightning_gpt.training import TextDataModule

    pl.seed_everything(0, verbose=False)
    data = TextDataModule(
        source=str(_docs_file(tmp_path)),
        tokenizer="char",
        mode=mode,
        batch_size=batch_size,
        val_fraction=0.0,
        shift_windows=False,
        cache_dir=str(tmp_path / "cache"),
    )
    module = GPTModule(GPTConfig(**{**TINY, "block_size": 48 if mode == "pad" else 20, "dropout": 0.0}))
    rec = GradsAtFirstStep()
    fit = trainer(tmp_path, max_steps=1, accumulate_grad_batches=accumulate, callbacks=[rec], log_every_n_steps=1)
    fit.fit(module, data)
    return rec, data, module


def _reference(data, module, initial) -> tuple[dict[str, torch.Tensor], float]:
    """Gradient and loss of (sum of token losses) / (target tokens) over every training row, in one plain pass."""
    model = GPT(module.config)
    model.load_state_dict(initial)
    x, y = (torch.stack(t) for t in zip(*(data.train_dataset[i] for i in range(len(data.train_dataset)))))
    logits = model(x)  # (N, T, vocab_size)
    loss_sum = torch.nn.functional.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="sum")
    loss = loss_sum / (y != -100).sum()
    loss.backward()
    return {n: p.grad for n, p in model.named_parameters()}, float(loss)


@pytest.mark.parametrize("mode", ["pad", "pack"])
def test_gradient_accumulation_weighs_every_target_token_equally(tmp_path, mode):
    """One optimizer step over the whole (tiny) training set: batch 4 x accumulate 1 == 2 x 2 == 1 x 4 == one plain
    pass of (sum of token losses) / (target tokens), gradients and logged loss alike."""
    runs = {}
    for batch_size, accumulate in [(4, 1), (2, 2), (1, 4)]:
        rec, data, module = _first_step(tmp_path, mode, batch_size, accumulate)
        assert len(data.train_dataset) == 4  # one step covers the whole training set (84 tokens: 4 windows of 20)
        runs[(batch_size, accumulate)] = rec
    ref_grads, ref_loss = _reference(data, module, runs[(4, 1)].initial)
    for key, rec in runs.items():
        for name, grad in ref_grads.items():
            torch.testing.assert_close(rec.grads[name], grad, rtol=1e-5, atol=1e-5, msg=f"{key} {name}")
        assert rec.loss == pytest.approx(ref_loss, rel=1e-5), key


def _rows(n_ignored_rows: int, n_rows: int = 3, T: int = 16):
    """``n_rows`` random rows of (input, target); the first ``n_ignored_rows`` have every target -100 (prompt only)."""
    g = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, 32, (n_rows, T + 1), generator=g)
    x, y = tokens[:, :-1].clone(), tokens[:, 1:].clone()
    y[:n_ignored_rows] = -100
    y[n_ignored_rows:, :3] = -100  # and some prompt tokens in the others
    return x, y


def _fit_rows(tmp_path, module, x, y, *, batch_size=1, callbacks=(), **kwargs):
    from lightning_gpt.training.callbacks import NonFiniteGuard

    rec = GradsAtFirstStep()
    loader = DataLoader(TensorDataset(x, y), batch_size=batch_size)
    fit = trainer(tmp_path, callbacks=[NonFiniteGuard(), rec, *callbacks], log_every_n_steps=1, **kwargs)
    fit.fit(module, loader)
    return rec, fit


def test_a_micro_batch_with_every_target_ignored_adds_nothing_and_is_not_non_finite(tmp_path):
    x, y = _rows(n_ignored_rows=1)
    pl.seed_everything(0, verbose=False)
    module = GPTModule(GPTConfig(**TINY), weight_decay=0.0)
    # micro-batch 0: only ignored targets; 1 and 2: real ones. The guard (policy "stop") must not fire.
    rec, fit = _fit_rows(tmp_path, module, x, y, max_steps=1, accumulate_grad_batches=3)
    assert fit.global_step == 1
    ref_grads, ref_loss = _plain_pass(module.config, rec.initial, x[1:], y[1:])
    for name, grad in ref_grads.items():
        torch.testing.assert_close(rec.grads[name], grad, rtol=1e-5, atol=1e-6, msg=name)
    assert rec.loss == pytest.approx(ref_loss, rel=1e-5)


def test_a_step_without_any_target_token_changes_nothing(tmp_path):
    x, y = _rows(n_ignored_rows=2)
    pl.seed_everything(0, verbose=False)
    module = GPTModule(GPTConfig(**TINY))
    rec, fit = _fit_rows(tmp_path, module, x[:2], y[:2], batch_size=2, max_steps=1)
    assert fit.global_step == 1  # no NonFiniteError
    assert "train/loss" not in fit.callback_metrics  # a mean over no tokens is not a loss value
    for name, value in module.model.state_dict().items():  # no gradient, so AdamW moved nothing (no decay either)
        torch.testing.assert_close(value, rec.initial[name], rtol=0, atol=0, msg=name)
    assert int(module.tokens_seen) == 0


def test_a_real_nan_in_an_early_micro_batch_still_stops(tmp_path):
    from lightning_gpt.errors import NonFiniteError

    class NaNInFirstMicroBatch(GPTModule):
        def compute_loss(self, logits, targets):
            loss = super().compute_loss(logits, targets)
            return loss * float("nan") if self.training and self.trainer.fit_loop.epoch_loop.batch_idx == 0 else loss

    x, y = _rows(n_ignored_rows=0)
    module = NaNInFirstMicroBatch(GPTConfig(**TINY))
    with pytest.raises(NonFiniteError, match="Non-finite loss"):
        _fit_rows(tmp_path, module, x, y, max_steps=1, accumulate_grad_batches=3)


def test_validation_loss_is_token_weighted_and_ignores_empty_batches(tmp_path):
    x, y = _rows(n_ignored_rows=1)
    module = GPTModule(GPTConfig(**TINY))
    module.configure_model()
    fit = trainer(tmp_path)
    fit.validate(module, DataLoader(TensorDataset(x, y), batch_size=1), verbose=False)
    _, ref_loss = _plain_pass(module.config, module.model.state_dict(), x[1:], y[1:])
    assert float(fit.callback_metrics["val/loss"]) == pytest.approx(ref_loss, rel=1e-5)
    assert float(fit.callback_metrics["val/ppl"]) == pytest.approx(torch.tensor(ref_loss).exp().item(), rel=1e-5)


def test_a_real_nan_in_validation_shows_as_nan(tmp_path):
    class NaNInSecondBatch(GPTModule):
        def validation_step(self, batch, batch_idx):
            self._nan = batch_idx == 1
            return super().validation_step(batch, batch_idx)

        def compute_loss(self, logits, targets):
            loss = super().compute_loss(logits, targets)
            return loss * float("nan") if getattr(self, "_nan", False) else loss

    x, y = _rows(n_ignored_rows=0)
    module = NaNInSecondBatch(GPTConfig(**TINY))
    module.configure_model()
    fit = trainer(tmp_path)
    fit.validate(module, DataLoader(TensorDataset(x, y), batch_size=1), verbose=False)
    assert torch.isnan(fit.callback_metrics["val/loss"])  # not silently dropped from the mean


def test_gpt_loss_over_no_target_token_is_zero_with_zero_gradient():
    model = GPT(GPTConfig(**TINY))
    x, y = _rows(n_ignored_rows=2, n_rows=2)
    _, loss = model(x, targets=y)
    assert float(loss) == 0.0
    loss.backward()
    assert all(float(p.grad.abs().max()) == 0.0 for p in model.parameters())


def _plain_pass(config, state, x, y) -> tuple[dict[str, torch.Tensor], float]:
    model = GPT(config)
    model.load_state_dict(state)
    logits = model(x)  # (B, T, vocab_size)
    loss_sum = torch.nn.functional.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="sum")
    loss = loss_sum / (y != -100).sum()
    loss.backward()
    return {n: p.grad for n, p in model.named_parameters()}, float(loss)


def test_a_short_last_accumulation_window_is_weighted_by_its_own_tokens(tmp_path):
    """3 micro-batches with accumulation 2: the second step has one micro-batch (Lightning steps at the epoch end);
    its gradient is still that micro-batch's (sum of token losses) / (its target tokens)."""

    class SecondStep(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if batch_idx == 2:
                self.weights = {k: v.detach().clone() for k, v in pl_module.model.state_dict().items()}

        def on_before_optimizer_step(self, trainer, pl_module, optimizer):
            if trainer.global_step == 1:
                self.grads = {n: p.grad.detach().clone() for n, p in pl_module.model.named_parameters()}

    x, y = _rows(n_ignored_rows=0)
    pl.seed_everything(0, verbose=False)
    module = GPTModule(GPTConfig(**TINY))
    rec = SecondStep()
    _fit_rows(tmp_path, module, x, y, max_epochs=1, accumulate_grad_batches=2, callbacks=[rec])
    ref_grads, _ = _plain_pass(module.config, rec.weights, x[2:], y[2:])
    for name, grad in ref_grads.items():
        torch.testing.assert_close(rec.grads[name], grad, rtol=1e-5, atol=1e-6, msg=name)


def _fit_losses(tmp_path, steps: int, **module_kwargs) -> tuple[GPTModule, list[float]]:
    torch.manual_seed(0)
    precision = module_kwargs.pop("precision", "32-true")
    module = GPTModule(
        GPTConfig(**TINY), learning_rate=3e-3, weight_decay=0.0, default_callbacks=False, **module_kwargs
    )
    rec = LossRecorder()
    trainer(tmp_path, max_steps=steps, callbacks=[rec], precision=precision).fit(module, ToyData(n=8, batch_size=8))
    return module, rec.losses


@pytest.mark.slow  # ~40 s of inductor compilation on a 2-core CPU
def test_compile_option_trains_like_eager_and_keeps_plain_weight_names(tmp_path):
    # torch.compile (inductor, the system C compiler on CPU) for the training/validation forward; decoding stays eager.
    _, eager = _fit_losses(tmp_path / "eager", 3)
    module, compiled = _fit_losses(tmp_path / "compiled", 3, compile=True)
    assert module.hparams["compile"] is True
    torch.testing.assert_close(torch.tensor(compiled), torch.tensor(eager), rtol=1e-4, atol=1e-4)
    # the checkpoint's weight names are the plain GPT's (no _orig_mod.), and the eager model decodes
    assert not any("_orig_mod" in k for k in module.state_dict())
    assert set(module.model.state_dict()) == set(GPT(module.config).state_dict())


def test_compile_option_must_be_a_bool():
    with pytest.raises(ValueError, match="compile"):
        GPTModule(GPTConfig(**TINY), compile="yes")


def test_bf16_mixed_on_cpu_tracks_fp32(tmp_path):
    # 10 steps of bf16 autocast on CPU: the loss follows the fp32 run within 0.05 nats (the 200-step tolerance is
    # measured by benchmarks/train_speed.py --precision-check).
    _, fp32 = _fit_losses(tmp_path / "fp32", 10)
    _, bf16 = _fit_losses(tmp_path / "bf16", 10, precision="bf16-mixed")
    assert all(torch.isfinite(torch.tensor(bf16)))
    assert max(abs(a - b) for a, b in zip(fp32, bf16)) < 0.05, (fp32, bf16)
    assert bf16[-1] < bf16[0] - 0.3
