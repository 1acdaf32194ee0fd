"""Training step time: lightning-gpt (GPTModule + Trainer) vs a plain PyTorch loop vs Hugging Face GPT2LMHeadModel.

The shakespeare-char configuration (4 layers, 4 heads, 128 wide, context 64, batch 12, no bias, exact GELU, as
``recipes/shakespeare-char.yaml``), on character-level tiny Shakespeare when ``../shared/data/tinyshakespeare.txt``
(or ``--data``) exists, else on random tokens. The three run side by side in one process, in interleaved rounds, on
the same pre-drawn batches, each with AdamW (decay on matrices), gradient clipping at 1.0 and a per-step LR schedule
(the recipe's training stack). The step time is the wall time between consecutive steps (data, forward, backward,
clip, optimizer, loop/logging overhead): for Lightning, between consecutive ``on_train_batch_end`` calls.

    python benchmarks/train_speed.py --rounds 5 --steps 30 --out benchmarks/results/train_speed.md

``--suite compile-bf16`` instead times GPTModule + Trainer four ways, side by side in the same interleaved rounds:
eager fp32, ``compile=True`` fp32, eager ``precision="bf16-mixed"`` and compiled bf16-mixed (ratios against eager
fp32), and first checks that bf16-mixed trains like fp32: ``--precision-steps`` (200) steps from the same
initialization on the same batches, reporting the largest and the mean absolute difference of the per-step losses
and of their 20-step moving averages:

    python benchmarks/train_speed.py --suite compile-bf16 --rounds 4 --steps 15 --threads 1 \\
        --out benchmarks/results/train_compile_bf16.md

The runs above give the Trainer the recipe's schedule and clipping and switch ``GPTModule``'s other default callbacks
off (``default_callbacks=False``), so that every variant does the same work as the plain loop. ``--suite defaults``
times what a plain ``Trainer`` gets since the defaults moved into ``GPTModule.configure_callbacks``: the same run with
the module's defaults added (non-finite guard, samples every 500 steps, loss curve, throughput monitor) against
without them:

    python benchmarks/train_speed.py --suite defaults --rounds 6 --steps 20 --threads 1 \\
        --out benchmarks/results/train_default_callbacks.md

``--suite cpu-recipe`` times what a step of ``fit`` costs for the recipe and for its fast CPU variant, and where:
nanoGPT's step (a plain loop, fp32, eager, ``flash`` attention: PyTorch SDPA), the recipe's step in ``fit`` (the same,
GPTModule + Trainer with the module's default callbacks), then bf16-mixed + compile with ``flash``, with ``standard``
attention, with fused AdamW (the variant), the variant without the default callbacks, and the variant as a plain
loop. ``--clock cpu`` times each step in this process's CPU time, steadier than wall time on a shared machine:

    python benchmarks/train_speed.py --suite cpu-recipe --rounds 4 --steps 15 --threads 1 --clock cpu \\
        --out benchmarks/results/train_cpu_recipe.md
"""

from __future__ import annotations

import argparse
import dataclasses
import platform
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from lightning_gpt import GPT, GPTConfig

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO / ".." / "shared" / "data" / "tinyshakespeare.txt"
B, T = 12, 64
LR, MIN_LR, WARMUP = 1e-3, 1e-4, 100
ROOT = tempfile.TemporaryDirectory(prefix="train_speed-")
CLOCK = time.perf_counter  # --clock cpu: time.process_time (this process's CPU time: steadier on a shared machine)


def load_tokens(path: Path) -> tuple[torch.Tensor, int, str]:
    if path.exists():
        text = path.read_text(encoding="utf-8")
        chars = sorted(set(text))
        lut = {c: i for i, c in enumerate(chars)}
        return (
            torch.tensor([lut[c] for c in text], dtype=torch.long),
            len(chars),
            f"tinyshakespeare ({len(text)} chars)",
        )
    return torch.randint(0, 65, (200_000,), generator=torch.Generator().manual_seed(0)), 65, "random tokens (no data)"


def make_batches(tokens: torch.Tensor, n: int, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        ix = torch.randint(len(tokens) - T - 1, (B,), generator=g)
        w = torch.stack([tokens[i : i + T + 1] for i in ix.tolist()])  # (B, T + 1)
        out.append((w[:, :-1].contiguous(), w[:, 1:].contiguous()))
    return out


def lr_for(step: int, max_steps: int = 2000) -> float:
    from lightning_gpt.training.callbacks import lr_at

    return lr_at(step, base_lr=LR, warmup_steps=WARMUP, decay_steps=max_steps, min_lr=MIN_LR)


def adamw(model: torch.nn.Module, fused: bool = False) -> torch.optim.Optimizer:
    emb = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Embedding)}
    params = list(dict.fromkeys(p for p in model.parameters() if p.requires_grad))
    decay = [p for p in params if p.dim() >= 2 and id(p) not in emb]
    no_decay = [p for p in params if p.dim() < 2 or id(p) in emb]
    groups = [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=LR, betas=(0.9, 0.99), fused=fused or None)


class PlainLoop:
    """The hand-written loop nanoGPT uses (by default without torch.compile, in fp32, with torch's default AdamW)."""

    name = "plain PyTorch loop"

    def __init__(
        self,
        config: GPTConfig,
        *,
        compile: bool = False,
        precision: str = "32-true",
        fused: bool = False,
        name: str | None = None,
    ) -> None:
        torch.manual_seed(0)
        self.model = GPT(config)
        self.opt = adamw(self.model, fused=fused)
        self.forward = torch.compile(self.model) if compile else self.model
        self.bf16 = precision == "bf16-mixed"
        self.step = 0
        if name is not None:
            self.name = name

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if not self.bf16:
            return self.forward(x, y)[1]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = self.forward(x)  # (B, T, V)
        return F.cross_entropy(logits.flatten(0, 1).float(), y.flatten())

    def run(self, batches: list) -> list[float]:
        self.model.train()
        times, last = [], CLOCK()
        for x, y in batches:
            for group in self.opt.param_groups:
                group["lr"] = lr_for(self.step)
            loss = self.loss(x, y)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
            self.opt.step()
            self.opt.zero_grad(set_to_none=True)
            self.step += 1
            now = CLOCK()
            times.append(now - last)
            last = now
        return times[1:]  # the first interval includes the round's start-up


class HFLoop(PlainLoop):
    """The same loop over ``transformers.GPT2LMHeadModel`` of the same size (GPT-2 always has biases)."""

    name = "HF GPT2LMHeadModel loop"

    def __init__(self, config: GPTConfig) -> None:
        from transformers import GPT2Config, GPT2LMHeadModel

        hf_config = GPT2Config(
            vocab_size=config.vocab_size,
            n_positions=config.block_size,
            n_embd=config.n_embd,
            n_layer=config.n_layer,
            n_head=config.n_head,
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
        )
        self.model = GPT2LMHeadModel(hf_config)
        self.opt = adamw(self.model)
        self.step = 0
        self.bf16 = False

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        logits = self.model(input_ids=x).logits  # (B, T, V)
        return F.cross_entropy(logits.flatten(0, 1).float(), y.flatten())


class LightningRun:
    """``GPTModule`` in a ``Trainer`` with the recipe's callbacks; no logger, progress bar or checkpointing."""

    name = "lightning-gpt (GPTModule + Trainer)"

    def __init__(
        self,
        config: GPTConfig,
        *,
        compile: bool = False,
        precision: str = "32-true",
        name: str | None = None,
        defaults: bool = False,
        fused: bool | None = None,
    ) -> None:
        from lightning_gpt.training.module import GPTModule

        torch.manual_seed(0)  # every variant starts from the same weights
        self.module = GPTModule(
            config,
            learning_rate=LR,
            weight_decay=0.1,
            betas=(0.9, 0.99),
            compile=compile,
            default_callbacks=defaults,
            fused=fused,
        )
        self.precision = precision
        self.losses: list[float] = []
        if name is not None:
            self.name = name

    def run(self, batches: list) -> list[float]:
        import lightning.pytorch as pl

        from lightning_gpt.training.callbacks import GradientClipping, LRSchedule

        times: list[float] = []
        losses = self.losses

        class Clock(pl.Callback):
            last = None

            def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
                now = CLOCK()
                if self.last is not None:
                    times.append(now - self.last)
                self.last = now
                losses.append(float(outputs["loss"]))

        trainer = pl.Trainer(
            accelerator="cpu",
            devices=1,
            max_steps=len(batches),
            logger=False,
            enable_progress_bar=False,
            enable_checkpointing=False,
            enable_model_summary=False,
            num_sanity_val_steps=0,
            precision=self.precision,
            default_root_dir=ROOT.name,  # where a default LossCurve would draw (never in the working directory)
            callbacks=[
                LRSchedule(warmup_steps=WARMUP, decay_steps=2000, min_lr=MIN_LR),
                GradientClipping(1.0),
                Clock(),
            ],
        )
        trainer.fit(self.module, torch.utils.data.DataLoader(batches, batch_size=None))
        return times


def measure(runners: list, batches: list, rounds: int, steps: int) -> dict[str, list[float]]:
    results: dict[str, list[float]] = {r.name: [] for r in runners}
    for r in runners:  # warm-up round, discarded
        r.run(batches[: min(steps, 10)])
    for i in range(rounds):
        order = runners if i % 2 == 0 else runners[::-1]  # interleave, alternating who goes first
        for r in order:
            chunk = batches[(i * steps) % len(batches) :][:steps]
            results[r.name].extend(r.run(chunk))
    return results


def table(results: dict[str, list[float]], ref: str, ref_label: str = "vs plain loop") -> str:
    ref_median = statistics.median(results[ref])
    lines = [
        f"| implementation | median step (ms) | p25 (ms) | p75 (ms) | steps timed | {ref_label} |",
        "|---|---|---|---|---|---|",
    ]
    for name, ts in results.items():
        q = statistics.quantiles(ts, n=4)
        med = statistics.median(ts)
        lines.append(
            f"| {name} | {med * 1e3:.2f} | {q[0] * 1e3:.2f} | {q[2] * 1e3:.2f} | {len(ts)} | {med / ref_median:.3f}x |"
        )
    return "\n".join(lines)


def moving_average(xs: list[float], k: int = 20) -> list[float]:
    return [statistics.fmean(xs[max(0, i - k + 1) : i + 1]) for i in range(len(xs))]


def precision_check(config: GPTConfig, batches: list, steps: int) -> str:
    """bf16-mixed vs fp32: same init, same batches, ``steps`` steps each; how far apart their losses run."""
    runs = {p: LightningRun(config, precision=p) for p in ("32-true", "bf16-mixed")}
    for run in runs.values():
        run.run(batches[:steps])
    fp32, bf16 = runs["32-true"].losses, runs["bf16-mixed"].losses
    diff = [abs(a - b) for a, b in zip(fp32, bf16)]
    smooth = [abs(a - b) for a, b in zip(moving_average(fp32), moving_average(bf16))]
    tol = 0.05
    ok = max(smooth) <= tol
    return (
        f"bf16-mixed vs fp32 over {len(diff)} steps (same init and batches): per-step loss |diff| max "
        f"{max(diff):.4f}, mean {statistics.fmean(diff):.4f}; 20-step moving average |diff| max {max(smooth):.4f} "
        f"(tolerance {tol}: {'met' if ok else 'NOT met'}); final loss fp32 {moving_average(fp32)[-1]:.4f}, "
        f"bf16-mixed {moving_average(bf16)[-1]:.4f}"
    )


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=30, help="steps per implementation per round")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--attention", default="standard")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--out", type=Path, default=None, help="write a markdown report here")
    parser.add_argument("--suite", choices=["overhead", "compile-bf16", "defaults", "cpu-recipe"], default="overhead")
    parser.add_argument(
        "--clock",
        choices=["wall", "cpu"],
        default="wall",
        help="step time as wall time, or as this process's CPU time (one thread: steadier under load)",
    )
    parser.add_argument("--precision-steps", type=int, default=200, help="compile-bf16: steps of the loss check")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    import logging

    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.clock == "cpu":
        global CLOCK
        CLOCK = time.process_time
    torch.manual_seed(0)
    tokens, vocab, data_desc = load_tokens(args.data)
    config = GPTConfig(
        vocab_size=vocab,
        block_size=T,
        n_layer=4,
        n_head=4,
        n_embd=128,
        dropout=0.0,
        bias=False,
        activation="gelu",
        attention=args.attention,
    )
    batches = make_batches(tokens, max(args.steps * args.rounds, 10, args.precision_steps))
    start = time.perf_counter()
    if args.suite == "compile-bf16":
        check = precision_check(config, batches, args.precision_steps)
        print(check, flush=True)
        runners = [
            LightningRun(config, name="eager fp32"),
            LightningRun(config, compile=True, name="compiled fp32"),
            LightningRun(config, precision="bf16-mixed", name="eager bf16-mixed"),
            LightningRun(config, compile=True, precision="bf16-mixed", name="compiled bf16-mixed"),
        ]
        results = measure(runners, batches, args.rounds, args.steps)
        elapsed = time.perf_counter() - start
        body = table(results, "eager fp32", "vs eager fp32")
        ref = statistics.median(results["eager fp32"])
        ratios = {name: ref / statistics.median(ts) for name, ts in results.items()}
        verdict = (
            f"speed-up over eager fp32 (GPTModule + Trainer): compiled {ratios['compiled fp32']:.2f}x, bf16-mixed "
            f"{ratios['eager bf16-mixed']:.2f}x, compiled bf16-mixed {ratios['compiled bf16-mixed']:.2f}x\n\n{check}"
        )
        return _report(args, argv, body, verdict, elapsed, data_desc, vocab, "Training step time: compile and bf16")
    if args.suite == "cpu-recipe":
        return _cpu_recipe(args, argv, config, batches, start, data_desc, vocab)
    if args.suite == "defaults":
        runners = [
            LightningRun(config, name="schedule + clipping only"),
            LightningRun(config, defaults=True, name="+ GPTModule's default callbacks"),
        ]
        results = measure(runners, batches, args.rounds, args.steps)
        elapsed = time.perf_counter() - start
        body = table(results, "schedule + clipping only", "vs schedule + clipping only")
        ratio = statistics.median(results["+ GPTModule's default callbacks"]) / statistics.median(
            results["schedule + clipping only"]
        )
        verdict = f"step time with the default callbacks / without: {ratio:.3f}"
        return _report(args, argv, body, verdict, elapsed, data_desc, vocab, "Training step time: default callbacks")
    runners = [LightningRun(config), PlainLoop(config), HFLoop(config)]
    results = measure(runners, batches, args.rounds, args.steps)
    elapsed = time.perf_counter() - start
    body = table(results, PlainLoop.name)
    lightning_med = statistics.median(results[LightningRun.name])
    ratio_plain = lightning_med / statistics.median(results[PlainLoop.name])
    ratio_hf = lightning_med / statistics.median(results[HFLoop.name])
    verdict = (
        f"lightning-gpt / plain loop = {ratio_plain:.3f} "
        f"(target <= 1.1: {'met' if ratio_plain <= 1.1 else 'NOT met'}); "
        f"lightning-gpt / HF = {ratio_hf:.3f} (target <= 1.0: {'met' if ratio_hf <= 1.0 else 'NOT met'})"
    )
    title = "Training step time (shakespeare-char configuration)"
    return _report(args, argv, body, verdict, elapsed, data_desc, vocab, title)


def _cpu_recipe(args, argv, config: GPTConfig, batches: list, start: float, data_desc: str, vocab: int) -> str:
    """The shakespeare-char recipe's step (flash attention, fp32, eager) against the fast CPU variant's (bf16-mixed,
    compiled, standard attention, fused AdamW), each as a plain loop (nanoGPT's shape) and as GPTModule + Trainer
    with the module's default callbacks, plus the steps from one to the other."""
    flash, standard = (dataclasses.replace(config, attention=kind) for kind in ("flash", "standard"))
    bf16 = "bf16-mixed"
    runners: list[Any] = [
        PlainLoop(flash, name="plain loop: fp32 eager flash (nanoGPT's step)"),
        LightningRun(flash, defaults=True, name="fit: fp32 eager flash (the recipe)"),
        LightningRun(flash, defaults=True, compile=True, precision=bf16, name="fit: bf16 compiled flash"),
        LightningRun(standard, defaults=True, compile=True, precision=bf16, name="fit: bf16 compiled standard"),
        LightningRun(
            standard,
            defaults=True,
            fused=True,
            compile=True,
            precision=bf16,
            name="fit: bf16 compiled standard fused (variant)",
        ),
        LightningRun(
            standard, fused=True, compile=True, precision=bf16, name="fit without default callbacks: same variant"
        ),
        PlainLoop(standard, fused=True, compile=True, precision=bf16, name="plain loop: same variant"),
    ]
    results = measure(runners, batches, args.rounds, args.steps)
    elapsed = time.perf_counter() - start
    ref = runners[0].name
    body = table(results, ref, "vs nanoGPT's step")
    med = {name: statistics.median(ts) for name, ts in results.items()}
    variant, bare, plain = (med[r.name] for r in runners[4:])
    verdict = (
        f"the variant's fit step / the recipe's: {variant / med[runners[1].name]:.3f}; / nanoGPT-shaped plain loop: "
        f"{variant / med[ref]:.3f}; Lightning + callbacks over the same plain loop: {1e3 * (variant - plain):.1f} ms "
        f"(of which the default callbacks: {1e3 * (variant - bare):.1f} ms)"
    )
    title = "Training step time: the shakespeare-char recipe and its fast CPU variant"
    return _report(args, argv, body, verdict, elapsed, data_desc, vocab, title)


def _report(
    args: argparse.Namespace, argv, body: str, verdict: str, elapsed: float, data_desc: str, vocab: int, title: str
) -> str:
    try:
        load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        load = "n/a"
    env = (
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}, "
        f"python {platform.python_version()}; load average at the end: {load}; data: {data_desc}; "
        f"config: 4 layers, 4 heads, 128 wide, context {T}, batch {B}, vocab {vocab}, attention "
        f"{'per row' if args.suite == 'cpu-recipe' else args.attention}; "
        f"{args.rounds} interleaved rounds x {args.steps} steps each; step clock: {args.clock}; total {elapsed:.0f} s"
    )
    report = f"{body}\n\n{verdict}\n\n{env}\n"
    print(report)
    if args.out is not None:
        cmd = "python benchmarks/train_speed.py " + " ".join(argv if argv is not None else sys.argv[1:])
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(f"# {title}\n\nCommand: `{cmd.strip()}`\n\n{report}")
    return report


if __name__ == "__main__":
    main()
