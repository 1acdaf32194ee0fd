"""Train ``recipes/shakespeare-char.yaml`` through the CLI and record the validation curve and the wall time.

    .venv/bin/python benchmarks/shakespeare_char.py --data ../shared/data/tinyshakespeare.txt

runs ``lightning-gpt fit --config recipes/shakespeare-char.yaml --data.source <data>`` (with a CSV logger) in a
subprocess, then writes ``benchmarks/results/shakespeare_char.png`` (validation and training loss against the step)
and ``benchmarks/results/shakespeare_char.md`` (final validation loss, wall time, the exact command, machine).
``--plot-only`` redoes the plot and the table from an earlier run directory. Extra arguments after ``--`` go to the CLI.
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
TARGET = 1.89  # nanoGPT reports 1.88 for this configuration


def read_metrics(run_dir: Path) -> tuple[list[tuple[int, float]], list[tuple[int, float]]]:
    """``(steps, val/loss)`` and ``(steps, train/loss)`` pairs from the newest CSV log under ``run_dir``.

    Lightning logs a metric with the index of the batch just trained (0-based), so ``steps`` (optimizer steps done)
    is the logged step + 1.
    """
    logs = sorted((run_dir / "csv").glob("version_*/metrics.csv"), key=os.path.getmtime)
    if not logs:
        raise FileNotFoundError(f"no CSV metrics under {run_dir / 'csv'}")
    val, train = [], []
    with open(logs[-1], newline="") as f:
        for row in csv.DictReader(f):
            step = int(row["step"]) + 1
            if row.get("val/loss"):
                val.append((step, float(row["val/loss"])))
            if row.get("train/loss"):
                train.append((step, float(row["train/loss"])))
    return val, train


def plot(val: list[tuple[int, float]], train: list[tuple[int, float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    if train:
        ax.plot(*zip(*train), color="tab:blue", alpha=0.35, lw=1, label="train loss (logged every 10 steps)")
    ax.plot(*zip(*val), "o-", color="tab:red", label="validation loss")
    ax.axhline(TARGET, color="gray", ls="--", lw=1, label=f"target {TARGET} (nanoGPT: 1.88)")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats/char)")
    ax.set_ylim(1.0, 4.5)
    ax.set_title("shakespeare-char: 4 layers, 4 heads, 128 wide, context 64, batch 12")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def write_report(val, command: str, wall_s: float | None, run_dir: Path) -> str:
    final_step, final = val[-1]
    lines = [
        f"# shakespeare-char: validation loss after {final_step} steps",
        "",
        "Command (from the repository root; wall time measured around it by `benchmarks/shakespeare_char.py`):",
        "",
        "```bash",
        command,
        "```",
        "",
        f"- final validation loss (step {final_step}): **{final:.4f}** (target <= {TARGET}; nanoGPT reports 1.88): "
        + ("reached" if final <= TARGET else "NOT reached"),
        f"- best validation loss: {min(v for _, v in val):.4f}",
        "- wall time of the whole command (start-up, tokenization, training, validations): "
        + (f"{wall_s:.0f} s ({wall_s / 60:.1f} min)" if wall_s is not None else "not measured (--plot-only)"),
        f"- machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores visible, "
        f"shared with other jobs while it ran; Python {platform.python_version()}",
        f"- run directory: `{run_dir}`; curve: `shakespeare_char.png`",
        "",
        "| step | validation loss |",
        "|---:|---:|",
        *[f"| {s} | {v:.4f} |" for s, v in val],
        "",
        "![validation curve](shakespeare_char.png)",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "tinyshakespeare.txt"))
    parser.add_argument("--run-dir", default="runs/shakespeare-char-bench")
    parser.add_argument("--plot-only", action="store_true")
    parser.add_argument("extra", nargs="*", help="extra CLI arguments (after --)")
    args = parser.parse_args()
    run_dir = Path(args.run_dir)
    logger = '{"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": "%s", "name": "csv"}}'
    cli = [
        "lightning-gpt",
        "fit",
        "--config",
        "recipes/shakespeare-char.yaml",
        "--data.source",
        args.data,
        "--trainer.default_root_dir",
        str(run_dir),
        "--trainer.logger",
        logger % run_dir,
        "--trainer.enable_progress_bar",
        "false",
        *args.extra,
    ]
    command = " ".join(f"'{a}'" if any(c in a for c in ' {"') else a for a in cli)
    wall = None
    if not args.plot_only:
        if not Path(args.data).is_file():
            sys.exit(f"{args.data} not found: pass --data path/to/tinyshakespeare.txt")
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "lightning_gpt", *cli[1:]], cwd=REPO, check=True)
        wall = time.perf_counter() - start
    val, train = read_metrics(REPO / run_dir if not run_dir.is_absolute() else run_dir)
    RESULTS.mkdir(parents=True, exist_ok=True)
    plot(val, train, RESULTS / "shakespeare_char.png")
    report = write_report(val, command, wall, run_dir)
    (RESULTS / "shakespeare_char.md").write_text(report)
    print(report)


if __name__ == "__main__":
    main()
