"""``GenerationConfig``: every decoding setting as one frozen, self-validating object.

It is built once at the edge and passed down unchanged: ``generate(..., **settings)`` folds its Hugging Face-style
keyword arguments into one (``GenerationConfig.fold``), the ``lightning-gpt generate`` command builds one from its
flags, ``GPTModule(generation=...)`` holds one for ``predict`` (``--model.generation.top_k 50``) and
``SampleGeneration(generation=...)`` one for the samples during training (``--sampling.generation.temperature 0.9``).
The sampling loop and beam search read their settings from it; nothing re-validates them.

Defaults: one table, here. The library decodes greedily like Hugging Face ``generate``; the two places that show
text to a person sample instead, because greedy decoding of a small model repeats itself ("the the the"):

* ``generate()``, ``generate_text()``, ``stream_text()`` and ``GPTModule.generation`` (``predict``):
  ``GenerationConfig()`` (greedy, fill the context).
* ``lightning-gpt generate``: ``CLI_DEFAULTS``: ``max_new_tokens=200`` (the stream slides past the context),
  ``do_sample`` (sample unless ``--temperature 0`` or beam search) and ``temperature=0.8``.
* ``SampleGeneration`` (samples during training): ``SAMPLE_CALLBACK_DEFAULTS``: ``max_new_tokens=64``,
  ``do_sample=True``, ``temperature=0.8``, ``top_k=200``.

``DOCUMENTED_DIFFERENCES`` names the fields in which each preset differs; a test checks that every place exposing
these settings uses its preset and that the presets differ from ``GenerationConfig()`` in exactly those fields.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Optional, TypedDict, Union

from lightning_gpt.config import is_int

if TYPE_CHECKING:  # torch is imported when a generator is made: `lightning-gpt generate --help` starts without it
    import torch
    from typing_extensions import Unpack  # typing.Unpack from Python 3.11

__all__ = [
    "GenerationConfig",
    "GenerationSettings",
    "CLI_DEFAULTS",
    "SAMPLE_CALLBACK_DEFAULTS",
    "DOCUMENTED_DIFFERENCES",
]

log = logging.getLogger(__name__)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True)
class GenerationConfig:
    """How to decode: the settings of ``generate`` (Hugging Face names and meanings), checked when built.

    Args:
        max_new_tokens: most tokens generated per row; ``None``: fill the model's context after the (longest,
            padded) prompt.
        do_sample: sample from the processed distribution (``True``) or decode greedily / with beams (``False``).
        temperature: divides the logits when sampling; >= 0, 0 means greedy.
        top_k: keep the k most likely tokens when sampling (ties at the k-th value kept); None/0 disables.
        top_p: nucleus sampling mass in (0, 1]; the token that crosses ``top_p`` is kept; None/1 disables.
        min_p: drop tokens less likely than ``min_p`` x the top probability; in [0, 1], None/0 disables.
        repetition_penalty: > 0; seen tokens' logits divided (if > 0) or multiplied (if < 0) by it; 1 disables.
        num_beams: beam width; 1 means no beam search (with ``do_sample``: Hugging Face's beam sampling).
        length_penalty: beam search: a finished hypothesis scores ``sum(log p) / generated_length ** length_penalty``.
        early_stopping: beam search stopping rule: True, False (heuristic) or ``"never"`` (see ``beam.py``).
        num_return_sequences: rows returned per prompt (beams, or independent samples when sampling).
        stop: stop sequences: strings (matched on the decoded generated text; need a tokenizer) and/or token-id
            lists (matched on the generated ids). A single string or id list is accepted too.
        use_cache: decode through each layer's cache (True) or rerun the whole sequence each step (False).
        seed: seed of a dedicated ``torch.Generator`` for sampling (reproducible output); None: torch's global RNG
            (or the ``generator`` passed to ``generate``).
        num_draft_tokens: speculative decoding (``generate(..., draft_model=draft)``): tokens the draft model proposes
            per round, all checked by one forward pass of the target; >= 1. Ignored without a draft model.

    Raises:
        ValueError: one paragraph naming the setting, the value and the range it must be in.
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
    early_stopping: Union[bool, Literal["never"]] = False
    num_return_sequences: int = 1
    stop: Optional[list[Union[str, list[int]]]] = None
    use_cache: bool = True
    seed: Optional[int] = None
    num_draft_tokens: int = 4

    def __post_init__(self) -> None:
        if self.max_new_tokens is not None and (not is_int(self.max_new_tokens) or self.max_new_tokens < 1):
            raise ValueError(
                f"max_new_tokens must be a positive integer, got {self.max_new_tokens!r} (or None to fill the context)."
            )
        if not isinstance(self.do_sample, bool):
            raise ValueError(f"do_sample must be True or False, got {self.do_sample!r}.")
        if not _is_number(self.temperature) or self.temperature < 0:
            raise ValueError(
                f"temperature must be a number >= 0, got {self.temperature!r}. Use temperature=0 (or do_sample=False) "
                "for greedy decoding, and values > 0 to sample."
            )
        if self.top_k is not None and (not is_int(self.top_k) or self.top_k < 0):
            raise ValueError(f"top_k must be None or an integer >= 0 (0 disables it), got {self.top_k!r}.")
        if self.top_p is not None and (not _is_number(self.top_p) or not 0.0 < self.top_p <= 1.0):
            raise ValueError(f"top_p must be in (0, 1] (1 disables it), got {self.top_p!r}.")
        if self.min_p is not None and (not _is_number(self.min_p) or not 0.0 <= self.min_p <= 1.0):
            raise ValueError(f"min_p must be in [0, 1] (0 disables it), got {self.min_p!r}.")
        if not _is_number(self.repetition_penalty) or self.repetition_penalty <= 0:
            raise ValueError(f"repetition_penalty must be > 0 (1.0 disables it), got {self.repetition_penalty!r}.")
        if not is_int(self.num_beams) or self.num_beams < 1:
            raise ValueError(f"num_beams must be an integer >= 1 (1: no beam search), got {self.num_beams!r}.")
        if not is_int(self.num_return_sequences) or self.num_return_sequences < 1:
            raise ValueError(f"num_return_sequences must be an integer >= 1, got {self.num_return_sequences!r}.")
        if self.num_beams > 1 and self.num_return_sequences > self.num_beams:
            raise ValueError(
                f"num_return_sequences ({self.num_return_sequences}) cannot exceed num_beams ({self.num_beams}): beam "
                "search returns at most num_beams hypotheses. Raise num_beams or lower num_return_sequences."
            )
        if self.num_beams == 1 and self.num_return_sequences > 1 and not self.do_sample:
            raise ValueError(
                f"num_return_sequences={self.num_return_sequences} with greedy decoding would return "
                f"{self.num_return_sequences} identical rows. Pass do_sample=True to draw different samples, or "
                "num_beams >= num_return_sequences."
            )
        if not _is_number(self.length_penalty):
            raise ValueError(f"length_penalty must be a finite number, got {self.length_penalty!r}.")
        if not (self.early_stopping is True or self.early_stopping is False or self.early_stopping == "never"):
            raise ValueError(f"early_stopping must be True, False or 'never', got {self.early_stopping!r}.")
        if not isinstance(self.use_cache, bool):
            raise ValueError(f"use_cache must be True or False, got {self.use_cache!r}.")
        if self.seed is not None and not is_int(self.seed):
            raise ValueError(f"seed must be None or an integer, got {self.seed!r}.")
        if not is_int(self.num_draft_tokens) or self.num_draft_tokens < 1:
            raise ValueError(f"num_draft_tokens must be an integer >= 1, got {self.num_draft_tokens!r}.")
        if self.stop is not None:
            self._check_stop()

    def _check_stop(self) -> None:
        stop: Any = self.stop  # checked here: a YAML file or a caller may give any shape
        if isinstance(stop, str) or (isinstance(stop, (list, tuple)) and stop and all(is_int(t) for t in stop)):
            stop = [stop]  # one string or one id sequence
        if not isinstance(stop, (list, tuple)):
            raise ValueError(f"stop must be a string, a list of token ids, or a list of them; got {stop!r}.")
        items: list[Union[str, list[int]]] = []
        for item in stop:
            if isinstance(item, str) and item:
                items.append(item)
            elif isinstance(item, (list, tuple)) and item and all(is_int(t) for t in item):
                items.append(list(item))
            elif isinstance(item, str):
                raise ValueError("stop contains an empty string; stop strings must be non-empty.")
            else:
                raise ValueError(
                    f"Each stop sequence must be a non-empty string or a non-empty list of token ids, got {item!r}."
                )
        # A copy, so the caller's list cannot change a frozen config; ids are checked against the vocabulary (and
        # strings against the tokenizer) by ``StopCriteria`` where decoding starts.
        object.__setattr__(self, "stop", items)

    @property
    def sampling(self) -> bool:
        """Whether tokens are drawn at random (``do_sample`` with a temperature above 0)."""
        return self.do_sample and self.temperature > 0

    @classmethod
    def fold(
        cls, config: Optional["GenerationConfig"] = None, **settings: Unpack[GenerationSettings]
    ) -> "GenerationConfig":
        """``config`` (default ``GenerationConfig()``) with ``settings`` applied: how keyword arguments become one.

        Args:
            config: the base settings.
            settings: field names and values that win over ``config``.

        Raises:
            ValueError: an unknown setting name, or a value out of range.
        """
        if config is None:
            config = cls()
        elif isinstance(config, dict):
            config = cls.fold(None, **config)
        elif not isinstance(config, GenerationConfig):
            raise ValueError(
                f"config must be a GenerationConfig (or a dict of its fields), got {type(config).__name__}."
            )
        unknown = sorted(set(settings) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ValueError(
                f"Unknown decoding setting(s) {unknown}; the settings are the fields of GenerationConfig: "
                f"{[f.name for f in dataclasses.fields(cls)]}."
            )
        return dataclasses.replace(config, **settings) if settings else config

    def make_generator(self, device: Union[str, torch.device, None] = None) -> Optional[torch.Generator]:
        """A ``torch.Generator`` seeded with ``seed`` on ``device``, or ``None`` when no seed is set."""
        if self.seed is None:
            return None
        import torch

        return torch.Generator(device=device or "cpu").manual_seed(self.seed)

    def warn_ignored(self) -> None:
        """Log a warning when sampling settings are given but ``do_sample`` is off (they would be ignored)."""
        if self.do_sample:
            return
        ignored = [
            name
            for name, value, neutral in (
                ("temperature", self.temperature, (1.0, 0.0)),
                ("top_k", self.top_k, (None, 0)),
                ("top_p", self.top_p, (None, 1.0)),
                ("min_p", self.min_p, (None, 0.0)),
            )
            if value not in neutral
        ]
        if ignored:
            log.warning(
                "do_sample=False, so %s only matter when sampling and are ignored (greedy decoding). Pass "
                "do_sample=True to sample.",
                ", ".join(ignored),
            )


class GenerationSettings(TypedDict, total=False):
    """The fields of ``GenerationConfig`` as keyword arguments (``generate(model, ids, top_k=50)``), typed for
    checkers (PEP 692: ``**settings: Unpack[GenerationSettings]``); a test holds it to the dataclass's fields and
    types. Meanings and ranges: ``GenerationConfig``."""

    max_new_tokens: Optional[int]
    do_sample: bool
    temperature: float
    top_k: Optional[int]
    top_p: Optional[float]
    min_p: Optional[float]
    repetition_penalty: float
    num_beams: int
    length_penalty: float
    early_stopping: Union[bool, Literal["never"]]
    num_return_sequences: int
    stop: Optional[list[Union[str, list[int]]]]
    use_cache: bool
    seed: Optional[int]
    num_draft_tokens: int


# The presets of the table in the module docstring. ``lightning-gpt generate`` resolves ``do_sample`` itself when the
# flag is not given (sample unless temperature 0 or beam search), so its preset says True for the plain case.
CLI_DEFAULTS = GenerationConfig(max_new_tokens=200, do_sample=True, temperature=0.8)
SAMPLE_CALLBACK_DEFAULTS = GenerationConfig(max_new_tokens=64, do_sample=True, temperature=0.8, top_k=200)
DOCUMENTED_DIFFERENCES: dict[str, set[str]] = {
    "library": set(),
    "cli": {"max_new_tokens", "do_sample", "temperature"},
    "sample_callback": {"max_new_tokens", "do_sample", "temperature", "top_k"},
}
