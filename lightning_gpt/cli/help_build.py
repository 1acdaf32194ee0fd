"""Build the ``fit | validate | test | predict`` parsers and write their help entries (``help_cache``).

```bash
python -m lightning_gpt.cli.help_build --write        # rewrite lightning_gpt/cli/help/<subcommand>.json
python -m lightning_gpt.cli.help_build --dump live.json --widths 64 117   # the live entries and help texts
```

``--write`` is the regeneration command of the entries shipped with the package: run it after changing anything the
parsers are built from (``tests/cli/test_help_cache.py`` names it when they are stale), in the environment they are
meant for (its versions of Python, torch, Lightning, jsonargparse and torchmetrics are part of their key). ``--dump``
writes, as JSON, each subcommand's entry and its live help text at each terminal width: what the test compares the
shipped entries and the renderer with. Both build the parsers in this process, as the command does (Lightning is
imported: several CPU-seconds).
"""

from __future__ import annotations

import argparse
import os
from typing import Any, Optional

from lightning_gpt.cli.help_cache import SHIPPED, entry, write_entry

__all__ = ["built_parsers", "main"]


def built_parsers() -> dict[str, Any]:
    """``{subcommand: parser}`` built exactly as ``lightning-gpt fit ...`` builds them (Lightning imported); nothing
    is parsed, instantiated or run."""
    from lightning_gpt.cli.fit import COMMAND_PARSER_KWARGS, GPTLightningCLI
    from lightning_gpt.training._lightning_internals import cli_subcommand_parser

    found: dict[str, Any] = {}

    class Built(Exception):
        pass

    class BuildOnly(GPTLightningCLI):
        def parse_arguments(self, parser: Any, args: Any) -> None:
            found.update({name: cli_subcommand_parser(self, name) for name in self.subcommands()})
            raise Built

    try:
        BuildOnly(args=[], parser_kwargs=dict(COMMAND_PARSER_KWARGS))
    except Built:
        pass
    return found


def main(argv: Optional[list[str]] = None) -> None:
    """``python -m lightning_gpt.cli.help_build (--write | --dump FILE [--widths W ...])`` (see the module docstring).

    Args:
        argv: the command line (default: ``sys.argv[1:]``).
    """
    parser = argparse.ArgumentParser(prog="python -m lightning_gpt.cli.help_build", description=__doc__.split("\n")[0])
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--write", action="store_true", help=f"rewrite {SHIPPED}/<subcommand>.json")
    what.add_argument("--dump", metavar="FILE", help="write the live entries and help texts to FILE (JSON)")
    parser.add_argument("--widths", type=int, nargs="+", default=[80], help="terminal widths of the dumped help texts")
    opts = parser.parse_args(argv)
    parsers = built_parsers()
    if opts.write:
        for subcommand, sub in parsers.items():
            path = os.path.join(SHIPPED, f"{subcommand}.json")
            write_entry(path, entry(sub))
            print(f"wrote {path}")
        return
    dumped: dict[str, Any] = {}
    for subcommand, sub in parsers.items():
        texts = {}
        for width in opts.widths:
            os.environ["COLUMNS"] = str(width)  # argparse's width: COLUMNS (or the terminal's) minus 2
            texts[str(width)] = sub.format_help()
        dumped[subcommand] = {"entry": entry(sub), "help": texts}
    write_entry(os.path.abspath(opts.dump), dumped)


if __name__ == "__main__":
    main()
