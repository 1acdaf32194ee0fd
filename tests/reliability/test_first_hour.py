"""A new user's first commands (issue 12.3): top-level help, `fit --help`, bare `fit`, predict keeping input fields."""

from __future__ import annotations

import json
import subprocess

from tests.helpers import PYTHON, REPO, last_error_line, python_env

SUBCOMMANDS = ("fit", "validate", "test", "predict", "generate", "export")


def _lists_every_subcommand(text: str) -> None:
    for name in SUBCOMMANDS:
        lines = [line for line in text.splitlines() if line.strip().startswith(name + " ")]
        assert len(lines) == 1 and len(lines[0].split()) > 2, (name, text)  # one line each, with a description


def test_top_level_help_lists_every_subcommand(cli):
    result = cli("--help")
    assert result.code == 0, result
    _lists_every_subcommand(result.out)
    bare = cli()
    assert bare.code == 2
    _lists_every_subcommand(bare.out + bare.err)


def test_python_m_help_lists_every_subcommand():
    out = subprocess.run(
        [PYTHON, "-m", "lightning_gpt", "--help"], cwd=REPO, env=python_env(), capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    _lists_every_subcommand(out.stdout)
    assert out.stdout.startswith("usage: lightning-gpt")


def test_fit_help_shows_the_architecture_fields(cli):
    result = cli("fit", "--help")
    assert result.code == 0
    for field in ("n_layer", "n_head", "n_embd", "block_size", "attention"):
        assert f"--model.config.{field}" in result.out, field


def test_bare_fit_says_what_is_missing_before_any_work(cli, tmp_path, monkeypatch):
    monkeypatch.setenv("LIGHTNING_GPT_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    result = cli("fit")
    assert result.code == 2, result
    message = last_error_line(result.err)
    assert "--trainer.max_steps" in message and "recipes/quickstart.yaml" in message, message
    assert "Traceback" not in result.err
    # no data read, no tokenizer trained: the cache holds at most the command's stored help texts (cli/)
    cache = tmp_path / "cache"
    assert not cache.exists() or {p.name for p in cache.iterdir()} <= {"cli"}, list(cache.iterdir())
    assert not list(tmp_path.rglob("*.ckpt")) and not (tmp_path / "lightning_logs").exists()


def test_predict_jsonl_carries_every_input_field(cli, tmp_path, trained):
    prompts = tmp_path / "prompts.jsonl"
    rows = [{"id": f"q{i}", "prompt": p, "meta": {"n": i}} for i, p in enumerate(["the", "a", "the quick"])]
    prompts.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "preds.jsonl"
    result = cli(
        "predict", "--ckpt_path", trained["ckpt"], "--data.path", prompts, "--data.batch_size", "2",
        "--writer.output_path", out, "--model.generation.max_new_tokens", "3",
    )  # fmt: skip
    assert result.code == 0, result
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in records] == ["q0", "q1", "q2"]
    assert [r["meta"] for r in records] == [{"n": 0}, {"n": 1}, {"n": 2}]
    assert all("completion" in r and r["prompt"] == row["prompt"] for r, row in zip(records, rows))
