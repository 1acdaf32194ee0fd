"""Decoding for any model that follows the cache protocol (plain PyTorch; no Lightning import).

* ``generate(model, input_ids, max_new_tokens=..., ...)``: greedy, sampling and beam search with Hugging Face keyword
  names and semantics; ``stream_generate`` yields the next ids per step. Their keyword arguments are one typed
  ``DecodeOptions`` (the ``GenerationConfig`` fields, ``GenerationSettings``, and the call's own).
* ``generate_text`` / ``stream_text``: the same from prompt strings through a tokenizer.
* ``processors``: the pure ``(B, V) -> (B, V)`` logits functions (temperature, top-k, top-p, min-p, repetition penalty).

``lightning_gpt.training.prompts.PromptDataModule`` (a LightningDataModule for ``predict``) is not imported here, so
this package stays free of Lightning.
"""

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lightning_gpt.generation.config import GenerationConfig, GenerationSettings
    from lightning_gpt.generation.decode import DecodeOptions, GenerateOutput, generate, stream_generate
    from lightning_gpt.generation.processors import (
        apply_min_p,
        apply_repetition_penalty,
        apply_temperature,
        apply_top_k,
        apply_top_p,
        process_logits,
        sample_from_logits,
    )
    from lightning_gpt.generation.stopping import StopCriteria
    from lightning_gpt.generation.text import encode_prompts, generate_text, stream_text

# Each name is imported from its module on first use: `lightning_gpt.generation.config` (the decoding settings, read by
# `lightning-gpt generate --help`) must not import torch through this package.
_HOME = {
    "GenerationConfig": "config",
    "GenerationSettings": "config",
    "DecodeOptions": "decode",
    "GenerateOutput": "decode",
    "generate": "decode",
    "stream_generate": "decode",
    **dict.fromkeys(
        (
            "apply_min_p",
            "apply_repetition_penalty",
            "apply_temperature",
            "apply_top_k",
            "apply_top_p",
            "process_logits",
            "sample_from_logits",
        ),
        "processors",
    ),
    "StopCriteria": "stopping",
    "encode_prompts": "text",
    "generate_text": "text",
    "stream_text": "text",
}


def __getattr__(name: str) -> Any:
    if name in _HOME:
        import importlib

        return getattr(importlib.import_module(f"lightning_gpt.generation.{_HOME[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "DecodeOptions",
    "GenerateOutput",
    "GenerationConfig",
    "GenerationSettings",
    "StopCriteria",
    "apply_min_p",
    "apply_repetition_penalty",
    "apply_temperature",
    "apply_top_k",
    "apply_top_p",
    "encode_prompts",
    "generate",
    "generate_text",
    "process_logits",
    "sample_from_logits",
    "stream_generate",
    "stream_text",
]
