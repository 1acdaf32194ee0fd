"""Choose the learning rate of ``recipes/shakespeare-char.yaml`` without looking at its validation set.

    .venv/bin/python benchmarks/shakespeare_char_lr_sweep.py --data ../shared/data/tinyshakespeare.txt

The recipe validates on the last 10% of the text. This script never reads that part: it keeps the first 90% (the
recipe's training text), and runs the recipe on it, so the recipe holds out the last 10% *of that* (a development
split) and trains on the first 81%. For every peak learning rate in ``--lrs`` it runs
``lightning-gpt fit --config recipes/shakespeare-char.yaml`` with ``--model.learning_rate LR --lr_schedule.min_lr
LR/10`` (warmup, cosine shape and everything else as in the recipe), ``--parallel`` runs at a time with one thread
each, and prints the development loss every 250 steps as a Markdown table (also written to
``benchmarks/results/shakespeare_char_lr_sweep.md``).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from shakespeare_char import fit_command, read_metrics  # benchmarks/ is on sys.path when this script runs

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"


def run_one(lr: float, source: Path, out: Path, extra: list[str]) -> tuple[float, list[tuple[int, float]], float]:
    run_dir = out / f"lr{lr:g}"
    cli = fit_command(source, run_dir, "--model.learning_rate", f"{lr:g}", "--lr_schedule.min_lr", f"{lr / 10:g}")
    cli += ["--sampling.every_n_steps", "0", "--checkpoint.every_n_train_steps", "100000", *extra]
    cmd = [sys.executable, "-m", "lightning_gpt", *cli[1:]]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    start = time.perf_counter()
    with open(out / f"lr{lr:g}.log", "w") as log:
        subprocess.run(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, check=True)
    return lr, read_metrics(run_dir)[0], time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "tinyshakespeare.txt"))
    parser.add_argument("--lrs", type=float, nargs="+", default=[1e-3, 2e-3, 3e-3, 4e-3, 5e-3, 8e-3])
    parser.add_argument("--parallel", type=int, default=2, help="runs at a time (one thread each)")
    parser.add_argument("--out", default=None, help="folder for the runs (default: a temporary folder)")
    parser.add_argument("extra", nargs="*", help="extra CLI arguments (after --)")
    args = parser.parse_args()
    data = Path(args.data)
    if not data.is_file():
        sys.exit(f"{data} not found: pass --data path/to/tinyshakespeare.txt")
    out = Path(args.out or tempfile.mkdtemp(prefix="shakespeare-lr-sweep-"))
    out.mkdir(parents=True, exist_ok=True)
    text = data.read_text()
    source = out / "train90.txt"  # the recipe's training text only: its validation tail is never read
    source.write_text(text[: int(len(text) * 0.9)])
    with ThreadPoolExecutor(args.parallel) as pool:
        results = sorted(pool.map(lambda lr: run_one(lr, source, out, args.extra), args.lrs))
    steps = [s for s, _ in results[0][1]]
    lines = [
        "# shakespeare-char: peak learning rate chosen on a development split",
        "",
        f"Command: `python benchmarks/shakespeare_char_lr_sweep.py --lrs {' '.join(f'{lr:g}' for lr in args.lrs)}`. "
        f"Training text: the first 81% of `{data.name}`; development loss: the next 9% (the recipe's validation "
        "tail, the last 10%, is not read). Everything but the peak lr (and min_lr = lr/10) as in the recipe; "
        f"{args.parallel} runs at a time, one thread each.",
        "",
        "| peak lr | " + " | ".join(f"step {s}" for s in steps) + " | wall (s) |",
        "|---:|" + "---:|" * len(steps) + "---:|",
    ]
    for lr, curve, wall in results:
        lines.append(f"| {lr:g} | " + " | ".join(f"{v:.4f}" for _, v in curve) + f" | {wall:.0f} |")
    best = min(results, key=lambda r: r[1][-1][1])
    lines += ["", f"Lowest development loss at step {steps[-1]}: peak lr {best[0]:g} ({best[1][-1][1]:.4f})."]
    report = "\n".join(lines) + "\n"
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "shakespeare_char_lr_sweep.md").write_text(report)
    print(report)


if __name__ == "__main__":
    main()
