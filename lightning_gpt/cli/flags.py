"""Flag handling shared by every subcommand: no abbreviations, and "did you mean" for an unknown flag.

argparse accepts any unambiguous prefix of a flag by default (``--trainer.max_step 10`` silently sets
``--trainer.max_steps``); a typo should be an error that names the flag meant, never a different setting. Every parser
of the command line is built with ``allow_abbrev=False`` (``CommandParser`` for the plain argparse commands; the
LightningCLI and jsonargparse parsers pass the same keyword) and reports an unknown flag with the nearest valid ones
(``suggest``). Nothing here imports torch, Lightning or jsonargparse.
"""

from __future__ import annotations

import argparse
import difflib
import re
from typing import Any, Iterable, NoReturn

__all__ = ["CommandParser", "did_you_mean", "suggest", "unknown_flags"]

_UNRECOGNIZED = "unrecognized arguments: "


def suggest(flag: str, options: Iterable[str]) -> list[str]:
    """The valid flags nearest to ``flag``, up to 3: those it is a prefix of first, then difflib's nearest (ratio >=
    0.6); ``[]`` when none is near.

    Args:
        flag: the flag as typed, e.g. ``--trainer.max_step`` or ``--trainer.max_step=10``.
        options: the valid flags.
    """
    name = flag.split("=", 1)[0]
    # jsonargparse's per-group "--model.config.help" is suggested only for a flag that asks for help.
    options = [o for o in dict.fromkeys(options) if o.startswith("--") and ("help" in name or not o.endswith(".help"))]
    completions = [o for o in options if o.startswith(name)]  # what argparse's prefix matching would have picked
    return list(dict.fromkeys(completions + difflib.get_close_matches(name, options, n=3, cutoff=0.6)))[:3]


def did_you_mean(message: str, options: Iterable[str]) -> str:
    """``message`` (argparse's "unrecognized arguments: --x 1 --y") followed by a "did you mean" line for each unknown
    flag that has a near valid one; any other message unchanged."""
    if _UNRECOGNIZED not in message:
        return message
    options = list(options)
    head, _, rest = message.partition(_UNRECOGNIZED)
    unknown = [token for token in re.split(r"\s+", rest.strip()) if token.startswith("--")]
    hints = []
    for flag in unknown:
        close = suggest(flag, options)
        if close:
            hints.append(f"{flag.split('=', 1)[0]}: did you mean {' or '.join(close)}?")
    return message if not hints else message.rstrip() + "\n" + "\n".join(hints)


def unknown_flags(argv: list[str], flags: Iterable[str]) -> list[str]:
    """The ``--name`` / ``--name=value`` tokens of ``argv`` (before a bare ``--``) that name none of ``flags``."""
    known = set(flags)
    unknown = []
    for token in argv:
        if token == "--":
            break
        name = token.split("=", 1)[0]
        if token.startswith("--") and " " not in name and name not in known:  # argparse: a space makes it a value
            unknown.append(token)
    return unknown


class CommandParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` of a subcommand: flags are never abbreviated (``allow_abbrev=False``), and an
    unknown flag is reported with the nearest valid ones."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        self.flags: list[str] = []  # every --flag added, for the suggestions (argparse keeps its list private)
        super().__init__(*args, **kwargs)

    def add_argument(self, *args: Any, **kwargs: Any) -> Any:
        """``argparse.ArgumentParser.add_argument``, remembering the flag's ``--`` spellings."""
        action = super().add_argument(*args, **kwargs)
        self.flags.extend(s for s in action.option_strings if s.startswith("--"))
        return action

    def parse_known_args(self, args: Any = None, namespace: Any = None) -> Any:
        """``argparse``'s, but an unknown ``--flag`` is reported first: a misspelled required flag
        (``--ckpt_pth``) is named as such, not as "the following arguments are required: --ckpt_path"."""
        if args is not None:
            unknown = unknown_flags(list(args), self.flags)
            if unknown:
                self.error(_UNRECOGNIZED + " ".join(unknown))
        return super().parse_known_args(args, namespace)

    def error(self, message: str) -> NoReturn:
        """Exit 2 with the usage and ``message`` (plus "did you mean --x?" for an unknown flag)."""
        super().error(did_you_mean(message, self.flags))
