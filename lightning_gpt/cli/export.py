"""``lightning-gpt export``: write a checkpoint as a Hugging Face GPT-2 folder (or as bare safetensors weights).

```bash
lightning-gpt export --ckpt_path runs/quickstart --output_dir exported/quickstart   # config.json, model.safetensors,
                                                                                    # tokenizer.json, ...
lightning-gpt export --ckpt_path runs/long-context-linear --output_dir w --format safetensors   # any architecture
```

The folder loads with ``transformers.AutoModelForCausalLM.from_pretrained`` and ``AutoTokenizer.from_pretrained``, and
with ``lightning-gpt generate --ckpt_path DIR`` / ``lightning_gpt.io.checkpoint.load_checkpoint(DIR)``.
"""

from __future__ import annotations

from typing import Any

from lightning_gpt.cli.options import add_trust_checkpoint

__all__ = ["export_command"]


def _export_parser() -> Any:
    import argparse

    from lightning_gpt.io.hf import FORMATS

    parser = argparse.ArgumentParser(
        prog="lightning-gpt export",
        description="Write a checkpoint as a Hugging Face GPT-2 folder (config.json, model.safetensors, "
        "generation_config.json, tokenizer files) or, with --format safetensors, as its weights alone under "
        "lightning-gpt's own names (any architecture). Both add lightning_gpt.json (the exact model config and "
        "tokenizer), so generate/predict/load_checkpoint read the folder back exactly.",
    )
    add = parser.add_argument
    add("--ckpt_path", required=True, help="a .ckpt file, a run directory (its newest checkpoint), or a weights folder")
    add("--output_dir", required=True, help="the folder to create (must not exist, or be empty)")
    add("--format", choices=FORMATS, default="hf", help="hf (default: transformers-loadable) or safetensors")
    add_trust_checkpoint(parser)
    return parser


def export_command(argv: list[str]) -> None:
    """``lightning-gpt export``: load a checkpoint and write it as a weights folder.

    Args:
        argv: the arguments after ``export`` (see ``lightning-gpt export --help``).

    Raises:
        ValueError: a model or tokenizer the chosen format cannot express (nothing is written), or a bad checkpoint.
        FileNotFoundError: a missing checkpoint.
    """
    opts = _export_parser().parse_args(argv)
    from lightning_gpt.io.checkpoint import find_checkpoint, load_checkpoint
    from lightning_gpt.io.hf import is_pretrained_path, write_pretrained

    path = opts.ckpt_path if is_pretrained_path(opts.ckpt_path) else find_checkpoint(opts.ckpt_path)
    model, tokenizer = load_checkpoint(path, map_location="cpu", trust_checkpoint=opts.trust_checkpoint)
    out = write_pretrained(model, tokenizer, opts.output_dir, format=opts.format)
    print(f"Exported {path} to {out} ({opts.format}).")
