"""lm-evaluation-harness adapter: our ``GPT`` as an ``lm_eval`` model, registered under the name ``lightning-gpt``.

Needs ``pip install 'lightning-gpt[eval]'`` (``lm_eval``). Importing this module registers the model, so in Python:

```python
import lm_eval
import lightning_gpt.evaluation.harness  # noqa: F401 - registers "lightning-gpt"

lm_eval.simple_evaluate(model="lightning-gpt", model_args="checkpoint=runs/quickstart", tasks=["my_task"])
```

``lightning-gpt evaluate --tasks ...`` does this for you. lm-eval 0.4.13 has no plugin discovery (its ``lm_eval``
command only knows the models of its own ``MODEL_MAPPING``; no entry points are read), so ``lm_eval --model
lightning-gpt`` works through ``python -m lightning_gpt.evaluation.harness`` (the ``lm_eval`` command line with this
model registered), e.g. ``python -m lightning_gpt.evaluation.harness --model lightning-gpt --model_args
checkpoint=PATH --tasks T``.

The three request types run on our own code: ``loglikelihood`` and ``loglikelihood_rolling`` through batched
``GPT.forward`` (``scoring.py``: the same windows and token handling as lm-eval's ``HFLM``, so an exported GPT-2-shaped
model scores the same under ``--model hf``), ``generate_until`` through ``lightning_gpt.generation.generate`` (batched,
left-padded, KV-cached, the ``until`` strings as stop strings). Every attention kind works, including the ones a
Hugging Face export refuses (``linear``, ``sparse``).
"""

from __future__ import annotations

import logging
from typing import Any, Optional, Union

import lm_eval.models  # noqa: F401 - lm-eval's own models first: its registry imports them only while it is empty
import torch
from lm_eval.api.model import TemplateLM

from lightning_gpt.evaluation.scoring import loglikelihood_tokens, rolling_windows
from lightning_gpt.evaluation.text import prefix_token_id
from lightning_gpt.model import GPT

__all__ = ["LightningGPTLM", "MODEL_NAME"]

log = logging.getLogger(__name__)
MODEL_NAME = "lightning-gpt"


def _register(cls: type) -> type:
    from lm_eval.api.registry import model_registry

    if MODEL_NAME not in model_registry:
        model_registry.register(MODEL_NAME)(cls)
    return cls


@_register
class LightningGPTLM(TemplateLM):
    """A ``GPT`` and its tokenizer as an lm-eval model (``lm_eval.api.model.TemplateLM``).

    Args:
        checkpoint: what ``lightning-gpt evaluate --ckpt_path`` accepts: a ``.ckpt``, a run folder, an export or
            Hugging Face GPT-2 folder, nanoGPT's ``ckpt.pt``. Not needed when ``model`` is given.
        model: an already loaded ``GPT`` (``checkpoint`` is then ignored).
        tokenizer: the tokenizer (an object, or a specification for ``lightning_gpt.io.load_tokenizer``); default the
            checkpoint's.
        batch_size: rows per forward pass / per generation batch (lm-eval passes ``--batch_size``).
        device: ``cpu``, ``cuda``, ...; default ``cuda`` when available.
        dtype: ``float32``, ``bfloat16`` or ``float16`` weights; default the saved dtype.
        max_gen_toks: default ``max_gen_toks`` of ``generate_until`` (lm-eval's default is 256).
        trust_checkpoint: allow a checkpoint that needs a full unpickle (code may run; trusted files only).
        kwargs: other lm-eval settings (``max_batch_size``) are accepted and ignored.

    Raises:
        ValueError: neither ``checkpoint`` nor ``model``; a model without a tokenizer.
    """

    def __init__(
        self,
        checkpoint: Optional[str] = None,
        model: Optional[GPT] = None,
        tokenizer: Any = None,
        batch_size: Union[int, str] = 8,
        device: Optional[str] = None,
        dtype: Optional[str] = None,
        max_gen_toks: int = 256,
        trust_checkpoint: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__()
        from lightning_gpt.evaluation.loading import load_model

        if kwargs:
            log.info("lightning-gpt ignores lm-eval model arguments %s", sorted(kwargs))
        if device is not None and str(device).startswith("cuda") and not torch.cuda.is_available():
            log.warning("device=%s is not available (lm_eval's default is cuda); using the CPU.", device)
            device = "cpu"
        if model is None:
            if checkpoint is None:
                raise ValueError("lightning-gpt needs model_args checkpoint=PATH (a .ckpt, run folder or export).")
            model, tokenizer = load_model(
                str(checkpoint),
                tokenizer=tokenizer,
                device=device,
                dtype=dtype,
                trust_checkpoint=_bool(trust_checkpoint),
            )
        elif tokenizer is None or isinstance(tokenizer, str):
            raise ValueError("LightningGPTLM(model=...) needs the tokenizer object too (tokenizer=...).")
        self.model: Any = model.eval()
        self.tokenizer = tokenizer
        self._batch_size = 8 if str(batch_size).startswith("auto") else int(batch_size)
        self._device = next(model.parameters()).device
        self._max_gen_toks = int(max_gen_toks)
        self._n_real = int(model.config.vocab_size)

    # ------------------------------------------------------------------ what TemplateLM needs

    @property
    def eot_token_id(self) -> int:
        """The end-of-text id (EOS)."""
        return self.tokenizer.eos_id

    @property
    def prefix_token_id(self) -> int:
        """What an empty context becomes: BOS, else EOS (``HFLM.prefix_token_id``)."""
        prefix = prefix_token_id(self.tokenizer, self._n_real)
        if prefix is None:
            raise ValueError(
                f"The tokenizer ({self.tokenizer.describe()}) has no BOS or EOS id, so a text cannot be scored from "
                "its first token on (lm-eval's rolling and empty-context requests need one). Use lightning-gpt "
                "evaluate --data.source for such a model, or a tokenizer with a BOS/EOS token."
            )
        return prefix

    @property
    def max_length(self) -> int:
        """The model's context length (``block_size``)."""
        return int(self.model.config.block_size)

    @property
    def max_gen_toks(self) -> int:
        """The default number of tokens ``generate_until`` may generate."""
        return self._max_gen_toks

    @property
    def batch_size(self) -> int:
        """Rows per forward pass."""
        return self._batch_size

    def tok_encode(self, string: str, add_special_tokens: Optional[bool] = None, **kwargs: Any) -> list[int]:
        """Token ids of ``string`` (our tokenizers add no special tokens)."""
        ids = list(self.tokenizer.encode(string))
        left = kwargs.get("left_truncate_len")
        return ids[-left:] if left else ids

    def tok_decode(self, tokens: list[int], skip_special_tokens: bool = True) -> str:
        """Text of ``tokens``."""
        return self.tokenizer.decode(tokens, skip_special=skip_special_tokens)

    def _loglikelihood_tokens(self, requests: list[Any], disable_tqdm: bool = False, **kwargs: Any) -> list[Any]:
        pairs = [(list(context), list(continuation)) for _, context, continuation in requests]
        results = loglikelihood_tokens(self.model, pairs, batch_size=self.batch_size, n_real=self._n_real)
        for (key, _, _), result in zip(requests, results):
            if key is not None:
                self.cache_hook.add_partial("loglikelihood", key, result)
        return results

    def loglikelihood_rolling(self, requests: list[Any], disable_tqdm: bool = False) -> list[float]:
        """Log-likelihood of whole texts, in disjoint windows of the context length (lm-eval's rolling windows)."""
        windows, owner = [], []
        for i, request in enumerate(requests):
            (string,) = request.args
            for window in rolling_windows(self.tok_encode(string), self.prefix_token_id, self.max_length):
                windows.append(window)
                owner.append(i)
        totals = [0.0] * len(requests)
        for i, (logprob, _) in zip(owner, loglikelihood_tokens(self.model, windows, self.batch_size, self._n_real)):
            totals[i] += logprob
        for request, total in zip(requests, totals):
            self.cache_hook.add_partial("loglikelihood_rolling", request.args, total)
        return totals

    def generate_until(self, requests: list[Any], disable_tqdm: bool = False) -> list[str]:
        """Greedy (or sampled, when the task asks) continuations, cut at the first ``until`` string."""
        from lightning_gpt.evaluation.generate import generate_until

        return generate_until(self, requests)


def _bool(value: Any) -> bool:
    return value if isinstance(value, bool) else str(value).strip().lower() in ("1", "true", "yes", "on")


def main() -> None:
    """``lm_eval``'s command line with the ``lightning-gpt`` model registered (``python -m
    lightning_gpt.evaluation.harness --model lightning-gpt --model_args checkpoint=PATH --tasks ...``)."""
    from lm_eval.__main__ import cli_evaluate

    cli_evaluate()


if __name__ == "__main__":
    main()
