"""Tokenizers read from files that hold weights too: a ``.ckpt`` of this package, a Hugging Face GPT-2 folder or a
``lightning-gpt export`` folder. ``load_tokenizer`` accepts every tokenizer specification a command does and hands the
plain ones (trained kinds, ``tiktoken:``, ``tokenizer.json``, hub ids) to ``lightning_gpt.data.build_tokenizer``."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable, Optional, Union

from lightning_gpt.data.tokenizers import HFTokenizer, Tokenizer, build_tokenizer, tokenizer_from_state_dict
from lightning_gpt.io.nanogpt import from_nanogpt, is_nanogpt_checkpoint
from lightning_gpt.io.serialization import NATIVE_FILE, _folder, _read_json, is_pretrained_path, read_checkpoint
from lightning_gpt.jsonfile import env_megabytes

__all__ = [
    "MAX_TOKENIZER_MB_ENV",
    "load_tokenizer",
    "max_tokenizer_bytes",
    "read_pretrained_tokenizer",
    "read_tokenizer_json",
    "tokenizer_from_state",
]

MAX_TOKENIZER_MB_ENV = "LIGHTNING_GPT_MAX_TOKENIZER_MB"
"""Environment variable: the largest ``tokenizer.json`` (in MB) that is read; 256 by default. The largest public
tokenizers are tens of MB; a file of several GB would take minutes and as many GB of memory to parse."""
_DEFAULT_MAX_TOKENIZER_MB = 256
# Text a working tokenizer encodes without error: letters, digits, punctuation, accents, CJK, emoji, a control char.
_PROBE = "Hello, world! 123 \u00e9\u00fc \u4e2d\u6587 \U0001f642 \x00\ttab\n"


def max_tokenizer_bytes() -> int:
    """The size limit of a tokenizer file, in bytes (``$LIGHTNING_GPT_MAX_TOKENIZER_MB`` MB, default 256)."""
    return env_megabytes(MAX_TOKENIZER_MB_ENV, _DEFAULT_MAX_TOKENIZER_MB)


def _check_size(n_bytes: int, where: object) -> None:
    limit = max_tokenizer_bytes()
    if n_bytes > limit:
        raise ValueError(
            f"{where} is {n_bytes / 1e6:.0f} MB, more than the {limit / 1e6:.0f} MB a tokenizer file may have "
            f"(${MAX_TOKENIZER_MB_ENV}): parsing it would take minutes and as much memory. Check that it is the "
            f"tokenizer you meant; if it is, raise the limit, e.g. {MAX_TOKENIZER_MB_ENV}={int(n_bytes / 1e6) + 1}."
        )


def _check_json(text: str, where: object) -> None:
    """Refuse text that is not a ``tokenizers`` JSON object with a ``model``, naming ``where`` (run only to explain
    a failure of the ``tokenizers`` parser: parsing a large file twice would double its cost)."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"{where} is not JSON ({err}), so it is not a tokenizer.json.") from None
    if not isinstance(data, dict):
        raise ValueError(f"{where} holds a JSON {type(data).__name__}, not a tokenizer (a JSON object with a model).")
    if not isinstance(data.get("model"), dict):
        raise ValueError(
            f"{where} has no 'model' object, so it is not a tokenizer.json of the tokenizers library (which "
            "tokenizer.save / save_pretrained write)."
        )


def _checked(build: Any, where: object, text: Optional[str] = None) -> Tokenizer:
    """``build()``, with every failure of a malformed tokenizer (``tokenizers`` raises plain ``Exception``s) as one
    ``ValueError`` naming ``where`` (and, given the JSON ``text``, what is wrong with its structure); the tokenizer
    must also encode a probe text (a missing ``[UNK]`` shows there)."""
    fix = "Replace it with the tokenizer the model was trained with (save_pretrained or tokenizer.save writes one)."
    try:
        tokenizer = build()
    except Exception as err:  # noqa: BLE001 - tokenizers' Rust errors are plain Exceptions
        if text is not None:
            _check_json(text, where)
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise ValueError(f"{where} is not a usable tokenizer ({type(err).__name__}: {reason}). {fix}") from None
    if isinstance(tokenizer, HFTokenizer):
        try:
            tokenizer.encode(_PROBE)
        except Exception as err:  # noqa: BLE001
            reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
            raise ValueError(f"{where} loads but cannot encode text ({reason}). {fix}") from None
    return tokenizer


def read_tokenizer_json(path: Union[str, Path], **specials: Optional[str]) -> HFTokenizer:
    """A pretrained ``tokenizer.json``, checked: size (see ``max_tokenizer_bytes``), JSON, a ``model``, and that it
    encodes text.

    Args:
        path: the file.
        specials: ``bos_token`` / ``eos_token`` / ``pad_token`` for ``HFTokenizer``.

    Raises:
        FileNotFoundError: no such file. ValueError: too large, not UTF-8 JSON, or not a working tokenizer (the
            message names the file).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Tokenizer file not found: {path}.")
    _check_size(path.stat().st_size, path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(
            f"{path} is not UTF-8 text ({err.reason} at byte {err.start}), so not a tokenizer.json."
        ) from None
    tokenizer = _checked(lambda: HFTokenizer(text, kind="pretrained", **specials), path, text)
    assert isinstance(tokenizer, HFTokenizer)
    return tokenizer


def tokenizer_from_state(state: Any, where: object) -> Tokenizer:
    """``tokenizer_from_state_dict`` for a state read from a file (a checkpoint's ``tokenizer``,
    ``lightning_gpt.json``): a malformed or huge one is one ``ValueError`` naming ``where`` instead of a
    ``tokenizers`` traceback.

    Args:
        state: what ``Tokenizer.state_dict()`` returned, as stored.
        where: how to name it, e.g. ``"runs/x/last.ckpt (its tokenizer entry)"``.
    """
    if not isinstance(state, dict) or not isinstance(state.get("kind"), str):
        raise ValueError(f"{where} is not a tokenizer state (a dict with a 'kind'); the file is damaged.")
    text = state.get("tokenizer_json")
    if state["kind"] in HFTokenizer.state_kinds:
        if not isinstance(text, str):
            raise ValueError(f"{where}: a {state['kind']} tokenizer state without its tokenizer_json text; damaged.")
        _check_size(len(text.encode("utf-8", errors="replace")), where)
    return _checked(lambda: tokenizer_from_state_dict(state), where, text if isinstance(text, str) else None)


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
        from lightning_gpt.io.sharded import is_sharded_checkpoint, read_sharded_index

        if is_sharded_checkpoint(path):  # FSDP2's folder: the tokenizer is in its meta.pt
            ckpt: Any = read_sharded_index(path, trust_checkpoint=trust_checkpoint)[0]
        elif not os.path.isfile(path):
            raise FileNotFoundError(f"tokenizer={kind!r}: checkpoint file not found.")
        else:
            ckpt = read_checkpoint(path, trust_checkpoint=trust_checkpoint)  # weights-only unless trusted
        if is_nanogpt_checkpoint(ckpt):  # nanoGPT's ckpt.pt: the meta.pkl beside it, else GPT-2's BPE
            ckpt = from_nanogpt(ckpt, path)
        if not isinstance(ckpt, dict) or "tokenizer" not in ckpt:
            raise ValueError(f"tokenizer={kind!r}: the checkpoint has no 'tokenizer' entry to reuse.")
        return tokenizer_from_state(ckpt["tokenizer"], f"{path} (its tokenizer entry)")
    if is_pretrained_path(path):  # a Hugging Face or exported weights folder: its tokenizer
        state = read_pretrained_tokenizer(path)
        if state is None:
            raise ValueError(
                f"tokenizer={kind!r}: the folder has no tokenizer (tokenizer.json, or vocab.json + merges.txt)."
            )
        return tokenizer_from_state(state, path)
    if path.endswith(".json") or (os.path.isdir(path) and os.path.isfile(os.path.join(path, "tokenizer.json"))):
        file = os.path.join(path, "tokenizer.json") if os.path.isdir(path) else path
        if not os.path.isfile(file):
            raise FileNotFoundError(f"tokenizer={kind!r}: no tokenizer.json found at {file!r}.")
        return read_tokenizer_json(file)
    return build_tokenizer(kind, texts, vocab_size=vocab_size)


def _special(value: Any) -> Optional[str]:
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def _hf_tokenizer_state(folder: Path) -> Optional[dict[str, Any]]:
    """The ``HFTokenizer`` state of a Hugging Face folder's tokenizer files, or ``None`` when it has none."""
    config = _read_json(folder / "tokenizer_config.json") if (folder / "tokenizer_config.json").is_file() else {}
    specials = {name: _special(config.get(name)) for name in ("bos_token", "eos_token", "pad_token")}
    probe: Tokenizer
    if (folder / "tokenizer.json").is_file():
        probe = read_tokenizer_json(folder / "tokenizer.json")
    elif (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file():
        for name in ("vocab.json", "merges.txt"):
            _check_size((folder / name).stat().st_size, folder / name)
        probe = _checked(lambda: HFTokenizer(_bpe_json(folder, specials), kind="pretrained"), folder / "vocab.json")
    else:
        return None
    # Only names the vocabulary has; HFTokenizer detects the usual ones (<|endoftext|> for GPT-2) for the rest.
    assert isinstance(probe, HFTokenizer)
    given = {k: v for k, v in specials.items() if v is not None and probe._tok.token_to_id(v) is not None}
    return HFTokenizer(probe.state_dict()["tokenizer_json"], kind="pretrained", **given).state_dict()


def _bpe_json(folder: Path, specials: dict[str, Optional[str]]) -> str:
    """GPT-2's byte-level BPE from ``vocab.json`` + ``merges.txt`` as a ``tokenizer.json`` text."""
    from tokenizers import AddedToken, decoders, models, pre_tokenizers
    from tokenizers import Tokenizer as RustTokenizer

    tok = RustTokenizer(models.BPE.from_file(str(folder / "vocab.json"), str(folder / "merges.txt")))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    names = {v for v in specials.values() if v} | {"<|endoftext|>"}
    tok.add_special_tokens([AddedToken(n, special=True) for n in sorted(names) if tok.token_to_id(n) is not None])
    return str(tok.to_str())


def read_pretrained_tokenizer(path: Union[str, Path]) -> Optional[dict[str, Any]]:
    """The tokenizer state (``Tokenizer.state_dict()``) of a weights folder, or ``None`` when it has no tokenizer.

    Args:
        path: the folder, or a ``.safetensors`` file in it.
    """
    folder, _ = _folder(path)
    if (folder / NATIVE_FILE).is_file():
        state = _read_json(folder / NATIVE_FILE).get("tokenizer")
        if state is not None:
            tokenizer_from_state(state, f"{folder / NATIVE_FILE} (its tokenizer entry)")  # malformed: one paragraph
        return state
    return _hf_tokenizer_state(folder)
