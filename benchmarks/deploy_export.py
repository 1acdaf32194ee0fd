"""Deployment export per attention kind: export cost, file size, and onnxruntime latency against eager PyTorch.

    python benchmarks/deploy_export.py --out benchmarks/results/deploy_export.md

For each kind (a 6 x 384 GPT, 6 heads, context 256, vocab 256; sparse window 64, linear chunk 64), one thread:

1. ``write_deployment(..., format="onnx")``: CPU-seconds (trace, ONNX conversion, save, and the onnxruntime check at
   two lengths) and the size of ``model.onnx``;
2. the forward pass (batch 1, no cache) at a short and at the full length: onnxruntime (CPU provider, 1 intra-op
   thread) vs eager ``model(ids)`` under ``torch.no_grad()``, interleaved rounds, medians, and their max |difference|.

``linear`` and ``sparse`` run their attention core at the static context length inside the exported graph (their
chunk/block counts cannot depend on a traced length), so their short-length latency is expected to stay above
eager's; the table measures by how much.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable

import torch

from lightning_gpt import GPT, GPTConfig
from lightning_gpt.io.deploy import write_deployment

KINDS = {
    "standard": dict(attention="standard"),
    "flash": dict(attention="flash"),
    "linear": dict(attention="linear", linear_chunk_size=64),
    "sparse-local": dict(attention="sparse", attention_window=64, sparse_pattern="local"),
    "sparse-strided": dict(attention="sparse", attention_window=64, sparse_pattern="strided"),
    "sparse-longformer": dict(attention="sparse", attention_window=64, sparse_pattern="longformer", n_global_tokens=4),
}


def interleaved(runs: dict[str, Callable[[], object]], rounds: int) -> dict[str, float]:
    for fn in runs.values():
        fn()  # warm-up
    times: dict[str, list[float]] = {k: [] for k in runs}
    for r in range(rounds):
        for name in list(runs) if r % 2 == 0 else list(runs)[::-1]:
            start = time.perf_counter()
            runs[name]()
            times[name].append(time.perf_counter() - start)
    return {k: statistics.median(v) for k, v in times.items()}


def compare(model: GPT, session: object, length: int, rounds: int) -> list[str]:
    """onnxruntime vs eager at batch 1 x ``length``: ORT ms, eager ms, their ratio, max |logits difference|."""
    ids = torch.randint(0, model.config.vocab_size, (1, length), generator=torch.Generator().manual_seed(length))
    feed = {"input_ids": ids.numpy()}

    def ort_run() -> object:
        return session.run(None, feed)  # type: ignore[attr-defined]

    def eager() -> torch.Tensor:
        with torch.no_grad():
            return model(ids)

    error = (torch.from_numpy(ort_run()[0]) - eager()).abs().max().item()  # type: ignore[index]
    t = interleaved({"ort": ort_run, "eager": eager}, rounds)
    return [f"{t['ort'] * 1e3:.1f}", f"{t['eager'] * 1e3:.1f}", f"{t['ort'] / t['eager']:.2f}x", f"{error:.1e}"]


def main(argv: list[str] | None = None) -> str:
    import onnxruntime as ort

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kinds", nargs="+", default=list(KINDS), choices=list(KINDS))
    parser.add_argument("--short", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    load_start = os.getloadavg()[0]
    rows = []
    for kind in args.kinds:
        torch.manual_seed(0)
        config = GPTConfig(vocab_size=256, block_size=256, n_layer=6, n_head=6, n_embd=384, **KINDS[kind])
        model = GPT(config).eval()
        with tempfile.TemporaryDirectory() as tmp:
            cpu = time.process_time()
            out = write_deployment(model, None, Path(tmp) / "onnx", format="onnx")
            export_cpu = time.process_time() - cpu
            size_mb = (out / "model.onnx").stat().st_size / 2**20
            options = ort.SessionOptions()
            options.intra_op_num_threads = options.inter_op_num_threads = 1
            session = ort.InferenceSession(str(out / "model.onnx"), options, providers=["CPUExecutionProvider"])
            row = [kind, f"{export_cpu:.1f}", f"{size_mb:.1f}"]
            for length in (args.short, config.block_size):
                row += compare(model, session, length, args.rounds)
        rows.append(row)
        print(" | ".join(row), flush=True)
    short, full = args.short, 256
    header = (
        f"| kind | export CPU-s | model.onnx MB | ORT T={short} ms | eager T={short} ms | ratio | max abs diff "
        f"| ORT T={full} ms | eager T={full} ms | ratio | max abs diff |"
    )
    lines = [
        "# Deployment export per attention kind",
        "",
        "`python benchmarks/deploy_export.py` (6 x 384 GPT, context 256, batch 1, one thread; torch "
        f"{torch.__version__}, onnxruntime {ort.__version__}); load average {load_start:.1f} at the start, "
        f"{os.getloadavg()[0]:.1f} at the end (wall times of ORT and eager are interleaved, so their ratio holds "
        "under load better than either time).",
        "",
        header,
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        *("| " + " | ".join(row) + " |" for row in rows),
        "",
    ]
    text = "\n".join(lines)
    print(text)
    if args.out is not None:
        args.out.write_text(text)
    return text


if __name__ == "__main__":
    main()
