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


def write_report(
    val,
    command: str,
    wall_s: float | None,
    run_dir: Path,
    threads: str | None = None,
    load: str | None = None,
    name: str = "shakespeare_char",
) -> str:
    final_step, final = val[-1]
    env = f"OMP_NUM_THREADS={threads} " if threads else ""
    reference = RESULTS / "shakespeare_char_reference.txt"
    ref_lines = reference.read_text().splitlines() if reference.exists() else []
    lines = [
        f"# shakespeare-char: validation loss after {final_step} steps",
        "",
        "Command (from the repository root; wall time measured around it by `benchmarks/shakespeare_char.py`):",
        "",
        "```bash",
        env + command,
        "```",
        "",
        f"- final validation loss (step {final_step}): **{final:.4f}** (target <= {TARGET}; nanoGPT reports 1.88): "
        + ("reached" if final <= TARGET else "NOT reached"),
        f"- best validation loss: {min(v for _, v in val):.4f}",
        "- wall time of the whole command (start-up, tokenization, training, validations): "
        + (f"{wall_s:.0f} s ({wall_s / 60:.1f} min)" if wall_s is not None else "not measured (--plot-only)"),
        f"- machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores visible, "
        f"load average before / after the run: {load or 'not recorded (--plot-only)'}; "
        f"Python {platform.python_version()}",
        f"- run directory: `{run_dir}`; curve: `{name}.png`",
        "",
        "| step | validation loss |",
        "|---:|---:|",
        *[f"| {s} | {v:.4f} |" for s, v in val],
        "",
        f"![validation curve]({name}.png)",
        "",
    ]
    for extra in sorted(RESULTS.glob("shakespeare_char_reference_lr*.txt")):
        ref_lines += ["", *extra.read_text().splitlines()]
    if ref_lines:
        lines += [
            "## Reference: nanoGPT's training loop on the same model, same machine",
            "",
            "`benchmarks/shakespeare_char.py --reference` trains the same `GPT` with nanoGPT's own loop (random-offset "
            "batches, weight decay on every 2-D parameter, no Lightning) and validates on the whole held-out 10% every "
            "250 steps:",
            "",
            *ref_lines,
            "",
        ]
    return "\n".join(lines)


def fit_command(data: str | Path, run_dir: str | Path, *extra: str) -> list[str]:
    """``lightning-gpt fit`` of the recipe on ``data``, logging to CSV under ``run_dir``, without a progress bar."""
    logger = '{"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": "%s", "name": "csv"}}'
    return [
        "lightning-gpt",
        "fit",
        "--config",
        "recipes/shakespeare-char.yaml",
        "--data.source",
        str(data),
        "--trainer.default_root_dir",
        str(run_dir),
        "--trainer.logger",
        logger % run_dir,
        "--trainer.enable_progress_bar",
        "false",
        *extra,
    ]


def reference_loop(
    data: Path, steps: int = 2000, eval_every: int = 250, seed: int = 1337, peak_lr: float = 1e-3
) -> list[tuple[int, float]]:
    """nanoGPT's own training loop for this configuration, written out with the same ``GPT`` (no Lightning).

    Random-offset batches (``get_batch``), weight decay on every 2-D parameter (embeddings included), AdamW
    (0.9, 0.99), clip 1.0, warmup 100 + cosine from ``peak_lr`` (nanoGPT: 1e-3) to ``peak_lr / 10`` at ``steps``;
    validation on the whole held-out 10% (the same windows the CLI run validates on) every ``eval_every`` steps.
    Returns ``(step, val loss)``.
    """
    import math

    import torch

    from lightning_gpt import GPT, GPTConfig

    text = data.read_text()
    chars = sorted(set(text))
    ids = torch.tensor([chars.index(c) for c in text], dtype=torch.long)
    n = int(0.9 * len(ids))
    train, val = ids[:n], ids[n:]
    torch.manual_seed(seed)
    cfg = GPTConfig(vocab_size=len(chars), block_size=64, n_layer=4, n_head=4, n_embd=128, dropout=0.0, bias=False)
    cfg.activation = "gelu"
    model = GPT(cfg)
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": 0.1},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    opt = torch.optim.AdamW(groups, lr=peak_lr, betas=(0.9, 0.99))
    min_lr = peak_lr / 10

    def lr_at(it: int) -> float:
        if it < 100:
            return peak_lr * (it + 1) / 101
        ratio = (it - 100) / (steps - 100)
        return min_lr + 0.5 * (1 + math.cos(math.pi * ratio)) * (peak_lr - min_lr)

    @torch.no_grad()
    def val_loss() -> float:
        model.eval()
        windows = val[: (len(val) - 1) // 64 * 64 + 1]
        x = windows[:-1].view(-1, 64)
        y = windows[1:].view(-1, 64)
        total = sum(float(model(x[i : i + 64], y[i : i + 64])[1]) * len(x[i : i + 64]) for i in range(0, len(x), 64))
        model.train()
        return total / len(x)

    curve = []
    for it in range(steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(it)
        ix = torch.randint(len(train) - 64, (12,))
        x = torch.stack([train[i : i + 64] for i in ix])
        y = torch.stack([train[i + 1 : i + 65] for i in ix])
        _, loss = model(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if (it + 1) % eval_every == 0:
            curve.append((it + 1, val_loss()))
            print(f"reference step {it + 1}: val {curve[-1][1]:.4f}", flush=True)
    return curve


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "tinyshakespeare.txt"))
    parser.add_argument("--run-dir", default="runs/shakespeare-char-bench")
    parser.add_argument("--plot-only", action="store_true")
    parser.add_argument("--reference", action="store_true", help="run nanoGPT's loop (no Lightning) instead")
    parser.add_argument("--lr", type=float, default=1e-3, help="with --reference: peak learning rate (nanoGPT: 1e-3)")
    parser.add_argument("--wall", type=float, default=None, help="with --plot-only: the measured wall time (s)")
    parser.add_argument(
        "--name",
        default="shakespeare_char",
        help="the report's and the curve's file names in benchmarks/results/ (<name>.md, <name>.png)",
    )
    parser.add_argument("extra", nargs="*", help="extra CLI arguments (after --)")
    args = parser.parse_args()
    run_dir = Path(args.run_dir)
    cli = fit_command(args.data, run_dir, *args.extra)
    if args.reference:
        start = time.perf_counter()
        curve = reference_loop(Path(args.data), peak_lr=args.lr)
        wall = time.perf_counter() - start
        lines = [f"| {s} | {v:.4f} |" for s, v in curve]
        header = f"| step | val loss (reference loop, peak lr {args.lr:g}) |"
        report = "\n".join([header, "|---:|---:|", *lines, f"wall {wall:.0f} s"])
        RESULTS.mkdir(parents=True, exist_ok=True)
        name = "shakespeare_char_reference.txt" if args.lr == 1e-3 else f"shakespeare_char_reference_lr{args.lr:g}.txt"
        (RESULTS / name).write_text(report + "\n")
        print(report)
        return
    command = " ".join(f"'{a}'" if any(c in a for c in ' {"') else a for a in cli)
    wall, load = args.wall, None
    if not args.plot_only:
        if not Path(args.data).is_file():
            sys.exit(f"{args.data} not found: pass --data path/to/tinyshakespeare.txt")
        start = time.perf_counter()
        before = os.getloadavg()[0]
        subprocess.run([sys.executable, "-m", "lightning_gpt", *cli[1:]], cwd=REPO, check=True)
        wall = time.perf_counter() - start
        load = f"{before:.2f} / {os.getloadavg()[0]:.2f} (1-minute)"
    val, train = read_metrics(REPO / run_dir if not run_dir.is_absolute() else run_dir)
    RESULTS.mkdir(parents=True, exist_ok=True)
    plot(val, train, RESULTS / f"{args.name}.png")
    report = write_report(val, command, wall, run_dir, os.environ.get("OMP_NUM_THREADS"), load, args.name)
    (RESULTS / f"{args.name}.md").write_text(report)
    print(report)


if __name__ == "__main__":
    main()
