"""``tests/zygote.py``: a forked ``python -m lightning_gpt`` child behaves as a fresh interpreter would (its own pid,
exit status, stdin/stdout/stderr, session, signals), and says so side by side with one."""

from __future__ import annotations

import json
import os
import signal
import subprocess

import psutil  # type: ignore[import-untyped]
import pytest

from tests import zygote
from tests.helpers import PYTHON, REPO, python_env, tiny_config, write_corpus, write_yaml

pytestmark = pytest.mark.skipif(
    not zygote._enabled(), reason="the zygote is off (LIGHTNING_GPT_TEST_ZYGOTE=0, or no os.pidfd_open: not Linux)"
)


def test_a_forked_command_matches_a_fresh_interpreter(trained):
    argv = [PYTHON, "-m", "lightning_gpt", "generate", "--ckpt_path", str(trained["ckpt"]), "--prompt", "-"]
    argv += ["--max_new_tokens", "5", "--temperature", "0"]
    fresh = subprocess.run(argv, cwd=REPO, env=python_env(), input="the quick", capture_output=True, text=True)
    forked = zygote.run(argv, cwd=REPO, env=python_env(), input="the quick", capture_output=True, text=True)
    assert forked.returncode == fresh.returncode == 0, forked.stderr[-2000:]
    assert forked.stdout == fresh.stdout and forked.stdout.startswith("the quick")  # stdin read, stdout written
    bad = [PYTHON, "-m", "lightning_gpt", "gnerate"]
    forked_bad = zygote.run(bad, cwd=REPO, env=python_env(), capture_output=True, text=True)
    assert forked_bad.returncode == 2 and "unknown subcommand 'gnerate'" in forked_bad.stderr


def test_a_forked_command_is_a_process_of_its_own(trained):
    argv = [PYTHON, "-m", "lightning_gpt", "generate", "--ckpt_path", str(trained["ckpt"]), "--prompt", "-"]
    proc = zygote.popen(argv, cwd=REPO, env=python_env(), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                        start_new_session=True)  # fmt: skip
    assert isinstance(proc, zygote.ZygoteProcess)  # forked, not a fresh interpreter
    child = psutil.Process(proc.pid)
    assert proc.pid != os.getpid() and child.ppid() not in (0, 1, os.getpid())  # the zygote's child
    assert os.getpgid(proc.pid) == proc.pid  # its own session and process group
    assert proc.poll() is None  # blocked reading its stdin
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=60) == -signal.SIGKILL  # killed by the signal, as Popen reports it
    assert not psutil.pid_exists(proc.pid) or psutil.Process(proc.pid).status() == psutil.STATUS_ZOMBIE


RECORD_RANK = """
import json, os, resource, sys
import lightning.pytorch as pl


class RecordRank(pl.Callback):
    def __init__(self, folder: str) -> None:
        self.folder = folder

    def on_train_start(self, trainer, pl_module):
        with open(os.path.join(self.folder, f"rank{trainer.global_rank}.json"), "w") as f:
            cmdline = open("/proc/self/cmdline", "rb").read().decode().split("\\0")
            json.dump({"pid": os.getpid(), "ppid": os.getppid(), "pgid": os.getpgid(0), "sid": os.getsid(0),
                       "cmdline": cmdline, "argv": sys.argv[1:], "cwd": os.getcwd(),
                       "local_rank": os.environ.get("LOCAL_RANK"), "world_size": trainer.world_size,
                       "fsize": resource.getrlimit(resource.RLIMIT_FSIZE)[0]}, f)
"""


@pytest.mark.parametrize("new_session", [False, True], ids=["forked", "own-session"])
def test_the_second_rank_of_a_forked_fit_is_forked_too_unless_the_fit_left_the_process_group(new_session, tmp_path):
    """Lightning starts rank 1 as ``python -m lightning_gpt.__main__ <rank 0's arguments>``: the zygote forks it
    (its own process, Lightning's environment, rank 0's directory and streams, the same process group); a fit in a
    session of its own gets a fresh interpreter (a ``killpg`` of that session must reach rank 1 too)."""
    (tmp_path / "record_rank.py").write_text(RECORD_RANK)
    corpus = write_corpus(tmp_path / "corpus.txt", n_lines=60)
    config = write_yaml(tmp_path / "tiny.yaml", tiny_config(tmp_path / "run", corpus, tmp_path / "cache"))
    callback = {"class_path": "record_rank.RecordRank", "init_args": {"folder": str(tmp_path)}}
    strategy = {"class_path": "lightning_gpt.training.strategies.DDPStrategy", "init_args": {}}
    argv = [PYTHON, "-m", "lightning_gpt", "fit", "--config", str(config), "--trainer.devices", "2"]
    argv += ["--trainer.max_steps", "1", "--trainer.strategy", json.dumps(strategy)]
    argv += ["--trainer.callbacks+", json.dumps(callback)]
    env = python_env()
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), env["PYTHONPATH"]])
    proc = zygote.popen(argv, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                        start_new_session=new_session, file_size_limit=1 << 30)  # fmt: skip
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    rank0, rank1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert rank0["pid"] == proc.pid and rank1["pid"] not in (rank0["pid"], os.getpid())
    assert rank0["world_size"] == rank1["world_size"] == 2 and rank1["local_rank"] == "1"
    assert rank1["argv"] == rank0["argv"] and rank1["cwd"] == rank0["cwd"] == str(tmp_path)
    assert rank1["pgid"] == rank0["pgid"]  # one process group: a signal to it reaches both ranks
    assert rank0["fsize"] == rank1["fsize"] == 1 << 30  # rank 0's `ulimit -f`, as a fresh rank inherits it
    if new_session:  # a fresh interpreter, rank 0's child (as without the zygote)
        assert rank1["ppid"] == rank0["pid"] and rank1["cmdline"][1:3] == ["-m", "lightning_gpt.__main__"]
    else:  # forked from the zygote, as rank 0 was
        assert rank1["ppid"] == rank0["ppid"] and "tests.zygote" in rank1["cmdline"]
