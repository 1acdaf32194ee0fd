"""Options that several of the light commands (``generate``, ``serve``, ``export``, ``evaluate``) share, spelled once.

Only the standard library here: these commands answer ``--help`` and flag errors before torch is imported.
"""

from __future__ import annotations

from typing import Any

from lightning_gpt.cli.flags import CommandParser

__all__ = ["add_trust_checkpoint", "checkpoint_parser"]


def checkpoint_parser(command: str, description: str) -> CommandParser:
    """The parser of a command that reads a checkpoint: ``lightning-gpt <command>`` with its two checkpoint options,
    ``--ckpt_path`` (required) and ``--trust_checkpoint``; the command adds its own after them.

    Every such command resolves ``--ckpt_path`` the same way (``find_checkpoint``, then ``load_checkpoint``), so
    what it accepts is said once, here.

    Args:
        command: the subcommand's name (``generate``, ``export``, ...).
        description: the ``--help`` paragraph.
    """
    parser = CommandParser(prog=f"lightning-gpt {command}", description=description)
    parser.add_argument(
        "--ckpt_path",
        required=True,
        help="a .ckpt file, a run folder (its newest complete checkpoint), a weights folder (lightning-gpt export, "
        "or a Hugging Face GPT-2 folder), or nanoGPT's ckpt.pt (or its out_dir)",
    )
    add_trust_checkpoint(parser)
    return parser


def add_trust_checkpoint(parser: Any) -> None:
    """Add ``--trust_checkpoint`` (a store-true flag) to an ``argparse.ArgumentParser``.

    Args:
        parser: the command's ``argparse.ArgumentParser``.
    """
    parser.add_argument(
        "--trust_checkpoint",
        action="store_true",
        help="load a checkpoint even when it needs a full unpickle, which can run code from the file (trusted "
        "files only; refused by default)",
    )
