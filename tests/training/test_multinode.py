"""Multi-node training for real, on one host: the ``gpt2-fsdp`` recipe, shrunk to CPU size (a 2-layer, 32-wide GPT,
gloo, the recipe's FSDP2 options kept: activation checkpointing, bf16 compute with fp32 reduction, sharded
checkpoints), trained as 2 nodes x 1 process from a ``lightning-gpt prepare``d dataset in a local folder that plays
the object store; the two "nodes" prepare that folder together (``DATA_OPTIMIZER_NUM_NODES=2``, each its
``DATA_OPTIMIZER_NODE_RANK``), and it holds every document once.

- Two ``torchrun`` agents (``--nnodes 2 --nproc_per_node 1 --rdzv_backend c10d``, rendezvous on 127.0.0.1) run the
  recipe's torchrun line: one node's agent gets SIGTERM (both nodes save and stop), then, resumed, a node dies (its
  agent and its worker get SIGKILL; the survivor exits with an error); resumed again, the final weights equal those
  of the uninterrupted launch (the SLURM one below), bit for bit.
- The same two nodes through the SLURM environment Lightning reads (``SLURM_NTASKS``, ``SLURM_PROCID``... set by hand
  on loopback, what ``srun`` sets on a cluster), i.e. the recipe's ``srun python -m lightning_gpt fit`` line, train to
  the same weights: that uninterrupted launch is the reference the torchrun launches resume to.

The ``prepare`` nodes and the SLURM pair are ``python -m lightning_gpt`` processes forked from ``tests/zygote.py``
(the command imported once); torchrun's agents and the workers they start are fresh interpreters.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from tests import zygote
from tests.helpers import REPO, python_env

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not available"),
]
pytest.importorskip("litdata")

KILL = '''
import os
import signal
import time

from lightning.pytorch import Callback


class NodeDies(Callback):
    """The node of global rank ``rank`` dies after ``step`` optimizer steps: SIGKILL to its torchrun agent (the
    parent) and to its own process group, as when a machine is lost."""

    def __init__(self, rank: int = 1, step: int = 3) -> None:
        self.rank, self.step = rank, step

    def on_train_batch_end(self, trainer, pl_module, *args):
        if trainer.global_rank == self.rank and trainer.global_step >= self.step:
            os.kill(os.getppid(), signal.SIGKILL)
            os.killpg(os.getpgid(0), signal.SIGKILL)


class AgentTerminated(Callback):
    """After ``step`` optimizer steps, global rank ``rank`` sends SIGTERM to its torchrun agent (as ``kill <pid>``,
    ``scancel`` or a spot notice would), which forwards it to its own worker only; the rank then waits (at most 20 s)
    until that SIGTERM has reached it, so that the stop does not depend on how fast the agent forwards it."""

    def __init__(self, rank: int = 1, step: int = 3) -> None:
        self.rank, self.step, self.sent = rank, step, False

    def on_train_batch_end(self, trainer, pl_module, *args):
        if trainer.global_rank != self.rank or trainer.global_step < self.step or self.sent:
            return
        self.sent = True
        os.kill(os.getppid(), signal.SIGTERM)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not (
            trainer.received_sigterm or any(getattr(c, "sigterm_received", False) for c in trainer.callbacks)
        ):
            time.sleep(0.01)
'''


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(base: Path) -> dict[str, str]:
    env = python_env()
    env["PYTHONPATH"] = os.pathsep.join([str(base), str(REPO), env.get("PYTHONPATH", "")])
    return env


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """A JSONL corpus (three files) prepared into ``store/`` by two node processes with the shrunk recipe, and that
    recipe as ``tiny-fsdp.yaml``."""
    base = tmp_path_factory.mktemp("multinode")
    docs = [f"doc {i}: " + "lorem ipsum dolor sit amet " * (1 + i % 5) for i in range(300)]
    (base / "corpus").mkdir()
    for part in range(3):  # three files: three shards, two for node 0 and one for node 1
        (base / "corpus" / f"{part}.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs[part::3]))
    (base / "docs.json").write_text(json.dumps(docs))
    cfg = yaml.safe_load((REPO / "recipes" / "gpt2-fsdp.yaml").read_text())
    trainer = cfg["trainer"]
    trainer.pop("check_val_every_n_epoch")
    trainer.update(accelerator="cpu", devices=1, num_nodes=2, max_steps=6, accumulate_grad_batches=1,
                   val_check_interval=None, limit_val_batches=0, logger=False, enable_progress_bar=False,
                   enable_model_summary=False, num_sanity_val_steps=0)  # fmt: skip
    trainer["strategy"]["init_args"].update(process_group_backend="gloo", timeout_minutes=1)
    cfg["model"]["config"] = {"block_size": 16, "n_layer": 2, "n_head": 2, "n_embd": 32, "dropout": 0.0}
    data = cfg["data"]
    for key in ("dataset_config", "max_chars"):
        data.pop(key)
    data.update(source=str(base / "corpus"), tokenizer="char", batch_size=2, num_workers=0, pin_memory=False,
                streaming=False, val_fraction=0.0)  # fmt: skip
    cfg["lr_schedule"].update(warmup_steps=1, decay_steps=100)
    cfg["sampling"]["every_n_steps"] = 100000
    cfg["checkpoint"]["every_n_train_steps"] = 2
    (base / "tiny-fsdp.yaml").write_text(yaml.safe_dump(cfg))
    (base / "multinode_helpers.py").write_text(KILL)
    # The two "machines" prepare the store together (litdata's DATA_OPTIMIZER_NUM_NODES / _NODE_RANK), 20% of the
    # documents held out (the runs below train without validation): node 0 does its part, then waits with no manifest
    # until node 1's part is there, merges and writes the manifest.
    store = base / "store"
    prepare = [sys.executable, "-m", "lightning_gpt", "prepare", "--config", "tiny-fsdp.yaml", "--output_dir",
               str(store), "--num_workers", "1", "--data.val_fraction", "0.2"]  # fmt: skip
    env = {**_env(base), "DATA_OPTIMIZER_NUM_NODES": "2"}
    node0 = zygote.popen(prepare, cwd=base, env={**env, "DATA_OPTIMIZER_NODE_RANK": "0"}, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True)  # fmt: skip
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and node0.poll() is None and not (store / ".nodes" / "0" / "done.json").exists():
        time.sleep(0.05)
    assert node0.poll() is None and not (store / "lightning_gpt_dataset.json").exists()  # waiting: nothing complete
    node1 = zygote.run(prepare, cwd=base, env={**env, "DATA_OPTIMIZER_NODE_RANK": "1"}, capture_output=True,
                       text=True, timeout=300)  # fmt: skip
    assert node1.returncode == 0 and "Node 1 of 2: shards 2 to 2 tokenized" in node1.stdout, node1.stderr[-3000:]
    log, _ = node0.communicate(timeout=300)
    assert node0.returncode == 0 and "Train on it: lightning-gpt fit" in log, log[-3000:]
    return base


def test_two_nodes_prepared_one_folder_with_every_document_once(base):
    """The store the two nodes prepared (above) holds every document of the corpus exactly once (train or
    validation), in one merged litdata index per split; the parts are gone."""
    from lightning_gpt.data.prepared import litdata_environment, read_manifest
    from lightning_gpt.data.tokenizers import tokenizer_from_state_dict

    litdata_environment()  # no PyPI version check
    from litdata import StreamingDataset, TokensLoader

    store = base / "store"
    manifest = read_manifest(str(store))
    assert manifest["num_nodes"] == 2 and manifest["num_shards"] == 3 and not (store / ".nodes").exists()
    tok = tokenizer_from_state_dict(manifest["tokenizer"])
    seen = []
    for split in ("train", "val"):
        ids = [int(t[0]) for t in StreamingDataset(str(store / split), item_loader=TokensLoader(block_size=1))]
        assert len(ids) == manifest["splits"][split]["n_tokens"] and ids[-1] == tok.eos_id
        ends = [i for i, t in enumerate(ids) if t == tok.eos_id]
        seen += [tok.decode(ids[a + 1 : b]) for a, b in zip([-1, *ends[:-1]], ends)]  # the documents, EOS-separated
    assert sorted(seen) == sorted(json.loads((base / "docs.json").read_text()))


def _fit_args(base: Path, run: str, *extra: str) -> list[str]:
    return ["-m", "lightning_gpt", "fit", "--config", str(base / "tiny-fsdp.yaml"), "--data.source",
            str(base / "store"), "--trainer.default_root_dir", str(base / run), *extra]  # fmt: skip


def _torchrun(base: Path, run: str, *extra: str) -> list[subprocess.Popen]:
    """Two torchrun agents, as the recipe's torchrun line on two machines (each in its own session, like a node)."""
    port = _free_port()
    agent = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "1",
             "--rdzv_backend", "c10d", "--rdzv_endpoint", f"127.0.0.1:{port}", "--rdzv_id", run]  # fmt: skip
    return [
        subprocess.Popen(
            [*agent, *_fit_args(base, run, *extra)],
            cwd=base,
            env=_env(base),
            start_new_session=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )  # fmt: skip
        for _ in range(2)
    ]


def _wait(agents: list[Any], timeout: float = 300) -> list[tuple[int, str]]:
    out = []
    for agent in agents:
        try:
            log, _ = agent.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(agent.pid, signal.SIGKILL)
            log, _ = agent.communicate()
        out.append((agent.returncode, log))
    return out


def _final(base: Path, run: str) -> dict[str, torch.Tensor]:
    from lightning_gpt.io.checkpoint import load_checkpoint

    folder = base / run / "checkpoints" / "last.ckpt"
    assert folder.is_dir() and (folder / ".metadata").is_file()  # the recipe's sharded checkpoint
    assert torch.load(folder / "meta.pt", weights_only=True)["global_step"] == 6
    return load_checkpoint(folder)[0].state_dict()


def _equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), (name, (a[name] - b[name]).abs().max())


@pytest.fixture(scope="module")
def slurm(base) -> list[tuple[int, str]]:
    """The recipe's ``srun python -m lightning_gpt fit`` line on two "nodes", uninterrupted: the variables ``srun``
    sets, by hand on loopback. Each process's exit status and output."""
    port = str(_free_port())
    processes = []
    for rank in (0, 1):
        env = _env(base)
        env.update(SLURM_NTASKS="2", SLURM_NTASKS_PER_NODE="1", SLURM_PROCID=str(rank), SLURM_LOCALID="0",
                   SLURM_NODEID=str(rank), SLURM_JOB_ID="4242", SLURM_JOB_NAME="gpt2-fsdp",
                   SLURM_NODELIST="node[0-1]", MASTER_ADDR="127.0.0.1", MASTER_PORT=port)  # fmt: skip
        for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "GROUP_RANK", "NODE_RANK", "TORCHELASTIC_RUN_ID"):
            env.pop(name, None)
        processes.append(zygote.popen([sys.executable, *_fit_args(base, "slurm")], cwd=base, env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))  # fmt: skip
    return _wait(processes)


@pytest.fixture(scope="module")
def uninterrupted(base, slurm) -> dict[str, torch.Tensor]:
    """The final weights of the uninterrupted two-node run (the SLURM one: torchrun's launches must end on them)."""
    for code, log in slurm:
        assert code == 0, log[-3000:]
    return _final(base, "slurm")


def test_two_torchrun_nodes_sigterm_to_one_agent_then_a_lost_node_resume_to_the_uninterrupted_weights(
    base, uninterrupted
):
    """Three launches of the two agents, one run folder:

    1. The agent of global rank 1's node gets SIGTERM at the end of step 3 (as from ``kill``, ``scancel`` or a spot
       notice; torchrun forwards it to its own worker only): that rank tells the other node at the step's end; both
       save ``last.ckpt`` at step 3 together (a sharded, collective save; the periodic ones are at even steps) and
       exit 143, within torchrun's 30 s grace.
    2. Resumed with ``--ckpt_path last``, the node of rank 1 dies (SIGKILL to its agent and worker) after step 5; the
       survivor exits with an error; ``last.ckpt`` is the periodic step-4 folder.
    3. Resumed again: the final weights equal the uninterrupted run's (the SLURM launch, ``slurm``), bit for bit: the
       torchrun line and the srun line train the same model, and the stops and resumes change nothing.
    """
    last = base / "stopped" / "checkpoints" / "last.ckpt"
    term = '{"class_path": "multinode_helpers.AgentTerminated", "init_args": {"rank": 1, "step": 3}}'
    results = _wait(_torchrun(base, "stopped", "--trainer.callbacks+", term), timeout=120)
    logs = "\n".join(log for _, log in results)
    assert all(code != 0 for code, _ in results), logs[-3000:]  # stopped (143), not finished
    assert "SIGTERM at step 3" in logs and "SIGKILL" not in logs, logs[-3000:]  # saved, not killed after the grace
    assert sorted(p.name for p in last.glob("*.distcp")) == ["__0_0.distcp", "__1_0.distcp"]  # both nodes' shards
    assert torch.load(last / "meta.pt", weights_only=True)["global_step"] == 3

    kill = '{"class_path": "multinode_helpers.NodeDies", "init_args": {"rank": 1, "step": 5}}'
    start = time.monotonic()
    results = _wait(_torchrun(base, "stopped", "--ckpt_path", "last", "--trainer.callbacks+", kill), timeout=240)
    assert all(code != 0 for code, _ in results), [log[-2000:] for _, log in results]  # the node died, the other failed
    assert time.monotonic() - start < 280
    assert not (last.parent / "epoch=0-step=6.ckpt").exists()  # it really stopped mid-run
    assert torch.load(last / "meta.pt", weights_only=True)["global_step"] == 4

    for code, log in _wait(_torchrun(base, "stopped", "--ckpt_path", "last")):
        assert code == 0, log[-3000:]
    _equal(_final(base, "stopped"), uninterrupted)


def test_the_same_two_nodes_under_slurm_variables(base, slurm, uninterrupted):
    """The two SLURM processes (``slurm``) trained to step 6 and saved the recipe's sharded checkpoint (both checked
    by ``uninterrupted``); that their weights equal torchrun's is checked by the torchrun test above, which resumes to
    exactly them."""
    for code, log in slurm:
        assert code == 0, log[-3000:]
        assert "GLOBAL_RANK" in log or "MEMBER" in log  # Lightning set up the two-process group itself
