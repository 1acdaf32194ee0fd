"""``load_model``: the model and tokenizer of anything ``lightning-gpt evaluate --ckpt_path`` accepts."""

from __future__ import annotations

from typing import Any, Optional

import torch

__all__ = ["load_model"]


def load_model(
    ckpt_path: str,
    *,
    tokenizer: Any = None,
    device: Optional[str] = None,
    dtype: Optional[str] = None,
    trust_checkpoint: bool = False,
) -> tuple[Any, Any]:
    """The model and tokenizer of anything ``--ckpt_path`` accepts, in eval mode on ``device``.

    Args:
        ckpt_path: a ``.ckpt``, a run folder (its newest checkpoint), an export or Hugging Face GPT-2 folder, or
            nanoGPT's ``ckpt.pt`` (or its ``out_dir``).
        tokenizer: a ``Tokenizer``, or a specification for ``lightning_gpt.io.load_tokenizer`` (``tiktoken:gpt2``, a
            ``tokenizer.json``, a checkpoint...); default the checkpoint's (for nanoGPT: ``meta.pkl``, else GPT-2).
        device: default ``cuda`` when available, else ``cpu``.
        dtype: ``float32``, ``bfloat16`` or ``float16``; default the saved dtype.
        trust_checkpoint: allow a full unpickle (code may run) of a trusted file.

    Raises:
        FileNotFoundError: no such checkpoint. ValueError: a damaged file, no tokenizer, or one that does not fit.
    """
    from lightning_gpt.io import find_checkpoint, load_checkpoint, load_tokenizer
    from lightning_gpt.io.serialization import is_pretrained_path

    if isinstance(tokenizer, str):
        tokenizer = load_tokenizer(tokenizer, trust_checkpoint=trust_checkpoint)
    path = ckpt_path if is_pretrained_path(ckpt_path) else find_checkpoint(ckpt_path)
    model, saved = load_checkpoint(path, trust_checkpoint=trust_checkpoint, dtype=dtype, tokenizer=tokenizer)
    tokenizer = tokenizer if tokenizer is not None else saved
    if tokenizer is None:
        raise ValueError(
            f"{path} holds no tokenizer, so text cannot be encoded. Name one with --tokenizer (e.g. tiktoken:gpt2 or "
            "a tokenizer.json), or use a checkpoint written by lightning-gpt fit."
        )
    if int(tokenizer.vocab_size) > int(model.config.padded_vocab_size):
        raise ValueError(
            f"The tokenizer has {tokenizer.vocab_size} ids but the model only {model.config.padded_vocab_size} "
            "embedding rows: it is not this model's tokenizer."
        )
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    return model.to(device).eval(), tokenizer
