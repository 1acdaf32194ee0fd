"""One prepared GPU check: training throughput and MFU, attention memory, FSDP2, decoding vs ``transformers``.

Run once when a GPU is lent (about 5-8 minutes on one H200); prints a markdown table and, with ``--out``, writes it::

    python benchmarks/gpu_check.py --out benchmarks/results/gpu_check.md

Parts (each row says what it measured; a part that fails prints its error in the table and the others still run):

1. **train**: GPT-2 124M (12 x 768, vocab 50304, context 1024) bf16 autocast, AdamW (fused), tokens/s and MFU
   eager and ``torch.compile``d. MFU = tokens/s x (6 N + 12 L T d) / peak bf16 FLOP/s (``--peak_tflops``, default
   989 for an H100/H200 SXM dense bf16).
2. **attention**: one ``CausalSelfAttention`` layer (768 wide, 12 heads, batch 1) forward + backward at 4k and 8k
   context, ``flash`` vs ``standard``: time and peak memory.
3. **fsdp2**: a few ``lightning-gpt`` training steps with ``FSDP2Strategy`` (``fully_shard`` per block) on one device.
4. **decode**: greedy, 128 new tokens, batch 1 and 8: our ``generate`` vs ``transformers`` ``generate`` on the same
   converted GPT-2 124M weights (bf16), tokens/s and whether the tokens are equal; then compiled decoding
   (``compile=True``: CUDA graphs) at batch 1 and 8 against HF with its static cache and a compiled forward
   (``cache_implementation="static"``, ``torch.compile(mode="reduce-overhead")``), compilation time apart; and
   speculative decoding (``draft_model``) at batch 1 with a 2-layer draft made of the target's first two blocks
   (untrained weights: the acceptance rate says how much of the speed-up is real).

``--dry-run`` runs every part at tiny sizes on the CPU in seconds (``torch.compile`` with the ``eager`` backend), which
is how CI tests this script. Needs only torch (>= 2.4; the GPU machine has 2.11), lightning, transformers and this
package: no ``datasets``, no ``flash-attn``, no network.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import platform
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from lightning_gpt import GPT, GPTConfig  # noqa: E402
from lightning_gpt.training.callbacks.throughput import flops_per_token  # noqa: E402

Row = dict[str, str]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device, repeat: int) -> float:
    """Median wall seconds of ``repeat`` calls (after one warm-up call)."""
    fn()
    sync(device)
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def peak_memory(device: torch.device) -> str:
    if device.type != "cuda":
        return "n/a (cpu)"
    return f"{torch.cuda.max_memory_allocated(device) / 2**20:.0f} MiB"


def reset_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def autocast(device: torch.device, enabled: bool = True) -> contextlib.AbstractContextManager:
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled)


# ---------------------------------------------------------------------------------------------------------------- parts


def part_train(args: argparse.Namespace, device: torch.device) -> list[Row]:
    config = GPTConfig(**args.sizes["train"], dropout=0.0, attention="flash")
    B, T = args.sizes["train_batch"], config.block_size
    rows = []
    for compiled in (False, True):
        torch.manual_seed(0)
        model = GPT(config).to(device)
        fused = {"fused": True} if device.type == "cuda" else {}
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, **fused)
        step_model: Any = torch.compile(model, backend=args.compile_backend) if compiled else model
        x = torch.randint(0, config.vocab_size, (B, T), device=device)
        y = torch.randint(0, config.vocab_size, (B, T), device=device)

        def step(step_model: Any = step_model, x: torch.Tensor = x, y: torch.Tensor = y, opt: Any = opt) -> None:
            with autocast(device):
                _, loss = step_model(x, y)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        for _ in range(args.warmup):  # compilation happens here
            step()
        seconds = timed(step, device, args.repeat)
        tokens_s = B * T / seconds
        flops = flops_per_token(config, seq_len=T) * tokens_s
        mfu = flops / (args.peak_tflops * 1e12)
        rows.append(
            {
                "part": "train",
                "what": f"GPT {config.n_layer}x{config.n_embd}, B={B}, T={T}, bf16 autocast, "
                + ("torch.compile" if compiled else "eager"),
                "result": f"{tokens_s:,.0f} tok/s, {seconds * 1e3:.1f} ms/step, MFU {100 * mfu:.1f}%",
                "goal": "MFU >= 45% compiled" if compiled else "",
            }
        )
        del model, opt, step_model, step
        reset_memory(device)
    return rows


def part_attention(args: argparse.Namespace, device: torch.device) -> list[Row]:
    from lightning_gpt.model import CausalSelfAttention

    rows = []
    for T in args.sizes["attention_T"]:
        times = {}
        for kind in ("flash", "standard"):
            config = GPTConfig(**args.sizes["attention"], block_size=T, attention=kind, dropout=0.0)
            layer = CausalSelfAttention(config).to(device)
            x = torch.randn(1, T, config.n_embd, device=device, requires_grad=True)

            def fwd_bwd(layer: Any = layer, x: torch.Tensor = x) -> None:
                with autocast(device):
                    out = layer(x)
                out.float().sum().backward()

            reset_memory(device)
            try:
                seconds = timed(fwd_bwd, device, args.repeat)
                times[kind] = seconds
                result = f"{seconds * 1e3:.1f} ms, peak {peak_memory(device)}"
            except torch.cuda.OutOfMemoryError:
                result = "out of memory"
            rows.append({"part": "attention", "what": f"{kind}, T={T}, fwd+bwd, bf16", "result": result, "goal": ""})
            del layer, x
            reset_memory(device)
        if len(times) == 2:
            rows[-1]["result"] += f" (flash {times['standard'] / times['flash']:.1f}x faster)"
    return rows


def part_fsdp2(args: argparse.Namespace, device: torch.device) -> list[Row]:
    import logging

    import lightning.pytorch as pl
    from torch.utils.data import DataLoader, TensorDataset

    from lightning_gpt.training.module import GPTModule
    from lightning_gpt.training.strategies import FSDP2Strategy

    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    config = GPTConfig(**args.sizes["fsdp"], dropout=0.0)
    T = config.block_size
    data = torch.randint(0, config.vocab_size, (8 * args.fsdp_steps, T + 1), generator=torch.Generator().manual_seed(0))
    loader = DataLoader(TensorDataset(data[:, :-1], data[:, 1:]), batch_size=8)
    losses: list[float] = []

    class Record(pl.Callback):
        def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
            losses.append(float(outputs["loss"]))

    strategy = FSDP2Strategy(param_dtype="bfloat16", reduce_dtype="float32")
    with tempfile.TemporaryDirectory() as root:
        trainer = pl.Trainer(
            accelerator=device.type,
            devices=1,
            strategy=strategy,
            max_steps=args.fsdp_steps,
            logger=False,
            enable_progress_bar=False,
            enable_checkpointing=False,
            enable_model_summary=False,
            default_root_dir=root,
            callbacks=[Record()],
        )
        module = GPTModule(config, learning_rate=1e-3)
        start = time.perf_counter()
        trainer.fit(module, loader)
        seconds = time.perf_counter() - start
    sharded = bool(getattr(module.model, "_lightning_gpt_sharded", False))
    finite = all(torch.isfinite(torch.tensor(losses)))
    return [
        {
            "part": "fsdp2",
            "what": f"GPTModule + FSDP2Strategy (bf16 params), 1 device, {args.fsdp_steps} steps",
            "result": f"sharded={sharded}, losses {losses[0]:.3f} -> {losses[-1]:.3f}, finite={finite}, "
            f"{seconds:.1f} s",
            "goal": "runs, finite losses",
        }
    ]


def part_decode(args: argparse.Namespace, device: torch.device) -> list[Row]:
    import transformers
    from transformers.utils import logging as hf_logging

    from lightning_gpt.generation import generate
    from lightning_gpt.io.convert import from_hf_gpt2

    hf_logging.set_verbosity_error()
    torch.manual_seed(0)
    spec = args.sizes["decode"]
    hf_config = transformers.GPT2Config(
        vocab_size=spec["vocab_size"],
        n_positions=spec["block_size"],
        n_embd=spec["n_embd"],
        n_layer=spec["n_layer"],
        n_head=spec["n_head"],
        bos_token_id=None,
        eos_token_id=None,
    )
    hf = transformers.GPT2LMHeadModel(hf_config).eval()
    ours = from_hf_gpt2(hf, attention="flash").eval().to(device=device, dtype=torch.bfloat16)
    hf = hf.to(device=device, dtype=torch.bfloat16)
    n = args.new_tokens
    rows = []
    for batch in (1, 8):
        prompt = torch.randint(0, spec["vocab_size"], (batch, 16), generator=torch.Generator().manual_seed(1))
        prompt = prompt.to(device)

        def run_hf(prompt: torch.Tensor = prompt) -> torch.Tensor:
            with torch.inference_mode():
                return hf.generate(prompt, max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=0)

        def run_ours(prompt: torch.Tensor = prompt) -> torch.Tensor:
            return generate(ours, prompt, max_new_tokens=n)

        same = torch.equal(run_hf(), run_ours())
        times: dict[str, list[float]] = {"hf": [], "ours": []}
        for r in range(args.repeat):
            for name in ("hf", "ours") if r % 2 == 0 else ("ours", "hf"):
                times[name].append(timed({"hf": run_hf, "ours": run_ours}[name], device, 1))
        tps = {k: batch * n / statistics.median(v) for k, v in times.items()}
        rows.append(
            {
                "part": "decode",
                "what": f"greedy bf16, batch {batch}, {n} new tokens, GPT-2 {spec['n_layer']}x{spec['n_embd']}",
                "result": f"ours {tps['ours']:,.0f} tok/s vs HF {tps['hf']:,.0f} tok/s = "
                f"{tps['ours'] / tps['hf']:.2f}x; same tokens: {'yes' if same else 'no'}",
                "goal": ">= 1.5x HF" if batch == 1 else "",
            }
        )
        rows.append(_decode_compiled(args, device, hf, ours, prompt, tps["hf"]))
    rows.append(_decode_speculative(args, device, ours))
    return rows


def _decode_compiled(args: argparse.Namespace, device: torch.device, hf: Any, ours: Any, prompt: Any, hf_tps: float):
    """Our compiled decode vs HF generate with its static cache and a compiled forward, one batch size."""
    import copy

    from lightning_gpt.generation import generate

    n, batch = args.new_tokens, prompt.size(0)
    backend = args.compile_backend
    row = {"part": "decode", "what": f"compiled (CUDA graphs), batch {batch}", "goal": ">= 3x HF" if batch == 1 else ""}

    def run_ours() -> torch.Tensor:
        return generate(ours, prompt, max_new_tokens=n, compile=True if backend == "inductor" else backend)

    start = time.perf_counter()
    out = run_ours()
    sync(device)
    compile_s = time.perf_counter() - start
    ours_tps = batch * n / timed(run_ours, device, args.repeat)
    result = f"ours {ours_tps:,.0f} tok/s (first call {compile_s:.0f} s) = {ours_tps / hf_tps:.2f}x HF eager"
    try:
        hf_static = copy.deepcopy(hf)
        mode = "reduce-overhead" if device.type == "cuda" else None
        hf_static.forward = torch.compile(hf_static.forward, mode=mode, fullgraph=True, backend=backend)

        def run_hf_static() -> torch.Tensor:
            with torch.inference_mode():
                return hf_static.generate(
                    prompt, max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=0,
                    cache_implementation="static",
                )  # fmt: skip

        start = time.perf_counter()
        hf_out = run_hf_static()
        sync(device)
        hf_compile_s = time.perf_counter() - start
        hf_static_tps = batch * n / timed(run_hf_static, device, args.repeat)
        same = "yes" if torch.equal(out, hf_out) else "no"
        result += (
            f"; HF static cache + compile {hf_static_tps:,.0f} tok/s (first call {hf_compile_s:.0f} s): "
            f"{ours_tps / hf_static_tps:.2f}x; same tokens: {same}"
        )
    except Exception as err:  # HF's compiled path varies by version: report, keep our row
        result += f"; HF static cache + compile FAILED: {type(err).__name__}: {str(err)[:120]}"
    row["result"] = result
    return row


def _decode_speculative(args: argparse.Namespace, device: torch.device, ours: Any) -> Row:
    """Speculative decoding at batch 1: a draft of the target's first two blocks (plus its embeddings and head)."""
    from lightning_gpt.generation import generate

    config = dataclasses.replace(ours.config, n_layer=2)
    draft = GPT(config).to(device=device, dtype=torch.bfloat16).eval()
    state = {
        k: v for k, v in ours.state_dict().items() if not k.startswith("transformer.h.") or k.split(".")[2] in "01"
    }
    draft.load_state_dict(state)
    n = args.new_tokens
    prompt = torch.randint(0, config.vocab_size, (1, 16), generator=torch.Generator().manual_seed(2)).to(device)
    alone = generate(ours, prompt, max_new_tokens=n)
    assisted = generate(ours, prompt, max_new_tokens=n, draft_model=draft, num_draft_tokens=4)
    t_alone = timed(lambda: generate(ours, prompt, max_new_tokens=n), device, args.repeat)
    t_spec = timed(lambda: generate(ours, prompt, max_new_tokens=n, draft_model=draft, num_draft_tokens=4), device,
                   args.repeat)  # fmt: skip
    return {
        "part": "decode",
        "what": f"speculative, batch 1, draft = the target's first 2 of {ours.config.n_layer} blocks, 4 drafts/round",
        "result": f"{n / t_spec:,.0f} tok/s vs target alone {n / t_alone:,.0f} tok/s = {t_alone / t_spec:.2f}x; "
        f"same tokens: {'yes' if torch.equal(alone, assisted) else 'no'} (untrained weights)",
        "goal": "same tokens",
    }


PARTS = {"train": part_train, "attention": part_attention, "fsdp2": part_fsdp2, "decode": part_decode}

FULL = {
    "train": dict(vocab_size=50304, block_size=1024, n_layer=12, n_head=12, n_embd=768),
    "train_batch": 16,
    "attention": dict(vocab_size=50304, n_layer=1, n_head=12, n_embd=768),
    "attention_T": [4096, 8192],
    "fsdp": dict(vocab_size=50304, block_size=1024, n_layer=12, n_head=12, n_embd=768),
    "decode": dict(vocab_size=50257, block_size=1024, n_layer=12, n_head=12, n_embd=768),
}
DRY = {
    "train": dict(vocab_size=128, block_size=32, n_layer=2, n_head=2, n_embd=32),
    "train_batch": 2,
    "attention": dict(vocab_size=128, n_layer=1, n_head=2, n_embd=32),
    "attention_T": [64, 128],
    "fsdp": dict(vocab_size=128, block_size=32, n_layer=2, n_head=2, n_embd=32),
    "decode": dict(vocab_size=128, block_size=256, n_layer=2, n_head=2, n_embd=32),
}


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true", help="tiny sizes on the CPU, seconds (what CI runs)")
    parser.add_argument("--parts", nargs="+", default=list(PARTS), choices=list(PARTS))
    parser.add_argument("--peak_tflops", type=float, default=989.0, help="the GPU's dense bf16 peak (H100/H200: 989)")
    parser.add_argument("--repeat", type=int, default=None, help="timed repetitions (default 10, dry run 2)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed training steps first (default 5, dry run 1)")
    parser.add_argument("--fsdp_steps", type=int, default=None, help="FSDP2 steps (default 5, dry run 2)")
    parser.add_argument("--new_tokens", type=int, default=None, help="decode length (default 128, dry run 8)")
    parser.add_argument("--out", type=Path, default=None, help="also write the table (markdown) here")
    args = parser.parse_args(argv)
    dry = args.dry_run
    args.sizes = DRY if dry else FULL
    args.repeat = args.repeat or (2 if dry else 10)
    args.warmup = args.warmup or (1 if dry else 5)
    args.fsdp_steps = args.fsdp_steps or (2 if dry else 5)
    args.new_tokens = args.new_tokens or (8 if dry else 128)
    args.compile_backend = "eager" if dry else "inductor"
    if dry:
        device = torch.device("cpu")
        torch.set_num_threads(1)
    elif torch.cuda.is_available():
        device = torch.device("cuda")
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    else:
        parser.error("no CUDA device: run with a GPU, or use --dry-run to check the script on the CPU")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    header = (
        f"device: {gpu}; torch {torch.__version__}; {'DRY RUN (tiny sizes, CPU)' if dry else 'full sizes'}; "
        f"peak bf16 {args.peak_tflops:.0f} TFLOP/s"
    )
    print(header, flush=True)
    rows: list[Row] = []
    start = time.perf_counter()
    for name in args.parts:
        t0 = time.perf_counter()
        try:
            new = PARTS[name](args, device)
        except Exception as err:  # noqa: BLE001 - one failing part must not hide the others' results
            traceback.print_exc()
            new = [{"part": name, "what": "FAILED", "result": f"{type(err).__name__}: {err}"[:300], "goal": ""}]
        for row in new:
            print(f"{row['part']}: {row['what']}: {row['result']}", flush=True)
        rows += new
        print(f"({name}: {time.perf_counter() - t0:.1f} s)", flush=True)
    lines = ["| part | what | result | goal |", "|---|---|---|---|"]
    lines += [f"| {r['part']} | {r['what']} | {r['result']} | {r['goal']} |" for r in rows]
    table = "\n".join(lines)
    report = f"{header}; total {time.perf_counter() - start:.0f} s\n\n{table}\n"
    print(report)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        command = "python benchmarks/gpu_check.py " + " ".join(argv if argv is not None else sys.argv[1:])
        args.out.write_text(f"# GPU check\n\nCommand: `{command.strip()}`\n\n{report}")
    failed = [r for r in rows if r["what"] == "FAILED"]
    if failed:
        raise SystemExit(f"{len(failed)} part(s) failed: {', '.join(r['part'] for r in failed)}")
    return report


if __name__ == "__main__":
    main()
