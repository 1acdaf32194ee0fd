"""Real two-process runs on CPU (gloo) through the CLI: DDP and FSDP2 agree with one process, their checkpoints load
into each other and into a single process, and a rank that dies makes the other exit with an error, not hang.

Each run is a ``python -m lightning_gpt fit`` child process (forked from ``tests/zygote.py``, which imported the
command once; the second rank, which Lightning starts as ``python -m lightning_gpt.__main__ ...``, is forked by the
same zygote), so the test process never joins a process group.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from tests import zygote
from tests.helpers import MORE_WORDS, python_env, tiny_config, write_corpus

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not available"),
]


# Imported by the child processes (PYTHONPATH=tmp dir): per-rank weight dumps and a rank that dies mid-fit.
HELPERS = '''
import os
import torch
from lightning.pytorch import Callback


class DumpWeights(Callback):
    """At the end of fit, every rank writes its full (unsharded) weights to <folder>/rank<r>.pt."""

    def __init__(self, folder: str) -> None:
        self.folder = folder

    def on_train_end(self, trainer, pl_module):
        state = {}
        for name, value in pl_module.model.state_dict().items():
            value = value.full_tensor() if hasattr(value, "full_tensor") else value  # FSDP2 DTensor shards
            state[name] = value.detach().cpu().clone()
        os.makedirs(self.folder, exist_ok=True)
        torch.save(state, os.path.join(self.folder, f"rank{trainer.global_rank}.pt"))


class DumpInitial(Callback):
    """At the start of fit, rank 0 writes the full (gathered) initial weights to <folder>/initial.pt."""

    def __init__(self, folder: str) -> None:
        self.folder = folder

    def on_train_start(self, trainer, pl_module):
        state = {}
        for name, value in pl_module.model.state_dict().items():
            value = value.full_tensor() if hasattr(value, "full_tensor") else value
            state[name] = value.detach().cpu().clone()
        if trainer.global_rank == 0:
            os.makedirs(self.folder, exist_ok=True)
            torch.save(state, os.path.join(self.folder, "initial.pt"))


class DumpFirstStep(Callback):
    """Every rank writes <folder>/rank<r>.pt: the config, the initial weights, the micro-batches it trained on and the
    gradients and loss the first optimizer step sees."""

    def __init__(self, folder: str) -> None:
        self.folder = folder
        self.batches = []

    def on_train_start(self, trainer, pl_module):
        self.initial = {k: v.detach().cpu().clone() for k, v in pl_module.model.state_dict().items()}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.batches.append([t.detach().cpu().clone() for t in batch])

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        if trainer.global_step > 0:
            return
        grads = {n: p.grad.detach().cpu().clone() for n, p in pl_module.model.named_parameters() if p.grad is not None}
        os.makedirs(self.folder, exist_ok=True)
        state = {"config": pl_module.config.to_dict(), "initial": self.initial, "batches": self.batches}
        state.update(grads=grads, loss=float(pl_module.last_loss))
        torch.save(state, os.path.join(self.folder, f"rank{trainer.global_rank}.pt"))


class KillRank(Callback):
    """Rank ``rank`` disappears (os._exit, as if killed) once ``step`` optimizer steps are done."""

    def __init__(self, rank: int = 1, step: int = 2) -> None:
        self.rank, self.step = rank, step

    def on_train_batch_end(self, trainer, pl_module, *args):
        if trainer.global_rank == self.rank and trainer.global_step >= self.step:
            os._exit(17)
'''


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("dist")
    corpus = write_corpus(tmp / "corpus.txt", n_lines=300, words=MORE_WORDS)
    (tmp / "dist_helpers.py").write_text(HELPERS)
    cfg = tiny_config(
        tmp / "run",  # each fit names its own --trainer.default_root_dir
        corpus,
        tmp / "c",
        **{
            "seed_everything": 11,
            # dropout 0: each rank draws its own dropout masks, which a single process cannot reproduce
            "model.config.n_head": 4,
            "model.config.dropout": 0.0,
            "model.learning_rate": 3e-4,
            "lr_schedule.warmup_steps": 1,  # the same schedule whatever max_steps is
            "lr_schedule.decay_steps": 100,
            "checkpoint.every_n_train_steps": 2,
            "checkpoint.save_top_k": -1,
        },
    )
    (tmp / "tiny.yaml").write_text(yaml.safe_dump(cfg))
    return tmp


def _strategy(kind: str, timeout_minutes: float = 5.0, **init_args: object) -> str:
    path = {
        "ddp": "lightning_gpt.training.strategies.DDPStrategy",
        "fsdp2": "lightning_gpt.training.strategies.FSDP2Strategy",
    }[kind]
    if kind == "fsdp2":  # consolidated .ckpt files, which every strategy resumes from; the sharded default below
        init_args.setdefault("save_distributed_checkpoint", False)
    return json.dumps({"class_path": path, "init_args": {"timeout_minutes": timeout_minutes, **init_args}})


def _fit(workdir: Path, name: str, *extra: str, devices: int = 2, timeout: float = 400) -> subprocess.CompletedProcess:
    env = python_env()
    env["PYTHONPATH"] = os.pathsep.join([str(workdir), env.get("PYTHONPATH", "")])
    # Half the per-device batch on two devices: the same global batch of 4 sequences as the single process.
    batch = str(4 // devices)
    args = [sys.executable, "-m", "lightning_gpt", "fit", "--config", str(workdir / "tiny.yaml")]
    args += ["--trainer.default_root_dir", str(workdir / name), "--trainer.devices", str(devices)]
    args += ["--data.batch_size", batch, *extra]
    return zygote.run(args, env=env, capture_output=True, text=True, timeout=timeout, cwd=workdir)


def _ok(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 0, (result.stdout[-2000:], result.stderr[-4000:])


def _ckpt(workdir: Path, name: str, step: int) -> Path:
    return next((workdir / name / "checkpoints").glob(f"*step={step}.ckpt"))


def _weights(path: Path) -> dict[str, torch.Tensor]:
    from lightning_gpt.io.checkpoint import load_checkpoint

    model, _ = load_checkpoint(path)
    return model.state_dict()


def _close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], tol: float = 1e-4) -> None:
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=tol, atol=tol, msg=name)


def _dump_callback(folder: Path, kind: str = "DumpWeights") -> list[str]:
    spec = json.dumps({"class_path": f"dist_helpers.{kind}", "init_args": {"folder": str(folder)}})
    return ["--trainer.callbacks+", spec]


@pytest.fixture(scope="module")
def single(workdir) -> Path:
    """One process, batch 4, 6 steps (checkpoints at 2, 4, 6)."""
    dump = _dump_callback(workdir / "single" / "dump", "DumpInitial")
    _ok(_fit(workdir, "single", "--trainer.max_steps", "6", *dump, devices=1))
    return workdir / "single"


@pytest.fixture(scope="module")
def ddp(workdir) -> Path:
    _ok(_fit(workdir, "ddp", "--trainer.strategy", _strategy("ddp"), *_dump_callback(workdir / "ddp" / "dump")))
    return workdir / "ddp"


@pytest.fixture(scope="module")
def fsdp2(workdir) -> Path:
    _ok(_fit(workdir, "fsdp2", "--trainer.strategy", _strategy("fsdp2"), *_dump_callback(workdir / "fsdp2" / "dump")))
    return workdir / "fsdp2"


@pytest.mark.parametrize("kind", ["ddp", "fsdp2"])
def test_two_ranks_agree_with_each_other_and_with_one_process(kind, request, workdir, single):
    run_dir = request.getfixturevalue(kind)
    rank0 = torch.load(run_dir / "dump" / "rank0.pt")
    rank1 = torch.load(run_dir / "dump" / "rank1.pt")
    _close(rank0, rank1, tol=0.0)  # the ranks hold the same model
    # Same global batch -> same updates as one process, up to float summation order.
    reference = _weights(_ckpt(workdir, "single", 4))
    from_ckpt = _weights(_ckpt(workdir, kind, 4))
    _close(from_ckpt, reference)
    _close({k: v for k, v in rank0.items() if k in reference}, reference)


def test_checkpoints_load_into_a_single_process_with_the_same_logits(workdir, ddp, fsdp2, single):
    from lightning_gpt.io.checkpoint import load_checkpoint

    idx = torch.randint(0, 20, (2, 16), generator=torch.Generator().manual_seed(0))
    reference, _ = load_checkpoint(_ckpt(workdir, "single", 4))
    for kind in ("ddp", "fsdp2"):
        model, tokenizer = load_checkpoint(_ckpt(workdir, kind, 4))
        assert tokenizer is not None
        with torch.no_grad():
            torch.testing.assert_close(model.eval()(idx), reference.eval()(idx), rtol=1e-4, atol=1e-4)


def test_every_ddp_and_fsdp2_checkpoint_loads_with_the_safe_loader(workdir, ddp, fsdp2):
    # Nothing the package writes needs a full unpickle (Lightning's loop and callback states included).
    for kind in ("ddp", "fsdp2"):
        files = sorted((workdir / kind / "checkpoints").glob("*.ckpt"))
        assert files
        for path in files:
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
            assert {"gpt_config", "tokenizer", "loops", "callbacks", "optimizer_states"} <= set(ckpt)


@pytest.fixture(scope="module")
def resumed(workdir, ddp, fsdp2, sharded) -> dict[str, Path]:
    """4 steps under one strategy + 2 resumed under another (or in one process): FSDP2's sharded folder under DDP,
    DDP's file under FSDP2, FSDP2's consolidated file in one process."""
    runs = {}
    for source, target in (("sharded", "ddp"), ("ddp", "fsdp2"), ("fsdp2", "single")):
        name = f"{target}_from_{source}"
        strategy = [] if target == "single" else ["--trainer.strategy", _strategy(target)]
        _ok(_fit(workdir, name, *strategy, "--trainer.max_steps", "6", "--ckpt_path", str(_ckpt(workdir, source, 4)),
                 devices=1 if target == "single" else 2))  # fmt: skip
        runs[name] = _ckpt(workdir, name, 6)
    return runs


def test_fsdp2_checkpoint_resumes_under_ddp_and_vice_versa(workdir, single, resumed):
    """4 steps under one strategy + 2 resumed under the other (or in one process) == 6 steps in one process (up to
    the order in which the ranks' gradients are summed)."""
    reference = _weights(_ckpt(workdir, "single", 6))
    for final in resumed.values():
        _close(_weights(final), reference)


def test_a_dead_rank_makes_the_other_exit_with_an_error(workdir):
    kill = '{"class_path": "dist_helpers.KillRank", "init_args": {"rank": 1, "step": 2}}'
    start = time.monotonic()
    result = _fit(
        workdir,
        "dead",
        "--trainer.strategy",
        _strategy("ddp", timeout_minutes=1.5),
        "--trainer.max_steps",
        "50",
        "--trainer.callbacks+",
        kill,
        timeout=300,
    )
    elapsed = time.monotonic() - start
    assert result.returncode != 0
    assert elapsed < 240, elapsed  # an error, not a hang (start-up of both ranks included)
    log = result.stdout + result.stderr
    assert any(s in log for s in ("Connection closed by peer", "timed out", "Timeout", "Connection reset")), log[-3000:]


def test_ddp_with_padding_and_accumulation_weighs_tokens_like_one_process(workdir):
    """Two ranks x batch 1 x accumulation 2 over padded documents of different lengths: the gradient of the one step
    is that of one process over the same 4 rows, (sum of token losses) / (target tokens of all 4 rows)."""
    from lightning_gpt import GPT, GPTConfig

    docs = ["ab", "the quick brow", "fox j", "umps over a", "dog", "and the c", "at runs to it", "x"]
    (workdir / "docs.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    folder = workdir / "ddp_pad" / "dump"
    spec = json.dumps({"class_path": "dist_helpers.DumpFirstStep", "init_args": {"folder": str(folder)}})
    result = _fit(
        workdir,
        "ddp_pad",
        "--trainer.strategy",
        _strategy("ddp"),
        "--trainer.max_steps",
        "1",
        "--trainer.accumulate_grad_batches",
        "2",
        "--data.batch_size",
        "1",
        "--data.mode",
        "pad",
        "--data.val_fraction",
        "0",
        "--data.source",
        str(workdir / "docs.jsonl"),
        "--clip.max_norm",
        "1e9",
        "--trainer.callbacks+",
        spec,
    )
    _ok(result)
    ranks = [torch.load(folder / f"rank{r}.pt") for r in (0, 1)]
    _close(ranks[0]["grads"], ranks[1]["grads"], tol=0.0)
    x = torch.cat([b[0] for rank in ranks for b in rank["batches"]])  # (4, T): the global batch
    y = torch.cat([b[1] for rank in ranks for b in rank["batches"]])
    counts = [int((b[1] != -100).sum()) for rank in ranks for b in rank["batches"]]
    assert len(counts) == 4 and len(set(counts)) > 1  # the ranks' micro-batches really differ in token count

    model = GPT(GPTConfig.from_dict(ranks[0]["config"]))
    model.load_state_dict(ranks[0]["initial"])
    logits = model(x)  # (4, T, vocab_size)
    loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="sum") / sum(counts)
    loss.backward()
    reference = {n: p.grad for n, p in model.named_parameters()}
    _close(ranks[0]["grads"], reference, tol=1e-5)
    assert ranks[0]["loss"] == pytest.approx(float(loss), rel=1e-5)


# FSDP2's default: built on the meta device, sharded checkpoint folders (no gather on one rank).
SHARDED = json.dumps({"class_path": "lightning_gpt.training.strategies.FSDP2Strategy", "init_args": {}})


@pytest.fixture(scope="module")
def sharded(workdir) -> Path:
    """FSDP2 with its defaults, 6 steps: sharded folders at steps 2, 4, 6; initial and final weights dumped."""
    dump = [*_dump_callback(workdir / "sharded" / "dump"), *_dump_callback(workdir / "sharded" / "dump", "DumpInitial")]
    _ok(_fit(workdir, "sharded", "--trainer.strategy", SHARDED, "--trainer.max_steps", "6", *dump))
    return workdir / "sharded"


def test_fsdp2_starts_from_the_weights_of_one_process_and_saves_sharded_folders(workdir, single, sharded):
    initial = torch.load(sharded / "dump" / "initial.pt")
    _close(initial, torch.load(single / "dump" / "initial.pt"), tol=0.0)  # built on meta, bit-equal to one process
    folder = _ckpt(workdir, "sharded", 6)
    assert folder.is_dir() and (folder / ".metadata").is_file() and (folder / "meta.pt").is_file()
    shards = sorted(p.name for p in folder.glob("*.distcp"))
    assert shards == ["__0_0.distcp", "__1_0.distcp"]  # each rank wrote its own shards
    assert (sharded / "checkpoints" / "last.ckpt").is_dir()
    assert not list((sharded / "checkpoints").glob("*.tmp-*"))  # temporaries renamed into place
    # load_checkpoint consolidates the folder: exactly the weights the ranks held at the end
    final = torch.load(sharded / "dump" / "rank0.pt")
    _close(_weights(sharded), {k: v for k, v in final.items()}, tol=0.0)
    # ... and the run matches one process (float summation order aside)
    _close(_weights(_ckpt(workdir, "sharded", 4)), _weights(_ckpt(workdir, "single", 4)))


def test_fsdp2_resumes_exactly_from_a_sharded_folder(workdir, sharded):
    result = _fit(
        workdir, "sharded_resumed", "--trainer.strategy", SHARDED, "--trainer.max_steps", "6",
        "--ckpt_path", str(_ckpt(workdir, "sharded", 4)),
    )  # fmt: skip
    _ok(result)
    _close(_weights(_ckpt(workdir, "sharded_resumed", 6)), _weights(_ckpt(workdir, "sharded", 6)), tol=0.0)


def test_export_generate_and_evaluate_read_a_sharded_folder(workdir, sharded):
    from lightning_gpt.evaluation.loading import load_model
    from lightning_gpt.io import load_tokenizer
    from lightning_gpt.io.init_from import init_config, init_state_dict

    model, tokenizer = load_model(str(sharded), device="cpu")  # evaluate's loader: the run folder's newest folder
    folder = _ckpt(workdir, "sharded", 6)
    _close(model.state_dict(), _weights(folder), tol=0.0)
    assert tokenizer is not None
    assert load_tokenizer(str(folder)).state_dict() == tokenizer.state_dict()  # --data.tokenizer <folder>
    state = init_state_dict(folder, init_config(folder))  # --model.init_from <folder>
    _close({k: v for k, v in state.items() if k in model.state_dict()}, model.state_dict(), tol=0.0)
    # validate/test/predict --ckpt_path <folder> under another strategy: the checkpoint IO consolidates the weights
    from lightning_gpt.training.checkpoint_io import AtomicCheckpointIO

    checkpoint = AtomicCheckpointIO().load_checkpoint(str(folder))
    assert checkpoint["global_step"] == 6 and "gpt_config" in checkpoint and "tokenizer" in checkpoint
    weights = {k.removeprefix("model."): v for k, v in checkpoint["state_dict"].items()}
    _close({k: v for k, v in weights.items() if k in model.state_dict()}, model.state_dict(), tol=0.0)
    env = python_env()
    cli = [sys.executable, "-m", "lightning_gpt"]
    folder = _ckpt(workdir, "sharded", 6)
    out = workdir / "exported"
    export = zygote.run([*cli, "export", "--ckpt_path", str(folder), "--output_dir", str(out)], env=env,
                            capture_output=True, text=True, timeout=300)  # fmt: skip
    assert export.returncode == 0, export.stderr[-3000:]
    _close(_weights(out), _weights(folder), tol=0.0)
    generate = zygote.run(
        [*cli, "generate", "--ckpt_path", str(sharded), "--prompt", "the quick", "--max_new_tokens", "5"],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert generate.returncode == 0, generate.stderr[-3000:]
    assert "the quick" in generate.stdout


def test_a_sharded_folder_is_checked_before_anything_is_allocated(workdir, sharded, tmp_path):
    import pickle
    import shutil

    from lightning_gpt.io.checkpoint import UnsafeCheckpointError, load_checkpoint

    source = _ckpt(workdir, "sharded", 6)
    huge = tmp_path / "huge.ckpt"
    shutil.copytree(source, huge)
    meta = torch.load(huge / "meta.pt", weights_only=True)
    meta["gpt_config"]["n_layer"] = 100000  # a config that would allocate terabytes
    torch.save(meta, huge / "meta.pt")
    start = time.monotonic()
    with pytest.raises(ValueError, match="n_layer=100000.*Nothing was built"):
        load_checkpoint(huge)
    assert time.monotonic() - start < 10

    class Payload:
        def __reduce__(self):
            return (os.system, ("echo pwned > " + str(tmp_path / "pwned"),))

    hostile = tmp_path / "hostile.ckpt"
    shutil.copytree(source, hostile)
    (hostile / ".metadata").write_bytes(pickle.dumps(Payload()))
    with pytest.raises(UnsafeCheckpointError, match="os.system|posix.system"):
        load_checkpoint(hostile)
    assert not (tmp_path / "pwned").exists()


def _same(a: object, b: object) -> bool:
    """Equal nested checkpoint contents, tensors bit for bit."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def test_a_sharded_folder_resumes_in_one_process_exactly(workdir, sharded, fsdp2, resumed):
    """FSDP2 on 2 ranks -> a sharded folder at step 4 -> one process, to step 6 (under DDP: ``resumed``).

    The reference is the same 2-rank FSDP2 run saved consolidated (``save_distributed_checkpoint: false``, the
    ``fsdp2`` run: the same computation, so its step-4 ``.ckpt`` holds the same state bit for bit): what the folder
    restores for another strategy must be exactly that (weights, AdamW moments and steps, param groups with
    ``initial_lr``, the LR schedule's and the loader's state, loop counters), and the one-process continuation must
    end on exactly the weights of that ``.ckpt``'s one-process continuation. (DDP ranks read the folder through the
    same ``AtomicCheckpointIO.load_checkpoint``.)
    """
    from lightning_gpt.training.checkpoint_io import AtomicCheckpointIO

    folder = _ckpt(workdir, "sharded", 4)
    restored = AtomicCheckpointIO().load_checkpoint(str(folder))
    saved = torch.load(_ckpt(workdir, "fsdp2", 4), map_location="cpu", weights_only=True)
    assert restored.keys() == saved.keys() and restored["optimizer_states"][0]["state"]
    for key in saved:
        assert key == "callbacks" or _same(restored[key], saved[key]), key
    for key, value in saved["callbacks"].items():  # the ModelCheckpoint remembers each run's own folder
        assert key.startswith("ModelCheckpoint") or _same(restored["callbacks"][key], value), key
    _ok(_fit(workdir, "single_from_sharded", "--trainer.max_steps", "6", "--ckpt_path", str(folder), devices=1))
    _close(_weights(_ckpt(workdir, "single_from_sharded", 6)), _weights(resumed["single_from_fsdp2"]), tol=0.0)
