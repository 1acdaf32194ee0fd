"""``lightning-gpt serve`` refuses bad settings and checkpoints with one paragraph and exit status 2, before any
server process starts (nothing is left listening, no traceback)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.helpers import python_env, user_error
from tests.serve.conftest import free_port, write_tiny_checkpoint

pytest.importorskip("litserve")


def test_serve_is_listed_in_the_top_level_help(cli):
    out = cli("--help")
    assert out.code == 0 and "serve" in out.out


def test_a_missing_checkpoint_is_one_paragraph_and_exit_2_before_anything_starts(tmp_path):
    port = free_port()
    cmd = [
        sys.executable,
        "-m",
        "lightning_gpt",
        "serve",
        "--ckpt_path",
        str(tmp_path / "nope.ckpt"),
        "--port",
        str(port),
    ]
    done = subprocess.run(cmd, env=python_env(), capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr and "nope.ckpt" in done.stderr
    assert done.stderr.startswith("lightning-gpt: error:")
    assert not (tmp_path / "client.py").exists()  # LitServe's client file is not written
    import socket

    with socket.socket() as s:  # the port is free: no server was started
        s.bind(("127.0.0.1", port))


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["--host", "localhost"], ["--host", "localhost", "127.0.0.1"]),
        (["--port", "80"], ["--port", "1024"]),
        (["--batch_timeout", "0"], ["--batch_timeout"]),
        (["--max_batch_size", "0"], ["--max_batch_size"]),
        (["--max_rows_per_request", "100"], ["--max_rows_per_request", "--max_batch_rows"]),
        (["--device", "cuda:7"], ["--device"]),
        (["--log_level", "loud"], ["--log_level"]),
    ],
)
def test_bad_settings_are_one_paragraph_and_exit_2(cli, tmp_path, args, needles):
    ckpt = write_tiny_checkpoint(tmp_path / "tiny.ckpt", block_size=32)
    out = cli("serve", "--ckpt_path", ckpt, *args)
    user_error(out, *needles)


def test_a_checkpoint_without_a_tokenizer_is_refused(cli, tmp_path):
    ckpt = write_tiny_checkpoint(tmp_path / "bare.ckpt", tokenizer=False, block_size=32)
    user_error(cli("serve", "--ckpt_path", ckpt), "tokenizer", "bare.ckpt")


def test_a_damaged_checkpoint_is_refused(cli, tmp_path):
    ckpt = tmp_path / "broken.ckpt"
    ckpt.write_bytes(b"not a checkpoint at all")
    out = cli("serve", "--ckpt_path", ckpt)
    assert out.code == 2 and "Traceback" not in out.err and "broken.ckpt" in out.err


def test_the_flags_are_the_fields_of_serve_options_and_each_bad_one_is_named(tiny_ckpt):
    import dataclasses

    from lightning_gpt.cli.serve import _parser
    from lightning_gpt.serve import ServeOptions, build_server

    flags = set(vars(_parser().parse_args(["--ckpt_path", "x"])))
    assert flags - {"ckpt_path", "host", "port", "log_level"} == {f.name for f in dataclasses.fields(ServeOptions)}
    with pytest.raises(ValueError, match=r"--max_rows_per_request must be an integer in \[1, --max_batch_rows=8\]"):
        ServeOptions(max_batch_rows=8, max_rows_per_request=9)
    with pytest.raises(ValueError, match=r"Unknown server setting\(s\) \['max_batch'\]"):
        build_server(str(tiny_ckpt), max_batch=4)
    # Keywords win over the options (build_server's 0.1 keywords keep working); "auto" is resolved once.
    _, info = build_server(str(tiny_ckpt), ServeOptions(model_name="a", device="auto"), model_name="b")
    assert info["model_name"] == "b" and info["device"] in ("cpu", "cuda")
