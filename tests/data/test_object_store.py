"""``lightning-gpt prepare --output_dir s3://...`` and ``fit --data.source s3://...`` against a real S3 API (moto's
server on 127.0.0.1, ``tests/data/conftest.py``), through the ``lightning-gpt`` command: the same dataset as a local
prepare, a fit that resumes exactly as from the local folder, a killed upload that never looks complete and is
resumed, and one paragraph for a missing bucket, refused or absent credentials and an unreachable endpoint."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import pytest
import torch

from lightning_gpt.data.prepared import MANIFEST
from tests import zygote
from tests.data.conftest import store_env
from tests.helpers import PYTHON, REPO, python_env, tiny_config, user_error, write_yaml

pytest.importorskip("litdata")

_RUN = {"data.val_fraction": 0.1, "lr_schedule.warmup_steps": 1, "lr_schedule.decay_steps": 6}


def jsonl_corpus(path: Path, n_docs: int) -> Path:
    """``n_docs`` JSONL documents of 10 to 70 characters."""
    with open(path, "w") as f:
        for i in range(n_docs):
            f.write(json.dumps({"text": f"doc {i}: " + "lorem ipsum dolor " * (1 + i % 4)}) + "\n")
    return path


def objects(url: str) -> dict[str, bytes]:
    """Every object under ``url`` (``s3://bucket/prefix``), read with plain boto3: ``{path in the prefix: bytes}``."""
    import boto3

    bucket, _, prefix = url[len("s3://") :].partition("/")
    client = boto3.session.Session().client("s3")
    out = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=f"{prefix}/"):
        for obj in page.get("Contents", []):
            out[obj["Key"][len(prefix) + 1 :]] = client.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read()
    return out


def local_files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def same_dataset(remote: dict[str, bytes], local: dict[str, bytes]) -> None:
    """The same prepared dataset: the same files, chunks and manifest byte for byte, the same chunk lists (litdata's
    ``index.json`` also holds the time it was written)."""
    assert sorted(remote) == sorted(local)
    for rel in local:
        if rel.endswith("index.json"):
            assert json.loads(remote[rel])["chunks"] == json.loads(local[rel])["chunks"], rel
        else:
            assert remote[rel] == local[rel], rel


@pytest.fixture(scope="module")
def pair(tmp_path_factory, s3_endpoint) -> Iterator[dict[str, Any]]:
    """One corpus prepared by the command into ``s3://<bucket>/ds`` and into a local folder (the same settings)."""
    import boto3

    from lightning_gpt.cli import main

    base = tmp_path_factory.mktemp("s3pair")
    corpus = jsonl_corpus(base / "corpus.jsonl", 300)
    config = write_yaml(base / "run.yaml", tiny_config(base / "run", corpus, base / "cache", **_RUN))
    with pytest.MonkeyPatch.context() as mp:
        store_env(mp, base, s3_endpoint)
        mp.delenv("LIGHTNING_GPT_TRACEBACK", raising=False)
        mp.setattr(sys, "argv", ["lightning-gpt"])
        boto3.session.Session().client("s3").create_bucket(Bucket="pair")
        stage = base / "stage"
        for out in ("s3://pair/ds", str(base / "local")):
            try:
                main(["prepare", "--config", str(config), "--output_dir", out, "--num_workers", "1"] + (
                    ["--staging_dir", str(stage)] if out.startswith("s3://") else []
                ))  # fmt: skip
            except SystemExit as exc:
                assert not exc.code, f"prepare {out} exited {exc.code}"
        yield {"base": base, "config": config, "url": "s3://pair/ds", "local": base / "local", "stage": stage}


@pytest.mark.slow
def test_prepare_into_s3_writes_the_local_prepare_manifest_last_and_keeps_an_up_to_date_one(
    pair, cli, monkeypatch, tmp_path, s3_endpoint
):
    store_env(monkeypatch, tmp_path, s3_endpoint)
    remote = objects(pair["url"])
    same_dataset(remote, local_files(pair["local"]))
    assert MANIFEST in remote and ".preparing" not in remote and "train/index.json" in remote
    assert json.loads(remote[MANIFEST])["splits"]["val"]["n_tokens"] > 0
    assert not pair["stage"].exists()  # the staging folder is removed after the upload
    again = cli("prepare", "--config", pair["config"], "--output_dir", pair["url"], "--staging_dir", tmp_path / "st")
    assert again.code == 0, again
    assert objects(pair["url"]) == remote and not (tmp_path / "st").exists()  # up to date: nothing redone


def _final_weights(root: Path) -> dict[str, torch.Tensor]:
    ckpt = torch.load(root / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 6
    return ckpt["state_dict"]


@pytest.mark.slow
def test_fit_from_s3_resumed_midway_equals_fit_from_the_local_folder(pair, cli, monkeypatch, tmp_path, s3_endpoint):
    store_env(monkeypatch, tmp_path, s3_endpoint)
    cache = tmp_path / "cache"

    def fit(root: Path, source: Any, steps: int, *extra: Any) -> None:
        args = ["fit", "--config", pair["config"], "--data.source", source, "--trainer.default_root_dir", root]
        result = cli(*args, "--trainer.max_steps", steps, "--data.cache_dir", cache, *extra)
        assert result.code == 0, result

    fit(tmp_path / "local", pair["local"], 6)
    fit(tmp_path / "s3", pair["url"], 3)
    fit(tmp_path / "s3", pair["url"], 6, "--ckpt_path", "last")
    assert any((cache / "streamed").rglob("chunk-*.bin"))  # the chunks came from the store, into data.cache_dir
    a, b = _final_weights(tmp_path / "local"), _final_weights(tmp_path / "s3")
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=0, atol=0, msg=name)


@pytest.mark.slow
def test_fit_from_s3_checks_the_prepared_tokenizer_and_the_manifest(pair, cli, monkeypatch, tmp_path, s3_endpoint):
    from lightning_gpt.data.tokenizers import build_tokenizer

    store_env(monkeypatch, tmp_path, s3_endpoint)
    other = tmp_path / "other.ckpt"
    torch.save({"tokenizer": build_tokenizer("char", ["xyz"]).state_dict()}, other)
    result = cli("fit", "--config", pair["config"], "--data.source", pair["url"], "--data.tokenizer", other)
    user_error(
        result, f"the prepared dataset '{pair['url']}' was tokenized with", "token ids would mean different text"
    )


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def auth_endpoint() -> Iterator[str]:
    """A second moto server, in its own process, that checks credentials (it knows no access key at all)."""
    pytest.importorskip("moto.server")
    code = (
        "import time\nfrom moto.server import ThreadedMotoServer\n"
        "s = ThreadedMotoServer('127.0.0.1', 0, verbose=False)\ns.start()\n"
        "print(s.get_host_and_port()[1], flush=True)\ntime.sleep(300)\n"
    )
    env = {**python_env(), "INITIAL_NO_AUTH_ACTION_COUNT": "0"}
    proc = subprocess.Popen([PYTHON, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, text=True)
    try:
        assert proc.stdout is not None
        yield f"http://127.0.0.1:{int(proc.stdout.readline())}"
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.parametrize("fault", ["missing bucket", "no credentials", "refused credentials", "unreachable endpoint"])
def test_prepare_and_fit_say_what_is_wrong_with_the_store_in_one_paragraph(
    fault, s3_endpoint, cli, monkeypatch, tmp_path, run_yaml, request
):
    store_env(monkeypatch, tmp_path, s3_endpoint)
    url, needle = f"s3://missing-{os.getpid()}/ds", "does not exist. Create it first (aws s3 mb"
    if fault == "no credentials":
        url, needle = "s3://any-bucket/ds", "no credentials were found"
        monkeypatch.delenv("AWS_ACCESS_KEY_ID")
        monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    elif fault == "refused credentials":
        monkeypatch.setenv("AWS_ENDPOINT_URL", request.getfixturevalue("auth_endpoint"))
        url, needle = "s3://any-bucket/ds", "the object store refused the credentials ("
    elif fault == "unreachable endpoint":
        monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{_closed_port()}")
        url, needle = "s3://any-bucket/ds", "the endpoint cannot be reached"
    config = run_yaml()
    started = time.monotonic()
    prepared = cli("prepare", "--config", config, "--output_dir", url, "--staging_dir", tmp_path / "stage")
    user_error(prepared, f"--output_dir {url!r} (endpoint ", needle)
    assert not (tmp_path / "stage").exists()  # checked before anything is tokenized
    fit = cli("fit", "--config", config, "--data.source", url)
    user_error(fit, f"--data.source {url!r} (endpoint ", needle)
    assert not (tmp_path / "run").exists()  # refused before the Trainer and the model are built
    assert time.monotonic() - started < 60  # our client gives up within seconds (litdata's retries 1000 times)


@pytest.mark.parametrize("case", ["other objects", "other settings", "several nodes"])
def test_prepare_never_overwrites_what_it_did_not_write(case, s3_bucket, cli, run_yaml, monkeypatch, tmp_path):
    import boto3

    client, bucket = boto3.session.Session().client("s3"), s3_bucket[len("s3://") :]
    if case == "other objects":
        client.put_object(Bucket=bucket, Key="ds/notes.txt", Body=b"mine")
        needle = "is not empty and is not a prepared dataset (found: ['notes.txt'])"
    elif case == "other settings":
        client.put_object(Bucket=bucket, Key=f"ds/{MANIFEST}", Body=json.dumps({"version": 1, "settings": {}}).encode())
        needle = "already holds a prepared dataset made with other settings"
    else:
        monkeypatch.setenv("DATA_OPTIMIZER_NUM_NODES", "2")
        monkeypatch.setenv("DATA_OPTIMIZER_NODE_RANK", "0")
        needle = "several machines prepare into one shared local folder"
    before = objects(f"{s3_bucket}/ds")
    result = cli("prepare", "--config", run_yaml(), "--output_dir", f"{s3_bucket}/ds", "--staging_dir", tmp_path / "s")
    user_error(result, f"--output_dir '{s3_bucket}/ds'", needle)
    assert objects(f"{s3_bucket}/ds") == before and not (tmp_path / "s").exists()


@pytest.mark.slow
def test_a_prepare_killed_during_the_upload_never_looks_complete_and_a_rerun_finishes_it(
    s3_bucket, s3_server, cli, tmp_path, run_yaml, caplog
):
    import boto3

    corpus = jsonl_corpus(tmp_path / "c.jsonl", 400)
    url = f"{s3_bucket}/ds"
    stage = tmp_path / "stage"
    config = run_yaml(**{"data.source": str(corpus), "data.val_fraction": 0.1})
    cmd = [PYTHON, "-m", "lightning_gpt", "prepare", "--config", str(config), "--output_dir", url]
    cmd += ["--staging_dir", str(stage), "--num_workers", "1"]
    env = {**python_env(), "TMPDIR": str(tmp_path)}
    hold = s3_server["hold"]
    hold.hold(f"/{url[len('s3://') :]}/train/index.json")  # after the chunks, before the index files and manifest
    try:
        proc = zygote.popen(
            cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True
        )
        arrived = False
        while proc.poll() is None and not (arrived := hold.arrived.wait(0.2)):
            pass
        os.killpg(proc.pid, signal.SIGKILL)  # in the middle of the upload
        _, err = proc.communicate()
        assert arrived, err[-2000:]
    finally:
        hold.released.set()
        hold.hold("")
    left = objects(url)
    assert sorted(left) == [".preparing", "train/chunk-0-0.bin", "val/chunk-0-0.bin"]
    fit = cli("fit", "--config", config, "--data.source", url)
    user_error(fit, "holds an interrupted lightning-gpt prepare", "run the same prepare command again")
    client, bucket = boto3.session.Session().client("s3"), s3_bucket[len("s3://") :]
    key = f"{url[len(s3_bucket) + 1 :]}/train/chunk-0-9.bin"  # a large chunk's upload, killed between its parts
    upload = client.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
    client.upload_part(Bucket=bucket, Key=key, UploadId=upload, PartNumber=1, Body=b"\0" * 1024)
    done = cli("prepare", "--config", config, "--output_dir", url, "--staging_dir", stage, "--num_workers", "1")
    assert done.code == 0, done
    assert "2 of 4 files were uploaded by the interrupted prepare; uploading the rest" in caplog.text  # resumed
    remote = objects(url)
    assert sorted(remote) == [
        MANIFEST,
        "train/chunk-0-0.bin",
        "train/index.json",
        "val/chunk-0-0.bin",
        "val/index.json",
    ]
    assert not stage.exists() and not client.list_multipart_uploads(Bucket=bucket).get("Uploads")
    splits = json.loads(remote[MANIFEST])["splits"]
    chars = sum(len(json.loads(line)["text"]) + 1 for line in corpus.open())  # char ids + EOS per document
    assert splits["train"]["n_tokens"] + splits["val"]["n_tokens"] == chars


@pytest.mark.slow
def test_a_failed_upload_is_one_paragraph_and_the_rerun_uploads_the_rest(s3_bucket, s3_server, cli, tmp_path, run_yaml):
    corpus = jsonl_corpus(tmp_path / "c.jsonl", 300)
    url, stage = f"{s3_bucket}/ds", tmp_path / "stage"
    args = [
        "prepare",
        "--config",
        run_yaml(**{"data.source": str(corpus), "data.val_fraction": 0.0}),
        "--output_dir",
        url,
    ]
    args += ["--staging_dir", stage, "--num_workers", "1"]
    hold = s3_server["hold"]
    hold.hold(f"/{url[len('s3://') :]}/train/index.json")
    hold.released.set()  # every PUT of it is answered 503 at once: the store fails in the middle of the upload
    try:
        failed = cli(*args)
    finally:
        hold.hold("")
    user_error(
        failed, f"--output_dir {url!r} (endpoint ", "could not upload to the object store", "Run the same prepare"
    )
    left = objects(url)
    assert sorted(left) == [".preparing", "train/chunk-0-0.bin"] and stage.is_dir()
    done = cli(*args)
    assert done.code == 0, done
    remote = objects(url)
    assert sorted(remote) == [MANIFEST, "train/chunk-0-0.bin", "train/index.json"] and not stage.exists()
