"""Peak resident memory per rank of FSDP2 (``FSDP2Strategy``: built on the meta device, sharded checkpoint) against
DDP (``DDPStrategy``) for GPT-2 124M on 2 CPU processes (gloo), and their losses side by side.

Each strategy trains ``GPTModule`` (GPT-2 small: 12 layers, 12 heads, 768 wide, vocabulary 50257, context 256) for
``--steps`` steps on the same random token windows (batch 2 per rank: the same global batch of 4), then saves a
checkpoint (DDP: one consolidated file written by rank 0; FSDP2: a sharded folder, every rank writing its shards).
Each rank reports the process's maximum resident set size (``getrusage(RUSAGE_SELF).ru_maxrss``: the peak over the
whole run, imports, model build, steps and the save included) after the build, after training and after the save, and
rank 0 the token-weighted loss of every step.

The goal (issue 18): FSDP2's peak per rank <= 0.75x DDP's, and the same losses to 1e-5.

Usage::

    python benchmarks/fsdp_memory.py                      # both strategies, 5 steps; appends to results/fsdp_memory.md
    python benchmarks/fsdp_memory.py --mmap_threshold 131072   # the same with glibc's mmap threshold fixed
    python benchmarks/fsdp_memory.py --steps 2 --n_layer 2   # a quick smoke run (not the goal's model)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def run_rank(args: argparse.Namespace) -> None:
    """One strategy's run: Lightning starts the second rank itself (``popen`` re-runs this command line)."""
    import lightning.pytorch as pl
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    from lightning_gpt.config import GPTConfig
    from lightning_gpt.training import GPTModule
    from lightning_gpt.training.strategies import DDPStrategy, FSDP2Strategy

    class Record(pl.Callback):
        def __init__(self) -> None:
            self.out: dict = {"losses": []}

        def on_train_start(self, trainer, pl_module):
            self.out["built_mb"] = _peak_mb()

        def on_train_batch_end(self, trainer, pl_module, *rest):
            self.out["losses"].append(float(pl_module.last_loss))

        def on_train_end(self, trainer, pl_module):
            self.out["trained_mb"] = _peak_mb()

    T, vocab = args.block_size, 50257
    tokens = torch.randint(0, vocab, (2 * 2 * args.steps, T + 1), generator=torch.Generator().manual_seed(0))
    loader = DataLoader(TensorDataset(tokens[:, :-1], tokens[:, 1:]), batch_size=2, shuffle=False)
    config = GPTConfig(vocab_size=vocab, block_size=T, n_layer=args.n_layer, n_head=12, n_embd=768, dropout=0.0)
    strategy = (
        DDPStrategy(process_group_backend="gloo")
        if args.strategy == "ddp"
        else FSDP2Strategy(process_group_backend="gloo")
    )
    record = Record()
    pl.seed_everything(1234)
    trainer = pl.Trainer(
        accelerator="cpu", devices=2, strategy=strategy, max_steps=args.steps, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, callbacks=[record],
    )  # fmt: skip
    module = GPTModule(config, learning_rate=3e-4, dropout_seed=0, default_callbacks=False)
    trainer.fit(module, train_dataloaders=loader)
    trainer.save_checkpoint(os.path.join(args.out_dir, f"{args.strategy}.ckpt"))
    record.out["saved_mb"] = _peak_mb()
    with open(os.path.join(args.out_dir, f"{args.strategy}-rank{trainer.global_rank}.json"), "w") as f:
        json.dump(record.out, f)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--n_layer", type=int, default=12)
    parser.add_argument("--block_size", type=int, default=256)
    parser.add_argument("--strategy", choices=["ddp", "fsdp2"], default=None, help="(internal: one strategy's run)")
    parser.add_argument("--out_dir", default=None, help="(internal)")
    parser.add_argument("--results", default=str(REPO / "benchmarks" / "results" / "fsdp_memory.md"))
    parser.add_argument(
        "--mmap_threshold",
        type=int,
        default=None,
        help="run both strategies with glibc's MALLOC_MMAP_THRESHOLD_ fixed at this many bytes (e.g. 131072): large "
        "buffers are then returned to the system when freed instead of fragmenting the heap",
    )
    args = parser.parse_args()
    if args.strategy is not None:
        run_rank(args)
        return
    env = dict(
        os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])
    )
    if args.mmap_threshold is not None:
        env["MALLOC_MMAP_THRESHOLD_"] = str(args.mmap_threshold)
    allocator = (
        "glibc malloc's defaults (DDP: dynamic mmap threshold; FSDP2Strategy fixes it at its cpu_mmap_threshold, "
        "131072 bytes)"
        if args.mmap_threshold is None
        else f"both under MALLOC_MMAP_THRESHOLD_={args.mmap_threshold}"
    )
    results = {}
    with tempfile.TemporaryDirectory() as out_dir:
        for strategy in ("ddp", "fsdp2"):
            command = [sys.executable, __file__, "--strategy", strategy, "--out_dir", out_dir]
            command += ["--steps", str(args.steps), "--n_layer", str(args.n_layer)]
            command += ["--block_size", str(args.block_size)]
            subprocess.run(command, env=env, check=True, cwd=out_dir)
            results[strategy] = [json.loads(Path(out_dir, f"{strategy}-rank{r}.json").read_text()) for r in (0, 1)]
    lines = [
        f"GPT-2 124M shape (n_layer={args.n_layer}, 768 wide, vocab 50257), block {args.block_size}, batch 2 per rank, "
        f"2 CPU processes (gloo), {args.steps} steps + checkpoint save; {allocator}; "
        f"{platform.processor() or platform.machine()}, load average {os.getloadavg()[0]:.2f} at the end.",
        "",
        "| strategy | rank | peak RSS after build (MB) | after training (MB) | after the save (MB): the run's peak |",
        "|---|---|---|---|---|",
    ]
    for strategy, ranks in results.items():
        for rank, r in enumerate(ranks):
            lines.append(f"| {strategy} | {rank} | {r['built_mb']:.0f} | {r['trained_mb']:.0f} | {r['saved_mb']:.0f} |")
    ratios = [f / d for f, d in zip((r["saved_mb"] for r in results["fsdp2"]), (r["saved_mb"] for r in results["ddp"]))]
    losses = zip(results["ddp"][0]["losses"], results["fsdp2"][0]["losses"])
    diff = max(abs(a - b) for a, b in losses)
    lines += [
        "",
        f"FSDP2 / DDP peak RSS per rank: {', '.join(f'{r:.2f}x' for r in ratios)} (goal <= 0.75x).",
        f"Losses per step, DDP: {', '.join(f'{v:.6f}' for v in results['ddp'][0]['losses'])}",
        f"Losses per step, FSDP2: {', '.join(f'{v:.6f}' for v in results['fsdp2'][0]['losses'])}",
        f"Largest loss difference: {diff:.2e} (goal <= 1e-5).",
        "",
        f"Command: `python benchmarks/fsdp_memory.py --steps {args.steps} --n_layer {args.n_layer} "
        f"--block_size {args.block_size}"
        + ("" if args.mmap_threshold is None else f" --mmap_threshold {args.mmap_threshold}")
        + "`",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    path = Path(args.results)
    previous = path.read_text() if path.is_file() else "# FSDP2 vs DDP: peak memory per rank\n"
    path.write_text(previous.rstrip("\n") + "\n\n" + text)  # appended: each run keeps its own table


if __name__ == "__main__":
    main()
