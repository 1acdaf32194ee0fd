"""Decoding speed: ``lightning_gpt.generation.generate`` against Hugging Face ``generate`` on the same weights.

Three measurements, all greedy, in one process:

1. **vs Hugging Face**: tokens/s for ``--new_tokens`` (256) new tokens at batch 1 and 8, our ``generate`` (``standard``
   and ``flash`` cores) and ``GPT2LMHeadModel.generate`` (its default ``sdpa`` attention) on the same random GPT-2
   weights (converted with ``from_hf_gpt2``). Runs interleave (HF, ours, HF, ours, ...) and the median of
   ``--rounds`` is reported; the outputs are checked to be equal token for token.
2. **cache vs no cache**: time to generate a sequence of ``--cache_len`` (512) tokens (16-token prompt) with
   ``use_cache=True`` and ``use_cache=False`` (which reruns the whole sequence every step).
3. **per-token time vs context length**: ``standard`` vs ``linear`` cores: ms per decoded token after a prompt of
   length L (``stream_generate``; the prefill and first token are not timed, the next N - 1 steps are), for L in
   ``--contexts``.

4. **roofline**: at batch 1 every weight is read once per token, so tokens/s <= bandwidth / weight bytes. The
   bandwidth is measured here (median of a large float32 matrix-vector product, ``--bw_size`` square), and our
   greedy decode (``--roof_new_tokens`` 128 new tokens, batch 1) is reported as a percentage of that bound, next to
   ``transformers`` ``generate`` on the same converted weights, for the ``tiny`` (2 layers, 128 wide, vocab 512) and
   ``small`` (6 layers, 384 wide, vocab 50257) configurations in float32 and bfloat16 (interleaved rounds, alternating
   who goes first, medians). Also: whether the bfloat16 greedy tokens equal the float32 ones.

5. **compiled** (``--only compiled``): the ``tiny`` and ``small`` configurations in float32, batch 1: HF ``generate``,
   ours eager and ours with ``compile=True`` (tokens/s, interleaved rounds, medians), the compilation time of the first
   compiled call (wall clock: inductor compiles in worker processes) reported apart, and the roofline share.

6. **layout** (``--only layout``): the decode-time weight layout (``decode_weights``) on and off in one process, on
   the ``small`` configuration: ms per one-token step and tokens/s of whole ``generate`` calls, eager and compiled
   (compiled at batch 1 no copy is taken: ``MatVecMode``).

7. **ablation** (``--only ablation``): the compiled batch-1 step on the ``small`` configuration with each of its
   speed-ups (``MatVecMode``, ``STEP_INDUCTOR_OPTIONS``) switched off alone, in one process, and the mat-vecs alone
   (compiled reductions, MKL on the copies and on the model's own weights, the roofline's probe).

8. **speculative** (``--only speculative``): a target (``--spec_target``, default 6x384) and a draft (2x128), both
   trained ``--spec_steps`` steps on ``--spec_data`` (tiny Shakespeare, characters) by a plain PyTorch loop here (the
   pair is cached in ``--spec_cache``), or loaded from checkpoints trained by ``lightning-gpt fit``
   (``--spec_target_ckpt`` / ``--spec_draft_ckpt``), then the target's greedy decode alone vs with the draft
   (``num_draft_tokens`` in ``--spec_k``): tokens/s, the acceptance rate, and whether the output is the same; and a
   chi-square check of sampled speculative output against the target's exact marginals (``--spec_check_samples``).

Prints markdown tables and writes them to ``<out>/decode_speed.md`` (``--only roofline``: ``<out>/decode_roofline.md``;
``--only compiled`` / ``layout`` / ``ablation`` / ``speculative``: ``<out>/decode_compiled.md`` / ``decode_layout.md``
/ ``decode_ablation.md`` / ``decode_speculative.md``).

Usage::

    python benchmarks/decode_speed.py --threads 1 --out benchmarks/results
"""

from __future__ import annotations

import argparse
import copy
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch

from lightning_gpt import GPT, GPTConfig
from lightning_gpt.generation import generate, stream_generate
from lightning_gpt.io.convert import from_hf_gpt2

# The clock: process CPU time by default. On a shared, overloaded machine wall time mostly measures waiting for a core;
# with one intra-op thread, CPU time is the work done (``--clock wall`` switches to wall-clock time).
CLOCK: Callable[[], float] = time.process_time


def timed(fn: Callable[[], object]) -> float:
    start = CLOCK()
    fn()
    return CLOCK() - start


def hf_model(args: argparse.Namespace):
    import transformers
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(
        vocab_size=args.vocab,
        n_positions=1024,
        n_embd=args.width,
        n_layer=args.layers,
        n_head=args.heads,
        bos_token_id=None,
        eos_token_id=None,
    )
    return transformers.GPT2LMHeadModel(cfg).eval()


def bench_vs_hf(args: argparse.Namespace) -> list[str]:
    hf = hf_model(args)
    ours = {kind: from_hf_gpt2(hf, attention=kind).eval() for kind in ("standard", "flash")}
    rows = []
    for batch in args.batches:
        torch.manual_seed(1)
        prompt = torch.randint(0, args.vocab, (batch, args.prompt_len))
        n = args.new_tokens

        def run_hf(prompt: torch.Tensor = prompt, n: int = n) -> torch.Tensor:
            with torch.inference_mode():
                return hf.generate(prompt, max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=0)

        runs: dict[str, Callable[[], torch.Tensor]] = {"hf": run_hf}
        for kind, model in ours.items():
            runs[kind] = lambda model=model, prompt=prompt, n=n: generate(model, prompt, max_new_tokens=n)
        outs = {name: fn() for name, fn in runs.items()}  # warm-up, and the equality check
        same = all(torch.equal(outs["hf"], out) for out in outs.values())
        times: dict[str, list[float]] = {name: [] for name in runs}
        for _ in range(args.rounds):
            for name, fn in runs.items():
                times[name].append(timed(fn))
        tps = {name: batch * n / statistics.median(t) for name, t in times.items()}
        rows.append(
            f"| {batch} | {n} | {tps['hf']:.0f} | {tps['standard']:.0f} | {tps['flash']:.0f} | "
            f"{tps['standard'] / tps['hf']:.2f}x | {tps['flash'] / tps['hf']:.2f}x | {'yes' if same else 'NO'} |"
        )
        print(rows[-1], flush=True)
    return rows


def small_model(attention: str, block_size: int, args: argparse.Namespace) -> GPT:
    torch.manual_seed(0)
    config = GPTConfig(
        vocab_size=args.small_vocab,
        block_size=block_size,
        n_layer=args.small_layers,
        n_head=args.small_heads,
        n_embd=args.small_width,
        attention=attention,
    )
    return GPT(config).eval()


def bench_cache(args: argparse.Namespace) -> list[str]:
    model = small_model("standard", args.cache_len, args)
    prompt = torch.randint(0, args.small_vocab, (1, 16))
    n = args.cache_len - 16
    cached = generate(model, prompt, max_new_tokens=n)
    uncached = generate(model, prompt, max_new_tokens=n, use_cache=False)
    t_cached = statistics.median(timed(lambda: generate(model, prompt, max_new_tokens=n)) for _ in range(3))
    t_uncached = timed(lambda: generate(model, prompt, max_new_tokens=n, use_cache=False))
    row = (
        f"| {args.cache_len} | {t_cached:.2f} | {t_uncached:.2f} | {t_uncached / t_cached:.1f}x | "
        f"{'yes' if torch.equal(cached, uncached) else 'NO'} |"
    )
    print(row, flush=True)
    return [row]


def bench_context(args: argparse.Namespace) -> list[str]:
    block = max(args.contexts) + args.context_steps + 1
    models = {kind: small_model(kind, block, args) for kind in ("standard", "linear")}
    rows = []
    per_token: dict[str, dict[int, float]] = {kind: {} for kind in models}
    for L in args.contexts:
        prompt = torch.randint(0, args.small_vocab, (1, L))
        for kind, model in models.items():
            samples = []
            for _ in range(args.context_rounds):
                steps = stream_generate(model, prompt, max_new_tokens=args.context_steps)
                next(steps)  # prefill + first token: not timed
                samples.append(timed(lambda steps=steps: [None for _ in steps]) / (args.context_steps - 1))
            per_token[kind][L] = 1000 * statistics.median(samples)
        rows.append(f"| {L} | {per_token['standard'][L]:.2f} | {per_token['linear'][L]:.2f} |")
        print(rows[-1], flush=True)
    first, last = min(args.contexts), max(args.contexts)
    growth = {k: v[last] / v[first] for k, v in per_token.items()}
    rows.append(f"| growth {first} -> {last} | {growth['standard']:.2f}x | {growth['linear']:.2f}x |")
    print(rows[-1], flush=True)
    return rows


PARTS = ["hf", "cache", "context", "roofline", "compiled", "layout", "ablation", "speculative"]

ROOF_CONFIGS = {
    "tiny": dict(n_layer=2, n_embd=128, n_head=4, vocab_size=512),
    "small": dict(n_layer=6, n_embd=384, n_head=6, vocab_size=50257),
}


def _random_hf_model(transformers, spec: dict, prompt_len: int, new_tokens: int):
    """A randomly initialized (seed 0) Hugging Face GPT-2 of ``spec``'s shape, in eval mode, and a seeded random prompt
    ``(1, prompt_len)``: the same pair for every part that compares with HF."""
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(
        vocab_size=spec["vocab_size"],
        n_positions=prompt_len + new_tokens,
        n_embd=spec["n_embd"],
        n_layer=spec["n_layer"],
        n_head=spec["n_head"],
        bos_token_id=None,
        eos_token_id=None,
    )
    model = transformers.GPT2LMHeadModel(cfg).eval()
    prompt = torch.randint(0, spec["vocab_size"], (1, prompt_len), generator=torch.Generator().manual_seed(1))
    return model, prompt


def measure_bandwidth(size: int, rounds: int = 9) -> float:
    """Bytes/s one ``torch.mv`` streams from a ``size x size`` float32 matrix (far larger than the caches)."""
    W = torch.randn(size, size)
    x = torch.randn(size)
    torch.mv(W, x)
    times = [timed(lambda: torch.mv(W, x)) for _ in range(rounds)]
    return W.numel() * W.element_size() / statistics.median(times)


def weight_bytes(model: GPT) -> int:
    """Bytes read per decoded token at batch 1: every parameter once (a tied head once), the position table not."""
    n = sum(p.numel() * p.element_size() for p in model.parameters())
    wpe = model.transformer.wpe.weight
    return n - wpe.numel() * wpe.element_size()


def bench_roofline(args: argparse.Namespace) -> list[str]:
    import transformers
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    bandwidth = measure_bandwidth(args.bw_size)
    rows = [f"Measured bandwidth (float32 mat-vec, {args.bw_size}x{args.bw_size}): {bandwidth / 1e9:.1f} GB/s.", ""]
    rows += [
        "| config | dtype | weight MB | roofline tok/s | HF tok/s | ours tok/s | ours / HF | ours % of roofline "
        "| same tokens as HF | same tokens as fp32 |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    print("\n".join(rows), flush=True)
    n = args.roof_new_tokens
    for name in args.roof_configs:
        spec = ROOF_CONFIGS[name]
        hf32, prompt = _random_hf_model(transformers, spec, args.prompt_len, n)
        fp32_tokens = None
        tps_by_dtype = {}
        for dtype_name in args.roof_dtypes:
            dtype = getattr(torch, dtype_name)
            hf = copy.deepcopy(hf32).to(dtype)
            ours = from_hf_gpt2(hf32, attention="standard").eval().to(dtype)

            def run_hf(hf=hf, prompt=prompt) -> torch.Tensor:
                with torch.inference_mode():
                    return hf.generate(prompt, max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=0)

            def run_ours(ours=ours, prompt=prompt) -> torch.Tensor:
                return generate(ours, prompt, max_new_tokens=n)

            runs = {"hf": run_hf, "ours": run_ours}
            outs = {k: fn() for k, fn in runs.items()}  # warm-up and the equality checks
            if fp32_tokens is None:
                fp32_tokens = outs["ours"]
            times: dict[str, list[float]] = {k: [] for k in runs}
            for r in range(args.rounds):
                for k in list(runs) if r % 2 == 0 else list(runs)[::-1]:
                    times[k].append(timed(runs[k]))
            tps = {k: n / statistics.median(t) for k, t in times.items()}
            tps_by_dtype[dtype_name] = tps["ours"]
            nbytes = weight_bytes(ours)
            roof = bandwidth / nbytes
            same_fp32 = (outs["ours"][0, args.prompt_len :] == fp32_tokens[0, args.prompt_len :]).float().mean()
            first_diff = (outs["ours"][0] != fp32_tokens[0]).nonzero()
            diff_note = (
                "yes" if first_diff.numel() == 0 else f"no: first at new token {int(first_diff[0]) - args.prompt_len}"
            )
            rows.append(
                f"| {name} | {dtype_name} | {nbytes / 1e6:.1f} | {roof:.0f} | {tps['hf']:.0f} | {tps['ours']:.0f} | "
                f"{tps['ours'] / tps['hf']:.2f}x | {100 * tps['ours'] / roof:.0f}% | "
                f"{'yes' if torch.equal(outs['hf'], outs['ours']) else 'NO'} | "
                f"{diff_note} ({100 * float(same_fp32):.0f}%) |"
            )
            print(rows[-1], flush=True)
        if "float32" in tps_by_dtype and "bfloat16" in tps_by_dtype:
            rows.append(
                f"| {name} | bf16 / fp32 | | | | {tps_by_dtype['bfloat16'] / tps_by_dtype['float32']:.2f}x | | | | |"
            )
            print(rows[-1], flush=True)
    return rows


def bench_compiled(args: argparse.Namespace) -> list[str]:
    import transformers
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    bandwidth = measure_bandwidth(args.bw_size)
    rows = [
        f"Measured bandwidth (float32 mat-vec, {args.bw_size}x{args.bw_size}): {bandwidth / 1e9:.1f} GB/s.",
        "",
        "| config | HF tok/s | ours eager tok/s | ours compiled tok/s | eager / HF | compiled / HF | compiled % of "
        "roofline | first compiled call (wall s) | same tokens |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    print("\n".join(rows), flush=True)
    n = args.roof_new_tokens
    for name in args.roof_configs:
        spec = ROOF_CONFIGS[name]
        hf, prompt = _random_hf_model(transformers, spec, args.prompt_len, n)
        ours = from_hf_gpt2(hf, attention="standard").eval()

        def run_hf(hf=hf, prompt=prompt) -> torch.Tensor:
            with torch.inference_mode():
                return hf.generate(prompt, max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=0)

        def run_eager(ours=ours, prompt=prompt) -> torch.Tensor:
            return generate(ours, prompt, max_new_tokens=n)

        def run_compiled(ours=ours, prompt=prompt) -> torch.Tensor:
            return generate(ours, prompt, max_new_tokens=n, compile=True)

        start = time.perf_counter()
        first = run_compiled()  # compiles the prefill and the one-token step
        compile_s = time.perf_counter() - start
        runs = {"hf": run_hf, "eager": run_eager, "compiled": run_compiled}
        outs = {k: fn() for k, fn in runs.items()}
        same = all(torch.equal(outs["hf"], o) for o in outs.values()) and torch.equal(first, outs["hf"])
        times: dict[str, list[float]] = {k: [] for k in runs}
        for r in range(args.rounds):
            for k in list(runs) if r % 2 == 0 else list(runs)[::-1]:
                times[k].append(timed(runs[k]))
        tps = {k: n / statistics.median(t) for k, t in times.items()}
        roof = bandwidth / weight_bytes(ours)
        rows.append(
            f"| {name} | {tps['hf']:.0f} | {tps['eager']:.0f} | {tps['compiled']:.0f} | "
            f"{tps['eager'] / tps['hf']:.2f}x | {tps['compiled'] / tps['hf']:.2f}x | "
            f"{100 * tps['compiled'] / roof:.0f}% | {compile_s:.0f} | {'yes' if same else 'NO'} |"
        )
        print(rows[-1], flush=True)
    return rows


def bench_layout(args: argparse.Namespace) -> list[str]:
    """The decode-time weight layout (``decode_weights``) on and off in one process, on the ``small`` configuration
    (HF-converted random weights, batch 1, greedy): ms per one-token step (127 steps after the prefill) and tokens/s
    of whole ``generate`` calls (prefill and the layout's copy included), eager and compiled; interleaved rounds,
    alternating which goes first, medians. "Off" runs the model's own ``(out, in)`` weights. A compiled generation at
    batch 1 takes no copy either way (``layout.MatVecMode``), so its rows compare the same code: both are what
    ``generate(..., compile=True)`` runs."""
    import transformers
    from transformers.utils import logging as hf_logging

    import lightning_gpt.generation.layout as layout
    import lightning_gpt.generation.sampling as sampling

    hf_logging.set_verbosity_error()
    n = args.roof_new_tokens
    hf, prompt = _random_hf_model(transformers, ROOF_CONFIGS["small"], args.prompt_len, n)
    model = from_hf_gpt2(hf, attention="standard").eval()
    on = layout.DECODE_LAYOUT_MIN_BYTES

    def steps(compile: bool) -> float:
        with torch.inference_mode():
            state = sampling.DecodeState(model, prompt, None, n, True, compile)
            logits = state.prefill()
            start = CLOCK()
            for _ in range(n - 1):
                logits = state.decode_one_token(logits.argmax(-1))
            return (CLOCK() - start) / (n - 1)

    def whole(compile: bool) -> float:
        return timed(lambda: generate(model, prompt, max_new_tokens=n, compile=compile))

    outs = {}
    for layout_on in (True, False):
        layout.DECODE_LAYOUT_MIN_BYTES = on if layout_on else 1 << 62
        outs[layout_on] = [generate(model, prompt, max_new_tokens=n, compile=c) for c in (False, True)]  # warm-up
    times: dict[tuple[str, bool, bool], list[float]] = {}
    for r in range(args.rounds):
        for layout_on in (True, False) if r % 2 == 0 else (False, True):
            layout.DECODE_LAYOUT_MIN_BYTES = on if layout_on else 1 << 62
            for compile in (False, True):
                times.setdefault(("step", layout_on, compile), []).append(steps(compile))
                times.setdefault(("generate", layout_on, compile), []).append(whole(compile))
    layout.DECODE_LAYOUT_MIN_BYTES = on
    same = all(torch.equal(a, b) for a, b in zip(outs[True] + outs[False], outs[True][:1] * 4))
    med = {k: statistics.median(v) for k, v in times.items()}
    rows = [
        "| mode | step ms/token, layout on | off | on / off speed | generate tok/s, layout on | off | on / off |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for compile in (False, True):
        s_on, s_off = med[("step", True, compile)], med[("step", False, compile)]
        g_on, g_off = n / med[("generate", True, compile)], n / med[("generate", False, compile)]
        rows.append(
            f"| {'compiled' if compile else 'eager'} | {1e3 * s_on:.2f} | {1e3 * s_off:.2f} | {s_off / s_on:.2f}x | "
            f"{g_on:.0f} | {g_off:.0f} | {g_on / g_off:.2f}x |"
        )
    rows += ["", f"Same tokens in all four modes: {'yes' if same else 'NO'}."]
    print("\n".join(rows), flush=True)
    return rows


def bench_ablation(args: argparse.Namespace) -> list[str]:
    """The compiled batch-1 step of this version with each of its speed-ups switched off alone, in one process, on the
    ``small`` configuration (HF-converted random weights, greedy, 128 new tokens): tokens/s of whole ``generate`` calls
    (CPU time; interleaved rounds, alternating the order; medians), the first call's wall time (compilation), and
    whether every variant gives the same tokens. The switches: ``sampling.DECODE_MATVEC`` (off: the generation's
    ``(in, out)`` weight copy, the previous version's path) and ``step.STEP_INDUCTOR_OPTIONS`` (off: inductor's default
    fusion; compiled from copies of the step functions, so the variants do not share dynamo's cache). Then the
    mat-vecs alone (``_matvec_streams``)."""
    import types

    import transformers
    from transformers.utils import logging as hf_logging

    import lightning_gpt.generation.sampling as sampling
    import lightning_gpt.generation.step as step

    hf_logging.set_verbosity_error()
    n = args.roof_new_tokens
    hf, prompt = _random_hf_model(transformers, ROOF_CONFIGS["small"], args.prompt_len, n)
    model = from_hf_gpt2(hf, attention="standard").eval()
    key = "cpu:inductor:True"

    def fresh(fn: Callable, tag: str) -> Callable:  # the same function with its own code object (own dynamo cache)
        return types.FunctionType(fn.__code__.replace(co_name=f"{fn.__name__}_{tag}"), fn.__globals__, fn.__name__)

    default_fusion = (
        torch.compile(fresh(step._prefill_logits, "ablation"), dynamic=True),
        torch.compile(fresh(step._decode_logits_matvec, "ablation"), fullgraph=True),
        torch.compile(fresh(step._decode_next_matvec, "ablation"), fullgraph=True),
    )
    variants = {
        "this version (all on)": dict(matvec=True, fns=None),
        "without MatVecMode: the (in, out) weight copy": dict(matvec=False, fns=None),
        "without STEP_INDUCTOR_OPTIONS (default fusion)": dict(matvec=True, fns=default_fusion),
    }
    own = sampling._COMPILED.get(key)

    def use(v: dict) -> None:
        sampling.DECODE_MATVEC = v["matvec"]
        if v["fns"] is not None:
            sampling._COMPILED[key] = v["fns"]
        elif own is not None:
            sampling._COMPILED[key] = own
        else:
            sampling._COMPILED.pop(key, None)

    def run() -> torch.Tensor:
        return generate(model, prompt, max_new_tokens=n, compile=True)

    outs, first = {}, {}
    for name, v in variants.items():
        use(v)
        start = time.perf_counter()
        outs[name] = run()
        first[name] = time.perf_counter() - start
        if v["fns"] is None and v["matvec"]:
            own = sampling._COMPILED[key]
    times: dict[str, list[float]] = {name: [] for name in variants}
    for r in range(args.rounds):
        for name in list(variants) if r % 2 == 0 else list(variants)[::-1]:
            use(variants[name])
            times[name].append(timed(run))
    use(variants["this version (all on)"])
    tps = {name: n / statistics.median(t) for name, t in times.items()}
    streams = _matvec_streams(model, args)
    base = tps["this version (all on)"]
    same = all(torch.equal(o, outs["this version (all on)"]) for o in outs.values())
    rows = [
        "| compiled step | tok/s | ms/token | vs all on | first call (wall s) |",
        "|---|---:|---:|---:|---:|",
        *[
            f"| {name} | {tps[name]:.0f} | {1e3 / tps[name]:.2f} | {tps[name] / base:.2f}x | {first[name]:.0f} |"
            for name in variants
        ],
        "",
        f"Same tokens in every variant: {'yes' if same else 'NO'}.",
        "",
        "The mat-vecs alone, one pass over all the model's linear weights "
        f"({sum(w.numel() * 4 for w in _linear_weights(model)) / 1e6:.1f} MB; x fixed; median of 9, CPU time):",
        "",
        "| kernel | ms per pass | GB/s |",
        "|---|---:|---:|",
        *[f"| {name} | {1e3 * sec:.2f} | {gbs:.1f} |" for name, (sec, gbs) in streams.items()],
    ]
    print("\n".join(rows), flush=True)
    return rows


def _linear_weights(model: torch.nn.Module) -> list[torch.Tensor]:
    return [m.weight.detach() for m in model.modules() if isinstance(m, torch.nn.Linear)]


def _matvec_streams(model: torch.nn.Module, args: argparse.Namespace) -> dict[str, tuple[float, float]]:
    """Seconds and GB/s of one pass of one-row mat-vecs over every linear weight of ``model``: compiled under
    ``MatVecMode`` (the model's own ``(out, in)`` weights), MKL ``x @ W`` over ``(in, out)`` copies, MKL
    ``F.linear`` over the own weights; and the roofline's probe (``measure_bandwidth``)."""
    import torch.nn.functional as F

    from lightning_gpt.generation.layout import MatVecMode

    weights = _linear_weights(model)
    nbytes = sum(w.numel() * w.element_size() for w in weights)
    xs = {w.size(1): torch.randn(1, 1, w.size(1)) for w in weights}

    def reductions(xs: dict[int, torch.Tensor]) -> list[torch.Tensor]:
        with MatVecMode():
            return [F.linear(xs[w.size(1)], w) for w in weights]

    compiled = torch.compile(reductions, fullgraph=True)
    copies = [w.t().contiguous() for w in weights]
    runs = {
        "compiled reductions (MatVecMode), own (out, in) weights": lambda: compiled(xs),
        "MKL x @ W, (in, out) copies": lambda: [xs[w.size(0)] @ w for w in copies],
        "MKL F.linear, own (out, in) weights": lambda: [F.linear(xs[w.size(1)], w) for w in weights],
    }
    times: dict[str, list[float]] = {name: [] for name in runs}
    with torch.inference_mode():
        for fn in runs.values():
            fn()
        for r in range(9):
            for name in list(runs) if r % 2 == 0 else list(runs)[::-1]:
                times[name].append(timed(runs[name]))
    out = {name: (statistics.median(t), nbytes / statistics.median(t) / 1e9) for name, t in times.items()}
    bandwidth = measure_bandwidth(args.bw_size)
    out[f"the roofline's probe: torch.mv, {args.bw_size} x {args.bw_size}"] = (
        args.bw_size**2 * 4 / bandwidth,
        bandwidth / 1e9,
    )
    return out


def _train_char(model: GPT, data: torch.Tensor, steps: int, lr: float, batch: int, seed: int) -> float:
    """A plain AdamW loop (warm-up 50 steps, cosine to lr/10) on random windows of ``data``; returns the last loss."""
    import math

    g = torch.Generator().manual_seed(seed)
    T = model.config.block_size
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.99), weight_decay=0.1)
    model.train()
    loss = torch.tensor(float("nan"))
    for step in range(steps):
        warm = min(1.0, (step + 1) / 50)
        cos = 0.1 + 0.45 * (1 + math.cos(math.pi * step / max(1, steps)))
        for group in opt.param_groups:
            group["lr"] = lr * warm * cos
        starts = torch.randint(0, data.numel() - T - 1, (batch,), generator=g)
        x = torch.stack([data[i : i + T] for i in starts.tolist()])
        y = torch.stack([data[i + 1 : i + T + 1] for i in starts.tolist()])
        _, loss = model(x, targets=y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    model.eval()
    return loss.item()


def chi_square_p(counts: torch.Tensor, probs: torch.Tensor) -> float:
    """p-value of Pearson's chi-square goodness-of-fit test of ``counts`` against ``probs`` (cells with an expected
    count below 5 pooled into one); ``tests/generation/test_speculative.py`` uses this one too."""
    n = counts.sum()
    expected = probs.double() * n
    big = expected >= 5
    obs = torch.cat([counts[big].double(), counts[~big].double().sum().view(1)])
    exp = torch.cat([expected[big], expected[~big].sum().view(1)])
    keep = exp > 0
    stat = ((obs[keep] - exp[keep]) ** 2 / exp[keep]).sum()
    df = int(keep.sum()) - 1
    return float(torch.special.gammaincc(torch.tensor(df / 2.0, dtype=torch.float64), stat / 2))


def _spec_pair(args: argparse.Namespace, block: int) -> tuple[GPT, GPT, torch.Tensor, int, list[str]]:
    """``(target, draft, val_ids, vocab, notes)``: the pair loaded from ``--spec_target_ckpt`` / ``--spec_draft_ckpt``
    (trained by ``lightning-gpt fit``; the text encoded with the target's tokenizer), or trained here by
    ``_train_char``; ``val_ids``: the last 10% of the text."""
    text = Path(args.spec_data).read_text(encoding="utf-8")
    notes: list[str] = []
    if args.spec_target_ckpt:
        from lightning_gpt.io.checkpoint import load_checkpoint

        target, tokenizer = load_checkpoint(args.spec_target_ckpt)
        draft, draft_tokenizer = load_checkpoint(args.spec_draft_ckpt)
        val_text = text[int(0.9 * len(text)) :]
        if tokenizer is None or draft_tokenizer is None:
            raise SystemExit("--spec_target_ckpt / --spec_draft_ckpt: both checkpoints must carry their tokenizer.")
        val = torch.tensor(tokenizer.encode(val_text), dtype=torch.long)
        if not torch.equal(val, torch.tensor(draft_tokenizer.encode(val_text), dtype=torch.long)):
            raise SystemExit("The target's and the draft's tokenizers encode the text differently.")
        for role, model, path in (("target", target, args.spec_target_ckpt), ("draft", draft, args.spec_draft_ckpt)):
            c = model.config
            notes.append(f"{role} {c.n_layer}x{c.n_embd} (block {c.block_size}): `{path}`")
        return target.eval(), draft.eval(), val, int(target.config.vocab_size), notes
    chars = sorted(set(text))
    data = torch.tensor([chars.index(c) for c in text], dtype=torch.long)
    train = data[: int(0.9 * data.numel())]
    shapes = {"target": args.spec_target, "draft": args.spec_draft}
    models: dict[str, GPT] = {}
    for role, (layers, width, heads) in shapes.items():
        config = GPTConfig(
            vocab_size=len(chars), block_size=block, n_layer=layers, n_head=heads, n_embd=width, dropout=0.0,
            bias=False, attention="flash",
        )  # fmt: skip
        path = Path(args.spec_cache) / f"{role}_{layers}x{width}_{args.spec_steps}_{block}.pt"
        torch.manual_seed(0)
        model = GPT(config)
        if path.exists():
            model.load_state_dict(torch.load(path, weights_only=True))
        else:
            start = time.perf_counter()
            lr = 1e-3 if role == "target" else 4e-3
            loss = _train_char(model, train, args.spec_steps, lr, args.spec_batch, seed=1)
            wall = time.perf_counter() - start
            notes.append(f"{role} {layers}x{width}: {args.spec_steps} steps in {wall:.0f} s wall, last training loss "
                         f"{loss:.2f}")  # fmt: skip
            path.parent.mkdir(parents=True, exist_ok=True)
            torch.save(model.state_dict(), path)
        models[role] = model.eval()
    return models["target"], models["draft"], data[int(0.9 * data.numel()) :], len(chars), notes


def spec_distribution_check(
    target: GPT, draft: GPT, prompt: torch.Tensor, vocab: int, temperature: float, samples: int
) -> list[str]:
    """Sampled speculative decoding against the target's exact distribution: ``samples`` generations of 3 new tokens
    with 2 drafts (new tokens 1 and 2 are drafted and checked in one round); the counts of new token 1 and of new token
    2 against their exact marginals under the target at ``temperature`` (token 2's summed over token 1), Pearson's
    chi-square test (``chi_square_p``)."""
    with torch.inference_mode():
        logits = target(prompt)[0, -1, :vocab].float() / temperature
        p1 = logits.softmax(-1)  # (V,)
        seq2 = torch.cat([prompt.expand(vocab, -1), torch.arange(vocab)[:, None]], dim=1)  # (V, T0 + 1)
        p2 = (p1[:, None] * (target(seq2)[:, -1, :vocab].float() / temperature).softmax(-1)).sum(0)  # (V,)
    counts = torch.zeros(2, vocab)
    g = torch.Generator().manual_seed(0)
    for _ in range(samples):
        out = generate(target, prompt, max_new_tokens=3, do_sample=True, temperature=temperature, draft_model=draft,
                       num_draft_tokens=2, generator=g)  # fmt: skip
        new = out[0, prompt.size(1) :]
        counts[0, int(new[0])] += 1
        counts[1, int(new[1])] += 1
    rows = []
    for i, probs in enumerate((p1, p2)):
        p = chi_square_p(counts[i], probs)
        top = int(probs.argmax())
        rows.append(
            f"| new token {i + 1} | {samples} | {100 * float(probs.max()):.1f}% | "
            f"{100 * float(counts[i, top]) / samples:.1f}% | {p:.3f} | {'yes' if p > 1e-3 else 'NO'} |"
        )
    return rows


def bench_speculative(args: argparse.Namespace) -> list[str]:
    from lightning_gpt.generation.config import GenerationConfig
    from lightning_gpt.generation.sampling import DecodeState
    from lightning_gpt.generation.speculative import speculative_steps
    from lightning_gpt.generation.stopping import StopCriteria

    block = args.prompt_len + args.roof_new_tokens
    target, draft, val, vocab, notes = _spec_pair(args, block)
    n = args.roof_new_tokens
    prompts = [val[i * 997 : i * 997 + args.prompt_len][None] for i in range(args.spec_prompts)]

    modes = {"greedy": GenerationConfig(max_new_tokens=n)}
    if args.spec_temperature > 0:
        modes[f"sampled T={args.spec_temperature}"] = GenerationConfig(
            max_new_tokens=n, do_sample=True, temperature=args.spec_temperature
        )

    def run_alone(config: GenerationConfig) -> list[torch.Tensor]:
        g = torch.Generator().manual_seed(0)
        return [generate(target, p, config, generator=g, compile=args.spec_compile) for p in prompts]

    def run_spec(config: GenerationConfig, k: int) -> tuple[list[torch.Tensor], float]:
        outs, drafted, accepted = [], 0, 0
        config = GenerationConfig.fold(config, num_draft_tokens=k)
        g = torch.Generator().manual_seed(0)
        with torch.inference_mode():
            for p in prompts:
                t_state = DecodeState(target, p, None, n, compile=args.spec_compile, verify=k + 1)
                d_state = DecodeState(draft, p, None, n, compile=args.spec_compile)
                reasons, lengths = torch.zeros(1, dtype=torch.long), torch.full((1,), n)
                stop = StopCriteria([], None, None, vocab)
                for _ in speculative_steps(t_state, d_state, config, max_new_tokens=n, stop=stop, generator=g,
                                           reasons=reasons, lengths=lengths):  # fmt: skip
                    pass
                outs.append(t_state.tokens[:, : t_state.length].clone())
                drafted += t_state.drafted
                accepted += t_state.accepted
        return outs, accepted / max(1, drafted)

    if args.spec_target_ckpt:
        pair = f"Target {_shape(target)}, draft {_shape(draft)}, loaded from checkpoints (below)"
    else:
        pair = (
            f"Target {_shape(target)}, draft {_shape(draft)}, both trained {args.spec_steps} steps (batch "
            f"{args.spec_batch} x {block} characters) here"
        )
    rows = [
        f"{pair}, on {Path(args.spec_data).name}; {len(prompts)} prompts of {args.prompt_len} characters from the "
        f"last 10% of the text, {n} new tokens each; {'compiled' if args.spec_compile else 'eager'}; median of "
        f"{args.rounds} interleaved rounds. Sampled rows: the "
        "same seed, so not the same tokens as the target alone (the distribution is the target's: tests/generation/"
        "test_speculative.py).",
        "",
        *[f"- {note}" for note in notes],
        "",
        "| decode | tok/s | speed-up vs target alone | acceptance rate | same tokens as target alone |",
        "|---|---:|---:|---:|---|",
    ]
    print("\n".join(rows), flush=True)
    for mode, config in modes.items():
        reference = run_alone(config)
        times: dict[str, list[float]] = {"alone": []}
        rates = {}
        for k in args.spec_k:
            outs, rate = run_spec(config, k)  # warm-up and the check
            times[f"k={k}"] = []
            rates[k] = (rate, all(torch.equal(a, b) for a, b in zip(outs, reference)))
        for r in range(args.rounds):
            for name in list(times) if r % 2 == 0 else list(times)[::-1]:
                if name == "alone":
                    times[name].append(timed(lambda config=config: run_alone(config)))
                else:
                    k = int(name[2:])
                    times[name].append(timed(lambda config=config, k=k: run_spec(config, k)))
        tps = {name: n * len(prompts) / statistics.median(t) for name, t in times.items()}
        rows.append(f"| {mode}: target alone | {tps['alone']:.0f} | 1.00x | | |")
        print(rows[-1], flush=True)
        for k in args.spec_k:
            rate, same = rates[k]
            rows.append(
                f"| {mode}: with draft, num_draft_tokens={k} | {tps[f'k={k}']:.0f} | "
                f"{tps[f'k={k}'] / tps['alone']:.2f}x | {100 * rate:.0f}% | {'yes' if same else 'no'} |"
            )
            print(rows[-1], flush=True)
    if args.spec_temperature > 0 and args.spec_check_samples > 0:
        rows += [
            "",
            f"Sampled output against the target's distribution (T={args.spec_temperature}, first prompt; "
            f"{args.spec_check_samples} generations of 3 new tokens with 2 drafts, so new tokens 1 and 2 are drafted "
            "and checked in one round; exact marginals enumerated from the target; Pearson's chi-square "
            "goodness-of-fit test, cells with an expected count below 5 pooled; passes at p > 0.001):",
            "",
            "| token | samples | target's top-token probability | observed top-token share | chi-square p | passes |",
            "|---|---:|---:|---:|---:|---|",
        ]
        rows += spec_distribution_check(
            target, draft, prompts[0], vocab, args.spec_temperature, args.spec_check_samples
        )
        print("\n".join(rows[-5:]), flush=True)
    return rows


def _shape(model: GPT) -> str:
    return f"{model.config.n_layer}x{model.config.n_embd}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--width", type=int, default=384)
    parser.add_argument("--heads", type=int, default=6)
    parser.add_argument("--vocab", type=int, default=50257)
    parser.add_argument("--prompt_len", type=int, default=16)
    parser.add_argument("--new_tokens", type=int, default=256)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--cache_len", type=int, default=512)
    parser.add_argument("--contexts", type=int, nargs="+", default=[128, 512, 1024, 2048, 4096])
    parser.add_argument("--context_steps", type=int, default=33)
    parser.add_argument("--context_rounds", type=int, default=3)
    parser.add_argument("--small_layers", type=int, default=4)
    parser.add_argument("--small_width", type=int, default=256)
    parser.add_argument("--small_heads", type=int, default=4)
    parser.add_argument("--small_vocab", type=int, default=4096)
    parser.add_argument("--clock", choices=["cpu", "wall"], default="cpu", help="process CPU time or wall time")
    parser.add_argument("--skip", nargs="*", default=[], choices=PARTS)
    parser.add_argument("--only", default=None, choices=PARTS, help="run one part")
    parser.add_argument("--roof_configs", nargs="+", default=["tiny", "small"], choices=sorted(ROOF_CONFIGS))
    parser.add_argument("--roof_dtypes", nargs="+", default=["float32", "bfloat16"])
    parser.add_argument("--roof_new_tokens", type=int, default=128)
    parser.add_argument("--bw_size", type=int, default=8192, help="side of the bandwidth-probe matrix")
    parser.add_argument("--spec_data", default="../shared/data/tinyshakespeare.txt")
    parser.add_argument("--spec_steps", type=int, default=2000, help="training steps of each model of the pair")
    parser.add_argument("--spec_target", type=int, nargs=3, default=[6, 384, 6], help="layers width heads")
    parser.add_argument("--spec_draft", type=int, nargs=3, default=[2, 128, 4], help="layers width heads")
    parser.add_argument("--spec_k", type=int, nargs="+", default=[2, 4, 6])
    parser.add_argument("--spec_prompts", type=int, default=4)
    parser.add_argument("--spec_temperature", type=float, default=0.8, help="also sampled rows (0: greedy only)")
    parser.add_argument("--spec_batch", type=int, default=12, help="training batch (sequences of prompt + new tokens)")
    parser.add_argument("--spec_cache", default="/tmp/lightning_gpt_spec_pair")
    parser.add_argument("--spec_target_ckpt", default=None, help="target checkpoint (run folder); else trained here")
    parser.add_argument("--spec_draft_ckpt", default=None, help="draft checkpoint (with --spec_target_ckpt)")
    parser.add_argument("--spec_compile", action="store_true", help="speculative part: target and draft compiled")
    parser.add_argument("--spec_check_samples", type=int, default=2000, help="sampled-distribution check (0: skip)")
    parser.add_argument("--out", default=None, help="directory for decode_speed.md")
    args = parser.parse_args()
    if args.only:
        args.skip = [part for part in PARTS if part != args.only]
    else:
        args.skip = list(args.skip) + [
            "compiled",
            "layout",
            "ablation",
            "speculative",
        ]  # minutes each (compiling, training): with --only
    if args.threads:
        torch.set_num_threads(args.threads)
    global CLOCK
    CLOCK = time.process_time if args.clock == "cpu" else time.perf_counter
    command = "python benchmarks/decode_speed.py " + " ".join(sys.argv[1:])
    device = (
        f"cpu ({platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"{platform.processor() or 'unknown processor'}); clock: {args.clock} time"
    )
    lines = ["# Decoding speed", "", f"Command: `{command}`", "", f"Device: {device}.", ""]
    if "hf" not in args.skip:
        lines += [
            f"## vs Hugging Face `generate` (greedy, {args.layers} layers, {args.width} wide, {args.heads} heads, "
            f"vocab {args.vocab}; prompt {args.prompt_len} tokens; median of {args.rounds} interleaved rounds)",
            "",
            "| batch | new tokens | HF tok/s | ours standard tok/s | ours flash tok/s | standard / HF | flash / HF "
            "| same tokens |",
            "|---:|---:|---:|---:|---:|---:|---:|---|",
        ]
        print("\n".join(lines[-4:]), flush=True)
        lines += bench_vs_hf(args) + [""]
    small = f"{args.small_layers} layers, {args.small_width} wide, {args.small_heads} heads, vocab {args.small_vocab}"
    if "cache" not in args.skip:
        lines += [
            f"## KV cache vs no cache (standard attention, {small}; batch 1, 16-token prompt)",
            "",
            "| total tokens | cached s | uncached s | speedup | same tokens |",
            "|---:|---:|---:|---:|---|",
        ]
        print("\n".join(lines[-4:]), flush=True)
        lines += bench_cache(args) + [""]
    if "context" not in args.skip:
        lines += [
            f"## Per-token decode time vs context length ({small}; batch 1; ms/token over "
            f"{args.context_steps - 1} steps)",
            "",
            "| context L | standard ms/token | linear ms/token |",
            "|---:|---:|---:|",
        ]
        print("\n".join(lines[-4:]), flush=True)
        lines += bench_context(args) + [""]
    if "roofline" not in args.skip:
        lines += [
            f"## Roofline: greedy batch 1, {args.roof_new_tokens} new tokens after a {args.prompt_len}-token prompt; "
            f"ours vs `transformers` `generate` on the same converted weights (median of {args.rounds} interleaved "
            "rounds)",
            "",
        ]
        lines += bench_roofline(args) + [""]
    if "compiled" not in args.skip:
        lines += [
            f"## Compiled decode (`generate(..., compile=True)`): greedy batch 1, {args.roof_new_tokens} new tokens "
            f"after a {args.prompt_len}-token prompt, float32; median of {args.rounds} interleaved rounds",
            "",
        ]
        lines += bench_compiled(args) + [""]
    if "layout" not in args.skip:
        lines += [
            "## Decode-time weight layout (`decode_weights`) on and off: small (6 x 384, vocab 50257), greedy "
            f"batch 1, {args.roof_new_tokens} new tokens after a {args.prompt_len}-token prompt, float32; median of "
            f"{args.rounds} interleaved rounds",
            "",
        ]
        lines += bench_layout(args) + [""]
    if "ablation" not in args.skip:
        lines += [
            "## The compiled batch-1 step with each speed-up switched off alone: small (6 x 384, vocab 50257), greedy "
            f"batch 1, {args.roof_new_tokens} new tokens after a {args.prompt_len}-token prompt, float32; median of "
            f"{args.rounds} interleaved rounds",
            "",
        ]
        lines += bench_ablation(args) + [""]
    if "speculative" not in args.skip:
        lines += ["## Speculative decoding (`generate(..., draft_model=draft)`)", ""]
        lines += bench_speculative(args) + [""]
    try:
        load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        load = "n/a"
    lines += [f"Load average at the end: {load}.", ""]
    print(lines[-2])
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        name = (
            f"decode_{args.only}.md"
            if args.only in ("roofline", "compiled", "layout", "ablation", "speculative")
            else "decode_speed.md"
        )
        (out / name).write_text("\n".join(lines), encoding="utf-8")
        print(f"wrote {out / name}")


if __name__ == "__main__":
    main()
