"""Decoding for any model that follows the cache protocol (plain PyTorch; no Lightning import).

* ``generate(model, input_ids, max_new_tokens=..., ...)``: greedy, sampling and beam search with Hugging Face keyword
  names and semantics; ``stream_generate`` yields the next ids per step.
* ``generate_text`` / ``stream_text``: the same from prompt strings through a tokenizer.
* ``processors``: the pure ``(B, V) -> (B, V)`` logits functions (temperature, top-k, top-p, min-p, repetition penalty).

``lightning_gpt.training.prompts.PromptDataModule`` (a LightningDataModule for ``predict``) is not imported here, so
this package stays free of Lightning.
"""

from lightning_gpt.generation.config import GenerationConfig
from lightning_gpt.generation.decode import GenerateOutput, generate, stream_generate
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

__all__ = [
    "GenerateOutput",
    "GenerationConfig",
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
