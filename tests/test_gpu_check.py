"""benchmarks/gpu_check.py: its CPU dry run (tiny sizes) exercises every part and prints the table."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow  # ~30 s: imports transformers and starts a one-process FSDP2 run
def test_gpu_check_dry_run(tmp_path):
    out = tmp_path / "gpu_check.md"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "gpu_check.py"), "--dry-run", "--out", str(out)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    table = out.read_text()
    assert "DRY RUN" in table and "FAILED" not in table
    for part in ("| train |", "| attention |", "| fsdp2 |", "| decode |"):
        assert part in table
    assert "torch.compile" in table and "MFU" in table and "sharded=True" in table and "same tokens: yes" in table
    assert "compiled (CUDA graphs), batch 1" in table and "compiled (CUDA graphs), batch 8" in table
    assert "HF static cache + compile" in table and "speculative, batch 1" in table
