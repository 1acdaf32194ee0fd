"""README.md's Python snippets run when pasted (issue 12.4): each ```python block is executed as written.

A block that names a placeholder path (``/path/to/...``) needs the user's own files and is skipped with that reason;
the decoding block reads ``runs/quickstart/checkpoints/last.ckpt``, so a small run is trained there first (in a
temporary directory). The ``openai`` client block talks to ``lightning-gpt serve`` on that run, started on a free
port for it.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks() -> list[tuple[int, str]]:
    """``(line, code)`` of every ```python block of README.md."""
    text = README.read_text(encoding="utf-8")
    blocks = []
    for match in re.finditer(r"^```python\n(.*?)^```", text, flags=re.S | re.M):
        blocks.append((text.count("\n", 0, match.start()) + 1, match.group(1)))
    return blocks


BLOCKS = python_blocks()


def test_readme_has_python_blocks():
    assert len(BLOCKS) >= 3


@pytest.fixture
def quickstart_checkpoint(tmp_path, monkeypatch, cli):
    """A tiny run at runs/quickstart (relative to a temporary working directory), as the quick start leaves one."""
    from tests.helpers import tiny_config, write_corpus, write_yaml

    corpus = write_corpus(tmp_path / "corpus.txt")
    monkeypatch.chdir(tmp_path)
    cfg = tiny_config(tmp_path / "runs" / "quickstart", corpus, tmp_path / "cache", **{"trainer.max_steps": 1})
    cfg["model"]["config"]["block_size"] = 128  # the snippet asks for prompt + 50 new tokens
    result = cli("fit", "--config", write_yaml(tmp_path / "run.yaml", cfg))
    assert result.code == 0, result
    return tmp_path / "runs" / "quickstart" / "checkpoints" / "last.ckpt"


@pytest.mark.slow  # builds GPT-2 small (124M) as the snippet says, and trains a tiny run for the decoding block
@pytest.mark.parametrize("line,code", BLOCKS, ids=[f"README.md:{line}" for line, _ in BLOCKS])
def test_readme_python_block_runs(line, code, request):
    if "/path/to/" in code:
        placeholder = re.search(r"/path/to/[\w./-]*", code).group(0)
        pytest.skip(f"README.md:{line} needs the user's own files ({placeholder})")
    if "runs/quickstart" in code:
        request.getfixturevalue("quickstart_checkpoint")
    torch.manual_seed(0)
    if "127.0.0.1:8000" in code:  # a client of `lightning-gpt serve --ckpt_path runs/quickstart`: start that server
        pytest.importorskip("litserve")
        pytest.importorskip("openai")
        from tests.serve.conftest import running_server

        ckpt = request.getfixturevalue("quickstart_checkpoint")
        with running_server(ckpt, ckpt.parents[3]) as server:
            code = code.replace("127.0.0.1:8000", f"127.0.0.1:{server.port}")
            exec(compile(code, f"README.md:{line}", "exec"), {"__name__": "__readme__"})
        return
    exec(compile(code, f"README.md:{line}", "exec"), {"__name__": "__readme__"})
