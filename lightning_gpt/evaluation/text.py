"""Text mode of ``lightning-gpt evaluate``: loss, perplexity and bits per byte of a model on documents.

Each document is scored on its own, every token once, in lm-eval's rolling windows (``scoring.rolling_windows``):
the first token from the tokenizer's BOS (else EOS) id, later ones from up to ``block_size`` tokens before them. So the
figures are those of lm-eval's ``loglikelihood_rolling`` tasks (``wikitext``'s ``bits_per_byte``), here on any text
source. A vocabulary without BOS and EOS (nanoGPT's characters) cannot predict a first token: there the first token
is context only, and neither its loss nor its bytes count.

* ``loss``: total negative log-likelihood (nats) / scored tokens; ``perplexity`` = exp(loss);
* ``bits_per_byte``: total nats / ln 2 / UTF-8 bytes of the scored text (``metrics.bits_per_byte``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Optional

from lightning_gpt.evaluation.metrics import bits_per_byte, perplexity, utf8_length
from lightning_gpt.evaluation.scoring import Pair, loglikelihood_tokens, rolling_windows
from lightning_gpt.model import GPT

__all__ = ["TextScores", "prefix_token_id", "score_documents"]

_WINDOWS_PER_CALL = 256  # windows gathered before a scoring call: bounded memory for any corpus size


@dataclass
class TextScores:
    """Totals over the scored documents.

    Args:
        nats: summed negative log-likelihood of every scored token (natural log).
        tokens: scored tokens.
        bytes: UTF-8 bytes of the scored text.
        documents: documents scored.
    """

    nats: float = 0.0
    tokens: int = 0
    bytes: int = 0
    documents: int = 0

    def as_dict(self) -> dict[str, Any]:
        """``loss``, ``perplexity``, ``bits_per_byte`` and the counts behind them (JSON-ready).

        Raises:
            ValueError: nothing was scored.
        """
        if self.tokens == 0:
            raise ValueError("No token was scored: the source is empty or every document is a single token.")
        return {
            "loss": self.nats / self.tokens,
            "perplexity": perplexity(self.nats, self.tokens),
            "bits_per_byte": float(bits_per_byte(self.nats, self.bytes)),
            "tokens": self.tokens,
            "bytes": self.bytes,
            "documents": self.documents,
        }


def prefix_token_id(tokenizer: Any, n_real: int) -> Optional[int]:
    """The id a text's first token is predicted from: BOS, else EOS (lm-eval ``HFLM.prefix_token_id``), if the model
    has a row for it; ``None`` when there is neither.

    Args:
        tokenizer: with ``bos_id`` and ``eos_id``.
        n_real: the model's ``config.vocab_size``.
    """
    for i in (getattr(tokenizer, "bos_id", None), getattr(tokenizer, "eos_id", None)):
        if i is not None and 0 <= int(i) < n_real:
            return int(i)
    return None


def score_documents(model: GPT, tokenizer: Any, documents: Iterable[str], batch_size: int = 8) -> TextScores:
    """Score every document of ``documents`` (see the module docstring).

    Args:
        model: a ``GPT``.
        tokenizer: its tokenizer (``encode``, ``decode``, ``bos_id``, ``eos_id``).
        documents: the texts, read once as they are scored (a source of any size streams through).
        batch_size: windows per forward pass.

    Returns:
        The totals; ``.as_dict()`` gives the metrics.

    Raises:
        ValueError: a text with a character the tokenizer cannot encode, or ids outside the model's vocabulary.
    """
    n_real = int(model.config.vocab_size)
    prefix = prefix_token_id(tokenizer, n_real)
    scores = TextScores()
    pending: list[Pair] = []

    def flush() -> None:
        for logprob, _ in loglikelihood_tokens(model, pending, batch_size=batch_size, n_real=n_real):
            scores.nats -= logprob
        pending.clear()

    for doc in documents:
        ids = list(tokenizer.encode(doc))
        n_bytes = utf8_length(doc)
        if prefix is None:  # no BOS/EOS: the first token only conditions the rest
            n_bytes -= utf8_length(tokenizer.decode(ids[:1]))
            windows = _windows_after_first(ids, int(model.config.block_size))
        else:
            windows = rolling_windows(ids, prefix, int(model.config.block_size))
        if not windows:
            continue
        pending.extend(windows)
        scores.tokens += sum(len(cont) for _, cont in windows)
        scores.bytes += n_bytes
        scores.documents += 1
        if len(pending) >= _WINDOWS_PER_CALL:
            flush()
    if pending:
        flush()
    return scores


def _windows_after_first(ids: list[int], block_size: int) -> list[Pair]:
    """Rolling windows over ``ids[1:]`` with ``ids[0]`` as the context of the first one."""
    return rolling_windows(ids[1:], ids[0], block_size) if len(ids) > 1 else []
