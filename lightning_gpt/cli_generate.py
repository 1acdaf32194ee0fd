"""``lightning-gpt generate``: stream a completion of one prompt from a checkpoint to the terminal.

```bash
lightning-gpt generate --ckpt_path runs/quickstart --prompt "def " --max_new_tokens 200 --temperature 0.8
echo "ROMEO:" | lightning-gpt generate --ckpt_path runs/shakespeare-char --prompt - --num_beams 4
```

Plain ``argparse`` rather than LightningCLI: decoding one prompt needs no Trainer, so the command starts faster and
its options read like ``transformers``' ``generate`` keywords. ``lightning-gpt predict`` is the batch path.
"""

from __future__ import annotations

import sys
from typing import Any

from lightning_gpt.checkpoint import find_checkpoint

__all__ = ["generate_command"]


def _bool(text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"expected true or false, got {text!r}")


def _generate_parser() -> Any:
    import argparse

    parser = argparse.ArgumentParser(
        prog="lightning-gpt generate",
        description="Stream a completion of one prompt from a checkpoint to the terminal. The model config and the "
        "tokenizer come from the checkpoint. Sampling by default (temperature 0 or --do_sample false: greedy).",
    )
    add = parser.add_argument
    add("--ckpt_path", required=True, help="a .ckpt file, or a run directory (its checkpoints/last.ckpt is used)")
    add("--prompt", required=True, help="the prompt text; '-' reads it from stdin")
    add(
        "--max_new_tokens",
        type=int,
        default=200,
        help="tokens to generate (default 200); beyond the model's "
        "context, generation continues from the last half of the context",
    )
    add("--temperature", type=float, default=0.8, help="softmax temperature; 0 means greedy (default 0.8)")
    add("--top_k", type=int, default=None, help="keep only the k most likely tokens")
    add("--top_p", type=float, default=None, help="nucleus sampling: keep the smallest set reaching probability p")
    add("--min_p", type=float, default=None, help="drop tokens below min_p times the top probability")
    add("--repetition_penalty", type=float, default=1.0, help="penalty > 1 discourages repeated tokens")
    add("--do_sample", type=_bool, default=None, help="true/false; default: sample unless greedy or beam search")
    add("--num_beams", type=int, default=1, help="beam search width (output printed at the end, not streamed)")
    add("--length_penalty", type=float, default=1.0, help="beam search length penalty")
    add("--num_return_sequences", type=int, default=1, help="sequences to print (<= num_beams with beam search)")
    add("--stop", action="append", default=None, help="stop string (repeatable)")
    add("--seed", type=int, default=None, help="seed of the sampling generator (reproducible output)")
    add("--device", default="auto", help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    add("--dtype", default=None, help="decode in this dtype: float32, bfloat16 or float16 (default: the checkpoint's)")
    add("--echo", type=_bool, default=True, help="print the prompt before the completion (default true)")
    return parser


def generate_command(argv: list[str]) -> None:
    """``lightning-gpt generate``: load a checkpoint and stream one completion to stdout.

    Args:
        argv: the arguments after ``generate`` (see ``lightning-gpt generate --help``).
    """
    opts = _generate_parser().parse_args(argv)
    if opts.temperature < 0:
        raise ValueError(f"--temperature must be >= 0 (0 means greedy), got {opts.temperature}.")
    import torch

    from lightning_gpt.checkpoint import load_checkpoint

    prompt = sys.stdin.read() if opts.prompt == "-" else opts.prompt
    path = find_checkpoint(opts.ckpt_path)
    device = opts.device if opts.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    model, tokenizer = load_checkpoint(path, map_location="cpu", dtype=opts.dtype)
    if tokenizer is None:
        raise ValueError(
            f"Checkpoint {path!r} holds no tokenizer, so text cannot be encoded. Use a checkpoint written by "
            "lightning-gpt fit (it stores the tokenizer), or call lightning_gpt.generation.generate on token ids."
        )
    model = model.to(device).eval()
    do_sample = opts.do_sample
    if do_sample is None:
        do_sample = opts.temperature > 0 and opts.num_beams == 1
    kwargs: dict[str, Any] = dict(
        temperature=opts.temperature if do_sample else 1.0,
        top_k=opts.top_k,
        top_p=opts.top_p,
        min_p=opts.min_p,
        repetition_penalty=opts.repetition_penalty,
        do_sample=do_sample,
        stop=opts.stop,
    )
    if opts.seed is not None:
        kwargs["generator"] = torch.Generator(device=device).manual_seed(opts.seed)
    out = sys.stdout
    if opts.num_beams > 1 or opts.num_return_sequences > 1:
        from lightning_gpt.generation.text import generate_text

        kwargs.update(
            max_new_tokens=opts.max_new_tokens,
            num_beams=opts.num_beams,
            length_penalty=opts.length_penalty,
            num_return_sequences=opts.num_return_sequences,
        )
        for i, row in enumerate(generate_text(model, tokenizer, [prompt], **kwargs)):
            if i:
                out.write("\n---\n")
            out.write((prompt if opts.echo else "") + row["completion"])
        out.write("\n")
        out.flush()
        return
    if opts.echo:
        out.write(prompt)
        out.flush()
    for piece in _stream_windowed(model, tokenizer, prompt, opts.max_new_tokens, kwargs):
        out.write(piece)
        out.flush()
    out.write("\n")
    out.flush()


def _stream_windowed(model: Any, tokenizer: Any, prompt: str, max_new_tokens: int, kwargs: dict) -> Any:
    """``stream_text`` beyond the model's context: when the context is full, continue from its last half (as nanoGPT's
    sampling crops to the last ``block_size`` tokens, but re-using the KV cache within each window)."""
    from lightning_gpt.generation.text import stream_text

    block = int(model.config.block_size)
    context, remaining = prompt, int(max_new_tokens)
    if remaining < 1:
        raise ValueError(f"--max_new_tokens must be >= 1, got {max_new_tokens}.")
    while remaining > 0:
        ids = tokenizer.encode(context)
        if len(ids) >= block:
            context = tokenizer.decode(ids[-(block // 2) :])
            ids = tokenizer.encode(context)
        n = min(remaining, block - len(ids))
        chunk = ""
        for piece in stream_text(model, tokenizer, context, max_new_tokens=n, **kwargs):
            chunk += piece
            yield piece
        remaining -= n
        if len(tokenizer.encode(chunk)) < n:  # EOS or a stop string ended the text
            return
        context += chunk
