"""How attention cores scale with sequence length: forward+backward time and memory of one attention core.

For each kind and length ``n`` the core runs on random ``q, k, v`` of shape ``(1, n_head, n, n_embd / n_head)`` that
require grad; the time is the median over a few rounds of forward+backward passes (rounds interleave all cases) after a
warm-up. Memory is

* on CPU: the bytes autograd saves for the backward pass (every tensor passed through
  ``torch.autograd.graph.saved_tensors_hooks``, counted once per storage), which is what a training step has to keep;
* on CUDA: the peak allocated memory during forward+backward, above what was allocated before.

The script prints a markdown table and the log-log slope of each metric against ``n`` (fitted over the upper half of
the lengths), writes the table to ``<out>/attention_scaling.md`` and a plot to ``<out>/attention_scaling.png``.

Usage::

    python benchmarks/attention_scaling.py --lengths 256 512 1024 2048 4096 8192 --width 64 --heads 1
"""

from __future__ import annotations

import argparse
import math
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch

from lightning_gpt.attention import get_attention
from lightning_gpt.config import GPTConfig

KINDS = {
    "standard": dict(attention="standard"),
    "flash": dict(attention="flash"),
    "linear": dict(attention="linear"),
    "sparse-local": dict(attention="sparse", sparse_pattern="local"),
    "sparse-strided": dict(attention="sparse", sparse_pattern="strided"),
    "sparse-longformer": dict(attention="sparse", sparse_pattern="longformer", n_global_tokens=16),
}
DEFAULT_KINDS = ["standard", "flash", "linear", "sparse-local"]


def build_core(kind: str, args: argparse.Namespace, n: int) -> torch.nn.Module:
    config = GPTConfig(
        vocab_size=256,
        block_size=n,
        n_layer=1,
        n_head=args.heads,
        n_embd=args.width,
        attention_window=args.window,
        linear_chunk_size=args.chunk,
        **KINDS[kind],
    )
    return get_attention(config.attention)(config)


def saved_bytes(fn: Callable[[], torch.Tensor]) -> tuple[torch.Tensor, int]:
    """Run ``fn`` and count the bytes of the tensors autograd saves for backward, once per storage."""
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        storages[storage.data_ptr()] = max(storages.get(storage.data_ptr(), 0), storage.nbytes())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return out, sum(storages.values())


class Case:
    """One (kind, n) measurement: the core, its inputs, and the timings collected so far.

    Args:
        core: the attention core.
        n: the sequence length.
        args: the parsed command line.
        device: where to run.
    """

    def __init__(self, core: torch.nn.Module, n: int, args: argparse.Namespace, device: torch.device) -> None:
        torch.manual_seed(0)
        hs = args.width // args.heads
        self.core, self.device = core, device
        self.q, self.k, self.v = (
            torch.randn(1, args.heads, n, hs, device=device, requires_grad=True) for _ in range(3)
        )
        self.times: list[float] = []
        self.inner = 1

    def fwd_bwd(self) -> None:
        self.core(self.q, self.k, self.v).sum().backward()
        self.q.grad = self.k.grad = self.v.grad = None

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()

    def warm_up(self, target_ms: float = 20.0) -> None:
        """Two untimed runs (allocation, kernel selection), then pick how many runs one timing sample averages."""
        self.fwd_bwd()
        self.sync()
        t0 = time.perf_counter()
        self.fwd_bwd()
        self.sync()
        once = (time.perf_counter() - t0) * 1e3
        self.inner = max(1, min(50, math.ceil(target_ms / max(once, 1e-3))))

    def time_once(self) -> None:
        t0 = time.perf_counter()
        for _ in range(self.inner):
            self.fwd_bwd()
        self.sync()
        self.times.append((time.perf_counter() - t0) * 1e3 / self.inner)

    def memory_mb(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            self.fwd_bwd()
            self.sync()
            return (torch.cuda.max_memory_allocated() - base) / 2**20
        out, mem = saved_bytes(lambda: self.core(self.q, self.k, self.v))
        del out
        return mem / 2**20


def run_all(args: argparse.Namespace, device: torch.device) -> dict[str, dict[int, tuple[float, float]]]:
    """Median time (ms) and memory (MB) for every kind and length.

    The timing runs are interleaved in rounds (every case once per round), so a burst of load from other processes
    on a shared machine hits all kinds alike instead of one unlucky case.
    """
    cases = {
        (kind, n): Case(build_core(kind, args, n).to(device), n, args, device)
        for n in args.lengths
        for kind in args.kinds
    }
    memory = {}
    for key, case in cases.items():
        case.warm_up()
        memory[key] = case.memory_mb()
    for r in range(args.reps):
        for case in cases.values():
            case.time_once()
        print(f"round {r + 1}/{args.reps} done", file=sys.stderr, flush=True)
    results: dict[str, dict[int, tuple[float, float]]] = {kind: {} for kind in args.kinds}
    for (kind, n), case in cases.items():
        results[kind][n] = (statistics.median(case.times), memory[(kind, n)])
        print(f"n={n:6d} {kind:18s} {results[kind][n][0]:9.1f} ms {memory[(kind, n)]:9.1f} MB", file=sys.stderr)
    return results


def slope(lengths: list[int], values: list[float]) -> float:
    """Least-squares slope of log(value) against log(n) over the upper half of the lengths."""
    pairs = [(math.log(n), math.log(v)) for n, v in zip(lengths, values) if v > 0][len(lengths) // 2 :]
    if len(pairs) < 2:
        return float("nan")
    mx = sum(x for x, _ in pairs) / len(pairs)
    my = sum(y for _, y in pairs) / len(pairs)
    return sum((x - mx) * (y - my) for x, y in pairs) / sum((x - mx) ** 2 for x, _ in pairs)


def render(args: argparse.Namespace, device: torch.device, results: dict, command: str) -> str:
    kinds, lengths = args.kinds, args.lengths
    mem_label = "peak allocated MB" if device.type == "cuda" else "saved-for-backward MB"
    lines = [
        "# Attention scaling: one core, forward + backward",
        "",
        f"Command: `{command}`",
        "",
        f"Device: {device.type} ({platform.processor() or platform.machine()}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads); batch 1, n_embd {args.width}, {args.heads} head(s), "
        f"sparse window {args.window}, linear chunk {args.chunk}; time = median over {args.reps} interleaved rounds "
        "after a warm-up (fast cases averaged over several runs per round). "
        f"Cells: time ms / {mem_label}.",
        "",
        "| n | " + " | ".join(kinds) + " |",
        "|---:|" + "---:|" * len(kinds),
    ]
    for n in lengths:
        cells = []
        for kind in kinds:
            t, m = results[kind].get(n, (float("nan"), float("nan")))
            cells.append(f"{t:.1f} / {m:.1f}")
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    lines += ["", f"Log-log slope over n = {lengths[len(lengths) // 2 :]} (time, memory):", ""]
    lines += ["| kind | time exponent | memory exponent |", "|---|---:|---:|"]
    for kind in kinds:
        ns = [n for n in lengths if n in results[kind]]
        ts = [results[kind][n][0] for n in ns]
        ms = [results[kind][n][1] for n in ns]
        lines.append(f"| {kind} | {slope(ns, ts):.2f} | {slope(ns, ms):.2f} |")
    return "\n".join(lines) + "\n"


def plot(args: argparse.Namespace, results: dict, path: Path, mem_label: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6), dpi=80)
    for kind in args.kinds:
        ns = sorted(results[kind])
        axes[0].loglog(ns, [results[kind][n][0] for n in ns], "o-", label=kind, base=2)
        axes[1].loglog(ns, [results[kind][n][1] for n in ns], "o-", label=kind, base=2)
    axes[0].set(xlabel="sequence length n", ylabel="fwd+bwd time (ms)", title="time")
    axes[1].set(xlabel="sequence length n", ylabel=mem_label, title="memory")
    for ax in axes:
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", type=int, nargs="+", default=[256 * 2**i for i in range(6)])
    parser.add_argument("--width", type=int, default=64, help="n_embd of the layer")
    parser.add_argument("--heads", type=int, default=1)
    parser.add_argument("--window", type=int, default=128, help="sparse attention_window (and stride)")
    parser.add_argument("--chunk", type=int, default=64, help="linear_chunk_size")
    parser.add_argument("--kinds", nargs="+", default=DEFAULT_KINDS, choices=list(KINDS))
    parser.add_argument("--reps", type=int, default=5, help="timing rounds; the median is reported")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (1 is steadiest on a busy box)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/out"))
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    command = "python " + " ".join([Path(sys.argv[0]).as_posix(), *(argv if argv is not None else sys.argv[1:])])

    results = run_all(args, device)

    table = render(args, device, results, command)
    print(table)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "attention_scaling.md").write_text(table)
    mem_label = "peak allocated MB" if device.type == "cuda" else "saved-for-backward MB"
    plot(args, results, args.out / "attention_scaling.png", mem_label)


if __name__ == "__main__":
    main()
