"""Options that several of the light commands (``generate``, ``serve``, ``export``, ``evaluate``) share, spelled once.

Only the standard library here: these commands answer ``--help`` and flag errors before torch is imported.
"""

from __future__ import annotations

from typing import Any

__all__ = ["add_trust_checkpoint"]


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
