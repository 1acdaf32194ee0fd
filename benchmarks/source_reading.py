"""Reading a large ``.txt`` source: peak memory in pieces vs whole, and start-up identity by ``stat`` vs hashing.

Writes a text file of ``--size-mb`` MB (paragraphs of lines, with 2-byte characters: a Python ``str`` of it takes 2
bytes per character), then measures, each in a fresh process (peak RSS is the process's ``ru_maxrss``, shown with
the same process's RSS right after its imports subtracted too):

* ``pieces``: iterating ``LocalSource(path).documents()`` (documents of at most ``TXT_PIECE_CHARS`` characters);
* ``whole``: the previous reader, the file read and decoded whole (only up to ``--whole-max-mb``, default 128: at
  1 GB it needs ~3 GB);
* ``char cache``: training a ``char`` tokenizer on the documents and tokenizing them into the token cache
  (``build_token_cache``), the small local path of ``prepare`` (``--no-cache`` skips it), and ``bpe cache``: the
  same with a ``bpe`` tokenizer trained on the first 2 MB (up to ``--bpe-max-mb``, default 128);
* ``identity (stat)``: ``resolve_source(path).key()`` as every rank computes it at start-up, vs ``identity
  (sha256)``: the previous identity, a SHA-256 of every byte (what each rank did at each start);
* with ``--fit``, at the largest size: ``lightning-gpt fit`` of one step of a 1-layer, 32-wide model (``char``,
  block 256, batch 4) on the file, tokenizer training and token cache included (peak RSS of the whole command).

Prints a markdown table and writes it, with the command and load average, to
``benchmarks/results/source_reading.md``. About 3 minutes at 1024 MB on 2 quiet cores (the char cache build is most
of it; ``--fit`` adds about 3 more); the file is deleted at the end.

Usage::

    .venv/bin/python benchmarks/source_reading.py [--size-mb 1024] [--whole-max-mb 128] [--no-cache] [--fit]
        [--workdir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

CHILD = r"""
import hashlib, json, os, resource, sys, time
what, path, cache = sys.argv[1], sys.argv[2], sys.argv[3]
from lightning_gpt.data.sources import resolve_source
from lightning_gpt.data.cache import build_token_cache
from lightning_gpt.data.tokenizers import CharTokenizer

def rss_mb():
    with open("/proc/self/status") as f:
        return int(next(l for l in f if l.startswith("VmRSS:")).split()[1]) / 1024

base = rss_mb()
t0 = time.process_time()
out = {}
if what == "pieces":
    n = largest = chars = 0
    for doc in resolve_source(path).documents():
        n, largest, chars = n + 1, max(largest, len(doc)), chars + len(doc)
    out = {"docs": n, "largest": largest, "chars": chars}
elif what == "whole":
    with open(path, "rb") as f:
        text = f.read().decode("utf-8")
    out = {"docs": 1, "largest": len(text), "chars": len(text)}
    del text
elif what == "cache":
    src = resolve_source(path)
    tok = CharTokenizer.train(src.documents())
    entry = build_token_cache(cache, {"bench": path}, src.documents(), tok, description=path)
    meta = json.load(open(os.path.join(entry, "meta.json")))
    out = {"docs": meta["n_docs"], "chars": meta["n_chars"]}
elif what == "bpe-cache":
    import itertools
    from lightning_gpt.data.tokenizers import build_tokenizer
    src = resolve_source(path)
    tok = build_tokenizer("bpe", itertools.islice(src.documents(), 2), vocab_size=1024)  # trained on ~2 MB
    entry = build_token_cache(cache, {"bench-bpe": path}, src.documents(), tok, description=path)
    meta = json.load(open(os.path.join(entry, "meta.json")))
    out = {"docs": meta["n_docs"], "chars": meta["n_chars"]}
elif what == "identity-stat":
    resolve_source(path).key()
elif what == "identity-sha256":
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
out.update(cpu_s=time.process_time() - t0, base_mb=base, peak_mb=peak)
print(json.dumps(out))
"""


def write_corpus(path: Path, size_mb: int) -> int:
    """Paragraphs of lines with some 2-byte characters, about ``size_mb`` MB; returns the byte size."""
    words = "the quick brown fox jumps over a lazy dog café naïve résumé and the cat runs to its house".split()
    lines = [" ".join(words[(i * 7 + j * 3) % len(words)] for j in range(8 + i % 9)) for i in range(997)]
    block = "".join(line + ("\n\n" if i % 11 == 10 else "\n") for i, line in enumerate(lines)).encode()
    target = size_mb * 1024 * 1024
    with open(path, "wb") as f:
        written = 0
        while written < target:
            f.write(block)
            written += len(block)
    return written


FIT_YAML = """
seed_everything: 1337
trainer: {default_root_dir: RUN, accelerator: cpu, devices: 1, max_steps: 1, logger: false,
  enable_progress_bar: false, enable_model_summary: false, num_sanity_val_steps: 0, limit_val_batches: 0}
model: {config: {block_size: 256, n_layer: 1, n_head: 1, n_embd: 32}}
data: {source: SOURCE, tokenizer: char, batch_size: 4, cache_dir: CACHE, val_fraction: 0.001}
sampling: {every_n_steps: 100000}
"""


FIT_CHILD = r"""
import json, resource, sys, time
from lightning_gpt.cli import main
try:
    main(["fit", "--config", sys.argv[1]])
except SystemExit as exit:
    if exit.code:
        raise
usage = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({"cpu_s": usage.ru_utime + usage.ru_stime, "peak_mb": usage.ru_maxrss / 1024}))
"""


def measure_fit(path: Path, work: Path) -> dict:
    """Peak RSS and CPU seconds of ``lightning-gpt fit`` (one step) on ``path``, in a fresh process."""
    config = work / "fit.yaml"
    yaml = FIT_YAML.replace("RUN", str(work / "run")).replace("SOURCE", str(path))
    config.write_text(yaml.replace("CACHE", str(work / "fit-cache")))
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    out = subprocess.run([sys.executable, "-c", FIT_CHILD, str(config)], capture_output=True, text=True, env=env)
    if out.returncode != 0:
        raise SystemExit(f"fit failed:\n{out.stderr[-3000:]}")
    return dict(json.loads(out.stdout.strip().splitlines()[-1]), base_mb=float("nan"))


def measure(what: str, path: Path, cache: Path) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    out = subprocess.run(
        [sys.executable, "-c", CHILD, what, str(path), str(cache)], capture_output=True, text=True, env=env
    )
    if out.returncode != 0:
        raise SystemExit(f"{what} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mb", type=int, default=1024)
    parser.add_argument("--whole-max-mb", type=int, default=128)
    parser.add_argument("--no-cache", action="store_true")
    parser.add_argument("--bpe-max-mb", type=int, default=128)
    parser.add_argument("--fit", action="store_true")
    parser.add_argument("--workdir", default=None)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="source_reading-", dir=args.workdir))
    rows = []
    try:
        sizes = sorted({min(args.whole_max_mb, args.size_mb), args.size_mb})
        for size in sizes:
            path = work / f"corpus-{size}mb.txt"
            nbytes = write_corpus(path, size)
            cases = ["pieces", "identity-stat", "identity-sha256"]
            if size <= args.whole_max_mb:
                cases.insert(1, "whole")
            if not args.no_cache:
                cases.append("cache")
                if size <= args.bpe_max_mb:
                    cases.append("bpe-cache")
            if args.fit and size == args.size_mb:
                cases.append("fit")
            for what in cases:
                r = measure_fit(path, work) if what == "fit" else measure(what, path, work / "cache")
                rows.append((what, nbytes, r))
                print(f"{size} MB {what}: {r}", file=sys.stderr)
            path.unlink()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    names = {
        "pieces": "documents, in pieces",
        "whole": "documents, read whole (previous)",
        "cache": "char tokenizer + token cache",
        "bpe-cache": "bpe (trained on 2 MB) token cache",
        "identity-stat": "identity at start-up (stat)",
        "identity-sha256": "identity at start-up (SHA-256, previous)",
        "fit": "lightning-gpt fit, 1 step (char, 1x32 model; whole command)",
    }
    lines = [
        "| what | file (MB) | peak RSS (MB) | above imports (MB) | CPU s | documents | largest document (chars) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for what, nbytes, r in rows:
        above = "" if r["base_mb"] != r["base_mb"] else f"{max(0.0, r['peak_mb'] - r['base_mb']):.0f}"
        lines.append(
            f"| {names[what]} | {nbytes / 2**20:.0f} | {r['peak_mb']:.0f} | {above} | "
            f"{r['cpu_s']:.3f} | {r.get('docs', '')} | {r.get('largest', '')} |"
        )
    table = "\n".join(lines)
    load = os.getloadavg()
    header = (
        f"`{' '.join(['python', 'benchmarks/source_reading.py', *sys.argv[1:]])}` - load average "
        f"{load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f}, {os.cpu_count()} CPUs, Python {sys.version.split()[0]}"
    )
    print(table)
    out = REPO / "benchmarks" / "results" / "source_reading.md"
    out.write_text(f"# Reading a large .txt source\n\n{header}\n\n{table}\n")
    print(f"\nwritten to {out.relative_to(REPO)}", file=sys.stderr)


if __name__ == "__main__":
    main()
