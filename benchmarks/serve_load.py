"""Load test of ``lightning-gpt serve``: concurrent clients, batched vs one request at a time.

A GPT of the 6 x 384 shape (6 layers, 6 heads, 384 wide, context 1024) with GPT-2's vocabulary size (50257: a
byte-level BPE trained here on the Python standard library's sources, so nothing is downloaded), random init (the
shape is what costs time). ``--clients`` (16) threads each send ``--requests`` (4) greedy requests to
``POST /v1/completions`` one after another, each ``--new_tokens`` (64) new tokens from a prompt of 8-32 random token
ids; all start together. The server runs once per ``--max_batch_sizes`` value (16, then 1 = one at a time), in
``--rounds`` interleaved rounds, each its own ``lightning-gpt serve`` process.

Reported per run: requests, failed requests (anything but a 200 with the requested tokens), completion tokens,
wall time, aggregate tokens/s, p50/p95 request latency, the server's CPU seconds (all its processes, from /proc)
and tokens per server CPU-second (less sensitive to other load on a shared machine), the requests per batch the
worker saw (``GET /stats``) and the 1-minute load average before the run. Then the ratio of batched to one-at-a-time
aggregate tokens/s (medians over rounds). Prints a markdown table and writes it to ``<out>/serve_load.md``.

Usage (one round: about 5 minutes on a shared 2-core CPU at load average ~15, most of it the one-at-a-time run)::

    python benchmarks/serve_load.py --out benchmarks/results
"""

from __future__ import annotations

import argparse
import dataclasses
import glob
import http.client
import json
import os
import platform
import random
import signal
import socket
import statistics
import subprocess
import sys
import sysconfig
import threading
import time
from pathlib import Path
from typing import Any

import torch

from lightning_gpt import GPT, GPTConfig


def build_checkpoint(path: Path, vocab_size: int) -> Path:
    """The 6 x 384 GPT, random init, with a BPE tokenizer of ``vocab_size`` ids (trained once, then reused)."""
    if path.is_file():
        return path
    from lightning_gpt.data.tokenizers import HFTokenizer

    files = sorted(glob.glob(os.path.join(sysconfig.get_paths()["stdlib"], "**", "*.py"), recursive=True))
    texts = [Path(f).read_text(encoding="utf-8", errors="replace") for f in files]
    tok = HFTokenizer.train(texts, "bpe", vocab_size)
    if tok.vocab_size != vocab_size:
        raise SystemExit(f"the tokenizer reached {tok.vocab_size} ids, not {vocab_size}: give it more text")
    torch.manual_seed(0)
    config = GPTConfig(vocab_size=vocab_size, block_size=1024, n_layer=6, n_head=6, n_embd=384)
    model = GPT(config)
    state = {f"model.{k}": v for k, v in model.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save({"gpt_config": dataclasses.asdict(config), "state_dict": state, "tokenizer": tok.state_dict()}, tmp)
    tmp.rename(path)
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def group_cpu_seconds(pgid: int) -> float:
    """User + system CPU seconds of every live process in group ``pgid`` (children that were reaped included)."""
    total = 0.0
    tick = os.sysconf("SC_CLK_TCK")
    for stat in glob.glob("/proc/[0-9]*/stat"):
        try:
            fields = Path(stat).read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid:  # field 5 of stat: the process group
            total += sum(int(x) for x in fields[11:15]) / tick  # utime, stime, cutime, cstime
    return total


class Server:
    def __init__(self, ckpt: Path, max_batch_size: int, args: argparse.Namespace, log: Path) -> None:
        self.port = free_port()
        cmd = [sys.executable, "-m", "lightning_gpt", "serve", "--ckpt_path", str(ckpt), "--port", str(self.port)]
        cmd += [
            "--max_batch_size",
            str(max_batch_size),
            "--batch_timeout",
            str(args.batch_timeout),
            "--model_name",
            "model",
        ]
        if args.threads:
            cmd += ["--threads", str(args.threads)]
        self.log = open(log, "wb")
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 600
        while True:
            if self.proc.poll() is not None:
                raise SystemExit(f"the server exited: see {log}")
            try:
                self.get("/health")
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise SystemExit(f"the server did not start: see {log}") from None
                time.sleep(0.5)

    def get(self, path: str) -> Any:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            conn.request("GET", path)
            response = conn.getresponse()
            body = response.read()
            if response.status != 200:
                raise OSError(f"{path}: {response.status}")
            return json.loads(body) if path != "/health" else body
        finally:
            conn.close()

    def complete(self, prompt: list[int], new_tokens: int) -> tuple[bool, int]:
        body = {"model": "model", "prompt": prompt, "max_tokens": new_tokens, "temperature": 0}
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=900)
        try:
            conn.request("POST", "/v1/completions", json.dumps(body), {"Content-Type": "application/json"})
            response = conn.getresponse()
            answer = json.loads(response.read())
            if response.status != 200:
                return False, 0
            return True, int(answer["usage"]["completion_tokens"])
        except (OSError, ValueError, KeyError):
            return False, 0
        finally:
            conn.close()

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.log.close()


def run_load(server: Server, args: argparse.Namespace, vocab_size: int, seed: int) -> dict[str, Any]:
    rng = random.Random(seed)
    prompts = [
        [[rng.randrange(vocab_size) for _ in range(rng.randint(args.min_prompt, args.max_prompt))]
         for _ in range(args.requests)]
        for _ in range(args.clients)
    ]  # fmt: skip
    latencies: list[float] = []
    tokens = [0]
    failed = [0]
    lock = threading.Lock()
    start = threading.Barrier(args.clients + 1)

    def client(i: int) -> None:
        start.wait()
        for prompt in prompts[i]:
            t0 = time.perf_counter()
            ok, n = server.complete(prompt, args.new_tokens)
            dt = time.perf_counter() - t0
            with lock:
                latencies.append(dt)
                tokens[0] += n
                failed[0] += 0 if ok else 1

    threads = [threading.Thread(target=client, args=(i,)) for i in range(args.clients)]
    for t in threads:
        t.start()
    before = server.get("/stats")
    load = os.getloadavg()[0]
    cpu0 = group_cpu_seconds(server.proc.pid)
    t0 = time.perf_counter()
    start.wait()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    cpu = group_cpu_seconds(server.proc.pid) - cpu0
    after = server.get("/stats")
    batches = after["batches"] - before["batches"]
    latencies.sort()
    return {
        "requests": len(latencies),
        "failed": failed[0],
        "tokens": tokens[0],
        "wall": wall,
        "tok_s": tokens[0] / wall,
        "p50": statistics.median(latencies),
        "p95": latencies[min(len(latencies) - 1, int(round(0.95 * (len(latencies) - 1))))],
        "cpu": cpu,
        "tok_cpu": tokens[0] / cpu if cpu > 0 else float("nan"),
        "per_batch": (after["requests"] - before["requests"]) / batches if batches else float("nan"),
        "load": load,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--requests", type=int, default=4, help="requests per client, one after another")
    parser.add_argument("--new_tokens", type=int, default=64)
    parser.add_argument("--min_prompt", type=int, default=8)
    parser.add_argument("--max_prompt", type=int, default=32)
    parser.add_argument("--max_batch_sizes", default="16,1", help="one server run per value, in this order")
    parser.add_argument("--batch_timeout", type=float, default=0.05)
    parser.add_argument("--rounds", type=int, default=1, help="interleaved rounds; medians are compared")
    parser.add_argument("--threads", type=int, default=None, help="torch threads of the server's worker")
    parser.add_argument("--vocab_size", type=int, default=50257)
    parser.add_argument(
        "--work_dir", default=os.path.join(os.environ.get("TMPDIR", "/tmp"), "lightning_gpt_serve_load")
    )
    parser.add_argument("--out", default=None, help="write serve_load.md here")
    args = parser.parse_args()

    work = Path(args.work_dir)
    ckpt = build_checkpoint(work / f"model-6x384-v{args.vocab_size}.ckpt", args.vocab_size)
    sizes = [int(s) for s in args.max_batch_sizes.split(",")]
    runs: dict[int, list[dict[str, Any]]] = {b: [] for b in sizes}
    for r in range(args.rounds):
        for b in sizes:
            server = Server(ckpt, b, args, work / f"server-b{b}-r{r}.log")
            try:
                server.complete([1, 2, 3, 4, 5, 6, 7, 8], 4)  # warm-up
                runs[b].append(run_load(server, args, args.vocab_size, seed=r))
            finally:
                server.stop()
            print(f"round {r} max_batch_size {b}: {runs[b][-1]}", file=sys.stderr)

    lines = [
        f"`python benchmarks/serve_load.py {' '.join(sys.argv[1:])}`".replace(" `", "`"),
        "",
        f"{args.clients} clients x {args.requests} requests, {args.new_tokens} new tokens each (greedy), prompts of "
        f"{args.min_prompt}-{args.max_prompt} tokens; 6 x 384 GPT, vocab {args.vocab_size}, float32; "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
        f"worker threads {args.threads or 'default'}, batch_timeout {args.batch_timeout} s.",
        "",
        "| max_batch_size | round | requests | failed | tokens | wall s | tokens/s | p50 s | p95 s | server CPU s | "
        "tokens / CPU-s | requests / batch | load avg |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for b in sizes:
        for r, m in enumerate(runs[b]):
            lines.append(
                f"| {b} | {r} | {m['requests']} | {m['failed']} | {m['tokens']} | {m['wall']:.1f} | {m['tok_s']:.1f} | "
                f"{m['p50']:.2f} | {m['p95']:.2f} | {m['cpu']:.1f} | {m['tok_cpu']:.1f} | {m['per_batch']:.1f} | "
                f"{m['load']:.1f} |"
            )
    if len(sizes) >= 2:
        med = {b: statistics.median(m["tok_s"] for m in runs[b]) for b in sizes}
        med_cpu = {b: statistics.median(m["tok_cpu"] for m in runs[b]) for b in sizes}
        first, last = sizes[0], sizes[-1]
        lines += [
            "",
            f"Batched (max_batch_size {first}) / one at a time (max_batch_size {last}): "
            f"{med[first] / med[last]:.2f}x aggregate tokens/s, {med_cpu[first] / med_cpu[last]:.2f}x tokens per "
            f"server CPU-second (medians over {args.rounds} round(s)); failed requests: "
            f"{sum(m['failed'] for b in sizes for m in runs[b])}.",
        ]
    table = "\n".join(lines) + "\n"
    print(table)
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "serve_load.md").write_text(table)


if __name__ == "__main__":
    main()
