"""An argparse parser's ``--help`` as plain data, and that data rendered again at any terminal width.

``record(parser)`` runs ``parser.format_help()`` once with a formatter that notes, at the boundary between the
parser's own formatter class (jsonargparse's ``DefaultHelpFormatter`` for the LightningCLI parsers) and the standard
library's ``argparse.HelpFormatter``, everything the standard formatter is given: the usage's options, the texts and
section titles in order, and for each listed option the strings that do not depend on the width (how it is invoked,
its help with types and defaults filled in, its usage part). ``render(record)`` gives the same calls to a plain
``argparse.HelpFormatter``, which wraps them to the terminal's width as the live parser would (argparse reads the
width from ``COLUMNS`` or the terminal, minus 2). So the help of a parser that takes seconds to build (the
LightningCLI's: Lightning's import) prints in hundredths of a second, at any width, without jsonargparse.

A record is refused (``Unsupported``) when the parser uses what this does not reproduce (mutually exclusive groups,
nested sub-actions) or when its rendering at the current width differs from the live help by a single character.
Only the standard library is imported. The formatter's method names are argparse's (3.10 to 3.13 share them); a
record is keyed by the Python version where it is stored (``help_cache``).
"""

from __future__ import annotations

import argparse
from typing import Any, Optional

__all__ = ["FORMAT", "Unsupported", "record", "render"]

FORMAT = 1
"""The layout of a record; part of every stored record's key."""


class Unsupported(Exception):
    """The parser's help cannot be recorded faithfully (the reason is the message)."""


class _Recorder(argparse.HelpFormatter):
    """Placed just above ``argparse.HelpFormatter`` in the live formatter's MRO: every call the parser's own formatter
    passes down to the standard one is noted in ``self.notes`` (a dict shared with ``record``)."""

    notes: dict[str, Any]

    def _index(self, action: argparse.Action) -> int:
        actions, ids = self.notes["actions"], self.notes["ids"]
        if id(action) not in ids:
            ids[id(action)] = len(actions)
            help_state = "suppress" if action.help == argparse.SUPPRESS else None
            actions.append({"options": list(action.option_strings), "nargs": action.nargs, "help": help_state})
            actions[-1]["required"] = bool(action.required)
        return ids[id(action)]

    def add_usage(self, usage: Any, actions: Any, groups: Any, prefix: Any = None) -> None:
        if usage is not argparse.SUPPRESS:
            self.notes["events"].append(["usage", len(self.notes["usages"])])
            self.notes["usages"].append(None)  # filled in by _format_usage, when the help is formatted
        super().add_usage(usage, actions, groups, prefix)

    def _format_usage(self, usage: Any, actions: Any, groups: Any, prefix: Any) -> str:
        if list(groups):
            raise Unsupported("mutually exclusive groups")
        indices = []
        for action in actions:
            index = self._index(action)
            indices.append(index)
            note = self.notes["actions"][index]
            if action.option_strings and action.nargs == 0:
                note["flag"] = action.format_usage()
            elif action.option_strings:
                note["args"] = self._format_args(action, self._get_default_metavar_for_optional(action))
            else:
                note["args"] = self._format_args(action, self._get_default_metavar_for_positional(action))
        slot = self.notes["usages"].index(None)
        self.notes["usages"][slot] = {"usage": usage, "actions": indices, "prefix": prefix}
        return super()._format_usage(usage, actions, groups, prefix)

    def add_text(self, text: Any) -> None:
        self.notes["events"].append(["text", text])
        super().add_text(text)

    def start_section(self, heading: Any) -> None:
        self.notes["events"].append(["start", heading])
        super().start_section(heading)

    def end_section(self) -> None:
        self.notes["events"].append(["end"])
        super().end_section()

    def add_argument(self, action: argparse.Action) -> None:
        if action.help is not argparse.SUPPRESS:
            self.notes["events"].append(["argument", self._index(action)])
        super().add_argument(action)

    def _format_action(self, action: argparse.Action) -> str:
        if list(self._iter_indented_subactions(action)):
            raise Unsupported(f"sub-actions of {action.option_strings or action.dest}")
        note = self.notes["actions"][self._index(action)]
        note["invocation"] = self._format_action_invocation(action)
        if not action.help:
            note["help"] = None
        elif not action.help.strip():
            note["help"] = " "
        else:  # what the standard _format_action prints: the help with its %(default)s etc. filled in
            note["help"], note["expanded"] = "x", self._expand_help(action)
        return super()._format_action(action)


def record(parser: argparse.ArgumentParser) -> dict[str, Any]:
    """``parser``'s help as plain data (JSON-serializable): what ``render`` needs to print it at any width.

    Args:
        parser: an ``argparse.ArgumentParser`` (a jsonargparse one included); its ``formatter_class`` is swapped for
            the one call to ``format_help`` and restored.

    Raises:
        Unsupported: the help uses what ``render`` does not reproduce, or rendering it at the current width does not
            give exactly the live help.
    """
    live_class: Any = parser.formatter_class
    notes: dict[str, Any] = {"actions": [], "ids": {}, "events": [], "usages": []}
    bases = (_Recorder,) if issubclass(_Recorder, live_class) else (live_class, _Recorder)
    recording: Any = type("RecordingFormatter", bases, {"notes": notes})
    parser.formatter_class = recording
    try:
        live = parser.format_help()
    finally:
        parser.formatter_class = live_class
    if None in notes["usages"]:
        raise Unsupported("a usage was added but never formatted")
    result = {
        "format": FORMAT,
        "prog": parser.prog,
        "actions": notes["actions"],
        "events": notes["events"],
        "usages": notes["usages"],
    }
    if render(result) != live:
        raise Unsupported("the rendered help differs from the parser's")
    return result


class _Stub(argparse.Action):
    """An option as the standard formatter sees it, from a record: its strings are given, not computed."""

    def __init__(self, note: dict[str, Any]) -> None:
        help_text = argparse.SUPPRESS if note["help"] == "suppress" else note["help"]
        super().__init__(note["options"], "", nargs=note["nargs"], required=note["required"], help=help_text)
        self.note = note

    def format_usage(self) -> str:
        return str(self.note["flag"])

    def __call__(self, *args: Any, **kwargs: Any) -> None:  # never parsed
        raise NotImplementedError


class _Renderer(argparse.HelpFormatter):
    """``argparse.HelpFormatter`` that takes each option's width-independent strings from its record."""

    def _format_action_invocation(self, action: argparse.Action) -> str:
        return str(action.note["invocation"])  # type: ignore[attr-defined]

    def _expand_help(self, action: argparse.Action) -> str:
        return str(action.note["expanded"])  # type: ignore[attr-defined]

    def _format_args(self, action: argparse.Action, default_metavar: Any) -> str:
        return str(action.note["args"])  # type: ignore[attr-defined]


def render(data: dict[str, Any], width: Optional[int] = None) -> str:
    """The help text of a ``record``, wrapped as argparse wraps it.

    Args:
        data: what ``record`` returned (possibly through JSON).
        width: the text width; ``None`` (as argparse): the terminal's columns (``COLUMNS`` first) minus 2.

    Raises:
        KeyError, IndexError, TypeError, ValueError: ``data`` is not a record of this ``FORMAT``.
    """
    if data.get("format") != FORMAT:
        raise ValueError(f"not a help record of format {FORMAT}")
    stubs = [_Stub(note) for note in data["actions"]]
    formatter = _Renderer(prog=data["prog"], width=width)
    for event in data["events"]:
        kind = event[0]
        if kind == "usage":
            usage = data["usages"][event[1]]
            formatter.add_usage(usage["usage"], [stubs[i] for i in usage["actions"]], [], usage["prefix"])
        elif kind == "text":
            formatter.add_text(event[1])
        elif kind == "start":
            formatter.start_section(event[1])
        elif kind == "end":
            formatter.end_section()
        elif kind == "argument":
            formatter.add_argument(stubs[event[1]])
        else:
            raise ValueError(f"unknown event {kind!r}")
    return formatter.format_help()
