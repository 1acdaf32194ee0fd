"""``GenerationConfig``: the decoding settings of ``GPTModule`` (``predict``, ``generate_text``) as one dataclass.

A YAML sets it under ``model.generation`` (``lightning-gpt predict --model.generation.top_k 50``); ``to_kwargs``
turns it into the keyword arguments of ``lightning_gpt.generation.generate_text``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Optional

import torch

__all__ = ["GenerationConfig"]


@dataclass
class GenerationConfig:
    """How ``predict`` (and ``GPTModule.generate_text``) decodes; passed to ``lightning_gpt.generation.generate``.

    Args:
        max_new_tokens: number of tokens to generate per prompt; ``None``: fill the model's context after the
            longest prompt of the batch.
        do_sample: sample from the distribution (``True``) or decode greedily / with beams (``False``).
        temperature: softmax temperature when sampling (0 means greedy).
        top_k: keep only the k most likely tokens when sampling.
        top_p: nucleus sampling: keep the smallest set of tokens whose probability reaches p.
        min_p: drop tokens whose probability is below ``min_p`` times the top token's.
        repetition_penalty: penalty (> 1 discourages) on tokens already present.
        num_beams: beam search width (1 = no beam search).
        length_penalty: beam score exponent on the generated length.
        num_return_sequences: sequences returned per prompt (at most ``num_beams`` for beam search).
        stop: strings that end generation when produced.
        seed: seed of a dedicated ``torch.Generator`` for sampling (reproducible outputs); None uses torch's RNG.
    """

    max_new_tokens: Optional[int] = None
    do_sample: bool = False
    temperature: float = 1.0
    top_k: Optional[int] = None
    top_p: Optional[float] = None
    min_p: Optional[float] = None
    repetition_penalty: float = 1.0
    num_beams: int = 1
    length_penalty: float = 1.0
    num_return_sequences: int = 1
    stop: Optional[list[str]] = None
    seed: Optional[int] = None

    def to_kwargs(self, device: Optional[torch.device] = None) -> dict[str, Any]:
        """Keyword arguments for ``generate_text``: unset options are left out, ``seed`` becomes a generator."""
        kwargs = {k: v for k, v in dataclasses.asdict(self).items() if v is not None and k != "seed"}
        if self.seed is not None:
            kwargs["generator"] = torch.Generator(device=device or "cpu").manual_seed(self.seed)
        return kwargs
