"""Tokenizers read from files that hold weights too: a ``.ckpt`` of this package, a Hugging Face GPT-2 folder or a
``lightning-gpt export`` folder. ``load_tokenizer`` accepts every tokenizer specification a command does and hands the
plain ones (trained kinds, ``tiktoken:``, ``tokenizer.json``, hub ids) to ``lightning_gpt.data.build_tokenizer``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable, Optional, Union

from lightning_gpt.data.tokenizers import HFTokenizer, Tokenizer, build_tokenizer, tokenizer_from_state_dict
from lightning_gpt.io.nanogpt import from_nanogpt, is_nanogpt_checkpoint
from lightning_gpt.io.serialization import NATIVE_FILE, _folder, _read_json, is_pretrained_path, read_checkpoint

__all__ = ["load_tokenizer", "read_pretrained_tokenizer"]


def load_tokenizer(
    kind: str,
    texts: Optional[Iterable[str]] = None,
    *,
    vocab_size: int = 4096,
    trust_checkpoint: bool = False,
) -> Tokenizer:
    """Build or load a tokenizer from any specification: ``build_tokenizer``'s, plus a path to a ``.ckpt`` holding
    ``checkpoint["tokenizer"]`` (or nanoGPT's ``ckpt.pt``: its ``meta.pkl``, else GPT-2's BPE) or a weights folder
    (Hugging Face GPT-2 or ``lightning-gpt export``).

    Args:
        kind: the specification (see ``lightning_gpt.data.build_tokenizer`` for the plain ones).
        texts: the corpus documents, required for the trained kinds.
        vocab_size: vocabulary size of ``bpe``/``unigram`` (specials included); ignored otherwise.
        trust_checkpoint: let a ``.ckpt`` that needs a full unpickle load (code may run); trusted files only.

    Raises:
        UnsafeCheckpointError: (a ``ValueError``) a ``.ckpt`` that needs a full unpickle, without ``trust_checkpoint``.
        FileNotFoundError: a ``.ckpt`` or ``tokenizer.json`` path that does not exist.
        ValueError: a checkpoint or folder without a tokenizer; an unknown kind.
    """
    path = os.path.expanduser(kind)
    if path.endswith((".ckpt", ".pt")):
        if not os.path.isfile(path):
            raise FileNotFoundError(f"tokenizer={kind!r}: checkpoint file not found.")
        ckpt = read_checkpoint(path, trust_checkpoint=trust_checkpoint)  # weights-only unless trusted: no code runs
        if is_nanogpt_checkpoint(ckpt):  # nanoGPT's ckpt.pt: the meta.pkl beside it, else GPT-2's BPE
            ckpt = from_nanogpt(ckpt, path)
        if not isinstance(ckpt, dict) or "tokenizer" not in ckpt:
            raise ValueError(f"tokenizer={kind!r}: the checkpoint has no 'tokenizer' entry to reuse.")
        return tokenizer_from_state_dict(ckpt["tokenizer"])
    if is_pretrained_path(path):  # a Hugging Face or exported weights folder: its tokenizer
        state = read_pretrained_tokenizer(path)
        if state is None:
            raise ValueError(
                f"tokenizer={kind!r}: the folder has no tokenizer (tokenizer.json, or vocab.json + merges.txt)."
            )
        return tokenizer_from_state_dict(state)
    return build_tokenizer(kind, texts, vocab_size=vocab_size)


def _special(value: Any) -> Optional[str]:
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def _hf_tokenizer_state(folder: Path) -> Optional[dict[str, Any]]:
    """The ``HFTokenizer`` state of a Hugging Face folder's tokenizer files, or ``None`` when it has none."""
    config = _read_json(folder / "tokenizer_config.json") if (folder / "tokenizer_config.json").is_file() else {}
    specials = {name: _special(config.get(name)) for name in ("bos_token", "eos_token", "pad_token")}
    if (folder / "tokenizer.json").is_file():
        text = (folder / "tokenizer.json").read_text(encoding="utf-8")
    elif (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file():
        from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

        tok = Tokenizer(models.BPE.from_file(str(folder / "vocab.json"), str(folder / "merges.txt")))
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        names = {v for v in specials.values() if v} | {"<|endoftext|>"}
        tok.add_special_tokens([AddedToken(n, special=True) for n in sorted(names) if tok.token_to_id(n) is not None])
        text = tok.to_str()
    else:
        return None
    # Only names the vocabulary has; HFTokenizer detects the usual ones (<|endoftext|> for GPT-2) for the rest.
    probe = HFTokenizer(text, kind="pretrained")
    given = {k: v for k, v in specials.items() if v is not None and probe._tok.token_to_id(v) is not None}
    return HFTokenizer(text, kind="pretrained", **given).state_dict()


def read_pretrained_tokenizer(path: Union[str, Path]) -> Optional[dict[str, Any]]:
    """The tokenizer state (``Tokenizer.state_dict()``) of a weights folder, or ``None`` when it has no tokenizer.

    Args:
        path: the folder, or a ``.safetensors`` file in it.
    """
    folder, _ = _folder(path)
    if (folder / NATIVE_FILE).is_file():
        return _read_json(folder / NATIVE_FILE).get("tokenizer")
    return _hf_tokenizer_state(folder)
