"""The model config and the tokenizer that travel with the weights (``../shared/docs/DESIGN.md``: everything needed
to decode travels with them), for ``GPTModule``.

``ConfigAndTokenizer``, ``GPTModule``'s base class, adopts them (the vocabulary size from the data module's tokenizer;
the config and tokenizer of a checkpoint or of ``init_from``'s weights), saves them in every checkpoint, and decodes
with them (``predict_step``, ``generate_text``). Each adoption checks that what is taken fits what is already there (a
built model's embedding table, a tokenizer already in use) and says in one paragraph what to change when it does not.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Optional, TypeVar

from lightning.pytorch import LightningModule
from lightning.pytorch.utilities import rank_zero_info

from lightning_gpt.config import GPTConfig
from lightning_gpt.generation.config import GenerationConfig
from lightning_gpt.io.checkpoint import resolve_checkpoint_config
from lightning_gpt.model import GPT
from lightning_gpt.training._lightning_internals import attached_trainer
from lightning_gpt.training.parallelize import is_sharded
from lightning_gpt.training.prompts import prompts_in_batch

__all__ = [
    "ConfigAndTokenizer",
    "check_init_tokenizer",
    "config_for_tokenizer",
    "gpt_entries",
    "init_tokenizer",
    "load_init_weights",
    "rebuild_for_config",
    "restore_tokenizer",
]


def gpt_entries(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """``checkpoint`` itself, once it is known to be one that ``GPTModule`` saved (it has a ``gpt_config`` entry).

    Raises:
        ValueError: it has no ``gpt_config`` entry.
    """
    if "gpt_config" not in checkpoint:
        raise ValueError(
            "This checkpoint has no 'gpt_config' entry, so it was not saved by lightning_gpt's GPTModule. Load "
            "plain weights into a GPT yourself, or convert Hugging Face weights with lightning_gpt.io.convert."
        )
    return checkpoint


def config_for_tokenizer(config: GPTConfig, tokenizer: Any, model: Optional[GPT]) -> Optional[GPTConfig]:
    """The config sized for ``tokenizer`` (and one line saying so), or ``None`` when ``config`` already fits it.

    ``vocab_size`` counts the tokenizer's ids; the table is that rounded up to ``padded_vocab_multiple`` (the padding
    the user asked for survives, and the table always fits the tokenizer). A model already built keeps its table.

    Args:
        config: the module's config.
        tokenizer: the data module's tokenizer (``vocab_size``).
        model: the model, when already built.

    Raises:
        ValueError: the built model's table has fewer rows than the tokenizer has ids.
    """
    vocab = int(tokenizer.vocab_size)
    if vocab == config.vocab_size:
        return None
    if model is not None:
        rows = model.config.padded_vocab_size
        if vocab > rows:
            raise ValueError(
                f"The model was built with a vocabulary table of {rows} ids but the data module's tokenizer has "
                f"{vocab} tokens. Build GPTModule without a model (it sizes the vocabulary from the tokenizer) or "
                f"use a tokenizer of at most {rows} tokens."
            )
        return None
    new = dataclasses.replace(config, vocab_size=vocab)
    rank_zero_info(
        f"GPTModule: vocab_size {config.vocab_size} -> {vocab} (from the tokenizer); embedding table of "
        f"{new.padded_vocab_size} rows (padded_vocab_multiple={new.padded_vocab_multiple})."
    )
    return new


def check_init_tokenizer(tokenizer: Any, init_from: str, config: GPTConfig, trust_checkpoint: bool) -> None:
    """The data module's tokenizer must be ``init_from``'s (the weights' token ids mean its tokens).

    Args:
        tokenizer: the data module's tokenizer.
        init_from: the weights' path (``GPTModule(init_from=...)``).
        config: the config resolved from ``init_from``.
        trust_checkpoint: allow a full unpickle of a ``.ckpt`` (``--trust_checkpoint``).

    Raises:
        ValueError: another tokenizer, or another vocabulary size.
    """
    from lightning_gpt.io.init_from import init_tokenizer_state

    state = init_tokenizer_state(init_from, trust_checkpoint=trust_checkpoint)
    try:
        if state is not None:
            tokenizer.check_compatible(state)
        if int(tokenizer.vocab_size) != config.vocab_size:
            raise ValueError(f"{tokenizer.vocab_size} tokens vs {config.vocab_size} rows in the embedding")
    except ValueError as err:
        raise ValueError(
            f"The data module's tokenizer is not the one of init_from={init_from!r} ({err}). Leave the data "
            "tokenizer unset on the command line (it then defaults to init_from's) or pass "
            f"data.tokenizer={init_from!r}."
        ) from None


def _json_normal(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, default=str)


def restore_tokenizer(current: Any, state: Optional[dict[str, Any]]) -> Any:
    """The tokenizer to use after loading a checkpoint whose tokenizer state is ``state``.

    Args:
        current: the tokenizer in use (from the data module), or ``None``.
        state: the checkpoint's ``tokenizer`` entry, or ``None`` (a checkpoint without one).

    Returns:
        ``current`` when there is one (after checking it is the checkpoint's), else the checkpoint's tokenizer.

    Raises:
        ValueError: ``current`` differs from the checkpoint's tokenizer (token ids would not mean the same).
    """
    if state is None:
        return current
    if current is None:
        from lightning_gpt.data import tokenizer_from_state_dict

        return tokenizer_from_state_dict(state)
    if hasattr(current, "check_compatible"):
        current.check_compatible(state)
    elif _json_normal(current.state_dict()) != _json_normal(state):
        raise ValueError(
            "The data module's tokenizer differs from the one saved in the checkpoint, so token ids would not mean "
            "the same thing. Use the same tokenizer settings (and corpus, for trained tokenizers) as the run that "
            "saved the checkpoint, or start a new run without ckpt_path."
        )
    return current


def rebuild_for_config(model: Optional[GPT], old: GPTConfig, config: GPTConfig, frozen: bool) -> Optional[GPT]:
    """The model to use once ``config`` (a checkpoint's) replaces the module's ``old`` config.

    Args:
        model: the model already built, or ``None`` (``configure_model`` builds it later, from ``config``).
        old: the module's config until now.
        config: the adopted config.
        frozen: the built model can no longer be replaced (sharded, or an optimizer holds its parameters).

    Returns:
        ``model`` when the config does not change (or there is no model yet); else a new ``GPT(config)`` on
        ``model``'s device.

    Raises:
        ValueError: the configs differ and the model is ``frozen``.
    """
    if model is None or old == config:
        return model
    if frozen:
        raise ValueError(
            "The checkpoint's model config differs from the model already built and sharded/optimized; pass the "
            "checkpoint's config as model.config (see checkpoint['gpt_config'])."
        )
    device = next(model.parameters()).device
    return GPT(config).to(device)


def load_init_weights(model: GPT, init_from: str, trust_checkpoint: bool) -> None:
    """Load ``init_from``'s weights into ``model`` (built from the config resolved from ``init_from``).

    Args:
        model: the freshly built model.
        init_from: the weights' path (``GPTModule(init_from=...)``).
        trust_checkpoint: allow a full unpickle of a ``.ckpt`` (``--trust_checkpoint``).

    Raises:
        ValueError: the weights do not fit the model.
    """
    from lightning_gpt.io.init_from import init_state_dict

    state = init_state_dict(init_from, model.config, trust_checkpoint=trust_checkpoint)
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise ValueError(f"The weights of init_from={init_from!r} do not fit {model.config}: {err}") from None


def init_tokenizer(init_from: str, trust_checkpoint: bool) -> Any:
    """``init_from``'s tokenizer (for decoding before any data module was attached), or ``None`` when it has none.

    Args:
        init_from: the weights' path.
        trust_checkpoint: allow a full unpickle of a ``.ckpt``.
    """
    from lightning_gpt.io.init_from import init_tokenizer_state

    return restore_tokenizer(None, init_tokenizer_state(init_from, trust_checkpoint=trust_checkpoint))


_Module = TypeVar("_Module", bound="ConfigAndTokenizer")


class ConfigAndTokenizer(LightningModule):
    """``GPTModule``'s base: the config and tokenizer that travel with the weights (see the module docstring).

    Holds ``config``, ``tokenizer``, ``model``, ``init_from`` and ``generation``, which ``GPTModule.__init__`` sets.
    """

    config: GPTConfig
    tokenizer: Any
    model: Optional[GPT]
    init_from: Optional[str]
    generation: GenerationConfig
    _config_given: bool  # the user named a config (a checkpoint's must then match it)

    @classmethod
    def from_model(cls: type[_Module], model: GPT, **kwargs: Any) -> _Module:
        """Wrap an existing ``GPT`` (e.g. converted from Hugging Face; its config becomes the module's) for training
        or prediction; ``kwargs`` are the other ``GPTModule`` arguments."""
        module = cls(config=model.config, **kwargs)
        module.model = model
        return module

    def setup(self, stage: str) -> None:
        """Take the tokenizer from the data module and size the vocabulary from it."""
        tokenizer = getattr(getattr(attached_trainer(self), "datamodule", None), "tokenizer", None)
        if tokenizer is None:
            return
        self.tokenizer = tokenizer
        if self.init_from is not None:
            check_init_tokenizer(tokenizer, self.init_from, self.config, self._trust_checkpoint())
        new = config_for_tokenizer(self.config, tokenizer, self.model)
        if new is not None:
            self._set_config(new)

    def _set_config(self, config: GPTConfig) -> None:
        self.config = config
        self.hparams["config"] = config.to_dict()

    def _trust_checkpoint(self) -> bool:
        # --trust_checkpoint reaches the trainer's checkpoint IO; the same opt-in covers init_from.
        trainer = attached_trainer(self)
        io = getattr(trainer.strategy, "checkpoint_io", None) if trainer is not None else None
        return bool(getattr(io, "trust_checkpoint", False))

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Save the config and the tokenizer beside the weights (``gpt_config``, ``tokenizer``)."""
        checkpoint["gpt_config"] = self.config.to_dict()
        if self.tokenizer is not None:
            checkpoint["tokenizer"] = self.tokenizer.state_dict()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Adopt the checkpoint's tokenizer and config (checked against those in use, see ``restore_tokenizer`` and
        ``resolve_checkpoint_config``); a built model is rebuilt for a different config while that is possible."""
        # The tokenizer first: a different tokenizer also changes vocab_size, and its error names the real cause.
        self.tokenizer = restore_tokenizer(self.tokenizer, gpt_entries(checkpoint).get("tokenizer"))
        saved = resolve_checkpoint_config(checkpoint["gpt_config"], self.config if self._config_given else None)
        trainer = attached_trainer(self)
        frozen = is_sharded(self.model) or (trainer is not None and bool(trainer.optimizers))
        old = self.config
        self._set_config(saved)
        self.model = rebuild_for_config(self.model, old, saved, frozen)

    def predict_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> list[dict[str, Any]]:
        """Decode a batch of prompts (a list of strings, or a dict with ``prompt``/``prompts``): one dict per
        completion, with ``prompt``, ``completion``, ``tokens``, ``finish_reason``."""
        return self.generate_text(prompts_in_batch(batch))

    def on_predict_start(self) -> None:
        """Before decoding anything: every prompt of the data module must fit the context (a data module with
        ``check_prompt_lengths``, such as ``PromptDataModule``, names the file and line of one that does not)."""
        check = getattr(getattr(self.trainer, "datamodule", None), "check_prompt_lengths", None)
        if callable(check) and self.tokenizer is not None:
            check(self.tokenizer, self.config.block_size, self.generation.max_new_tokens)

    def generate_text(self, prompts: list[str], **overrides: Any) -> list[dict[str, Any]]:
        """Decode ``prompts`` with the module's tokenizer and ``generation`` settings (``overrides`` win).

        Raises:
            ValueError: the module has no tokenizer (no data module, checkpoint or ``init_from`` gave one).
        """
        if self.tokenizer is None and self.init_from is not None:
            self.tokenizer = init_tokenizer(self.init_from, self._trust_checkpoint())
        if self.tokenizer is None:
            raise ValueError(
                "GPTModule has no tokenizer: train with a data module that provides one, or load a checkpoint that "
                "holds one (checkpoints saved by GPTModule do)."
            )
        if self.model is None:
            raise ValueError("GPTModule has no model yet: it is built in configure_model (the Trainer calls it).")
        from lightning_gpt.generation.text import generate_text

        # The module's one GenerationConfig travels down as is; overrides are folded into it once, in generate_text.
        return generate_text(self.model, self.tokenizer, prompts, self.generation, **overrides)
