"""Model arguments that come from elsewhere: a checkpoint (``--ckpt_path``), a weights folder (``--ckpt_path DIR`` of
``lightning-gpt export`` or Hugging Face GPT-2) or ``--model.init_from PATH``.

One rule for all three (``keep_explicit_model_args``): the source's model arguments are taken, except those given
explicitly on the command line or in a ``--config`` file, which win. Lightning's own ``--ckpt_path`` handling lets the
checkpoint override everything. A weights folder and ``init_from`` also bring their tokenizer, used unless
``--data.tokenizer`` names one (``use_source_tokenizer``).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable, Optional

from lightning.pytorch.utilities.rank_zero import rank_zero_warn

from lightning_gpt.config import GPTConfig
from lightning_gpt.training._lightning_internals import cli_subcommand_parser

__all__ = ["apply_init_from", "explicit_model_args", "keep_explicit_model_args", "parse_ckpt_path"]

_MISSING = object()
_CONFIG_DEFAULTS = {f"model.config.{f.name}": f.default for f in dataclasses.fields(GPTConfig)}


def _get(namespace: Any, key: str) -> Any:
    try:
        return namespace[key]
    except (KeyError, TypeError):
        return _MISSING


def _given(value: Any, default: Any) -> bool:
    if default is _MISSING:
        return value is not None
    try:
        return bool(value != default)
    except Exception:  # noqa: BLE001 - tensors and exotic objects compare oddly: count them as given
        return True


def explicit_model_args(cfg: Any, defaults: Any) -> dict[str, Any]:
    """The ``model.*`` values of a parsed subcommand config that were given explicitly.

    A value counts as given when it differs from the parser's default; where the parser has no default for a key (the
    fields of ``model.config``, which is null by default), from ``GPTConfig``'s field default; any other key without a
    default counts as given when it is not null. (A value set to its default cannot be told from one left out.)

    Args:
        cfg: the subcommand's parsed config (flat ``model.*`` keys).
        defaults: the subcommand parser's defaults.
    """
    explicit = {}
    for key, value in cfg.items():
        if not key.startswith("model."):
            continue
        default = _get(defaults, key)
        if default is _MISSING:
            default = _CONFIG_DEFAULTS.get(key, _MISSING)
        if _given(value, default):
            explicit[key] = value
    return explicit


def _config(cli: Any, subcommand: Optional[str]) -> Any:
    """The parsed config of ``subcommand`` (the whole config of a CLI without subcommands)."""
    return cli.config[subcommand] if subcommand else cli.config


def keep_explicit_model_args(cli: Any, subcommand: Optional[str], adopt: Callable[[], None]) -> None:
    """Run ``adopt`` (which writes another source's model arguments into ``cli.config``), then put back the ``model.*``
    values the user gave explicitly (``explicit_model_args``).

    Args:
        cli: the ``LightningCLI``.
        subcommand: ``fit``, ``validate``, ``test`` or ``predict`` (``None``: a CLI without subcommands).
        adopt: the adoption; it may replace ``cli.config`` with a new namespace.
    """
    defaults = cli_subcommand_parser(cli, subcommand).get_defaults()
    explicit = explicit_model_args(_config(cli, subcommand), defaults)
    adopt()
    cfg = _config(cli, subcommand)
    for key, value in explicit.items():
        cfg[key] = value


def use_source_tokenizer(cli: Any, subcommand: Optional[str], path: str) -> None:
    """``--data.tokenizer`` becomes ``path`` (a weights folder or checkpoint holding a tokenizer) unless the user named
    one."""
    cfg = _config(cli, subcommand)
    tokenizer = cfg.get("data.tokenizer")
    default = _get(cli_subcommand_parser(cli, subcommand).get_defaults(), "data.tokenizer")
    if isinstance(tokenizer, str) and not _given(tokenizer, default):
        cfg["data.tokenizer"] = path


def apply_init_from(cli: Any, subcommand: Optional[str], path: str) -> None:
    """``--model.init_from PATH``: the model config fields not given explicitly take PATH's values (the explicit ones
    are checked by ``GPTModule``), and the data module uses PATH's tokenizer unless one is named.

    Raises:
        ValueError: PATH is not a weights folder or checkpoint this package reads (one paragraph, from ``io``).
    """
    from lightning_gpt.io.init_from import init_config

    cfg = _config(cli, subcommand)
    source = init_config(path, trust_checkpoint=bool(cfg.get("trust_checkpoint")))
    if cfg.get("model.config") is not None:

        def adopt() -> None:
            for name, value in source.to_dict().items():
                _config(cli, subcommand)[f"model.config.{name}"] = value

        keep_explicit_model_args(cli, subcommand, adopt)
    use_source_tokenizer(cli, subcommand, path)


def parse_ckpt_path(cli: Any, lightning_parse: Callable[[], None]) -> None:
    """``--ckpt_path``: the model arguments come from the checkpoint (or weights folder), the explicit ones win.

    ``last`` (``fit``) becomes the newest complete checkpoint of the run folder; a run directory its checkpoint; a
    weights folder gives its config and tokenizer; a damaged or unsafe file fails here with one paragraph.

    Args:
        cli: the ``GPTLightningCLI`` (``config`` is read and replaced).
        lightning_parse: ``LightningCLI._parse_ckpt_path`` (applies a checkpoint's saved hyperparameters).

    Raises:
        FileNotFoundError: ``--ckpt_path`` names nothing that exists.
        ValueError: the checkpoint cannot be read, is refused as unsafe, or its saved arguments do not parse;
            ``--ckpt_path last`` finds nothing to resume (``run_folder.last_checkpoint``).
    """
    from lightning_gpt.io.checkpoint import (
        UnsafeCheckpointError,
        check_config_for_checkpoint,
        find_checkpoint,
        read_checkpoint,
        read_model_checkpoint,
    )
    from lightning_gpt.io.hf import is_pretrained_path, read_pretrained_config
    from lightning_gpt.training.run_folder import is_sharded_checkpoint

    subcommand = cli.config.get("subcommand")
    if not subcommand:
        return
    ckpt_path = cli.config[subcommand].get("ckpt_path")
    trust = bool(cli.config[subcommand].get("trust_checkpoint"))
    if ckpt_path and is_pretrained_path(ckpt_path):
        # A foreign folder, or a config that does not describe the weights, fails here in one paragraph.
        source = read_pretrained_config(str(ckpt_path), trust_checkpoint=trust)

        def adopt_folder() -> None:
            cli.config = cli.parser.parse_object({subcommand: {"model": {"config": source.to_dict()}}}, cli.config)

        keep_explicit_model_args(cli, subcommand, adopt_folder)
        use_source_tokenizer(cli, subcommand, str(ckpt_path))
        return
    if subcommand == "fit" and ckpt_path == "last":
        ckpt_path = cli.config[subcommand]["ckpt_path"] = _resolve_last(cli.config[subcommand]) or "last"
    if ckpt_path and os.path.isdir(ckpt_path) and not is_sharded_checkpoint(ckpt_path):
        ckpt_path = cli.config[subcommand]["ckpt_path"] = find_checkpoint(ckpt_path)
    if not ckpt_path or ckpt_path in ("last", "best", "hpc") or not os.path.isfile(ckpt_path):
        if ckpt_path and ckpt_path not in ("last", "best", "hpc", "registry") and not os.path.exists(ckpt_path):
            raise FileNotFoundError(
                f"--ckpt_path {ckpt_path!r} does not exist. Pass a .ckpt file, a run directory, or 'last' (fit: "
                "resume from the newest checkpoint of this run)."
            )
        return
    # A damaged or unsafe file, or a gpt_config that does not describe the weights, fails here with one paragraph,
    # before anything is built (the tensors are memory-mapped, not read).
    read_model_checkpoint(ckpt_path, trust_checkpoint=trust)
    if trust:
        try:
            read_checkpoint(ckpt_path)
        except UnsafeCheckpointError:
            # Lightning re-reads the arguments weights-only, which this trusted file cannot pass; the module's
            # on_load_checkpoint still adopts its model config.
            return

    def adopt_checkpoint() -> None:
        try:
            lightning_parse()
        except SystemExit:
            raise
        except Exception as err:  # noqa: BLE001 - e.g. hyperparameters that no longer parse
            first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise ValueError(
                f"--ckpt_path {ckpt_path!r}: its saved model arguments could not be used ({first_line}). Point it at "
                "a checkpoint written by this version of lightning-gpt, e.g. <run>/checkpoints/last.ckpt."
            ) from None

    keep_explicit_model_args(cli, subcommand, adopt_checkpoint)
    # The config about to be built (the checkpoint's saved arguments, merged with the explicit ones) must describe
    # the weights: checked before the model is allocated.
    check_config_for_checkpoint(cli.config[subcommand].get("model.config"), ckpt_path, trust_checkpoint=trust)


def _resolve_last(cfg: Any) -> Optional[str]:
    """``fit --ckpt_path last``: the newest complete checkpoint of the run folder (``run_folder.last_checkpoint``,
    which refuses a folder without any), with a warning when ``last.ckpt`` was passed over."""
    from lightning_gpt.training.run_folder import checkpoint_dir, last_checkpoint

    root = cfg.get("trainer.default_root_dir")
    path, note = last_checkpoint(checkpoint_dir(cfg.get("checkpoint.dirpath"), root), root)
    if note:
        rank_zero_warn(f"--ckpt_path last: {note}")
    return path
