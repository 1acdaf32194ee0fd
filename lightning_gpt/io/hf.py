"""Weights folders: read Hugging Face GPT-2 folders, write ``lightning-gpt export`` folders; no ``transformers``.

A folder that ``save_pretrained`` wrote (``config.json`` + ``model.safetensors`` or ``pytorch_model.bin`` + the
tokenizer's ``tokenizer.json`` or ``vocab.json``/``merges.txt``) is read with plain JSON, ``safetensors`` and a
weights-only ``torch.load``; the parameter mapping (Conv1D transposes, tied head) is ``lightning_gpt.io.convert``'s.

``write_pretrained`` writes the same layout (``format="hf"``, for ``transformers.AutoModelForCausalLM`` and
``AutoTokenizer``), or the weights alone under this package's own names (``format="safetensors"``, for any
architecture). Both add ``lightning_gpt.json``: the exact ``GPTConfig`` and tokenizer state, so reading the folder back
decodes exactly as the checkpoint did.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Optional, Union

import torch

from lightning_gpt.config import GPTConfig
from lightning_gpt.io.atomic import atomic_directory
from lightning_gpt.io.convert import config_from_hf_gpt2, hf_gpt2_config_dict, state_dict_to_hf_gpt2
from lightning_gpt.io.serialization import (
    BIN_FILE,
    CONFIG_FILE,
    LAYOUT,
    NATIVE_FILE,
    SAFETENSORS_FILE,
    _folder,
    _read_json,
    is_pretrained_path,
    read_checkpoint,
    write_safetensors,
)
from lightning_gpt.io.tokenizer import read_pretrained_tokenizer
from lightning_gpt.io.weights import check_weights, config_from_entry, hf_weight_names, safetensors_specs
from lightning_gpt.model import GPT

__all__ = [
    "FORMATS",
    "is_pretrained_path",
    "load_pretrained",
    "read_pretrained",
    "read_pretrained_config",
    "read_pretrained_tokenizer",
    "write_pretrained",
]

FORMATS = ("hf", "safetensors")
# transformers.GPT2Config's defaults, for fields a config.json may leave out.
_HF_DEFAULTS = dict(
    vocab_size=50257,
    n_positions=1024,
    n_embd=768,
    n_layer=12,
    n_head=12,
    n_inner=None,
    activation_function="gelu_new",
    layer_norm_epsilon=1e-5,
    tie_word_embeddings=True,
)


def _hf_config(folder: Path) -> GPTConfig:
    data = _read_json(folder / CONFIG_FILE)
    model_type = data.get("model_type")
    if model_type != "gpt2":
        raise ValueError(
            f"{folder / CONFIG_FILE} describes model_type={model_type!r}; lightning-gpt reads GPT-2 folders only "
            "(model_type 'gpt2', e.g. gpt2, gpt2-medium, distilgpt2 or a fine-tuned GPT-2)."
        )
    fields = {**_HF_DEFAULTS, **{k: v for k, v in data.items() if v is not None or k == "n_inner"}}
    return config_from_hf_gpt2(SimpleNamespace(**fields))


def _config_file(folder: Path) -> Path:
    return folder / (NATIVE_FILE if (folder / NATIVE_FILE).is_file() else CONFIG_FILE)


def _stored_config(folder: Path) -> tuple[GPTConfig, dict[str, Any]]:
    """``(config, lightning_gpt.json's other entries)`` of a folder, from JSON alone."""
    if (folder / NATIVE_FILE).is_file():
        native = _read_json(folder / NATIVE_FILE)
        if "gpt_config" not in native:
            raise ValueError(
                f"{folder / NATIVE_FILE} has no 'gpt_config' entry, so the folder's model config is unknown. Restore "
                "the file that lightning-gpt export wrote, or export the checkpoint again."
            )
        return config_from_entry(native["gpt_config"], f"{folder / NATIVE_FILE}'s gpt_config"), native
    if not (folder / CONFIG_FILE).is_file():
        raise ValueError(f"{folder} has neither {NATIVE_FILE} nor {CONFIG_FILE} beside the weights. Expected {LAYOUT}.")
    return _hf_config(folder), {}


def _weights_file(folder: Path, weights: Optional[Path]) -> Path:
    if weights is None:
        weights = folder / SAFETENSORS_FILE
        if not weights.is_file():
            weights = folder / BIN_FILE
    if not weights.is_file():
        sharded = any(folder.glob("*.index.json"))
        raise FileNotFoundError(
            f"{folder} has no model.safetensors or pytorch_model.bin"
            + (" (sharded weights are not supported: save with a larger max_shard_size)" if sharded else "")
            + f". Expected {LAYOUT}."
        )
    return weights


def _lazy_weights(file: Path, trust_checkpoint: bool) -> dict[str, torch.Tensor]:
    """The file's tensors without reading their data: meta tensors from a safetensors header, memory-mapped ones from
    a ``.bin``."""
    if file.suffix == ".safetensors":
        return safetensors_specs(file)
    state = read_checkpoint(file, trust_checkpoint=trust_checkpoint, mmap=True)
    if not isinstance(state, dict):
        raise ValueError(f"{file} holds a {type(state).__name__}, not a state dict of tensors.")
    return {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}


def _as_gpt_state(raw: dict[str, torch.Tensor], native: dict[str, Any], config: GPTConfig) -> dict[str, torch.Tensor]:
    """Stored names -> ``GPT``'s (views only); the tied head added where the file leaves it out."""
    state = hf_weight_names(raw) if native.get("weights", "hf_gpt2") == "hf_gpt2" else dict(raw)
    if config.tie_weights and "lm_head.weight" not in state and "transformer.wte.weight" in state:
        state["lm_head.weight"] = state["transformer.wte.weight"]
    return state


def _checked_folder(
    path: Union[str, Path], trust_checkpoint: bool
) -> tuple[Path, Path, GPTConfig, dict[str, Any], dict[str, torch.Tensor]]:
    """``(folder, weights file, config, native entries, lazy weights)``, the config checked against the weights."""
    folder, weights = _folder(path)
    config, native = _stored_config(folder)
    file = _weights_file(folder, weights)
    raw = _lazy_weights(file, trust_checkpoint)
    check_weights(config, _as_gpt_state(raw, native, config), file, f"the model config in {_config_file(folder)}")
    return folder, file, config, native, raw


def read_pretrained_config(path: Union[str, Path], trust_checkpoint: bool = False) -> GPTConfig:
    """The ``GPTConfig`` of a weights folder or ``.safetensors`` file, checked against the weights' names, shapes and
    dtypes (a safetensors header, or a ``.bin`` memory-mapped: the weights' data is not read).

    Args:
        path: the folder, or a ``.safetensors`` file with ``lightning_gpt.json`` or ``config.json`` beside it.
        trust_checkpoint: allow a ``pytorch_model.bin`` that needs a full unpickle (code may run).

    Returns:
        The config (for a Hugging Face folder: ``dropout=0``, ``attention='standard'``).

    Raises:
        FileNotFoundError: no such folder, or no weights in it. ValueError: no config, not a GPT-2 config, or a
            config that does not describe the weights (the message names the tensors).
    """
    return _checked_folder(path, trust_checkpoint)[2]


def read_pretrained(
    path: Union[str, Path], trust_checkpoint: bool = False
) -> tuple[GPTConfig, dict[str, torch.Tensor], Optional[dict[str, Any]]]:
    """Read a weights folder (or ``.safetensors`` file): its config, its weights under ``GPT``'s names, its tokenizer.

    The config is checked against the weights before their data is read (see ``read_pretrained_config``).

    Args:
        path: a Hugging Face GPT-2 folder, a ``lightning-gpt export`` folder, or a ``.safetensors`` file in one.
        trust_checkpoint: allow a ``pytorch_model.bin`` that needs a full unpickle (code may run); trusted files only.

    Returns:
        ``(config, state_dict, tokenizer_state)``; ``tokenizer_state`` is ``None`` when the folder has no tokenizer.

    Raises:
        FileNotFoundError: a missing folder or weights file.
        UnsafeCheckpointError: a ``.bin`` that needs a full unpickle, without ``trust_checkpoint``.
        ValueError: no or a non-GPT-2 ``config.json``; weights that do not match the config (missing, unexpected,
            differently shaped or non-float tensors, named); a malformed tokenizer.
    """
    folder, file, config, native, raw = _checked_folder(path, trust_checkpoint)
    tokenizer = read_pretrained_tokenizer(folder)
    if file.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            raw = load_file(str(file), device="cpu")
        except Exception as err:  # noqa: BLE001 - safetensors raises its own error types on bad bytes
            raise ValueError(f"{file} is not a readable safetensors file ({type(err).__name__}: {err}).") from None
    return config, _as_gpt_state(raw, native, config), tokenizer


def load_pretrained(
    path: Union[str, Path], map_location: Any = "cpu", trust_checkpoint: bool = False, **config_overrides: Any
) -> tuple[GPT, Optional[Any]]:
    """Build the ``GPT`` of a weights folder and its tokenizer (what ``load_checkpoint`` does for such a path).

    Args:
        path: see ``read_pretrained``.
        map_location: device of the model.
        trust_checkpoint: see ``read_pretrained``.
        config_overrides: ``GPTConfig`` fields that change no weight (``attention``, ``dropout``).

    Returns:
        ``(model, tokenizer)``: the model in eval mode; the tokenizer or ``None``.

    Raises:
        See ``read_pretrained``.
    """
    import dataclasses

    config, state, tokenizer_state = read_pretrained(path, trust_checkpoint=trust_checkpoint)
    model = GPT(dataclasses.replace(config, **config_overrides))
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise ValueError(f"The weights in {path} do not fit its config ({config}): {err}") from None
    model.to(map_location if isinstance(map_location, (str, torch.device)) else "cpu").eval()
    tokenizer = None
    if tokenizer_state is not None:
        from lightning_gpt.io.tokenizer import tokenizer_from_state

        tokenizer = tokenizer_from_state(tokenizer_state, Path(path))
    return model, tokenizer


# ------------------------------------------------------------------------------------------------------------- writing


def _char_tokenizer_json(chars: list[str], specials: tuple[str, ...]) -> str:
    """A ``tokenizers`` WordLevel tokenizer with one token per character, then ``specials``: the ids of
    ``CharTokenizer`` (``SPECIALS``) and of ``VocabTokenizer`` (none; an unknown character is an encoding error)."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers

    from lightning_gpt.data.tokenizers import UNK

    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({s: len(chars) + i for i, s in enumerate(specials)})
    tok = Tokenizer(models.WordLevel(vocab, unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    tok.add_special_tokens([AddedToken(s, special=True) for s in specials])
    return tok.to_str()


def generation_defaults(block_size: int) -> dict[str, Any]:
    """The decoding settings an export writes into ``generation_config.json``: ``lightning-gpt generate``'s defaults
    (``CLI_DEFAULTS``: sampling at temperature 0.8, no top-k/top-p), spelled so that ``transformers`` applies exactly
    these and none of its own (its ``top_k=50`` default is switched off with ``top_k=0``).

    The length differs on purpose: ``generate`` slides past the context (200 new tokens by default), which a GPT-2
    model in ``transformers`` cannot, so the file says ``max_length = block_size`` (fill the context). Both give the
    same text for the same ``max_new_tokens`` within the context and the same seed.

    Args:
        block_size: the model's context length.
    """
    from lightning_gpt.generation.config import CLI_DEFAULTS as d

    return {
        "do_sample": d.do_sample,
        "temperature": d.temperature,
        "top_k": d.top_k or 0,
        "top_p": 1.0 if d.top_p is None else d.top_p,
        "min_p": d.min_p,
        "repetition_penalty": d.repetition_penalty,
        "num_beams": d.num_beams,
        "length_penalty": d.length_penalty,
        "max_length": block_size,
    }


def _tokenizer_files(tokenizer: Any, block_size: int) -> dict[str, Any]:
    """``{file name: JSON text or object}`` of the Hugging Face tokenizer files for one of our tokenizers."""
    from lightning_gpt.data.tokenizers import SPECIALS, UNK, CharTokenizer, HFTokenizer
    from lightning_gpt.data.vocab_tokenizer import VocabTokenizer

    names: dict[str, Optional[str]]
    if isinstance(tokenizer, CharTokenizer):
        text = _char_tokenizer_json(tokenizer.chars, SPECIALS)
        names = {"bos_token": "<|bos|>", "eos_token": "<|eos|>", "pad_token": "<|pad|>", "unk_token": UNK}
    elif isinstance(tokenizer, VocabTokenizer):  # nanoGPT's meta.pkl vocabulary: no special tokens
        text, names = _char_tokenizer_json(tokenizer.itos, ()), {}
    elif isinstance(tokenizer, HFTokenizer):
        text = tokenizer.state_dict()["tokenizer_json"]
        names = {"bos_token": tokenizer.bos_token, "eos_token": tokenizer.eos_token, "pad_token": tokenizer.pad_token}
        if getattr(tokenizer, "unk_id", None) is not None:
            names["unk_token"] = UNK
    else:
        raise ValueError(
            f"The checkpoint's tokenizer ({tokenizer.describe()}) cannot be written as a Hugging Face tokenizer.json "
            "(supported: char, bpe, unigram and pretrained tokenizers). Export the weights alone with "
            "--format safetensors (its lightning_gpt.json keeps the tokenizer), or train with a supported tokenizer."
        )
    names = {k: v for k, v in names.items() if v is not None}
    tokenizer_config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": block_size,
        "clean_up_tokenization_spaces": False,
        **names,
    }
    return {"tokenizer.json": text, "tokenizer_config.json": tokenizer_config, "special_tokens_map.json": names}


def write_pretrained(
    model: GPT,
    tokenizer: Optional[Any],
    output_dir: Union[str, Path],
    format: str = "hf",
) -> Path:
    """Write ``model`` (and ``tokenizer``) as a weights folder; nothing is left behind when it fails.

    ``format="hf"``: ``config.json`` (``GPT2LMHeadModel``), ``model.safetensors``, ``generation_config.json`` (the
    decoding defaults of ``lightning-gpt generate``, see ``generation_defaults``) and the tokenizer files, loadable by
    ``transformers.AutoModelForCausalLM`` and ``AutoTokenizer``. ``format="safetensors"``: ``model.safetensors`` under
    ``GPT``'s own parameter names, for any architecture. Both add ``lightning_gpt.json`` (the ``GPTConfig`` and the
    tokenizer's state), from which ``load_checkpoint`` rebuilds the model exactly.

    Args:
        model: the model to write (its weights are saved in their current dtype).
        tokenizer: its tokenizer, or ``None``.
        output_dir: the folder to create; it must not exist, or be empty.
        format: ``hf`` or ``safetensors``.

    Returns:
        The folder.

    Raises:
        ValueError: an unknown format, a non-empty ``output_dir``, or (``hf``) a model or tokenizer that GPT-2's
            format cannot express (the message names the field).
        StorageError: a full or read-only disk (one paragraph; the temporary folder is removed).
        Terminated: SIGTERM arrived during the write (the temporary folder is removed; exit status 143).
    """
    if format not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {format!r}.")
    out = Path(output_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"--output_dir {str(out)!r} already exists and is not empty; choose a new folder.")
    config = model.config
    sd = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    files: dict[str, Any] = {}
    if format == "hf":
        hf_config = hf_gpt2_config_dict(config)  # raises, naming the fields GPT-2 cannot express
        tensors = state_dict_to_hf_gpt2(sd, tie_weights=config.tie_weights)
        special = {}
        if tokenizer is not None:
            files.update(_tokenizer_files(tokenizer, config.block_size))
            special = {
                f"{name}_token_id": getattr(tokenizer, f"{name}_id")
                for name in ("bos", "eos", "pad")
                if getattr(tokenizer, f"{name}_id", None) is not None
            }
        dtype = str(next(iter(tensors.values())).dtype).replace("torch.", "")
        files[CONFIG_FILE] = {
            "architectures": ["GPT2LMHeadModel"],
            "model_type": "gpt2",
            **hf_config,
            **special,
            "torch_dtype": dtype,
        }
        files["generation_config.json"] = {**generation_defaults(config.block_size), **special}
    else:
        tensors = {k: v.contiguous() for k, v in sd.items() if not (k == "lm_head.weight" and config.tie_weights)}
    files[NATIVE_FILE] = {
        "format": "lightning_gpt",
        "weights": "hf_gpt2" if format == "hf" else "lightning_gpt",
        "gpt_config": config.to_dict(),
        "tokenizer": tokenizer.state_dict() if tokenizer is not None else None,
    }
    with atomic_directory(out, "the export", "--output_dir") as tmp:
        weights = {k: v.contiguous() for k, v in tensors.items()}
        with open(tmp / SAFETENSORS_FILE, "wb") as f:
            write_safetensors(weights, f, metadata={"format": "pt"})
        for name, content in files.items():
            text = content if isinstance(content, str) else json.dumps(content, indent=2, ensure_ascii=False) + "\n"
            (tmp / name).write_text(text, encoding="utf-8")
    return out
