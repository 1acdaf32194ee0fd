"""``lightning-gpt export``: write a checkpoint as a Hugging Face GPT-2 folder (or as bare safetensors weights).

```bash
lightning-gpt export --ckpt_path runs/quickstart --output_dir exported/quickstart   # config.json, model.safetensors,
                                                                                    # tokenizer.json, ...
lightning-gpt export --ckpt_path runs/long-context-linear --output_dir w --format safetensors   # any architecture
lightning-gpt export --ckpt_path runs/quickstart --output_dir deploy/onnx --format onnx   # model.onnx, deploy.json
lightning-gpt export --ckpt_path runs/quickstart --output_dir deploy/pt2 --format torch_export   # model.pt2
```

The ``hf`` folder loads with ``transformers.AutoModelForCausalLM.from_pretrained`` and ``AutoTokenizer``,
and with ``lightning-gpt generate --ckpt_path DIR`` / ``lightning_gpt.io.checkpoint.load_checkpoint(DIR)``. ``onnx``
and ``torch_export`` write the forward pass (token ids -> logits, any batch, any length up to the context) for
onnxruntime or ``torch.export.load`` (``lightning_gpt.io.deploy``), checked against the model before it is in place.
"""

from __future__ import annotations

from typing import Any

from lightning_gpt.cli.options import checkpoint_parser

__all__ = ["export_command"]

FORMATS = ("hf", "safetensors")  # lightning_gpt.io.hf.FORMATS, spelled here so that the parser needs no torch
DEPLOY_FORMATS = ("onnx", "torch_export")  # lightning_gpt.io.deploy.DEPLOY_FORMATS (same reason)


def _export_parser() -> Any:
    parser = checkpoint_parser(
        "export",
        "Write a checkpoint as a Hugging Face GPT-2 folder (config.json, model.safetensors, "
        "generation_config.json, tokenizer files) or, with --format safetensors, as its weights alone under "
        "lightning-gpt's own names (any architecture). Both add lightning_gpt.json (the exact model config and "
        "tokenizer), so generate/predict/load_checkpoint read the folder back exactly. --format onnx (model.onnx, "
        "for onnxruntime; needs pip install 'lightning-gpt[deploy]') and --format torch_export (model.pt2, for "
        "torch.export.load) write the forward pass instead: input_ids (batch, seq) -> logits, any batch and any "
        "length from 1 to the context, every attention kind, checked against the model at two lengths before the "
        "folder is put in place; deploy.json beside it describes the input and output and keeps the tokenizer.",
    )
    add = parser.add_argument
    add("--output_dir", required=True, help="the folder to create (must not exist, or be empty)")
    add(
        "--format",
        choices=FORMATS + DEPLOY_FORMATS,
        default="hf",
        help="hf (default: transformers-loadable), safetensors, onnx or torch_export (a .pt2 program)",
    )
    return parser


def export_command(argv: list[str]) -> None:
    """``lightning-gpt export``: load a checkpoint and write it as a weights folder.

    Args:
        argv: the arguments after ``export`` (see ``lightning-gpt export --help``).

    Raises:
        ValueError: a model or tokenizer the chosen format cannot express (nothing is written), a bad checkpoint, or
            (onnx) the deploy extra not installed (the pip command).
        FileNotFoundError: a missing checkpoint.
    """
    opts = _export_parser().parse_args(argv)
    from lightning_gpt.io.checkpoint import find_checkpoint, load_checkpoint
    from lightning_gpt.io.deploy import DEPLOY_FORMATS, check_deploy_extra, write_deployment
    from lightning_gpt.io.hf import is_pretrained_path, write_pretrained

    deploy = opts.format in DEPLOY_FORMATS
    if deploy:
        try:
            check_deploy_extra(opts.format)  # before the checkpoint is read: a missing package is said at once
        except ImportError as err:
            raise ValueError(str(err)) from None
    path = opts.ckpt_path if is_pretrained_path(opts.ckpt_path) else find_checkpoint(opts.ckpt_path)
    model, tokenizer = load_checkpoint(path, map_location="cpu", trust_checkpoint=opts.trust_checkpoint)
    if deploy:
        out = write_deployment(model, tokenizer, opts.output_dir, format=opts.format)
    else:
        out = write_pretrained(model, tokenizer, opts.output_dir, format=opts.format)
    print(f"Exported {path} to {out} ({opts.format}).")
