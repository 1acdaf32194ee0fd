"""``fit | validate | test | predict``: ``--help`` and a mistyped flag answered without importing Lightning.

Building the LightningCLI parser means importing Lightning, which costs about 5 CPU-seconds on its own (torch,
``torch._dynamo``, and torchmetrics with whatever optional packages it finds: scipy, transformers, matplotlib), before
any option can be read. So each time a process builds the parser, it leaves behind the subcommands' help texts and
their flags (``remember``, a small JSON file per subcommand in ``$LIGHTNING_GPT_CACHE/cli`` or
``~/.cache/lightning_gpt/cli``). The next ``lightning-gpt fit --help`` prints that text, and a flag that no option
accepts is reported with the nearest valid ones (``answer``), each in a few hundredths of a second. A flag the cache
cannot judge (a nested key of a class or dataclass option, such as ``--model.config.n_layr`` or
``--trainer.logger.init_args.save_dir``) goes to the real parser.

The files are keyed by everything that shapes the parser: the versions of Python, torch, Lightning, jsonargparse and
torchmetrics, the size and modification time of every source file of this package, and the terminal width (help is
wrapped to it). A stale or unreadable file is ignored (and rewritten by the next process that builds the parser).
Nothing here imports torch, Lightning or jsonargparse.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from typing import Any, Iterable, NoReturn, Optional

from lightning_gpt.cli.flags import did_you_mean

__all__ = ["answer", "cache_file", "fingerprint", "remember", "unknown_flags"]

_PACKAGE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # lightning_gpt/
_VERSIONED = ("torch", "lightning", "jsonargparse", "torchmetrics")
_FORMAT = 1  # the file layout


def cache_file(subcommand: str) -> str:
    """The cache file of ``subcommand``: ``<cache>/cli/<subcommand>.json``, where ``<cache>`` is
    ``$LIGHTNING_GPT_CACHE`` or ``~/.cache/lightning_gpt`` (``lightning_gpt.data.cache.default_cache_dir``)."""
    root = os.environ.get("LIGHTNING_GPT_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "lightning_gpt")
    return os.path.join(root, "cli", f"{subcommand}.json")


def fingerprint() -> str:
    """What the parser and its help depend on, as one string (see the module docstring)."""
    from importlib.metadata import PackageNotFoundError, version

    parts = [f"format={_FORMAT}", f"python={sys.version.split()[0]}", f"columns={shutil.get_terminal_size().columns}"]
    for name in _VERSIONED:
        try:
            parts.append(f"{name}={version(name)}")
        except PackageNotFoundError:
            parts.append(f"{name}=-")
    for folder, dirs, files in os.walk(_PACKAGE):
        dirs[:] = sorted(d for d in dirs if not d.startswith((".", "__")))
        for name in sorted(files):
            if name.endswith(".py"):
                st = os.stat(os.path.join(folder, name))
                parts.append(f"{os.path.relpath(os.path.join(folder, name), _PACKAGE)}:{st.st_size}:{st.st_mtime_ns}")
    return "\n".join(parts)


def remember(subcommand: str, help_text: str, flags: Iterable[str], key: Optional[str] = None) -> None:
    """Store ``subcommand``'s help text and flags (when the stored ones are missing or stale). Never fails: a
    read-only or full cache folder only means the next ``--help`` builds the parser again.

    Args:
        subcommand: ``fit``, ``validate``, ``test`` or ``predict``.
        help_text: what ``lightning-gpt <subcommand> --help`` prints.
        flags: every ``--flag`` of its parser.
        key: ``fingerprint()`` (computed when not given).
    """
    key = fingerprint() if key is None else key
    path = cache_file(subcommand)
    if _load(path, key) is not None:
        return
    flags = sorted(set(flags))
    # A flag with nested options of its own listed (--trainer, --sampling.generation) is a group: a nested key it
    # does not list is unknown. Any other flag (a class, dataclass or dict option) may take nested keys of its own.
    groups = {f for f in flags if any(g.startswith(f + ".") and g != f + ".help" for g in flags)}
    entry = {"key": key, "help": help_text, "flags": flags, "open": sorted(set(flags) - groups)}
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(entry, f)
        os.replace(tmp, path)
    except OSError:
        try:
            os.remove(tmp)
        except OSError:
            pass


def _load(path: str, key: str) -> Optional[dict[str, Any]]:
    try:
        with open(path, encoding="utf-8") as f:
            entry = json.load(f)
    except (OSError, ValueError):
        return None
    if not isinstance(entry, dict) or entry.get("key") != key:
        return None
    if not (isinstance(entry.get("help"), str) and isinstance(entry.get("flags"), list)):
        return None
    return entry


def unknown_flags(argv: list[str], flags: Iterable[str], open_flags: Iterable[str]) -> list[str]:
    """The flags of ``argv`` that no option of the parser can accept, each with the values that follow it.

    ``--name``, ``--name=value`` and ``--name+=value`` are looked up by name; a name under an "open" flag (one that
    takes nested keys, ``--trainer.logger.init_args.save_dir`` under ``--trainer.logger``) is left to the parser.
    """
    known, opened = set(flags), set(open_flags)
    found: list[str] = []
    taking_values = False
    for token in argv:
        if token == "--":
            break
        if not token.startswith("-") or " " in token:
            if taking_values:
                found.append(token)
            continue
        taking_values = False
        name = token.split("=", 1)[0].rstrip("+")
        if not name.startswith("--") or name in known:
            continue
        parts = name.split(".")
        if any(".".join(parts[:i]) in opened for i in range(1, len(parts))):
            continue
        found.append(token)
        taking_values = "=" not in token
    return found


def answer(subcommand: str, argv: list[str]) -> None:
    """Answer ``lightning-gpt <subcommand> ARGV`` from the cache when it can: ``--help`` alone prints the help (exit
    0); a flag that no option accepts is an error with the nearest valid flags (exit 2). Otherwise (no valid cache,
    anything else) return, and the real parser reads the command line.
    """
    if not argv:
        return
    asks_help = argv in (["--help"], ["-h"])
    if not asks_help and not any(token.startswith("--") for token in argv):
        return
    entry = _load(cache_file(subcommand), fingerprint())
    if entry is None:
        return
    if asks_help:
        sys.stdout.write(entry["help"])
        sys.stdout.flush()
        raise SystemExit(0)
    unknown = unknown_flags(argv, entry["flags"], entry.get("open", entry["flags"]))
    if unknown:
        _error(subcommand, "unrecognized arguments: " + " ".join(unknown), entry["flags"])


def _error(subcommand: str, message: str, flags: list[str]) -> NoReturn:
    # The real parser's words (lightning_gpt.cli.fit.CompactUsageParser), so both paths read the same.
    sys.stderr.write(
        f"usage: lightning-gpt {subcommand} [options]\n"
        f"tip: For details of accepted options run: lightning-gpt {subcommand} --help\n"
        f"error: {did_you_mean(message, flags)}\n"
    )
    raise SystemExit(2)
