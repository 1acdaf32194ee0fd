"""Tokenization throughput of the data module, first run vs cached run.

For each corpus (``../shared/data/tinyshakespeare.txt`` relative to the repository, when present, and the embedded
``python-stdlib`` corpus) and each tokenizer (``char``, ``bpe``), with a fresh cache directory:

* first run: train the tokenizer (``dm.tokenizer``), then tokenize the corpus into the on-disk cache
  (``dm.prepare_data()``); tokens/s is the cached token count over the tokenize+cache time;
* cached run: a fresh Python process builds the same ``TextDataModule`` and fetches one training batch; we report
  the time from ``TextDataModule(...)`` to the first batch (must be < 2 s), the import time of ``lightning_gpt.data``
  (Lightning, torch) and the whole process wall time.

Prints a markdown table and writes it, with the command, to ``benchmarks/results/data_throughput.md``.

Usage::

    .venv/bin/python benchmarks/data_throughput.py [--max-chars 5000000] [--bpe-vocab 4096] [--block-size 256]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHAKESPEARE = REPO / ".." / "shared" / "data" / "tinyshakespeare.txt"

CACHED_RUN = """
import json, sys, time
t0 = time.perf_counter()
from lightning_gpt.data import TextDataModule
t1 = time.perf_counter()
dm = TextDataModule(**json.loads(sys.argv[1]))
dm.prepare_data()
dm.setup("fit")
x, y = next(iter(dm.train_dataloader()))
t2 = time.perf_counter()
print(json.dumps({"import_s": t1 - t0, "first_batch_s": t2 - t1, "shape": list(x.shape)}))
"""


def first_run(kwargs: dict) -> dict:
    from lightning_gpt.data import TextDataModule

    t0 = time.perf_counter()
    dm = TextDataModule(**kwargs)
    tok = dm.tokenizer
    t1 = time.perf_counter()
    dm.prepare_data()
    t2 = time.perf_counter()
    dm.setup("fit")
    cache = dm.train_dataset.cache
    return {
        "vocab_size": tok.vocab_size,
        "chars": cache.meta["n_chars"],
        "tokens": cache.n_tokens,
        "train_tok_s": t1 - t0,
        "tokenize_s": t2 - t1,
    }


def cached_run(kwargs: dict) -> dict:
    t0 = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-c", CACHED_RUN, json.dumps(kwargs)], capture_output=True, text=True, cwd=REPO, check=True
    )
    wall = time.perf_counter() - t0
    res = json.loads(out.stdout.strip().splitlines()[-1])
    res["wall_s"] = wall
    return res


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-chars", type=int, default=5_000_000, help="cap of the python-stdlib corpus")
    parser.add_argument("--bpe-vocab", type=int, default=4096)
    parser.add_argument("--block-size", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--tokenizers", nargs="+", default=["char", "bpe"])
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "data_throughput.md")
    args = parser.parse_args()

    load_before = os.getloadavg()[0]
    corpora = []
    if SHAKESPEARE.exists():
        corpora.append(("tinyshakespeare", str(SHAKESPEARE.resolve())))
    corpora.append(("python-stdlib", "python-stdlib"))
    rows = []
    for name, source in corpora:
        for kind in args.tokenizers:
            cache_dir = tempfile.mkdtemp(prefix="lgpt-bench-")
            try:
                kwargs = dict(
                    source=source,
                    tokenizer=kind,
                    tokenizer_vocab_size=args.bpe_vocab,
                    block_size=args.block_size,
                    batch_size=args.batch_size,
                    cache_dir=cache_dir,
                    max_chars=args.max_chars if source == "python-stdlib" else None,
                )
                first = first_run(kwargs)
                cached = cached_run(kwargs)
            finally:
                shutil.rmtree(cache_dir, ignore_errors=True)
            rows.append((name, kind, first, cached))
            print(f"done {name}/{kind}: {first} {cached}", file=sys.stderr)

    header = (
        "| corpus | tokenizer | vocab | chars | tokens | first run: train tokenizer (s) "
        "| first run: tokenize+cache (s) | tokens/s | chars/s | cached run: construct -> first batch (s) "
        "| cached run: imports (s) | cached run: process wall (s) |"
    )
    lines = [header, "|" + "---|" * 12]
    for name, kind, f, c in rows:
        lines.append(
            f"| {name} | {kind} | {f['vocab_size']} | {f['chars']:,} | {f['tokens']:,} | {f['train_tok_s']:.2f} "
            f"| {f['tokenize_s']:.2f} | {f['tokens'] / f['tokenize_s']:,.0f} | {f['chars'] / f['tokenize_s']:,.0f} "
            f"| {c['first_batch_s']:.3f} | {c['import_s']:.2f} | {c['wall_s']:.2f} |"
        )
    table = "\n".join(lines)
    print(table)
    worst = max(c["first_batch_s"] for *_, c in rows)
    command = "python benchmarks/data_throughput.py " + " ".join(sys.argv[1:])
    text = (
        "# Data throughput\n\n"
        f"Command: `{command.strip()}`\n\n"
        f"Machine: {platform.platform()}, Python {platform.python_version()}, {os.cpu_count()} CPUs, shared with "
        f"other jobs while measured (1-min load average {load_before:.1f} at the start, {os.getloadavg()[0]:.1f} at "
        "the end), so absolute speeds are pessimistic.\n\n"
        f"Settings: block_size={args.block_size}, batch_size={args.batch_size}, bpe vocab={args.bpe_vocab}, "
        f"python-stdlib capped at {args.max_chars:,} chars. Each row starts from an empty cache directory.\n\n"
        f"{table}\n\n"
        f"Slowest cached start (construction to first batch, imports excluded): {worst:.3f} s "
        f"({'meets' if worst < 2 else 'MISSES'} the < 2 s target). The import column is the one-off cost of "
        "`import lightning_gpt.data` + `TextDataModule` in a fresh process, almost all of it `import lightning` "
        "and torch (lightning_gpt.data itself adds ~0.1 s); it does not depend on the corpus or the cache.\n"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
