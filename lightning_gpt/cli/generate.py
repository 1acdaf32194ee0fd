"""``lightning-gpt generate``: stream a completion of one prompt from a checkpoint to the terminal.

```bash
lightning-gpt generate --ckpt_path runs/quickstart --prompt "def " --max_new_tokens 200 --temperature 0.8
echo "ROMEO:" | lightning-gpt generate --ckpt_path runs/shakespeare-char --prompt - --num_beams 4
```

Plain ``argparse`` rather than LightningCLI: decoding one prompt needs no Trainer, so the command starts faster and
its options read like ``transformers``' ``generate`` keywords. ``lightning-gpt predict`` is the batch path.
"""

from __future__ import annotations

import dataclasses
import sys
from typing import Any, Optional

from lightning_gpt.cli.options import checkpoint_parser
from lightning_gpt.generation.config import CLI_DEFAULTS, GenerationConfig  # no torch: --help and flag errors are fast

__all__ = ["generate_command"]


def _bool(text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"expected true or false, got {text!r}")


def _generate_parser() -> Any:
    d = CLI_DEFAULTS  # the command's decoding defaults: one preset, documented in lightning_gpt.generation.config
    parser = checkpoint_parser(
        "generate",
        "Stream a completion of one prompt from a checkpoint to the terminal. The model config and the tokenizer "
        "come from the checkpoint. Sampling by default (temperature 0 or --do_sample false: greedy).",
    )
    add = parser.add_argument
    add("--prompt", required=True, help="the prompt text; '-' reads it from stdin")
    add(
        "--max_new_tokens",
        type=int,
        default=d.max_new_tokens,
        help=f"tokens to generate (default {d.max_new_tokens}); beyond the model's context, sampling continues from "
        "the last half of the context, and beam search generates what fits (and says so)",
    )
    add(
        "--temperature",
        type=float,
        default=d.temperature,
        help=f"softmax temperature; 0 means greedy (default {d.temperature})",
    )
    add("--top_k", type=int, default=d.top_k, help="keep only the k most likely tokens")
    add("--top_p", type=float, default=d.top_p, help="nucleus sampling: keep the smallest set reaching probability p")
    add("--min_p", type=float, default=d.min_p, help="drop tokens below min_p times the top probability")
    add("--repetition_penalty", type=float, default=d.repetition_penalty, help="penalty > 1 discourages repeats")
    add("--do_sample", type=_bool, default=None, help="true/false; default: sample unless greedy or beam search")
    add(
        "--num_beams", type=int, default=d.num_beams, help="beam search width (output printed at the end, not streamed)"
    )
    add("--length_penalty", type=float, default=d.length_penalty, help="beam search length penalty")
    add(
        "--num_return_sequences",
        type=int,
        default=d.num_return_sequences,
        help="sequences to print (<= num_beams with beam search)",
    )
    add("--stop", action="append", default=d.stop, help="stop string (repeatable)")
    add("--seed", type=int, default=d.seed, help="seed of the sampling generator (reproducible output)")
    add(
        "--compile",
        action="store_true",
        help="compile the decoding step (torch.compile; CUDA graphs on a GPU): faster tokens after a first call that "
        "compiles (seconds to a minute)",
    )
    add(
        "--draft_ckpt_path",
        default=None,
        help="speculative decoding: a smaller model on the same tokenizer (same kinds of path as --ckpt_path) drafts "
        "tokens that the model checks in one pass; same output distribution (greedy: same tokens)",
    )
    add(
        "--num_draft_tokens",
        type=int,
        default=d.num_draft_tokens,
        help=f"tokens the draft proposes per round (default {d.num_draft_tokens}; with --draft_ckpt_path)",
    )
    add("--device", default="auto", help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    add("--dtype", default=None, help="decode in this dtype: float32, bfloat16 or float16 (default: the checkpoint's)")
    add("--echo", type=_bool, default=True, help="print the prompt before the completion (default true)")
    return parser


def _generation_config(opts: Any) -> GenerationConfig:
    """The command's one ``GenerationConfig``: every flag checked here, before any checkpoint is read.

    ``--do_sample`` not given: sample unless ``--temperature 0`` or beam search. When that leaves greedy/beam decoding,
    the default temperature is dropped (it would only draw an "ignored" warning); an explicit one is kept and warned.
    """
    try:
        return _build_config(opts)
    except ValueError as err:
        # The message names the setting as GenerationConfig spells it; on the command line it is a flag.
        message = str(err)
        name = message.split(" ", 1)[0]
        if name in {f.name for f in dataclasses.fields(GenerationConfig)}:
            message = "--" + message
        raise ValueError(message) from None


def _build_config(opts: Any) -> GenerationConfig:
    do_sample = opts.do_sample
    if do_sample is None:
        do_sample = not (opts.temperature == 0 or opts.num_beams != 1)
    config = GenerationConfig(
        max_new_tokens=opts.max_new_tokens,
        do_sample=do_sample,
        temperature=opts.temperature,
        top_k=opts.top_k,
        top_p=opts.top_p,
        min_p=opts.min_p,
        repetition_penalty=opts.repetition_penalty,
        num_beams=opts.num_beams,
        length_penalty=opts.length_penalty,
        num_return_sequences=opts.num_return_sequences,
        stop=opts.stop,
        seed=opts.seed,
        num_draft_tokens=opts.num_draft_tokens,
    )
    if not do_sample and opts.temperature == CLI_DEFAULTS.temperature:
        config = GenerationConfig.fold(config, temperature=1.0)
    return config


def _note(message: str) -> None:
    sys.stderr.write(f"lightning-gpt generate: note: {message}\n")
    sys.stderr.flush()


def generate_command(argv: list[str]) -> None:
    """``lightning-gpt generate``: load a checkpoint and stream one completion to stdout.

    Args:
        argv: the arguments after ``generate`` (see ``lightning-gpt generate --help``).

    Raises:
        ValueError: a bad decoding setting (before the checkpoint is read), or a checkpoint without a tokenizer.
    """
    opts = _generate_parser().parse_args(argv)
    config = _generation_config(opts)
    import torch

    from lightning_gpt.io.checkpoint import find_checkpoint, load_checkpoint

    prompt = sys.stdin.read() if opts.prompt == "-" else opts.prompt
    from lightning_gpt.io.hf import is_pretrained_path

    path = opts.ckpt_path if is_pretrained_path(opts.ckpt_path) else find_checkpoint(opts.ckpt_path)
    device = opts.device if opts.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    _check_device(device)
    model, tokenizer = load_checkpoint(
        path, map_location="cpu", trust_checkpoint=opts.trust_checkpoint, dtype=opts.dtype
    )
    if tokenizer is None:
        raise ValueError(
            f"Checkpoint {path!r} holds no tokenizer, so text cannot be encoded. Use a checkpoint written by "
            "lightning-gpt fit (it stores the tokenizer), or call lightning_gpt.generation.generate on token ids."
        )
    model = model.to(device).eval()
    run = {"compile": opts.compile}
    if opts.draft_ckpt_path is not None:
        draft_path = (
            opts.draft_ckpt_path if is_pretrained_path(opts.draft_ckpt_path) else find_checkpoint(opts.draft_ckpt_path)
        )
        draft, _ = load_checkpoint(
            draft_path, map_location="cpu", trust_checkpoint=opts.trust_checkpoint, dtype=opts.dtype
        )
        run["draft_model"] = draft.to(device).eval()
    out = sys.stdout
    if config.num_beams > 1 or config.num_return_sequences > 1:
        rows = _generate_fitted(model, tokenizer, prompt, config, run)
        for i, row in enumerate(rows):
            if i:
                out.write("\n---\n")
            out.write((prompt if opts.echo else "") + row)
        out.write("\n")
        out.flush()
        _explain_empty("".join(rows), config, tokenizer)
        return
    from lightning_gpt.generation.text import stream_text

    pieces = stream_text(model, tokenizer, prompt, config, slide=True, **run)  # settings checked here, before the echo
    if opts.echo:
        out.write(prompt)
        out.flush()
    completion = ""
    for piece in pieces:
        completion += piece
        out.write(piece)
        out.flush()
    out.write("\n")
    out.flush()
    _explain_empty(completion, config, tokenizer)


def _explain_empty(completion: str, config: GenerationConfig, tokenizer: Any) -> None:
    """Nothing after the prompt although tokens were asked for, with ``--stop`` given: say why on stderr (the output
    is cut before the first stop string, so one at the very start leaves only the prompt)."""
    if completion or not config.stop or not config.max_new_tokens:
        return
    stops = [config.stop] if isinstance(config.stop, str) else list(config.stop)
    named = " or ".join(repr(s) for s in stops)
    eos = " (or the model ended the text at once)" if getattr(tokenizer, "eos_id", None) is not None else ""
    _note(
        f"the stop string {named} occurred at the start of the continuation{eos}; nothing generated before it. The "
        "output stops before the first stop string: leave out --stop to see what the model writes."
    )


def _check_device(device: str) -> None:
    """One paragraph, before the checkpoint is read, for a device that is not there (or not a device at all)."""
    import torch

    try:
        kind = torch.device(device).type
    except (RuntimeError, ValueError):
        raise ValueError(f"--device {device!r} is not a device name; use auto, cpu, cuda, cuda:1 or mps.") from None
    cpu_build = " (this torch is a CPU-only build)" if torch.version.cuda is None else ""
    if kind == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"--device {device!r}: CUDA is not available on this machine{cpu_build}. Use --device cpu "
            "(or leave --device at auto)."
        )
    if (
        kind == "cuda"
        and torch.device(device).index is not None
        and torch.device(device).index >= torch.cuda.device_count()
    ):
        raise ValueError(
            f"--device {device!r}: this machine has {torch.cuda.device_count()} CUDA device(s). Use "
            "--device cuda:0 (or auto)."
        )
    if kind == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ValueError(f"--device {device!r}: no Apple MPS device here. Use --device cpu (or auto).")


def _generate_fitted(
    model: Any, tokenizer: Any, prompt: str, config: GenerationConfig, run: Optional[dict[str, Any]] = None
) -> list[str]:
    """Beam search (or several samples) in one window of the context, which it cannot slide past as a stream does:
    a prompt that fills the context keeps its last ``block_size // 2`` token ids, and ``max_new_tokens`` shrinks to
    what fits after it. Each change is reported on stderr. Returns the completions, best first."""
    import torch

    from lightning_gpt.generation import generate
    from lightning_gpt.generation.text import _cut_at_stop, _encode_one, _stop_strings

    block = int(model.config.block_size)
    ids = _encode_one(tokenizer, prompt)
    what = "beam search" if config.num_beams > 1 else "sampling several sequences"
    if len(ids) >= block:
        _note(
            f"the prompt is {len(ids)} tokens, which fills the model's context (block_size={block}); {what} "
            f"continues from its last {block // 2} tokens."
        )
        ids = ids[-(block // 2) :]
    room = block - len(ids)
    if config.max_new_tokens is not None and config.max_new_tokens > room:
        _note(
            f"{what} does not slide past the model's context like the sampling stream: generating {room} tokens "
            f"instead of {config.max_new_tokens}, so that the prompt ({len(ids)} tokens) and the output fit "
            f"(block_size={block})."
        )
        config = GenerationConfig.fold(config, max_new_tokens=room)
    out = generate(
        model,
        torch.tensor([ids], dtype=torch.long),
        config,
        eos_token_id=getattr(tokenizer, "eos_id", None),
        pad_token_id=getattr(tokenizer, "pad_id", None),
        tokenizer=tokenizer if config.stop else None,
        return_dict=True,
        **(run or {}),
    )
    stops = _stop_strings(config.stop)
    return [_cut_at_stop(tokenizer.decode(tokens), stops)[0] for tokens in out.new_tokens]
