"""Linear attention at long context: the chunked core vs SDPA, and a whole 1-layer GPT with ``linear`` vs ``flash``.

    python benchmarks/linear_long_context.py --threads 2 --out benchmarks/results/linear_long_context.md

At n = 8192, batch 2, 4 heads of 32, forward + backward (wall time, ``--threads`` intra-op threads, interleaved
rounds with alternating order, medians):

1. the core: ``chunked_linear_attention`` (elu+1 features) for each ``--chunks`` size vs
   ``scaled_dot_product_attention(is_causal=True)``;
2. a 1-layer GPT (n_embd 128, 4 heads, vocab 256, no dropout) with ``attention="linear"`` vs ``"flash"``, same input,
   loss + backward;
3. where the linear GPT's time goes: the top operators of one forward + backward (``torch.profiler``, self CPU time).

Goals (issue 14): core >= 5x SDPA; the linear GPT >= 2x faster than the flash one.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from lightning_gpt import GPT, GPTConfig
from lightning_gpt.attention.linear import chunked_linear_attention


def interleaved(runs: dict[str, Callable[[], None]], rounds: int) -> dict[str, float]:
    for fn in runs.values():
        fn()  # warm-up
    times: dict[str, list[float]] = {k: [] for k in runs}
    for r in range(rounds):
        for name in list(runs) if r % 2 == 0 else list(runs)[::-1]:
            start = time.perf_counter()
            runs[name]()
            times[name].append(time.perf_counter() - start)
    return {k: statistics.median(v) for k, v in times.items()}


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--n", type=int, default=8192)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--chunks", type=int, nargs="+", default=[16, 32, 64, 128])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    B, nh, N, hs = args.batch, 4, args.n, 32
    load_start = os.getloadavg()[0]
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(B, nh, N, hs, generator=g, requires_grad=True) for _ in range(3))

    def sdpa() -> None:
        F.scaled_dot_product_attention(q, k, v, is_causal=True).sum().backward()

    def linear(C: int) -> Callable[[], None]:
        def run() -> None:
            y, _, _ = chunked_linear_attention(F.elu(q) + 1, F.elu(k) + 1, v, C)
            y.sum().backward()

        return run

    core = interleaved({"sdpa": sdpa, **{f"linear C={C}": linear(C) for C in args.chunks}}, args.rounds)
    lines = [
        f"## Core: B={B}, {nh} heads of {hs}, n={N}, fwd+bwd, {args.threads} threads",
        "",
        "| core | ms | SDPA / this |",
        "|---|---:|---:|",
    ]
    lines += [f"| {name} | {t * 1e3:.1f} | {core['sdpa'] / t:.1f}x |" for name, t in core.items()]

    x = torch.randint(0, 256, (B, N), generator=g)
    models = {}
    for kind in ("flash", "linear"):
        torch.manual_seed(0)
        cfg = GPTConfig(vocab_size=256, block_size=N, n_layer=1, n_head=nh, n_embd=nh * hs, dropout=0.0, attention=kind)
        models[kind] = GPT(cfg)

    def step(model: GPT) -> Callable[[], None]:
        def run() -> None:
            _, loss = model(x[:, :-1], x[:, 1:])
            loss.backward()

        return run

    whole = interleaved({kind: step(m) for kind, m in models.items()}, args.rounds)
    lines += [
        "",
        f"## 1-layer GPT: n_embd {nh * hs}, {nh} heads, vocab 256, B={B}, n={N - 1}, loss + backward",
        "",
        "| attention | ms | flash / this |",
        "|---|---:|---:|",
    ]
    lines += [f"| {kind} | {t * 1e3:.1f} | {whole['flash'] / t:.2f}x |" for kind, t in whole.items()]

    from torch.profiler import profile

    with profile() as prof:
        step(models["linear"])()
    table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12)
    lines += ["", "## Where the linear GPT's time goes (one fwd+bwd, self CPU time)", "", "```", table.strip(), "```"]
    best = min((t for name, t in core.items() if name != "sdpa"))
    lines += [
        "",
        f"Core: best linear {core['sdpa'] / best:.1f}x SDPA (goal >= 5x); default chunk (64): "
        f"{core['sdpa'] / core.get('linear C=64', best):.1f}x. Whole layer: linear "
        f"{whole['flash'] / whole['linear']:.2f}x faster than flash (goal >= 2x). "
        f"1-min load average {load_start:.1f} at the start, "
        f"{os.getloadavg()[0]:.1f} at the end.",
    ]
    report = "\n".join(lines) + "\n"
    print(report)
    if args.out is not None:
        command = "python benchmarks/linear_long_context.py " + " ".join(argv if argv is not None else sys.argv[1:])
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(f"# Linear attention at long context\n\nCommand: `{command.strip()}`\n\n{report}")
    return report


if __name__ == "__main__":
    main()
