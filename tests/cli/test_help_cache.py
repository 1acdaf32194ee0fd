"""``fit | validate | test | predict --help`` and flag errors from stored entries (``lightning_gpt.cli.help_cache``),
rendered at any terminal width (``help_render``): faithful to the live parser, and the shipped entries current.

The shipped entries (``lightning_gpt/cli/help/*.json``) are compared with parsers built in a fresh process (``python
-m lightning_gpt.cli.help_build --dump``, as the command builds them): their sources must be this checkout's (else the
test fails, naming the regeneration command), and where they were written for this environment (the same versions of
Python, torch, Lightning, jsonargparse, torchmetrics...), their help at two widths and their flags must equal the live
ones exactly. In an environment with other versions (a CI venv that resolved newer releases) they are not used: the
live parser answers, and what is compared there is the renderer, against the live help.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lightning_gpt.cli import help_cache, help_render

SUBCOMMANDS = ("fit", "validate", "test", "predict")
WIDTHS = (64, 117)
HEAVY = {"torch", "lightning", "jsonargparse"}


def _example_parser() -> argparse.ArgumentParser:
    """Every kind of option a help lists: positionals, choices, nargs of every kind, flags, a required option, a
    tuple metavar, defaults in the help, a suppressed option, long names, groups with descriptions, an epilog."""
    parser = argparse.ArgumentParser(prog="demo", description="Does %(prog)s things. " * 6, epilog="See also: x. " * 9)
    parser.add_argument("source", help="where the text comes from " * 4)
    parser.add_argument("rest", nargs="*", help="more sources")
    parser.add_argument("--mode", choices=["pack", "pad"], default="pack", help="how rows are filled (%(default)s)")
    parser.add_argument("--steps", type=int, required=True, help="optimizer steps")
    parser.add_argument("--verbose", "-v", action="store_true", help="say more")
    parser.add_argument("--color", action=argparse.BooleanOptionalAction, default=True, help="colors")
    parser.add_argument("--hidden", help=argparse.SUPPRESS)
    parser.add_argument("--size", nargs=2, metavar=("W", "H"), help="width and height")
    parser.add_argument("--optional-value", nargs="?", const="c", help="   ")
    parser.add_argument("--no-help")
    group = parser.add_argument_group("advanced settings", "These change what a run does. " * 5)
    group.add_argument("--a-very-long-option-name-that-takes-the-whole-column", nargs="+", help="one or more " * 12)
    group.add_argument("--lr", type=float, default=3e-4, help="peak learning rate (default: %(default)s)")
    return parser


@pytest.mark.parametrize("width", [24, 50, 80, 141])
def test_a_recorded_help_renders_as_argparse_prints_it_at_any_width(width, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    record = json.loads(json.dumps(help_render.record(_example_parser())))  # stored as JSON
    monkeypatch.setenv("COLUMNS", str(width))
    assert help_render.render(record) == _example_parser().format_help()


def test_a_jsonargparse_help_renders_as_jsonargparse_prints_it():
    """jsonargparse's own formatter (types, defaults, nested groups) in front of argparse's."""
    from jsonargparse import ArgumentParser

    def make() -> ArgumentParser:
        parser = ArgumentParser(prog="demo", description="A jsonargparse parser.")
        parser.add_argument("--steps", type=int, default=3, help="optimizer steps")
        parser.add_argument("--names", type=list[str], default=["a"], help="names " * 15)
        parser.add_argument("--fast", type=bool, default=False)
        parser.add_argument("--nested.value", type=float, help="a nested option")
        return parser

    record = help_render.record(make())
    for width in (40, 100):
        assert help_render.render(record, width=width - 2) == _formatted(make(), width)


def _formatted(parser: argparse.ArgumentParser, columns: int) -> str:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("COLUMNS", str(columns))
        return parser.format_help()


def test_what_cannot_be_reproduced_is_refused():
    parser = argparse.ArgumentParser(prog="demo")
    either = parser.add_mutually_exclusive_group()
    either.add_argument("--a", action="store_true")
    either.add_argument("--b", action="store_true")
    with pytest.raises(help_render.Unsupported, match="mutually exclusive"):
        help_render.record(parser)
    raw = argparse.ArgumentParser(description="kept\n  as is", formatter_class=argparse.RawTextHelpFormatter)
    with pytest.raises(help_render.Unsupported, match="differs"):
        help_render.record(raw)


@pytest.fixture(scope="module")
def live(tmp_path_factory) -> dict:
    """The parsers built in a fresh process, as the command builds them: each subcommand's entry and its help text at
    each of ``WIDTHS``."""
    out = tmp_path_factory.mktemp("help") / "live.json"
    command = [sys.executable, "-m", "lightning_gpt.cli.help_build", "--dump", str(out), "--widths", *map(str, WIDTHS)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(out.read_text())


def test_the_recorded_help_of_every_subcommand_renders_as_its_live_parser_prints_it(live, monkeypatch):
    assert sorted(live) == sorted(SUBCOMMANDS)
    for subcommand in SUBCOMMANDS:
        texts = live[subcommand]["help"]
        assert texts[str(WIDTHS[0])] != texts[str(WIDTHS[1])]  # the width matters
        for width in WIDTHS:
            monkeypatch.setenv("COLUMNS", str(width))
            assert help_render.render(live[subcommand]["entry"]["help"]) == texts[str(width)], (subcommand, width)
    assert "--trainer.max_steps" in live["fit"]["entry"]["flags"]
    assert "--writer.output_path" in live["predict"]["entry"]["flags"]


def _first_difference(a: str, b: str) -> str:
    for i, (x, y) in enumerate(zip(a.splitlines(), b.splitlines())):
        if x != y:
            return f"line {i + 1}: shipped {x!r}, live {y!r}"
    return f"{len(a.splitlines())} lines shipped, {len(b.splitlines())} live"


def test_the_shipped_help_is_current(live, monkeypatch, tmp_path):
    stale = f"(regenerate them: `{help_cache.REGENERATE}`, and commit lightning_gpt/cli/help/)"
    monkeypatch.setenv("LIGHTNING_GPT_CACHE", str(tmp_path))  # an empty user cache: only the shipped entries
    for subcommand in SUBCOMMANDS:
        path = Path(help_cache.SHIPPED) / f"{subcommand}.json"
        assert path.is_file(), f"no shipped help entry {path} {stale}"
        shipped = json.loads(path.read_text())
        files = shipped["sources"]["files"]
        assert help_cache.digest(files) == shipped["sources"]["sha256"], (
            f"{path} is stale: the package's sources changed since it was written {stale}"
        )
        if shipped["versions"] != help_cache.versions():
            # Written for another environment: not used here (the live parser answers; the renderer is compared with
            # it above). Its contents can only be checked where its versions are installed.
            assert help_cache.lookup(subcommand) is None
            continue
        entry = live[subcommand]["entry"]
        assert shipped["flags"] == entry["flags"], f"{path}: the flags differ from the live parser's {stale}"
        assert shipped["open"] == entry["open"], f"{path}: the open flags differ from the live parser's {stale}"
        for width in WIDTHS:
            monkeypatch.setenv("COLUMNS", str(width))
            text, want = help_render.render(shipped["help"]), live[subcommand]["help"][str(width)]
            assert text == want, f"{path} at width {width}: {_first_difference(text, want)} {stale}"
        assert help_cache.lookup(subcommand) == shipped


def _run(*argv: str, env: dict) -> tuple[int, str, str, set[str]]:
    """``python -X importtime -m lightning_gpt ARGV``: exit code, stdout, stderr without the import lines, and the
    top-level packages it imported."""
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "lightning_gpt", *argv], capture_output=True, text=True, env=env
    )
    lines = done.stderr.splitlines()
    imported = {line.split("|")[-1].strip().split(".")[0] for line in lines if line.startswith("import time:")}
    err = "\n".join(line for line in lines if not line.startswith("import time:"))
    return done.returncode, done.stdout, err, imported


def test_a_fresh_install_answers_fit_help_and_a_bad_flag_without_lightning(live, tmp_path, run_yaml):
    """The first ``fit --help`` in a new environment (nothing in the user's cache) prints the live parser's help at
    the terminal's width without importing torch, Lightning or jsonargparse; so does a mistyped flag's error."""
    env = {k: v for k, v in os.environ.items() if k != "LIGHTNING_GPT_TRACEBACK"}
    env.update(LIGHTNING_GPT_CACHE=str(tmp_path / "empty"), COLUMNS=str(WIDTHS[1]))
    shipped = Path(help_cache.SHIPPED, "fit.json")
    assert shipped.is_file(), f"no shipped help entry {shipped}: `{help_cache.REGENERATE}` writes them"
    stored = json.loads(shipped.read_text())
    if stored["versions"] != help_cache.versions():
        pytest.skip("the shipped help entries were written for another environment (versions, JSONARGPARSE_*)")
    assert help_cache.fits(stored), f"{shipped} is stale: `{help_cache.REGENERATE}` rewrites it"
    for subcommand in SUBCOMMANDS:
        code, out, err, imported = _run(subcommand, "--help", env=env)
        assert code == 0 and out == live[subcommand]["help"][str(WIDTHS[1])], err[-2000:]
        assert not imported & HEAVY, sorted(imported & HEAVY)
    code, out, err, imported = _run("fit", "--config", run_yaml(), "--trainer.max_step", "10", env=env)
    assert code == 2 and "unrecognized arguments: --trainer.max_step 10" in err, err[-2000:]
    assert "--trainer.max_step: did you mean --trainer.max_steps" in err
    assert not imported & HEAVY, sorted(imported & HEAVY)
    assert not (tmp_path / "empty").exists()  # nothing written: the shipped entries answered
