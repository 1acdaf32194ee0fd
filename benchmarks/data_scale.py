"""The data-at-scale goals of issue 18, one part each; every part prints a markdown table (and appends it to --out).

Parts (``--parts`` picks; the corpora are generated on local disk under ``--workdir`` and deleted afterwards):

- ``prepare``: ``lightning-gpt prepare`` of a ``--prepare-mb`` JSONL corpus with 1 and 2 processes: tokens/s, the
  speed-up, and peak RSS of the largest process (goal: >= 1.7x on 2 processes, <= 1 GB per process at 1 GB).
- ``tokenizer``: BPE training (``tokenizer_sample_chars`` 100M) on corpora of ``--tokenizer-mb`` sizes: CPU seconds
  and peak RSS (goal: <= 2 GB at 4 GB, time flat past the sample).
- ``startup``: CPU seconds of ``fit`` to the end of its first step from prepared folders of ``--startup-mb`` sizes
  (goal: the largest within 1.1x of the smallest; no corpus bytes read at start-up).
- ``sampler``: the token-cache sampler at ``--windows`` windows: memory of its state and of an iterator, and the time
  from a resume far into the epoch to the first index (goal: <= 50 MB, <= 2 s at 10M windows).
- ``txt``: one ``--txt-mb`` ``.txt`` file: ``prepare`` (``char``), then ``fit`` one step of a 1-layer, 32-wide model
  from the folder: peak RSS of each (goal: <= 1 GB at 1 GB).
- ``small``: the embedded default corpus through the token cache vs ``prepare`` + litdata streaming: cold-start CPU
  seconds and CPU per batch (the measurement behind keeping the token cache for small local data).
- ``loader``: batches/s of our loaders on a ``--loader-mb`` token stream against nanoGPT's ``np.memmap`` ``get_batch``
  (random offsets, ``torch.stack``), batch 16 x 1024, interleaved rounds, medians (goal: ours >= nanoGPT's).

Usage (the full goals; hours on a busy 2-core machine)::

    python benchmarks/data_scale.py --prepare-mb 1000 --tokenizer-mb 500 4000 --startup-mb 100 4000

Every figure is CPU-seconds or peak RSS where load would distort wall time; the load average is recorded.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WORDS = (
    "the of and to in is that for it as was with be by on not he this are or his from at which but have an they "
    "you were her she there been one all we their has would when if so no will more can who said what its into than "
    "them only some could new time these two may then do first any my now such like our over man me even most made"
).split()

RUSAGE = """
import json, resource, subprocess, sys, time
t = time.time()
p = subprocess.run(sys.argv[1:], stdout=subprocess.PIPE, text=True)
r = resource.getrusage(resource.RUSAGE_CHILDREN)
last = (p.stdout.strip().splitlines() or [""])[-1]
print(json.dumps({"rc": p.returncode, "wall": time.time() - t, "cpu": r.ru_utime + r.ru_stime,
                  "maxrss_mb": r.ru_maxrss / 1024, "stdout": last}))
"""


def measure(cmd: list[str], env: dict | None = None) -> dict:
    """Run ``cmd`` under a fresh parent whose RUSAGE_CHILDREN covers it alone (peak RSS: the largest process)."""
    out = subprocess.run([sys.executable, "-c", RUSAGE, *cmd], capture_output=True, text=True, env=env, cwd=REPO)
    res = json.loads(out.stdout.strip().splitlines()[-1])
    if res["rc"] != 0:
        raise RuntimeError(f"{cmd} failed:\n{out.stderr[-3000:]}")
    return res


def write_jsonl(path: Path, megabytes: float, seed: int = 0) -> None:
    rng = random.Random(seed)
    target = int(megabytes * 1e6)
    with open(path, "w") as f:
        size = 0
        while size < target:
            text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(50, 400)))
            line = json.dumps({"text": text}) + "\n"
            f.write(line)
            size += len(line)


def env() -> dict:
    e = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    e.pop("LIGHTNING_GPT_TRACEBACK", None)
    return e


def part_prepare(args: argparse.Namespace, work: Path) -> str:
    corpus = work / "prepare.jsonl"
    write_jsonl(corpus, args.prepare_mb)
    base = [sys.executable, "-m", "lightning_gpt", "prepare", "--data.source", str(corpus), "--data.tokenizer"]
    base += ["tiktoken:gpt2" if args.tiktoken else "bpe", "--data.cache_dir", str(work / "cache")]
    # The tokenizer is trained (or loaded) once, before the timed runs, so both time tokenization only.
    measure([*base, "--output_dir", str(work / "warm"), "--num_workers", "1"], env())
    rows = []
    for workers in (1, 2):
        out = work / f"prep{workers}"
        res = measure([*base, "--output_dir", str(out), "--num_workers", str(workers)], env())
        manifest = json.loads((out / "lightning_gpt_dataset.json").read_text())
        tokens = sum((s or {}).get("n_tokens", 0) for s in manifest["splits"].values())
        rows.append((workers, tokens, res))
        shutil.rmtree(out)
    t1 = rows[0][1] / rows[0][2]["wall"]
    lines = [
        "| processes | tokens | wall s | tokens/s | speed-up | CPU s | peak RSS of a process (MB) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for workers, tokens, res in rows:
        tps = tokens / res["wall"]
        lines.append(
            f"| {workers} | {tokens:,} | {res['wall']:.1f} | {tps:,.0f} | {tps / t1:.2f}x | {res['cpu']:.1f} "
            f"| {res['maxrss_mb']:.0f} |"
        )
    return f"prepare, {args.prepare_mb:g} MB JSONL (wall time includes process start-up):\n\n" + "\n".join(lines)


def part_txt(args: argparse.Namespace, work: Path) -> str:
    rng = random.Random(3)
    corpus = work / "one.txt"
    with open(corpus, "w") as f:
        size = 0
        while size < args.txt_mb * 1e6:
            line = " ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 20))) + "\n"
            f.write(line)
            size += len(line)
    out = work / "txt_prepared"
    prep = [sys.executable, "-m", "lightning_gpt", "prepare", "--data.source", str(corpus), "--output_dir", str(out)]
    prep += ["--data.cache_dir", str(work / "cache"), "--data.val_fraction", "0.001"]
    res_prep = measure(prep, env())
    fit = [sys.executable, "-m", "lightning_gpt", "fit", "--data.source", str(out), "--trainer.max_steps", "1"]
    fit += [
        "--trainer.accelerator",
        "cpu",
        "--trainer.logger",
        "false",
        "--trainer.default_root_dir",
        str(work / "txt_run"),
    ]
    fit += ["--model.config.n_layer", "1", "--model.config.n_head", "1", "--model.config.n_embd", "32"]
    fit += ["--model.config.block_size", "256", "--sampling.every_n_steps", "1000", "--overwrite", "true"]
    res_fit = measure(fit, env())
    lines = ["| step | wall s | CPU s | peak RSS of a process (MB) |", "|---|---:|---:|---:|"]
    for name, res in (("prepare (char, all cores)", res_prep), ("fit 1 step (1 layer x 32) from the folder", res_fit)):
        lines.append(f"| {name} | {res['wall']:.1f} | {res['cpu']:.1f} | {res['maxrss_mb']:.0f} |")
    corpus.unlink()
    return f"A single {args.txt_mb:g} MB .txt file:\n\n" + "\n".join(lines)


SMALL = """
import json, sys, time
from lightning_gpt.training import TextDataModule
kw = json.loads(sys.argv[1])
if kw.pop("prepare_to", None):
    from lightning_gpt.cli.prepare import prepare_command
    prepare_command(["--data.source", kw["source"], "--output_dir", sys.argv[2], "--data.cache_dir", kw["cache_dir"],
                     "--data.max_chars", "3000000", "--num_workers", "2"])
    kw["source"] = sys.argv[2]
dm = TextDataModule(**kw)
dm.prepare_data(); dm.setup("fit")
it = iter(dm.train_dataloader()); next(it)
t = time.process_time()
for _ in range(200):
    next(it)
print(json.dumps({"step_ms": (time.process_time() - t) / 200 * 1e3}))
"""


def part_small(args: argparse.Namespace, work: Path) -> str:
    """The embedded default corpus (3M characters, char): token cache vs prepare + litdata, cold start each."""
    lines = [
        "| path | cold start to first batch + 200 batches: CPU s (all processes) | per batch, CPU ms |",
        "|---|---:|---:|",
    ]
    for name, extra in (("token cache", {}), ("prepare + litdata streaming", {"prepare_to": True})):
        kw = {
            "source": "python-stdlib",
            "max_chars": 3_000_000,
            "block_size": 128,
            "batch_size": 16,
            "cache_dir": str(work / f"small-{len(extra)}"),
            "val_fraction": 0.0,
            **extra,
        }
        out = work / f"small-prepared-{len(extra)}"
        res = measure([sys.executable, "-c", SMALL, json.dumps(kw), str(out)], env())
        step = json.loads(res["stdout"])["step_ms"]
        lines.append(f"| {name} | {res['cpu']:.1f} | {step:.2f} |")
    return (
        "Small local data (python-stdlib, 3M characters, char, block 128, batch 16), fresh cache each:\n\n"
        + "\n".join(lines)
    )


def part_tokenizer(args: argparse.Namespace, work: Path) -> str:
    code = (
        "import sys; from lightning_gpt.data.local import trained_tokenizer; from lightning_gpt.data.settings import "
        "TokenizerSettings; from lightning_gpt.data.sources import resolve_source; "
        "trained_tokenizer(resolve_source(sys.argv[1]), TokenizerSettings('bpe', 8192), None, 0)"
    )
    lines = ["| corpus MB | CPU s | wall s | peak RSS (MB) |", "|---:|---:|---:|---:|"]
    for mb in args.tokenizer_mb:
        corpus = work / f"tok{mb}.jsonl"
        write_jsonl(corpus, mb, seed=1)
        res = measure([sys.executable, "-c", code, str(corpus)], env())
        lines.append(f"| {mb:g} | {res['cpu']:.1f} | {res['wall']:.1f} | {res['maxrss_mb']:.0f} |")
        corpus.unlink()
    return "BPE tokenizer training (vocab 8192, sample 100M characters, no cache):\n\n" + "\n".join(lines)


def _fake_prepared(folder: Path, n_tokens: int) -> None:
    """A prepared folder of ``n_tokens`` random char-tokenizer ids (litdata chunks + manifest), made quickly."""
    from lightning_gpt.data.prepared import MANIFEST, PREPARED_VERSION
    from lightning_gpt.data.tokenizers import CharTokenizer

    code = (
        "import sys, numpy as np, litdata; from litdata import TokensLoader\n"
        "def fn(i):\n    yield np.random.default_rng(i).integers(0, 60, 1 << 24, dtype=np.uint16)\n"
        "if __name__ == '__main__':\n"
        "    litdata.optimize(fn=fn, inputs=list(range(int(sys.argv[2]))), output_dir=sys.argv[1], num_workers=2, "
        "chunk_bytes='64MB', item_loader=TokensLoader())\n"
    )
    script = folder.parent / "fake_prepare.py"
    script.write_text(code)
    n_items = max(1, n_tokens >> 24)
    scratch = folder.parent / "scratch"
    e = dict(env(), DATA_OPTIMIZER_CACHE_FOLDER=str(scratch / "c"), DATA_OPTIMIZER_DATA_CACHE_FOLDER=str(scratch / "d"))
    subprocess.run(
        [sys.executable, str(script), str(folder / "train"), str(n_items)], check=True, env=e, capture_output=True
    )
    tok = CharTokenizer("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ .,;:!?\n")
    manifest = {
        "version": PREPARED_VERSION,
        "settings": {},
        "tokenizer": tok.state_dict(),
        "dtype": "uint16",
        "splits": {"train": {"n_tokens": n_items << 24}, "val": None},
        "num_shards": n_items,
    }
    (folder / MANIFEST).write_text(json.dumps(manifest))


def part_startup(args: argparse.Namespace, work: Path) -> str:
    lines = ["| prepared tokens | disk MB | fit to the end of step 1: CPU s | wall s |", "|---:|---:|---:|---:|"]
    cpus = []
    for mb in args.startup_mb:
        folder = work / f"prep{mb}"
        _fake_prepared(folder, int(mb * 1e6 / 2))
        disk = sum(p.stat().st_size for p in folder.rglob("*")) / 1e6
        cmd = [sys.executable, "-m", "lightning_gpt", "fit", "--data.source", str(folder), "--trainer.max_steps", "1"]
        cmd += [
            "--trainer.accelerator",
            "cpu",
            "--trainer.logger",
            "false",
            "--trainer.default_root_dir",
            str(work / f"run{mb}"),
            "--model.config.n_layer",
            "1",
            "--model.config.n_head",
            "1",
            "--model.config.n_embd",
            "32",
            "--model.config.block_size",
            "64",
            "--data.val_fraction",
            "0",
            "--sampling.every_n_steps",
            "1000",
            "--overwrite",
            "true",
        ]
        runs = [measure(cmd, env()) for _ in range(args.rounds)]
        cpu = statistics.median(r["cpu"] for r in runs)
        cpus.append(cpu)
        tokens = json.loads((folder / "lightning_gpt_dataset.json").read_text())["splits"]["train"]["n_tokens"]
        wall = statistics.median(r["wall"] for r in runs)
        lines.append(f"| {tokens:,} | {disk:,.0f} | {cpu:.2f} | {wall:.1f} |")
        shutil.rmtree(folder)
    ratio = cpus[-1] / cpus[0]
    return (
        f"Start-up from a prepared folder (median of {args.rounds}); largest / smallest CPU: {ratio:.2f}x\n\n"
        + "\n".join(lines)
    )


def part_sampler(args: argparse.Namespace, work: Path) -> str:
    import tracemalloc

    from lightning_gpt.data.sampler import ResumableSampler

    n = args.windows
    tracemalloc.start()
    s = ResumableSampler(n, num_replicas=8, rank=3, seed=1)
    it = iter(s)
    next(it)
    state_mb = tracemalloc.get_traced_memory()[1] / 1e6
    tracemalloc.stop()
    t = time.process_time()
    r = ResumableSampler(n, num_replicas=8, rank=3, seed=1)
    r.set_start(0, n - n // 10, 0)  # 90% into the epoch
    next(iter(r))
    resume_s = time.process_time() - t
    t = time.process_time()
    k = 0
    for _ in iter(s):
        k += 1
        if k == 100_000:
            break
    per_index_us = (time.process_time() - t) / 100_000 * 1e6
    lines = [
        "| windows | sampler + iterator memory (MB) | resume 90% in -> first index (CPU s) | per index (us) |",
        "|---:|---:|---:|---:|",
        f"| {n:,} | {state_mb:.3f} | {resume_s:.4f} | {per_index_us:.1f} |",
    ]
    return "Token-cache sampler (8 ranks):\n\n" + "\n".join(lines)


def part_loader(args: argparse.Namespace, work: Path) -> str:
    import numpy as np
    import torch

    from lightning_gpt.data.cache import build_token_cache, load_token_cache
    from lightning_gpt.data.datasets import PackedDataset
    from lightning_gpt.data.sampler import ResumableSampler
    from lightning_gpt.data.tokenizers import CharTokenizer

    n_tokens = int(args.loader_mb * 1e6 / 2)
    tok = CharTokenizer([chr(97 + i) for i in range(26)])
    rng = np.random.default_rng(0)
    path = work / "tokens.bin"
    with open(path, "wb") as f:
        for start in range(0, n_tokens, 1 << 24):
            rng.integers(0, 26, min(1 << 24, n_tokens - start), dtype=np.uint16).tofile(f)
    # our cache entry around the same file (one document)
    entry = Path(build_token_cache(str(work / "cache"), {"b": 1}, iter(["ab"]), tok))
    os.replace(path, entry / "tokens.bin")
    np.save(entry / "offsets.npy", np.asarray([0, n_tokens], dtype=np.int64))
    meta = json.loads((entry / "meta.json").read_text())
    meta.update(n_tokens=n_tokens, n_docs=1)
    (entry / "meta.json").write_text(json.dumps(meta))
    cache = load_token_cache(str(entry))
    B, T = 16, 1024
    ds = PackedDataset(cache, T, shift_seed=1)
    loader = torch.utils.data.DataLoader(ds, batch_size=B, sampler=ResumableSampler(len(ds), seed=1))
    data = np.memmap(entry / "tokens.bin", dtype=np.uint16, mode="r")

    def nanogpt_get_batch() -> None:  # nanoGPT train.py get_batch, CPU branch
        ix = torch.randint(len(data) - T, (B,))
        x = torch.stack([torch.from_numpy((data[i : i + T]).astype(np.int64)) for i in ix])
        y = torch.stack([torch.from_numpy((data[i + 1 : i + 1 + T]).astype(np.int64)) for i in ix])
        del x, y

    ours = iter(loader)

    def ours_batch() -> None:
        next(ours)

    runs = {
        "nanoGPT np.memmap get_batch": nanogpt_get_batch,
        "ours: PackedDataset + ResumableSampler + DataLoader": ours_batch,
    }
    rates: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(args.rounds):
        for name, fn in runs.items():
            t = time.process_time()
            for _ in range(200):
                fn()
            rates[name].append(200 / (time.process_time() - t))
    ref = statistics.median(rates["nanoGPT np.memmap get_batch"])
    lines = ["| loader | batches per CPU-second (median) | vs nanoGPT |", "|---|---:|---:|"]
    for name in runs:
        med = statistics.median(rates[name])
        lines.append(f"| {name} | {med:,.0f} | {med / ref:.2f}x |")
    return (
        f"Loader throughput, {n_tokens:,} tokens (uint16), batch {B} x {T}, {args.rounds} interleaved rounds:\n\n"
        + "\n".join(lines)
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", nargs="+", default=["sampler", "loader", "tokenizer", "startup", "prepare", "txt"])
    parser.add_argument("--prepare-mb", type=float, default=1000)
    parser.add_argument("--txt-mb", type=float, default=1000)
    parser.add_argument("--tokenizer-mb", type=float, nargs="+", default=[500, 4000])
    parser.add_argument("--startup-mb", type=float, nargs="+", default=[100, 4000])
    parser.add_argument("--windows", type=int, default=10_000_000)
    parser.add_argument("--loader-mb", type=float, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tiktoken", action="store_true", help="prepare with tiktoken:gpt2 (needs its file offline)")
    parser.add_argument("--workdir", type=Path, default=None, help="where corpora are generated (deleted after)")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "data_scale.md")
    args = parser.parse_args()
    work = Path(args.workdir or REPO / ".bench-data")
    work.mkdir(parents=True, exist_ok=True)
    parts = {
        "small": part_small,
        "txt": part_txt,
        "prepare": part_prepare,
        "tokenizer": part_tokenizer,
        "startup": part_startup,
        "sampler": part_sampler,
        "loader": part_loader,
    }
    command = "python benchmarks/data_scale.py " + " ".join(sys.argv[1:])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "a") as f:
        f.write(f"## `{command.strip()}` ({time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} CPUs)\n\n")
    try:
        for name in args.parts:  # each table is appended as soon as it is measured
            load = os.getloadavg()[0]
            table = parts[name](args, work)
            section = f"### {name}\n\n{table}\n\n(1-min load average {load:.1f} -> {os.getloadavg()[0]:.1f})\n\n"
            print(section, flush=True)
            with open(args.out, "a") as f:
                f.write(section)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"appended to {args.out}")


if __name__ == "__main__":
    main()
