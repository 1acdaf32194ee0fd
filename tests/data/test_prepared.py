"""``lightning-gpt prepare`` and streaming a prepared folder: same tokens as the token cache, exact resume, a killed
prepare detected and redone, the tokenizer and world-size checks."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import subprocess
import time
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch

from lightning_gpt.data.prepared import MANIFEST, is_prepared, prepare_dataset, read_manifest
from lightning_gpt.data.sources import resolve_source
from lightning_gpt.data.tokenizers import build_tokenizer
from lightning_gpt.training import TextDataModule
from tests import zygote
from tests.data.test_datamodule import Recorder, trainer
from tests.helpers import PYTHON, REPO, python_env

pytest.importorskip("litdata")


def jsonl_corpus(path: Path, n_docs: int = 400) -> Path:
    with open(path, "w") as f:
        for i in range(n_docs):
            f.write(json.dumps({"text": f"doc {i}: " + "lorem ipsum dolor " * (1 + i % 7)}) + "\n")
    return path


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> dict:
    base = tmp_path_factory.mktemp("prepared")
    corpus = jsonl_corpus(base / "c.jsonl")
    spec = {"source": str(corpus)}
    src = resolve_source(**spec)
    tok = build_tokenizer("char", src.documents())
    out = base / "out"
    start_method = multiprocessing.get_start_method(allow_none=True)
    manifest = prepare_dataset(
        src, spec, tok, str(out), val_fraction=0.1, split_seed=5, num_workers=2, shard_bytes=4096
    )
    return {"base": base, "corpus": corpus, "out": out, "manifest": manifest, "tokenizer": tok, "start": start_method}


def test_prepare_leaves_the_processes_start_method_as_it_was(prepared):
    # litdata's optimize sets "spawn" for the whole process; then every DataLoader worker of a later fit in this
    # process started a new interpreter and imported torch (seconds of CPU each) instead of forking.
    assert multiprocessing.get_start_method(allow_none=True) == prepared["start"]


def test_prepared_tokens_equal_the_token_cache_and_the_split_is_a_document_sample(prepared):
    manifest, tok = prepared["manifest"], prepared["tokenizer"]
    assert is_prepared(str(prepared["out"])) and manifest["num_shards"] > 2  # really split over workers
    docs = list(resolve_source(str(prepared["corpus"])).documents())
    expected = sum(len(d) + 1 for d in docs)  # one id per character + EOS
    train, val = manifest["splits"]["train"]["n_tokens"], manifest["splits"]["val"]["n_tokens"]
    assert train + val == expected
    assert 0.04 < val / expected < 0.2  # ~10% of the documents
    assert read_manifest(str(prepared["out"]))["tokenizer"] == tok.state_dict()


def test_stream_a_prepared_folder(prepared):
    dm = TextDataModule(source=str(prepared["out"]), block_size=16, batch_size=4, tokenizer="bpe")
    assert dm.streaming and dm.tokenizer.fingerprint() == prepared["tokenizer"].fingerprint()  # the folder's own
    dm.setup("fit")
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == y.shape == (4, 16) and x.dtype == torch.int64 and torch.equal(x[:, 1:], y[:, :-1])
    assert int(x.max()) < dm.vocab_size
    vx, _ = next(iter(dm.val_dataloader()))
    assert vx.shape == (4, 16)


def test_a_named_tokenizer_must_be_the_prepared_one(prepared, tmp_path):
    other = build_tokenizer("char", ["xyz"])
    ckpt = tmp_path / "other.ckpt"
    torch.save({"tokenizer": other.state_dict()}, ckpt)
    dm = TextDataModule(source=str(prepared["out"]), tokenizer=str(ckpt), block_size=8)
    with pytest.raises(
        ValueError, match="was tokenized with 'char'.*the named tokenizer is .*token ids would mean different text"
    ):
        dm.tokenizer  # noqa: B018


def test_streaming_position_refuses_another_world_size(prepared):
    dm = TextDataModule(source=str(prepared["out"]), block_size=8)
    state = {**dm.state_dict(), "world_size": 2}
    with pytest.raises(ValueError, match="on 2 processes and this run has 1"):
        dm.load_state_dict(state)


@pytest.mark.slow
@pytest.mark.parametrize("num_workers", [0, 2])
def test_streaming_resume_sees_the_same_batches(prepared, tmp_path, num_workers):
    source = str(prepared["out"])

    def dm():
        return TextDataModule(source=source, batch_size=4, val_fraction=0.0, num_workers=num_workers)

    torch.manual_seed(0)
    ref = Recorder()
    trainer(tmp_path / "ref", 8).fit(ref, datamodule=dm())
    ckpt = pl.callbacks.ModelCheckpoint(
        dirpath=tmp_path / "ck", filename="{step}", every_n_train_steps=1, save_top_k=-1
    )
    trainer(tmp_path / "a", 5, callbacks=[ckpt]).fit(Recorder(), datamodule=dm())
    for step in (2, 5):
        resumed = Recorder()
        trainer(tmp_path / f"r{step}", 8).fit(
            resumed, datamodule=dm(), ckpt_path=str(tmp_path / "ck" / f"step={step}.ckpt")
        )
        assert len(resumed.seen) == 8 - step
        assert all(torch.equal(a, b) for a, b in zip(resumed.seen, ref.seen[step:])), step


@pytest.mark.slow
def test_a_killed_prepare_is_detected_and_redone(tmp_path):
    corpus = jsonl_corpus(tmp_path / "big.jsonl", n_docs=20000)
    out = tmp_path / "out"
    cache = tmp_path / "cache"
    cmd = [PYTHON, "-m", "lightning_gpt", "prepare", "--data.source", str(corpus), "--output_dir", str(out)]
    cmd += ["--data.cache_dir", str(cache), "--num_workers", "2"]
    env = {**python_env(), "TMPDIR": str(tmp_path)}
    proc = zygote.popen(
        cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    deadline = time.time() + 120
    while time.time() < deadline and not (out / "train").exists():
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the command and its worker processes (their own process group)
    proc.wait()
    assert not (out / MANIFEST).exists()  # never looks complete
    with pytest.raises(ValueError, match="interrupted lightning-gpt prepare"):
        TextDataModule(source=str(out), block_size=8).prepare_data()
    done = zygote.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    manifest = read_manifest(str(out))
    docs = list(resolve_source(str(corpus)).documents())
    splits = manifest["splits"]
    assert splits["train"]["n_tokens"] + splits["val"]["n_tokens"] == sum(len(d) + 1 for d in docs)
    assert not (out / ".preparing").exists() and not (out / ".val-parts").exists()
    assert np.dtype(manifest["dtype"]) == np.uint16


def test_fit_refuses_an_unprepared_source_past_the_limit_at_once(cli, run_yaml, corpus):
    from tests.helpers import user_error

    result = cli("fit", "--config", run_yaml(**{"data.max_unprepared_chars": 1000}))
    user_error(result, "more than max_unprepared_chars=1,000", "lightning-gpt prepare", "--data.source data/prepared")


def test_a_refused_row_stops_prepare_with_one_paragraph_and_nothing_written(cli, tmp_path):
    corpus = jsonl_corpus(tmp_path / "c.jsonl", n_docs=300)
    with open(corpus, "a") as f:
        f.write(json.dumps({"text": 123}) + "\n")  # line 301: a number, not text
    out = tmp_path / "out"
    result = cli(
        "prepare", "--data.source", corpus, "--data.tokenizer", "char", "--data.tokenizer_sample_chars", 200,
        "--output_dir", out, "--num_workers", 1,
    )  # fmt: skip
    assert result.code == 2, result
    assert "c.jsonl:301: text_column='text' holds a int (123), not a string" in result.err
    assert "Traceback" not in result.err and "Nothing was prepared" in result.err
    assert not out.exists() or not any(out.iterdir())


@pytest.mark.slow
def test_prepare_then_fit_through_the_command(cli, run_yaml, tmp_path, corpus):
    out = tmp_path / "prepared"
    config = run_yaml(**{"data.val_fraction": 0.1, "trainer.limit_val_batches": 2, "trainer.val_check_interval": 2})
    result = cli("prepare", "--config", config, "--output_dir", out, "--num_workers", "2")
    assert result.code == 0, result
    assert "Train on it: lightning-gpt fit" in result.out and is_prepared(str(out))
    again = cli("prepare", "--config", config, "--output_dir", out)  # up to date: kept, not redone
    assert again.code == 0 and (out / MANIFEST).stat().st_mtime == (out / MANIFEST).stat().st_mtime
    fit = cli("fit", "--config", config, "--data.source", out)
    assert fit.code == 0, fit
    from lightning_gpt.io.checkpoint import load_checkpoint

    _, tok = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.ckpt")
    assert tok.state_dict() == read_manifest(str(out))["tokenizer"]  # the model decodes with the dataset's tokenizer


def test_node_variables_and_the_split_of_the_shards(monkeypatch):
    from lightning_gpt.data.prepared_nodes import node_layout, node_shards

    monkeypatch.delenv("DATA_OPTIMIZER_NUM_NODES", raising=False)
    monkeypatch.delenv("DATA_OPTIMIZER_NODE_RANK", raising=False)
    assert node_layout() == (1, 0)
    for num, rank in (("2", "5"), ("two", "0"), ("2", "-1")):
        monkeypatch.setenv("DATA_OPTIMIZER_NUM_NODES", num)
        monkeypatch.setenv("DATA_OPTIMIZER_NODE_RANK", rank)
        with pytest.raises(ValueError, match=f"DATA_OPTIMIZER_NUM_NODES='{num}'.*do not describe a node"):
            node_layout()
    for n_shards in range(12):
        for nodes in range(1, 5):
            runs = [node_shards(n_shards, nodes, r) for r in range(nodes)]
            assert [i for run in runs for i in run] == list(range(n_shards))  # every shard once, in order
            assert max(map(len, runs)) - min(map(len, runs)) <= 1


def test_litdata_workers_fork_only_from_a_one_thread_process():
    """Forked workers start at once (spawned ones import torch anew); a fork beside another thread could inherit a
    lock held forever, so then litdata's own choice stands. tqdm's monitor threads are stopped, not counted: the base
    class's and a subclass's (``tqdm.auto``, which inductor's compile draws: a worker that had compiled spawned).

    Checked in a child forked from this test (it has this thread only, whatever other threads a pytest worker runs at
    the moment: a count taken here could change between two lines)."""
    import sys
    import threading

    from tqdm import tqdm
    from tqdm.auto import tqdm as tqdm_auto

    from lightning_gpt.data import litdata_run

    if not sys.platform.startswith("linux"):
        assert litdata_run.start_method() is None
        return
    pid = os.fork()
    if pid == 0:  # the child: one thread; exit status 0 only if both answers are right
        code = 3
        try:
            for cls in (tqdm, tqdm_auto):  # (an earlier prepare in this worker turned the monitors off)
                cls.monitor_interval, cls.monitor = 10, None
            with tqdm_auto(total=1, disable=False, file=open(os.devnull, "w")):  # a subclass's monitor thread
                pass
            with tqdm(total=1, disable=False, file=open(os.devnull, "w")):  # and tqdm's own
                pass
            assert threading.active_count() == 3
            alone = litdata_run.start_method()
            stop = threading.Event()
            other = threading.Thread(target=stop.wait, daemon=True)
            other.start()
            beside = litdata_run.start_method()
            stop.set()
            other.join()
            code = 0 if (alone, beside) == ("fork", None) else 1
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0  # 1: a wrong answer; 3: an exception in the child
