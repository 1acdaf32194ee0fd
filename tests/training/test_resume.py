"""Resume exactness: 20 steps in one go == 10 steps, stop, resume from the checkpoint for 10 more.

Same per-step losses and bit-identical final weights on CPU in float32, with dropout on and shuffled data, mid-epoch,
with the whole callback stack (LR schedule, clipping, non-finite guard, sample generation) and validation runs.
"""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch

from lightning_gpt import GPTConfig
from lightning_gpt.generation.config import SAMPLE_CALLBACK_DEFAULTS, GenerationConfig
from lightning_gpt.training.callbacks import (
    GradientClipping,
    LRSchedule,
    ModelCheckpoint,
    NonFiniteGuard,
    SampleGeneration,
)
from lightning_gpt.training.checkpoint_io import AtomicCheckpointIO
from lightning_gpt.training.module import GPTModule
from tests.helpers import plain_trainer

CONFIG = dict(vocab_size=64, block_size=16, n_layer=2, n_head=2, n_embd=32, dropout=0.1)


class ResumableRandomTokens:
    """An in-test resumable loader: shuffled (seeded per epoch) batches of random windows, with a saved position."""

    def __init__(self, n: int = 40, T: int = 16, vocab: int = 50, batch_size: int = 4, seed: int = 7) -> None:
        self.tokens = torch.randint(0, vocab, (n, T + 1), generator=torch.Generator().manual_seed(seed))
        self.batch_size, self.seed = batch_size, seed
        self.epoch, self.position = 0, 0  # batches of `epoch` consumed so far

    def __len__(self) -> int:  # a sized loader: Lightning then does not prefetch ahead of training
        return len(self.tokens) // self.batch_size

    def __iter__(self):
        # Lightning stops after len(self) batches without exhausting the generator, so the epoch advances here.
        if self.position >= len(self):
            self.epoch, self.position = self.epoch + 1, 0
        order = torch.randperm(len(self.tokens), generator=torch.Generator().manual_seed(self.seed + self.epoch))
        while self.position < len(self):
            idx = order[self.position * self.batch_size : (self.position + 1) * self.batch_size]
            self.position += 1
            yield self.tokens[idx, :-1], self.tokens[idx, 1:]

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.position = state["epoch"], state["position"]


class RandomTokenData(pl.LightningDataModule):
    def __init__(self) -> None:
        super().__init__()
        self.loader = ResumableRandomTokens()

    def train_dataloader(self):
        return self.loader


class Recorder(pl.Callback):
    def __init__(self) -> None:
        self.losses: dict[int, float] = {}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.losses[trainer.global_step] = float(outputs["loss"])


class StopAt(pl.Callback):
    """Simulates an interruption: stop after the checkpoint of step ``step`` is written."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.step:
            trainer.should_stop = True


def run(tmp_path, make_data, *, max_steps=20, stop_at=None, ckpt_path=None, samples=False, **trainer_kwargs):
    pl.seed_everything(1234, verbose=False)
    rec = Recorder()
    callbacks = [
        LRSchedule(warmup_steps=3, min_lr_ratio=0.1),
        GradientClipping(max_norm=0.5),
        NonFiniteGuard(),
        ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=5, save_top_k=-1),
        rec,
    ]
    if samples:
        callbacks.insert(
            0,
            SampleGeneration(
                every_n_steps=4,
                prompts=["ab"],
                generation=GenerationConfig.fold(SAMPLE_CALLBACK_DEFAULTS, max_new_tokens=4),
            ),
        )
    if stop_at is not None:
        callbacks.append(StopAt(stop_at))
    trainer = plain_trainer(
        tmp_path,
        callbacks,
        max_steps=max_steps,
        enable_checkpointing=True,
        plugins=[AtomicCheckpointIO()],
        **trainer_kwargs,
    )
    module = GPTModule(GPTConfig(**CONFIG), learning_rate=3e-3)
    trainer.fit(module, make_data(), ckpt_path=ckpt_path)
    return module, rec.losses, trainer


def assert_exact_resume(tmp_path, make_data, **kwargs):
    full_module, full_losses, _ = run(tmp_path / "full", make_data, **kwargs)
    _, first_losses, t1 = run(tmp_path / "split", make_data, stop_at=10, **kwargs)
    assert t1.global_step == 10 and sorted(first_losses) == list(range(1, 11))
    ckpt = next((tmp_path / "split" / "ckpt").glob("*step=10.ckpt"))
    resumed_module, resumed_losses, t2 = run(tmp_path / "split", make_data, ckpt_path=ckpt, **kwargs)
    assert t2.global_step == 20 and sorted(resumed_losses) == list(range(11, 21))

    assert {**first_losses, **resumed_losses} == full_losses  # identical per-step losses (exact float equality)
    full_state, resumed_state = full_module.state_dict(), resumed_module.state_dict()
    assert full_state.keys() == resumed_state.keys()
    for name in full_state:
        torch.testing.assert_close(resumed_state[name], full_state[name], rtol=0, atol=0, msg=name)
    assert int(resumed_module.tokens_seen) == int(full_module.tokens_seen) > 0
    return full_losses


@pytest.mark.slow
def test_resume_is_exact_with_a_resumable_in_test_loader(tmp_path):
    # 10 batches per epoch: the interruption at step 10 falls on an epoch boundary, 20 steps span two epochs.
    losses = assert_exact_resume(tmp_path, RandomTokenData)
    assert len(set(losses.values())) == 20  # dropout and shuffling really vary the steps


@pytest.mark.slow
def test_resume_is_exact_mid_epoch_with_text_datamodule(tmp_path):
    from lightning_gpt.training import TextDataModule

    text_file = tmp_path / "corpus.txt"
    words = ["the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog", "and", "cat"]
    g = torch.Generator().manual_seed(0)
    lines = [" ".join(words[i] for i in torch.randint(0, len(words), (8,), generator=g).tolist()) for i in range(24)]
    text_file.write_text("\n".join(lines) + "\n")

    def make_data():
        return TextDataModule(
            source=str(text_file), tokenizer="char", batch_size=4, val_fraction=0.1, cache_dir=str(tmp_path / "cache")
        )

    # ~7 batches per epoch: step 10 is mid-epoch; validation runs every 3 steps and at epoch ends.
    losses = assert_exact_resume(tmp_path, make_data, samples=True, val_check_interval=3)
    assert len(set(losses.values())) == 20


# ------------------------------------------------------------------------------------ checkpoints at an epoch end

WORDS = ["the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog", "and", "cat"]


def _corpus(tmp_path):
    path = tmp_path / "corpus.txt"
    if not path.exists():
        g = torch.Generator().manual_seed(0)
        rows = [" ".join(WORDS[i] for i in torch.randint(0, len(WORDS), (8,), generator=g).tolist()) for _ in range(12)]
        path.write_text("\n".join(rows) + "\n")
    return path


def fit_text(root, corpus, *, max_steps, ckpt_path=None, validate=True, every_n_train_steps=None):
    """A TextDataModule run of ~7 batches per epoch, checkpointing at every epoch end (the CLI's default: no
    ``every_n_train_steps``) or every ``every_n_train_steps``; validation (when on) once per epoch."""
    from lightning_gpt.training import TextDataModule

    pl.seed_everything(1234, verbose=False)
    rec = Recorder()
    checkpoint = ModelCheckpoint(
        dirpath=root / "ckpt", save_last=True, save_top_k=-1, every_n_train_steps=every_n_train_steps
    )
    callbacks = [LRSchedule(warmup_steps=3, min_lr_ratio=0.1), NonFiniteGuard(), checkpoint, rec]
    trainer = plain_trainer(
        root, callbacks, max_steps=max_steps, enable_checkpointing=True, plugins=[AtomicCheckpointIO()]
    )
    data = TextDataModule(
        source=str(corpus),
        tokenizer="char",
        batch_size=4,
        val_fraction=0.1 if validate else 0.0,
        cache_dir=str(corpus.parent / "cache"),
    )
    module = GPTModule(GPTConfig(**{**CONFIG, "n_layer": 1}), learning_rate=3e-3)
    trainer.fit(module, data, ckpt_path=ckpt_path)
    return module, rec.losses, trainer


def assert_same_state(a: GPTModule, b: GPTModule) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for name in sa:
        torch.testing.assert_close(sb[name], sa[name], rtol=0, atol=0, msg=name)


@pytest.mark.slow
@pytest.mark.parametrize("validate", [False, True], ids=["epoch_end", "after_epoch_end_validation"])
def test_resume_from_an_epoch_end_checkpoint_is_exact(tmp_path, validate):
    """2.5 epochs in one go == resume from the epoch-1-end checkpoint == resume (again) from the resumed run's own
    epoch-2-end checkpoint. Lightning re-enters the finished epoch on such a restart (two ``set_epoch`` calls); the
    data position saved in the checkpoint decides what comes next."""
    corpus = _corpus(tmp_path)
    full, full_losses, trainer = fit_text(tmp_path / "full", corpus, max_steps=17, validate=validate)
    per_epoch = trainer.num_training_batches
    assert 5 <= per_epoch <= 8 and sorted(full_losses) == list(range(1, 18))  # 17 steps: 2 epochs and a part
    first = tmp_path / "full" / "ckpt" / f"epoch=0-step={per_epoch}.ckpt"
    assert first.exists(), sorted(p.name for p in (tmp_path / "full" / "ckpt").iterdir())

    resumed, losses, _ = fit_text(tmp_path / "resumed", corpus, max_steps=17, validate=validate, ckpt_path=first)
    assert losses == {k: v for k, v in full_losses.items() if k > per_epoch}  # exact float equality, step by step
    assert_same_state(full, resumed)

    # The resumed run's own epoch-end checkpoint (its epoch counter may differ from the file name's) resumes exactly.
    second = next(p for p in (tmp_path / "resumed" / "ckpt").glob(f"*step={2 * per_epoch}.ckpt"))
    again, losses, _ = fit_text(tmp_path / "again", corpus, max_steps=17, validate=validate, ckpt_path=second)
    assert losses == {k: v for k, v in full_losses.items() if k > 2 * per_epoch}
    assert_same_state(full, again)


@pytest.mark.slow
@pytest.mark.parametrize(
    "validation, which",
    [("quickstart", "after_validation"), ("quickstart", "final_step"), ("once_per_epoch", "after_validation")],
)
def test_cli_resume_with_ckpt_path_last_from_an_epoch_end_checkpoint_is_exact(tmp_path, cli, validation, which):
    """``lightning-gpt fit --ckpt_path last`` with recipes/quickstart.yaml shrunk (its checkpoint settings: the CLI
    defaults). Validation, and with it the checkpoint, at exactly every epoch end: by the quickstart's step-counted
    ``val_check_interval`` set to the epoch length, or by Lightning's default of once per epoch."""
    import csv
    import math
    import shutil
    from pathlib import Path

    import yaml

    from lightning_gpt.training import TextDataModule

    corpus = _corpus(tmp_path)
    cfg = yaml.safe_load((Path(__file__).resolve().parents[2] / "recipes" / "quickstart.yaml").read_text())
    data_cfg = dict(source=str(corpus), max_chars=None, batch_size=4, cache_dir=str(tmp_path / "cache"))
    cfg["data"].update(data_cfg)
    probe = TextDataModule(block_size=16, **{k: v for k, v in cfg["data"].items()})
    probe.setup("fit")
    per_epoch = math.ceil(len(probe.train_dataset) / 4)
    total = 2 * per_epoch + 3
    cfg["model"]["config"].update(block_size=16, n_layer=1, n_head=2, n_embd=16, dropout=0.1)
    cfg["trainer"].update(accelerator="cpu", val_check_interval=per_epoch, limit_val_batches=2, log_every_n_steps=1)
    if validation == "once_per_epoch":
        cfg["trainer"].update(val_check_interval=1.0, check_val_every_n_epoch=1)
    cfg["trainer"].update(enable_progress_bar=False, enable_model_summary=False)
    cfg["lr_schedule"].update(warmup_steps=2, decay_steps=total)  # the same schedule in the shorter first run
    cfg["sampling"].update(every_n_steps=10_000)
    config = tmp_path / "quickstart-tiny.yaml"
    config.write_text(yaml.safe_dump(cfg))

    def fit(name: str, max_steps: int, *extra: str) -> Path:
        root = tmp_path / name
        logger = {"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": str(root)}}
        args = ["fit", "--config", config, "--trainer.default_root_dir", root, "--trainer.max_steps", max_steps]
        result = cli(*args, "--trainer.logger", yaml.safe_dump(logger, default_flow_style=True).strip(), *extra)
        assert result.code == 0, result
        return root

    def losses(root: Path) -> list[str]:
        # In step order. Not keyed by the logged step: after a restart at an epoch end Lightning's logging step (not
        # global_step) can run one ahead; the in-process tests above key the losses by global_step.
        rows = [r for f in root.glob("lightning_logs/*/metrics.csv") for r in csv.DictReader(f.open())]
        return [r["train/loss"] for r in sorted(rows, key=lambda r: int(r["step"])) if r.get("train/loss")]

    def final_weights(root: Path) -> dict[str, torch.Tensor]:
        ckpt = torch.load(root / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
        assert ckpt["global_step"] == total
        return ckpt["state_dict"]

    full = fit("full", total)
    # The checkpoint written after the end-of-epoch validation (the first run goes one step past the epoch, so that the
    # epoch's end is not also the end of fit), or the one InterruptCheckpoint writes at the end of the epoch's last
    # batch when max_steps stops fit there, as the only (last) checkpoint of a new run folder.
    first = fit("first", per_epoch + 1 if which == "after_validation" else per_epoch)
    name = f"epoch=0-step={per_epoch}.ckpt" if which == "after_validation" else "last.ckpt"
    (tmp_path / "resumed" / "checkpoints").mkdir(parents=True)
    shutil.copy(first / "checkpoints" / name, tmp_path / "resumed" / "checkpoints" / "last.ckpt")
    resumed = fit("resumed", total, "--ckpt_path", "last")

    full_losses = losses(full)
    assert len(full_losses) == total
    assert losses(first)[:per_epoch] == full_losses[:per_epoch]
    assert losses(resumed) == full_losses[per_epoch:]  # exact: the same float text, step by step
    a, b = final_weights(full), final_weights(resumed)
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=0, atol=0, msg=name)


@pytest.mark.slow
def test_ctrl_c_during_gradient_accumulation_saves_at_the_end_of_the_step_and_resumes_exactly(tmp_path):
    """Ctrl-C in the first micro-batch of a step: the checkpoint is written once that step's last micro-batch is done
    (a mid-step checkpoint would lose the gradients accumulated so far), and resuming from it is exact."""
    import signal

    from lightning_gpt.training.callbacks.interrupt import InterruptCheckpoint

    class CtrlCAt(pl.Callback):
        def __init__(self, batch_idx: int) -> None:
            self.batch_idx = batch_idx

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if batch_idx == self.batch_idx:
                next(c for c in trainer.callbacks if isinstance(c, InterruptCheckpoint))._requested = True

    class MicroBatchLosses(pl.Callback):  # every micro-batch's loss (all in epoch 0)
        def __init__(self) -> None:
            self.losses = {}

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            self.losses[batch_idx] = float(outputs["loss"])

    def fit(root, max_steps, *extra, ckpt_path=None):
        pl.seed_everything(1234, verbose=False)
        rec = MicroBatchLosses()
        callbacks = [ModelCheckpoint(dirpath=root, save_last=True), InterruptCheckpoint(), rec, *extra]
        trainer = plain_trainer(
            root, callbacks, max_steps=max_steps, accumulate_grad_batches=2, enable_checkpointing=True
        )
        module = GPTModule(GPTConfig(**CONFIG), learning_rate=3e-3)
        trainer.fit(module, RandomTokenData(), ckpt_path=ckpt_path)
        return module, rec.losses

    full, full_losses = fit(tmp_path / "full", 4)
    previous = signal.getsignal(signal.SIGINT)
    try:
        with pytest.raises(SystemExit):  # Lightning turns the KeyboardInterrupt into exit code 1
            fit(tmp_path / "split", 4, CtrlCAt(batch_idx=2))
    finally:
        signal.signal(signal.SIGINT, previous)  # Lightning ignores SIGINT after a KeyboardInterrupt
    last = tmp_path / "split" / "last.ckpt"
    assert torch.load(last, weights_only=True)["global_step"] == 2  # step 2 = micro-batches 2 and 3
    resumed, losses = fit(tmp_path / "resumed", 4, ckpt_path=last)
    assert sorted(full_losses) == list(range(8)) and losses == {k: v for k, v in full_losses.items() if k >= 4}
    assert_same_state(full, resumed)
