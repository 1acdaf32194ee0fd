"""A PNG of the train/val loss in the run folder at the end of fit (issue 12.4); skipped cleanly without matplotlib."""

from __future__ import annotations

import sys

import pytest

from tests.helpers import tiny_config, write_corpus, write_yaml


@pytest.fixture
def run_config(tmp_path):
    corpus = write_corpus(tmp_path / "corpus.txt")
    overrides = {"trainer.max_steps": 4, "trainer.log_every_n_steps": 1, "trainer.limit_val_batches": 2,
                 "trainer.val_check_interval": 2}  # fmt: skip
    return write_yaml(tmp_path / "run.yaml", tiny_config(tmp_path / "run", corpus, tmp_path / "cache", **overrides))


def test_fit_writes_a_loss_png(cli, tmp_path, run_config):
    pytest.importorskip("matplotlib")
    result = cli("fit", "--config", run_config)
    assert result.code == 0, result
    png = tmp_path / "run" / "loss.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list((tmp_path / "run").glob("loss.png.tmp*"))


def test_resumed_run_draws_the_whole_curve(cli, tmp_path, run_config):
    pytest.importorskip("matplotlib")
    from lightning_gpt.training.callbacks import LossCurve

    assert cli("fit", "--config", run_config).code == 0
    curves: list[LossCurve] = []
    original = LossCurve.on_fit_end

    def spy(self, trainer, pl_module):
        curves.append(self)
        original(self, trainer, pl_module)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(LossCurve, "on_fit_end", spy)
        assert cli("fit", "--config", run_config, "--trainer.max_steps", "6", "--ckpt_path", "last").code == 0
    assert [s for s, _ in curves[0].train] == [1, 2, 3, 4, 5, 6]
    assert [s for s, _ in curves[0].val] == [2, 4, 6]


def test_without_matplotlib_fit_still_succeeds(cli, tmp_path, run_config, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    result = cli("fit", "--config", run_config)
    assert result.code == 0, result
    assert not (tmp_path / "run" / "loss.png").exists()
