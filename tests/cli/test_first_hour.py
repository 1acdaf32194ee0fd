"""A new user's first hour with the ``lightning-gpt`` command (issue 22, items 9, 10, 13): what answers fast, flags that
are never guessed, and no notes that read like problems."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings

import pytest

from lightning_gpt.cli import main

HEAVY = ("torch", "lightning", "jsonargparse")


def _imports(*argv: str) -> tuple[int, str, set[str]]:
    """Run ``python -X importtime -m lightning_gpt ARGV``; return its exit code, stdout+stderr without the import
    lines, and the top-level packages it imported."""
    code, out, err, imported = _run_timed(*argv)
    return code, out + err, imported


def _run_timed(*argv: str) -> tuple[int, str, str, set[str]]:
    """``_imports`` with stdout and stderr apart."""
    env = dict(os.environ)
    env.pop("LIGHTNING_GPT_TRACEBACK", None)
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "lightning_gpt", *argv],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    lines = done.stderr.splitlines()
    imported = {line.split("|")[-1].strip().split(".")[0] for line in lines if line.startswith("import time:")}
    err = "\n".join(line for line in lines if not line.startswith("import time:"))
    return done.returncode, done.stdout, err, imported


@pytest.mark.parametrize(
    "argv, code, expected",
    [
        (["--help"], 0, "subcommands:"),
        (["generate", "--help"], 0, "--max_new_tokens"),
        (["export", "--help"], 0, "--output_dir"),
        (["generate", "--ckpt_path", "x", "--prompt", "a", "--max_new", "3"], 2, "did you mean --max_new_tokens?"),
        (["export", "--ckpt_pth", "run", "--output_dir", "out"], 2, "did you mean --ckpt_path?"),
    ],
)
def test_help_and_flag_errors_answer_before_torch_is_imported(argv, code, expected):
    result, text, imported = _imports(*argv)
    assert result == code, text[-2000:]
    assert expected in text
    assert not imported & set(HEAVY), sorted(imported & set(HEAVY))  # nothing heavy: well under a CPU-second


@pytest.mark.parametrize(
    "argv, meant",
    [
        (["generate", "--ckpt_path", "x", "--prompt", "a", "--temp", "0"], "--temperature"),
        (["export", "--ckpt_path", "x", "--output_dir", "y", "--form", "hf"], "--format"),
        (["evaluate", "--ckpt_path", "x", "--output_pat", "y"], "--output_path"),
        (["serve", "--ckpt_path", "x", "--por", "8000"], "--port"),
    ],
)
def test_a_prefix_of_a_flag_is_an_error_that_names_the_flag(cli, argv, meant):
    result = cli(*argv)
    assert result.code == 2, result
    assert "unrecognized arguments" in result.err and f"did you mean {meant}" in result.err


def test_fit_flags_are_never_abbreviated_and_get_a_suggestion(cli, run_yaml):
    cfg = run_yaml()
    result = cli("fit", "--config", cfg, "--trainer.max_step", "10", "--print_config")  # not max_steps: an error
    assert result.code == 2, result
    assert "unrecognized arguments: --trainer.max_step 10" in result.err
    assert "--trainer.max_step: did you mean --trainer.max_steps" in result.err
    assert cli("prepare", "--config", cfg, "--output_di", "x").code == 2  # the jsonargparse command too


def test_fit_help_shows_the_attention_kinds(cli):
    result = cli("fit", "--help")
    assert result.code == 0
    text = " ".join(result.out.split())  # argparse wraps the help at the terminal's width
    assert "--model.config.attention ('standard'; one of standard, flash, linear, sparse" in text
    assert "--model.config.sparse_pattern ('local'; one of local, strided, longformer)" in text


@pytest.mark.parametrize(
    "argv, message",
    [
        (["fit", "--config", "{yaml}", "--data.source", "{missing}"], "no such file or directory"),
        (["predict", "--ckpt_path", "{ckpt}", "--data.path", "{missing}"], "does not exist"),
    ],
)
def test_a_missing_data_path_is_named_before_the_trainer_is_built(
    run_yaml, trained, tmp_path, monkeypatch, argv, message
):
    """The traceback (LIGHTNING_GPT_TRACEBACK=1) shows where the error came from: the checks before anything is built,
    not the Trainer's first read of the data."""
    monkeypatch.setenv("LIGHTNING_GPT_TRACEBACK", "1")
    monkeypatch.setattr(sys, "argv", ["lightning-gpt"])
    values = {"yaml": run_yaml(), "missing": str(tmp_path / "missing.txt"), "ckpt": str(trained["ckpt"])}
    with pytest.raises(FileNotFoundError, match=message) as info:
        main([a.format(**values) for a in argv])
    frames = {entry.name for entry in info.traceback}
    assert "before_instantiate_classes" in frames
    assert not frames & {"instantiate_trainer", "_run_subcommand"}, frames


def test_validate_and_predict_from_a_checkpoint_print_no_notes_about_callbacks(
    cli, trained, corpus, tmp_path, monkeypatch
):
    """Lightning's "Be aware that when using `ckpt_path`, callbacks ... need to be provided" and "The dirpath has
    changed" concern training state that validate and predict never use."""
    monkeypatch.chdir(tmp_path)  # validate's default checkpoint folder (./checkpoints) is not the run's
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("the\nfox\n")
    cache = str(trained["cache"])
    runs = [
        ("validate", "--ckpt_path", trained["root"], "--data.source", corpus),
        ("predict", "--ckpt_path", trained["ckpt"], "--data.path", prompts, "--writer.output_path", "p.jsonl"),
    ]
    for argv in runs:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            extra = ("--data.cache_dir", cache) if argv[0] == "validate" else ()
            result = cli(*argv, *extra, "--trainer.logger", "false")
        assert result.code == 0, result
        said = [str(w.message) for w in caught]
        assert not [m for m in said if "Be aware that when using `ckpt_path`" in m or "dirpath has changed" in m], said


def test_generate_says_why_only_the_prompt_was_printed(cli, trained):
    first = cli(
        "generate", "--ckpt_path", trained["ckpt"], "--prompt", "the", "--max_new_tokens", "4", "--temperature", "0"
    )
    assert first.code == 0, first
    completion = first.out[len("the") :].rstrip("\n")
    assert completion
    stopped = cli(
        *["generate", "--ckpt_path", trained["ckpt"], "--prompt", "the", "--max_new_tokens", "4"],
        *["--temperature", "0", "--stop", completion[0]],
    )
    assert stopped.code == 0 and stopped.out == "the\n", stopped
    assert f"the stop string {completion[0]!r} occurred at the start of the continuation" in stopped.err
    assert "nothing generated before it" in stopped.err
    again = cli(
        *["generate", "--ckpt_path", trained["ckpt"], "--prompt", "the", "--max_new_tokens", "4"],
        *["--temperature", "0", "--stop", "no such text"],
    )
    assert "occurred at the start" not in again.err  # no note when text was generated


def test_fit_help_and_a_mistyped_fit_flag_are_answered_without_lightning_once_the_parser_was_built(
    cli, run_yaml, tmp_path, monkeypatch
):
    """Where the shipped help entries do not fit (another environment: here a ``JSONARGPARSE_*`` variable, which
    changes the parser), the first process that builds the LightningCLI parser stores each subcommand's entry in the
    user's cache; the next ``fit --help`` and a flag no option accepts are answered from it, without importing torch
    or Lightning (``tests/cli/test_help_cache.py``: the shipped entries)."""
    from lightning_gpt.cli import help_cache

    monkeypatch.setenv("JSONARGPARSE_LIGHTNING_GPT_TEST", "1")
    monkeypatch.setenv("LIGHTNING_GPT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("COLUMNS", "100")  # help is wrapped to the terminal: the same width in both processes
    assert help_cache.lookup("fit") is None
    live = cli("fit", "--help")  # builds the parser (here, where Lightning is imported already)
    assert live.code == 0 and "--trainer.max_steps" in live.out
    assert all(os.path.isfile(help_cache.cache_file(name)) for name in ("fit", "validate", "test", "predict"))
    code, out, err, imported = _run_timed("fit", "--help")
    assert code == 0 and out == live.out, err[-2000:]
    assert not imported & set(HEAVY), sorted(imported & set(HEAVY))
    code, out, err, imported = _run_timed("fit", "--config", run_yaml(), "--trainer.max_step", "10")
    assert code == 2 and "unrecognized arguments: --trainer.max_step 10" in err
    assert "--trainer.max_step: did you mean --trainer.max_steps" in err
    assert not imported & set(HEAVY), sorted(imported & set(HEAVY))
    assert cli("validate", "--help").out.startswith("usage: lightning-gpt [options] validate")  # every subcommand


def test_the_help_cache_leaves_what_it_cannot_judge_to_the_parser(tmp_path, monkeypatch, capsys):
    from jsonargparse import ArgumentParser

    from lightning_gpt.cli import help_cache

    flags = ["--trainer", "--trainer.max_steps", "--trainer.logger", "--trainer.logger.help", "--model.config"]
    open_flags = ["--trainer.max_steps", "--trainer.logger", "--trainer.logger.help", "--model.config"]
    argv = ["--trainer.logger.init_args.save_dir", "x", "--model.config.n_layr", "2", "--trainer.max_stepz", "3"]
    assert help_cache.unknown_flags(argv, flags, open_flags) == ["--trainer.max_stepz", "3"]
    assert (
        help_cache.unknown_flags(["--trainer.max_steps=3", "--trainer.logger+=x", "--", "--x"], flags, open_flags) == []
    )
    # An entry written for other versions or other sources, or one that cannot be read, is ignored: the real parser
    # answers (answer returns: nothing printed, no exit). The shipped entries do not fit either (another environment).
    monkeypatch.setenv("JSONARGPARSE_LIGHTNING_GPT_TEST", "1")
    monkeypatch.setenv("LIGHTNING_GPT_CACHE", str(tmp_path))
    parser = ArgumentParser(prog="lightning-gpt [options] fit")
    parser.add_argument("--trainer.max_steps", type=int, default=-1, help="optimizer steps")
    stored = help_cache.entry(parser)
    path = help_cache.cache_file("fit")
    for unfit in (
        {**stored, "versions": {**stored["versions"], "lightning": "2.0.0"}},
        {**stored, "sources": {**stored["sources"], "sha256": "0" * 64}},
        {**stored, "help": {**stored["help"], "events": [["no such event"]]}},
    ):
        help_cache.write_entry(path, unfit)
        help_cache.answer("fit", ["--help"])
    with open(path, "w") as f:
        f.write('{"versions": ')  # cut short
    help_cache.answer("fit", ["--help"])
    assert capsys.readouterr().out == ""
    help_cache.write_entry(path, stored)  # a current one
    with pytest.raises(SystemExit) as info:
        help_cache.answer("fit", ["--help"])
    assert info.value.code == 0 and capsys.readouterr().out == parser.format_help()
    # A cache folder that cannot be written (its path runs through a file) only means nothing is stored.
    (tmp_path / "a_file").write_text("")
    monkeypatch.setenv("LIGHTNING_GPT_CACHE", str(tmp_path / "a_file" / "cache"))
    help_cache.remember({"fit": parser})
    assert help_cache.lookup("fit") is None
    monkeypatch.setenv("LIGHTNING_GPT_CACHE", str(tmp_path / "fresh"))
    help_cache.remember({"fit": parser})
    again = help_cache.lookup("fit")
    assert again is not None and (again["help"], again["flags"]) == (stored["help"], stored["flags"])
    assert not [p for p in (tmp_path / "fresh").rglob("*") if ".tmp" in p.name]


def test_a_fit_says_each_warning_once(cli, run_yaml, caplog):
    """The tail fallback of a corpus that is one document was reported twice (by prepare_data and by setup)."""
    import logging

    with caplog.at_level(logging.WARNING):
        result = cli("fit", "--config", run_yaml(**{"trainer.max_steps": 1}))
    assert result.code == 0, result
    said = [r.getMessage() for r in caplog.records if "cannot be split into non-empty" in r.getMessage()]
    assert len(said) == 1, said


def test_the_export_parser_offers_exactly_the_formats_the_writers_take():
    """The parser spells the formats out (importing the writers would import torch before --help)."""
    from lightning_gpt.cli.export import DEPLOY_FORMATS, FORMATS
    from lightning_gpt.io import deploy, hf

    assert FORMATS == hf.FORMATS
    assert DEPLOY_FORMATS == deploy.DEPLOY_FORMATS
