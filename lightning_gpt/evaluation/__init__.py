"""Evaluation (plain PyTorch, no Lightning): ``evaluate`` on a text source (loss, perplexity, bits per byte) or on
lm-evaluation-harness tasks, the metrics themselves, and the lm-eval model adapter (``harness``, needs ``lm_eval``:
``pip install 'lightning-gpt[eval]'``; imported only when tasks are run).
"""

from lightning_gpt.evaluation.evaluate import evaluate, format_table
from lightning_gpt.evaluation.loading import load_model
from lightning_gpt.evaluation.metrics import bits_per_byte, perplexity, token_byte_lengths, utf8_length
from lightning_gpt.evaluation.text import TextScores, score_documents

__all__ = [
    "TextScores",
    "bits_per_byte",
    "evaluate",
    "format_table",
    "load_model",
    "perplexity",
    "score_documents",
    "token_byte_lengths",
    "utf8_length",
]
