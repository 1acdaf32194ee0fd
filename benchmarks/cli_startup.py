"""What the ``lightning-gpt`` command costs before it answers: CPU-seconds of ``--help``, flag errors, a missing data
path, and ``generate``'s first token, for the code of an older checkout (``--before DIR``) and this one.

Each case runs in a fresh process (``python -m lightning_gpt ...`` with ``PYTHONPATH`` set to the checkout), the
cases interleaved, ``--rounds`` times; the figure is the median of that child's user+system CPU time
(``getrusage(RUSAGE_CHILDREN)`` deltas), which the machine's load distorts little (wall time is not reported).
``fit``'s help and flag errors are measured twice for this checkout: "cold" with an empty cache folder (a fresh
install: what answers is the help shipped with the package, ``lightning_gpt/cli/help/``, when it fits the installed
versions; otherwise the parser is built and Lightning imported, as before) and "warm" after one ``fit --help`` with
the same cache folder (``lightning_gpt/cli/help_cache.py``). The "before" checkout always runs with an empty cache
folder. ``generate``'s first token is bounded by a whole run with ``--max_new_tokens 1`` on a quickstart-sized
checkpoint (``--run``; e.g. ``lightning-gpt fit --config recipes/quickstart.yaml --trainer.max_steps 2`` makes one
with the quickstart's architecture).

Goals (issue 22): ``--help``, ``generate --help`` and a bad flag to ``generate`` / ``export`` <= 1 CPU-second;
``fit --help`` and a bad ``fit`` flag <= 3; ``generate``'s first token <= 2.5.

Usage::

    git worktree add /tmp/before <older commit>
    .venv/bin/python benchmarks/cli_startup.py --before /tmp/before --run runs/quickstart [--rounds 3]
        [--out benchmarks/results/cli_startup.md]
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = str(REPO / "recipes" / "quickstart.yaml")


def cases(run: str) -> list[tuple[str, list[str], float, bool]]:
    """``(name, argv, goal in CPU-seconds, uses the help cache)`` of every measured command."""
    missing = "/nonexistent/data.txt"
    return [
        ("lightning-gpt --help", ["--help"], 1.0, False),
        ("generate --help", ["generate", "--help"], 1.0, False),
        (
            "generate, bad flag (--max_new)",
            ["generate", "--ckpt_path", run, "--prompt", "a", "--max_new", "3"],
            1.0,
            False,
        ),
        ("export, bad flag (--ckpt_pth)", ["export", "--ckpt_pth", run, "--output_dir", "out"], 1.0, False),
        ("fit --help", ["fit", "--help"], 3.0, True),
        ("fit, bad flag (--trainer.max_step)", ["fit", "--config", QUICKSTART, "--trainer.max_step", "10"], 3.0, True),
        ("fit, missing --data.source", ["fit", "--config", QUICKSTART, "--data.source", missing], float("nan"), True),
        (
            "generate, 1 token (quickstart model)",
            ["generate", "--ckpt_path", run, "--prompt", "def ", "--max_new_tokens", "1"],
            2.5,
            False,
        ),
    ]


def cpu_seconds(code_dir: str, argv: list[str], cache: str) -> tuple[float, int]:
    """User+system CPU seconds of one ``python -m lightning_gpt ARGV`` run against ``code_dir``, and its exit code."""
    env = dict(os.environ, PYTHONPATH=code_dir, LIGHTNING_GPT_CACHE=cache, OMP_NUM_THREADS="1")
    env.pop("LIGHTNING_GPT_TRACEBACK", None)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    with tempfile.TemporaryDirectory() as cwd:  # a fit that got going would write here, not into the repository
        done = subprocess.run([sys.executable, "-m", "lightning_gpt", *argv], cwd=cwd, env=env, capture_output=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), done.returncode


# The packages whose import a command may pay for, as ``python -X importtime`` names them (cumulative, nested).
# Lightning imports torchmetrics from ``lightning.fabric.utilities.imports`` (a version check that imports it), and
# torchmetrics imports the optional packages it finds installed: scipy.signal, transformers, matplotlib.
HEAVY = (
    "torch",
    "torch._dynamo",
    "lightning",
    "lightning.fabric.utilities.imports",
    "scipy.signal",
    "transformers",
    "matplotlib",
    "jsonargparse",
)


def import_costs(code_dir: str, argv: list[str], cache: str) -> tuple[float, dict[str, float]]:
    """``python -X importtime`` of one run: the total import time and the cumulative time of each ``HEAVY`` module,
    in wall-clock milliseconds (so shares are what to read on a loaded machine)."""
    env = dict(os.environ, PYTHONPATH=code_dir, LIGHTNING_GPT_CACHE=cache, OMP_NUM_THREADS="1")
    with tempfile.TemporaryDirectory() as cwd:
        done = subprocess.run(
            [sys.executable, "-X", "importtime", "-m", "lightning_gpt", *argv], cwd=cwd, env=env, capture_output=True
        )
    total, found = 0.0, {}
    for line in done.stderr.decode(errors="replace").splitlines():
        if not line.startswith("import time:") or "cumulative" in line:
            continue
        _, cumulative, raw = line[len("import time:") :].split("|")
        name = raw.strip()
        if not raw.startswith("  "):  # a top-level import (nested ones are indented)
            total += int(cumulative) / 1000
        if name in HEAVY:
            found[name] = max(found.get(name, 0.0), int(cumulative) / 1000)
    return total, found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", required=True, help="a checkout of the older code (git worktree add DIR COMMIT)")
    parser.add_argument("--run", required=True, help="a quickstart-sized run folder (for generate)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", default=None, help="also write the table to this Markdown file")
    opts = parser.parse_args()
    run = str(Path(opts.run).resolve())
    table = cases(run)
    columns = ["before", "after (cold cache)", "after"]
    results: dict[tuple[str, str], list[float]] = {}
    codes: dict[tuple[str, str], int] = {}
    with tempfile.TemporaryDirectory() as tmp:
        warm = os.path.join(tmp, "warm")
        cpu_seconds(str(REPO), ["fit", "--help"], warm)  # one parser build stores the help texts and flags
        for _ in range(opts.rounds):
            for name, argv, _goal, cached in table:
                for column in columns:
                    if column == "after (cold cache)" and not cached:
                        continue
                    code_dir = opts.before if column == "before" else str(REPO)
                    cache = warm if column == "after" else tempfile.mkdtemp(dir=tmp)  # cold: a new, empty folder
                    seconds, code = cpu_seconds(code_dir, argv, cache)
                    results.setdefault((name, column), []).append(seconds)
                    codes[(name, column)] = code
    load = os.getloadavg()[0]
    lines = [
        "# lightning-gpt start-up: CPU-seconds before an answer",
        "",
        f"`python benchmarks/cli_startup.py --before OLD --run RUN --rounds {opts.rounds}`, median of {opts.rounds} "
        f"runs each, load average {load:.1f} at the end, {os.cpu_count()} CPUs, Python {platform.python_version()}",
        "",
        "| command | goal | before | after, cold cache | after | exit (before/after) |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for name, _argv, goal, _cached in table:
        cells = []
        for column in columns:
            values = results.get((name, column))
            cells.append(f"{statistics.median(values):.2f}" if values else "")
        goal_text = f"<= {goal:g}" if goal == goal else ""
        exits = f"{codes[(name, 'before')]}/{codes[(name, 'after')]}"
        lines.append(f"| {name} | {goal_text} | {' | '.join(cells)} | {exits} |")
    lines += [
        "",
        "Where the import time of each command goes (`python -X importtime -m lightning_gpt ...`, this checkout, cold "
        "cache; wall-clock ms on a loaded machine: read the shares):",
        "",
        "| command | imports, ms | " + " | ".join(HEAVY) + " |",
        "|---|---:|" + "---:|" * len(HEAVY),
    ]
    with tempfile.TemporaryDirectory() as tmp:
        for name, argv, _goal, _cached in table:
            total, found = import_costs(str(REPO), argv, tempfile.mkdtemp(dir=tmp))
            cells = [f"{found[m]:.0f} ({found[m] / total:.0%})" if m in found and total else "-" for m in HEAVY]
            lines.append(f"| {name} | {total:.0f} | " + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n"
    print(text)
    if opts.out:
        Path(opts.out).write_text(text)


if __name__ == "__main__":
    main()
