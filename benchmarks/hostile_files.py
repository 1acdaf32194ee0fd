"""What a hostile model folder costs: CPU-seconds and peak memory of ``lightning-gpt generate`` on folders whose config
claims a model their weights do not hold, against the same command on the intact folder.

A tiny model (2 layers x 64) is saved with ``write_pretrained`` (``--format safetensors`` and ``hf``); copies get an
edited config: ``n_layer: 100000``, ``block_size: 1000000000``, a 100-byte Hugging Face ``config.json`` (GPT-2 small's
defaults), an extra layer of weights. Each command runs in a fresh process (interleaved, ``--rounds`` times, medians);
CPU-seconds and peak RSS are that child's (``getrusage(RUSAGE_CHILDREN)`` of a one-child wrapper), so the machine's
load distorts them little. The goal: a refusal costs no more than start-up plus a fraction of a second, and no memory
beyond the imports. ``--timeout`` bounds a case (the code before issue 22 built the 100000-layer model for minutes).

Usage::

    .venv/bin/python benchmarks/hostile_files.py [--rounds 3] [--timeout 120] [--out benchmarks/results] [--repo OLD]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

_WRAPPER = (
    "import resource, subprocess, sys\n"
    "timeout = float(sys.argv[1])\n"
    "try:\n"
    "    p = subprocess.run([sys.executable, '-m', 'lightning_gpt', *sys.argv[2:]], capture_output=True, text=True,\n"
    "                       timeout=timeout)\n"
    "    code, err = p.returncode, p.stderr\n"
    "except subprocess.TimeoutExpired:\n"
    "    code, err = 'timeout', ''\n"
    "r = resource.getrusage(resource.RUSAGE_CHILDREN)\n"
    "print(repr((code, r.ru_utime + r.ru_stime, r.ru_maxrss / 1024, err.strip().splitlines()[-2:] if err else [])))\n"
)


def make_cases(base: Path) -> dict[str, Path]:
    import torch
    from safetensors.torch import load_file, save_file

    from lightning_gpt import GPT, GPTConfig
    from lightning_gpt.data.tokenizers import CharTokenizer
    from lightning_gpt.io.hf import write_pretrained

    torch.manual_seed(0)
    tokenizer = CharTokenizer.train(["the quick brown fox jumps over a lazy dog"])
    model = GPT(GPTConfig(vocab_size=tokenizer.vocab_size, block_size=64, n_layer=2, n_head=4, n_embd=64))
    native = write_pretrained(model, tokenizer, base / "intact", format="safetensors")
    hf = write_pretrained(model, tokenizer, base / "intact-hf", format="hf")

    def edited(name: str, source: Path, file: str, change) -> Path:
        folder = base / name
        shutil.copytree(source, folder)
        if file == "lightning_gpt.json" or file == "config.json":
            data = json.loads((folder / file).read_text())
            (folder / file).write_text(json.dumps(change(data)))
        else:
            tensors = load_file(str(folder / file))
            save_file(change(tensors), str(folder / file))
        return folder

    cases = {"intact (baseline)": native}
    cases["n_layer: 100000"] = edited(
        "layers", native, "lightning_gpt.json", lambda d: {**d, "gpt_config": {**d["gpt_config"], "n_layer": 100000}}
    )
    cases["block_size: 1000000000"] = edited(
        "block", native, "lightning_gpt.json", lambda d: {**d, "gpt_config": {**d["gpt_config"], "block_size": 10**9}}
    )
    small = edited("hf-100-bytes", hf, "config.json", lambda d: {"model_type": "gpt2"})
    (small / "lightning_gpt.json").unlink()
    cases["100-byte config.json"] = small

    def extra(t):
        t.update({k.replace(".h.1.", ".h.2."): v.clone() for k, v in t.items() if ".h.1." in k})
        return t

    cases["extra layer of weights"] = edited("extra", native, "model.safetensors", extra)
    return cases


def run(folder: Path, timeout: float, repo: Path) -> tuple:
    argv = ["generate", "--ckpt_path", str(folder), "--prompt", "the", "--max_new_tokens", "8"]
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    out = subprocess.run(
        [sys.executable, "-c", _WRAPPER, str(timeout), *argv], capture_output=True, text=True, env=env, cwd=repo
    )
    return eval(out.stdout.strip().splitlines()[-1])  # noqa: S307 - our own wrapper's repr


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per command")
    parser.add_argument("--out", type=Path, default=None, help="folder for hostile_files.md")
    parser.add_argument(
        "--repo", type=Path, default=REPO, help="run the commands with the package of this checkout (e.g. an older one)"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        cases = make_cases(Path(tmp))
        results: dict[str, list[tuple]] = {name: [] for name in cases}
        for _ in range(args.rounds):
            for name, folder in cases.items():
                results[name].append(run(folder, args.timeout, args.repo))
    base_cpu = statistics.median(r[1] for r in results["intact (baseline)"])
    base_rss = statistics.median(r[2] for r in results["intact (baseline)"])
    lines = [
        "| folder given to `generate` | exit | CPU s (median) | vs intact | peak RSS MB | vs intact | message |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for name, rows in results.items():
        cpu, rss = statistics.median(r[1] for r in rows), statistics.median(r[2] for r in rows)
        message = rows[-1][3][0] if rows[-1][3] and name != "intact (baseline)" else ""
        message = message.split("): ", 1)[-1].split(". Nothing was built")[0][:100].replace("|", "/")
        lines.append(
            f"| {name} | {rows[-1][0]} | {cpu:.2f} | {cpu - base_cpu:+.2f} | {rss:.0f} | {rss - base_rss:+.0f} | "
            f"{message} |"
        )
    load = os.getloadavg()[0]
    table = "\n".join(lines)
    command = f"python benchmarks/hostile_files.py --rounds {args.rounds} --timeout {args.timeout:g}"
    if args.repo != REPO:
        command += f" --repo {args.repo}"
    text = f"`{command}`, load average {load:.1f}, {os.cpu_count()} CPUs\n\n{table}\n"
    print(text)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "hostile_files.md").write_text(f"# Hostile model folders: cost of the refusal\n\n{text}")


if __name__ == "__main__":
    main()
