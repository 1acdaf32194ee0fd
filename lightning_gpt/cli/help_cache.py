"""``fit | validate | test | predict``: ``--help`` and a mistyped flag answered without importing Lightning.

Building the LightningCLI parser means importing Lightning, which costs about 6 CPU-seconds on its own (torch,
``torch._dynamo``, and torchmetrics with whatever optional packages it finds: scipy, transformers, matplotlib), before
any option can be read. So each subcommand's help (as data that renders at any terminal width: ``help_render``) and
flags are stored, in two places:

* shipped with the package, ``lightning_gpt/cli/help/<subcommand>.json``, written by ``python -m
  lightning_gpt.cli.help_build --write`` (``tests/cli/test_help_cache.py`` fails, naming that command, when they are
  stale): the first ``fit --help`` of a fresh install answers from them;
* in the user's cache, ``$LIGHTNING_GPT_CACHE/cli`` or ``~/.cache/lightning_gpt/cli``, written by any process that
  built the parser while the shipped ones did not fit its environment (``remember``).

``lightning-gpt fit --help`` prints the first of them that fits, and a flag that no option accepts is reported with
the nearest valid ones (``answer``), each in about a tenth of a CPU-second. A flag they cannot judge (a nested key of a
class or dataclass option, such as ``--model.config.n_layr`` or ``--trainer.logger.init_args.save_dir``) goes to the
real parser, and so does everything when none fits.

An entry fits when everything that shapes the parser is as it was when it was written: the versions of Python, torch,
Lightning, jsonargparse (and its docstring-parser and typeshed-client) and torchmetrics, any ``JSONARGPARSE_*``
environment variable (they change the parser), and the content (SHA-256) of every source file of this package that the
writing process had imported when it built the parsers: a module that was not imported cannot have shaped them, and a
module that starts importing another is itself changed. A fresh install with other versions than the shipped entries'
(or a ``JSONARGPARSE_*`` variable set) builds the parser once, as before, and uses its own cache from then on.

Nothing here imports torch, Lightning or jsonargparse (``entry`` is given a parser that was built).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from typing import Any, Iterable, NoReturn, Optional

from lightning_gpt.cli.flags import did_you_mean
from lightning_gpt.cli.help_render import FORMAT as RECORD_FORMAT
from lightning_gpt.cli.help_render import Unsupported, render
from lightning_gpt.cli.help_render import record as record_help
from lightning_gpt.jsonfile import read_json

__all__ = [
    "REGENERATE",
    "SHIPPED",
    "answer",
    "cache_file",
    "digest",
    "entry",
    "fits",
    "lookup",
    "remember",
    "unknown_flags",
    "versions",
    "write_entry",
]

_PACKAGE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # lightning_gpt/
# jsonargparse's optional helpers change the parser too: docstring-parser gives options their help, typeshed-client
# finds the parameters behind a **kwargs.
_VERSIONED = ("torch", "lightning", "jsonargparse", "torchmetrics", "docstring-parser", "typeshed-client")
_LAYOUT = 2  # the entry's layout (1: the help as text for one terminal width)
SHIPPED = os.path.join(os.path.dirname(os.path.abspath(__file__)), "help")
"""The folder of the entries shipped with the package: ``<SHIPPED>/<subcommand>.json``."""
REGENERATE = "python -m lightning_gpt.cli.help_build --write"
"""The command that rewrites the shipped entries (from the parsers built in that environment)."""


def cache_file(subcommand: str) -> str:
    """The user's cache file of ``subcommand``: ``<cache>/cli/<subcommand>.json``, where ``<cache>`` is
    ``$LIGHTNING_GPT_CACHE`` or ``~/.cache/lightning_gpt`` (``lightning_gpt.data.cache.default_cache_dir``)."""
    root = os.environ.get("LIGHTNING_GPT_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "lightning_gpt")
    return os.path.join(root, "cli", f"{subcommand}.json")


_PACKAGES: Optional[dict[str, str]] = None


def versions() -> dict[str, Any]:
    """The environment an entry must have been written in: the entry layouts, the versions of Python and of the
    libraries that build the parser (``"-"`` for one not installed; a build's local label such as ``+cpu`` left out),
    and the ``JSONARGPARSE_*`` environment variables (``JSONARGPARSE_DEFAULT_ENV`` adds options)."""
    global _PACKAGES
    if _PACKAGES is None:
        from importlib.metadata import PackageNotFoundError, version

        _PACKAGES = {}
        for name in _VERSIONED:
            try:  # without a local label: torch 2.13.0+cpu and +cu128 share their Python sources
                _PACKAGES[name] = version(name).split("+")[0]
            except PackageNotFoundError:
                _PACKAGES[name] = "-"
    found: dict[str, Any] = {"layout": _LAYOUT, "record": RECORD_FORMAT, "python": sys.version.split()[0]}
    found.update(_PACKAGES)
    found["env"] = sorted(f"{k}={v}" for k, v in os.environ.items() if k.startswith("JSONARGPARSE_"))
    return found


def digest(files: list[str]) -> Optional[str]:
    """SHA-256 of the named package files (paths relative to the package, with their contents); ``None`` when one
    cannot be read (it was removed: nothing stored for it fits)."""
    h = hashlib.sha256()
    for rel in files:
        if rel.startswith("/") or ".." in rel.split("/"):  # only files inside the package
            return None
        try:
            with open(os.path.join(_PACKAGE, *rel.split("/")), "rb") as f:
                content = f.read()
        except OSError:
            return None
        h.update(f"{rel}\0{len(content)}\0".encode())
        h.update(content)
    return h.hexdigest()


def _imported_sources() -> list[str]:
    """The package's source files imported in this process (plus this module and the renderer), relative paths."""
    found = {"cli/help_cache.py", "cli/help_render.py"}
    for name, module in list(sys.modules.items()):
        path = getattr(module, "__file__", None) if name != "__main__" else None  # a tool run with -m shapes nothing
        if path and path.endswith(".py") and os.path.abspath(path).startswith(_PACKAGE + os.sep):
            found.add(os.path.relpath(os.path.abspath(path), _PACKAGE).replace(os.sep, "/"))
    return sorted(found)


def entry(parser: Any) -> dict[str, Any]:
    """The stored form of one subcommand's parser: its help record, its flags, and what it fits.

    Args:
        parser: the subcommand's jsonargparse parser, built (Lightning imported).

    Raises:
        Unsupported: its help cannot be recorded faithfully.
    """
    from lightning_gpt.training._lightning_internals import parser_actions

    help_record = record_help(parser)
    flags = sorted({f for a in parser_actions(parser) for f in a.option_strings if f.startswith("--")})
    # A flag with nested options of its own listed (--trainer, --sampling.generation) is a group: a nested key it
    # does not list is unknown. Any other flag (a class, dataclass or dict option) may take nested keys of its own.
    groups = {f for f in flags if any(g.startswith(f + ".") and g != f + ".help" for g in flags)}
    files = _imported_sources()
    sources = {"files": files, "sha256": digest(files)}
    opened = sorted(set(flags) - groups)
    return {"versions": versions(), "sources": sources, "help": help_record, "flags": flags, "open": opened}


def fits(stored: Any) -> bool:
    """Whether a stored entry was written for this environment and these sources (see the module docstring)."""
    if not isinstance(stored, dict) or stored.get("versions") != versions():
        return False
    sources = stored.get("sources")
    if not isinstance(sources, dict) or not isinstance(sources.get("files"), list):
        return False
    if not (isinstance(stored.get("help"), dict) and isinstance(stored.get("flags"), list)):
        return False
    return digest([str(f) for f in sources["files"]]) == sources.get("sha256")


def _read(path: str) -> Any:
    try:
        return read_json(path)
    except (OSError, ValueError):
        return None


def lookup(subcommand: str) -> Optional[dict[str, Any]]:
    """The stored entry of ``subcommand`` that fits: the shipped one, else the user's cache; ``None`` when neither."""
    for path in (os.path.join(SHIPPED, f"{subcommand}.json"), cache_file(subcommand)):
        stored = _read(path)
        if fits(stored):
            return stored
    return None


def write_entry(path: str, stored: Any) -> None:
    """Write ``stored`` as JSON at ``path``, whole or not at all, leaving no temporary even on SIGTERM
    (``lightning_gpt.io.atomic.atomic_file``; a dead writer's temporary is swept).

    Raises:
        OSError: the folder cannot be written (``StorageError`` for a full or read-only disk).
    """
    from lightning_gpt.io.atomic import atomic_file

    with atomic_file(path, "the stored help", "the LIGHTNING_GPT_CACHE variable", mode="w") as f:
        json.dump(stored, f, indent=1, sort_keys=True)  # one value a line: a regenerated entry's diff is readable
        f.write("\n")


def remember(parsers: dict[str, Any]) -> None:
    """Store each subcommand's entry in the user's cache, unless one that fits is stored already (shipped or cached).
    Never fails: a help that cannot be recorded, or a read-only or full cache folder, only means that the next
    ``--help`` builds the parser again.

    Args:
        parsers: ``{subcommand: its parser}`` as the command built them.
    """
    for subcommand, parser in parsers.items():
        if lookup(subcommand) is not None:
            continue
        try:
            write_entry(cache_file(subcommand), entry(parser))
        except (OSError, Unsupported):
            pass


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
    """Answer ``lightning-gpt <subcommand> ARGV`` from a stored entry when it can: ``--help`` alone prints the help
    at the terminal's width (exit 0); a flag that no option accepts is an error with the nearest valid flags (exit 2).
    Otherwise (no entry fits, anything else) return, and the real parser reads the command line.
    """
    if not argv:
        return
    asks_help = argv in (["--help"], ["-h"])
    if not asks_help and not any(token.startswith("--") for token in argv):
        return
    stored = lookup(subcommand)
    if stored is None:
        return
    if asks_help:
        try:
            text = render(stored["help"])
        except (KeyError, IndexError, TypeError, ValueError):  # a malformed entry: the parser answers
            return
        sys.stdout.write(text)
        sys.stdout.flush()
        raise SystemExit(0)
    unknown = unknown_flags(argv, stored["flags"], stored.get("open", stored["flags"]))
    if unknown:
        _error(subcommand, "unrecognized arguments: " + " ".join(unknown), stored["flags"])


def _error(subcommand: str, message: str, flags: list[str]) -> NoReturn:
    # The real parser's words (lightning_gpt.cli.fit.CompactUsageParser), so both paths read the same.
    sys.stderr.write(
        f"usage: lightning-gpt {subcommand} [options]\n"
        f"tip: For details of accepted options run: lightning-gpt {subcommand} --help\n"
        f"error: {did_you_mean(message, flags)}\n"
    )
    raise SystemExit(2)
