"""Progress output (issue 12.2): plain periodic lines when stdout is not a terminal, a step-counting bar that stays
right after a resume, and a model summary without the FLOPs column of zeros."""

from __future__ import annotations

import re

import pytest
import yaml

from lightning_gpt.training.callbacks.progress import GPTProgressBar
from tests.helpers import tiny_config, write_corpus


@pytest.fixture
def run(tmp_path):
    corpus = write_corpus(tmp_path / "corpus.txt")

    def make(**overrides):
        cfg = tiny_config(tmp_path / "run", corpus, tmp_path / "cache", **overrides)
        path = tmp_path / "run.yaml"
        path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        return path

    return make


def test_non_tty_output_has_periodic_loss_lines(cli, run, caplog):
    # capsys: stdout is not a terminal, as under nohup, SLURM, CI or `| tee`
    path = run(
        **{
            "trainer.max_steps": 6,
            "trainer.log_every_n_steps": 2,
            "trainer.enable_progress_bar": True,
            "trainer.enable_model_summary": True,
            "trainer.limit_val_batches": 2,
            "trainer.val_check_interval": 3,
        }
    )
    result = cli("fit", "--config", path)
    assert result.code == 0, result
    lines = [line for line in result.out.splitlines() if line.startswith("step ")]
    pattern = r"step (\d+)/6: loss \d+\.\d{4}, lr \d\.\d\de[-+]\d\d, \d+\.\d ms/step, [\d,]+ tok/s"
    steps = [int(m.group(1)) for line in lines if (m := re.fullmatch(pattern, line))]
    assert steps == [2, 4, 6], result.out
    assert any(re.fullmatch(r"step [36]/6: val loss \d+\.\d{4}", line) for line in lines), result.out
    assert "\r" not in result.out  # no bar redraws in a log file
    assert "Total FLOPs" not in caplog.text and "FLOPs" not in caplog.text.split("Trainable params")[0]
    assert re.search(r"Training FLOPs per token \(6N \+ 12LTd\): [1-9]", caplog.text), caplog.text


def _bar_state(bar: GPTProgressBar) -> tuple[float, float, str]:
    task = bar.progress.tasks[bar.train_progress_bar_id]
    return task.completed, task.total, task.description


def test_resume_bar_counts_steps(cli, run, tmp_path, monkeypatch):
    bars: list[GPTProgressBar] = []
    original = GPTProgressBar.__init__

    def tty_bar(self, *args, **kwargs):  # as in a terminal
        original(self, *args, **{**kwargs, "plain_lines": False})
        bars.append(self)

    monkeypatch.setattr(GPTProgressBar, "__init__", tty_bar)
    common = {"trainer.enable_progress_bar": True, "data.batch_size": 2}
    assert cli("fit", "--config", run(**common, **{"trainer.max_steps": 4})).code == 0
    assert _bar_state(bars[-1])[:2] == (4, 4)
    result = cli("fit", "--config", run(**common, **{"trainer.max_steps": 7}), "--ckpt_path", "last")
    assert result.code == 0, result
    completed, total, description = _bar_state(bars[-1])
    assert (completed, total) == (7, 7)
    assert "-2" not in description and "/" not in description
