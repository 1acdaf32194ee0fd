"""The ``lightning-gpt`` command line: ``fit | validate | test | predict`` (LightningCLI), ``generate``, ``export``.

```bash
lightning-gpt fit --config recipes/quickstart.yaml                    # train (runs/quickstart/checkpoints)
lightning-gpt fit --config recipes/quickstart.yaml --ckpt_path last   # resume from the newest complete checkpoint
lightning-gpt generate --ckpt_path runs/quickstart --prompt "def "     # stream one completion to the terminal
lightning-gpt predict --ckpt_path runs/quickstart/checkpoints/last.ckpt --data.path prompts.txt \\
    --writer.output_path predictions.jsonl                            # batch decoding to JSONL
lightning-gpt export --ckpt_path runs/quickstart --output_dir hf/quickstart   # a Hugging Face GPT-2 folder
lightning-gpt fit --help                                             # every option, documented
```

Each subcommand is one line of ``COMMANDS`` (its module and its line of help); the module is imported only when that
subcommand runs, so ``generate`` starts without Lightning, and ``--help`` and flag errors of the argparse commands
without torch. ``fit | validate | test | predict --help`` and their mistyped flags are answered from the parsers'
help and flags shipped with the package, or stored by the last parser build (``help_cache``), before Lightning is
imported; no flag is ever abbreviated (``flags``). ``fit |
validate | test | predict`` are ``LightningCLI`` (``lightning_gpt.cli.fit``); what it adds on top of Lightning's:
``GPTModule``'s default callbacks with a flag group each, ``ModelCheckpoint(save_last=True)`` in
``<default_root_dir>/checkpoints``, a learning-rate monitor when a logger is on, a Ctrl-C checkpoint, atomic checkpoint
writes, the model config and tokenizer of ``predict`` taken from the checkpoint. Every command turns bad input into a
readable one-paragraph error (exit status 2) instead of a traceback (``main``).
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any, Callable, NamedTuple, Optional

from lightning_gpt.errors import NonFiniteError, Terminated, describe_storage_error, lead_with_reason

__all__ = ["COMMANDS", "Command", "main"]  # GPTLightningCLI: lightning_gpt.cli.fit (also reachable here)

# Exceptions that mean "the user asked for something impossible": shown as one message, not a traceback.
_USER_ERRORS = (ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError)


class Command(NamedTuple):
    """One subcommand ``NAME``: its function is ``NAME_command(argv)`` in ``lightning_gpt.cli.<module>`` (``argv``: the
    command line after ``NAME``), imported only when it runs; ``help`` is its line in ``lightning-gpt --help``."""

    module: str
    help: str


# Every subcommand, one line each, in the order of ``lightning-gpt --help``.
COMMANDS: dict[str, Command] = {
    "fit": Command("fit", "train a model or resume it with --ckpt_path last (start: --config recipes/quickstart.yaml)"),
    "validate": Command("fit", "compute the validation loss of a checkpoint on a data source"),
    "test": Command("fit", "compute the test loss of a checkpoint on a data source"),
    "predict": Command("fit", "decode a file of prompts (text or JSONL) in batches into a JSONL file"),
    "generate": Command("generate", "stream one completion of a prompt from a checkpoint to the terminal"),
    "export": Command("export", "write a checkpoint's model out for use elsewhere (see lightning-gpt export --help)"),
    "evaluate": Command("evaluate", "loss, perplexity, bits per byte of a text source, or lm-eval tasks (--tasks)"),
    "prepare": Command("prepare", "tokenize a corpus once, in parallel, into a dataset folder that fit streams"),
    "serve": Command("serve", "serve a checkpoint over HTTP: OpenAI-compatible /v1/completions, batched"),
}
SUBCOMMANDS = tuple((name, command.help) for name, command in COMMANDS.items())  # (name, help) pairs


def command_function(name: str) -> Callable[[list[str]], None]:
    """The function of subcommand ``name``, ``lightning_gpt.cli.<module>.<name>_command`` (its module imported now).

    Raises:
        KeyError: no such subcommand.
    """
    module = importlib.import_module(f"lightning_gpt.cli.{COMMANDS[name].module}")
    return getattr(module, f"{name}_command")


def overview() -> str:
    """The top-level help: what the command does and every subcommand with one line each."""
    width = max(len(name) for name, _ in SUBCOMMANDS)
    lines = [
        "usage: lightning-gpt <subcommand> [options]",
        "",
        "Train GPT language models and decode text from them.",
        "",
        "subcommands:",
        *(f"  {name:<{width}}  {text}" for name, text in SUBCOMMANDS),
        "",
        "`lightning-gpt <subcommand> --help` lists the options of one subcommand; every option can also be set in a",
        "YAML file given with --config (see recipes/).",
    ]
    return "\n".join(lines) + "\n"


def _fail(message: str) -> None:
    sys.stderr.write(f"lightning-gpt: error: {message}\n")
    raise SystemExit(2)


def _ignore_ctrl_c_while_exiting() -> None:
    """The command is ending with an error or an interrupt: a Ctrl-C pressed again now would only interrupt the
    interpreter's own cleanup (with a traceback from an atexit hook). Only for the real command line (``args`` not
    given): a caller's process (a test, a notebook) keeps its Ctrl-C."""
    import signal

    try:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    except ValueError:  # not the main thread
        pass


def main(args: Optional[list[str]] = None) -> None:
    """Entry point of the ``lightning-gpt`` console script (and of ``python -m lightning_gpt``).

    Args:
        args: command line arguments without the program name (default: ``sys.argv[1:]``).
    """
    argv = list(sys.argv[1:] if args is None else args)
    show_traceback = os.environ.get("LIGHTNING_GPT_TRACEBACK", "") not in ("", "0")
    if not argv or argv[0] in ("-h", "--help"):
        sys.stdout.write(overview())
        if not argv:
            _fail("choose a subcommand, e.g. lightning-gpt fit --config recipes/quickstart.yaml")
        return
    if argv[0] not in COMMANDS:
        sys.stdout.write(overview())
        _fail(f"unknown subcommand {argv[0]!r}; choose one of {', '.join(COMMANDS)}")
    try:
        _run(argv, show_traceback)
    except SystemExit as err:
        if err.code and args is None:  # whatever the failure, a Ctrl-C while exiting adds no traceback
            _ignore_ctrl_c_while_exiting()
        raise


def _run(argv: list[str], show_traceback: bool) -> None:
    """Run one subcommand; every failure a user can fix leaves as ``SystemExit`` with a one-paragraph message."""
    try:
        if COMMANDS[argv[0]].module == "fit":  # --help or a mistyped flag: answered without Lightning when it can
            from lightning_gpt.cli.help_cache import answer

            answer(argv[0], argv[1:])
        command_function(argv[0])(argv[1:])
    except SystemExit as err:
        # Lightning ends a stage on SIGTERM with SIGTERMException() (status 0); a run that did not finish must not
        # look successful to a scheduler or a script: 143, as a process ended by SIGTERM.
        if type(err).__name__ == "SIGTERMException" and not err.code:
            sys.stderr.write("lightning-gpt: stopped by SIGTERM before the end.\n")
            raise SystemExit(143) from None
        if isinstance(err, Terminated):  # SIGTERM during a write: it was undone (no partial file, no temporary)
            sys.stderr.write("lightning-gpt: stopped by SIGTERM; nothing was written.\n")
        raise
    except KeyboardInterrupt:
        if show_traceback:
            raise
        sys.stderr.write("lightning-gpt: interrupted (Ctrl-C); nothing partial was written.\n")
        raise SystemExit(130) from None
    except NonFiniteError as err:
        # Not a usage error, but the message says all (the step, what was kept, how to go on): no traceback.
        if show_traceback:
            raise
        sys.stderr.write(f"lightning-gpt: stopped: {err}\n")
        raise SystemExit(1) from None
    except _USER_ERRORS as err:
        if show_traceback:
            raise
        message = err.args[0] if isinstance(err, KeyError) and err.args else str(err)
        _fail(f"{lead_with_reason(message)}\n(Set LIGHTNING_GPT_TRACEBACK=1 to see the full traceback.)")
    except OSError as err:
        # A full or read-only disk (or no permission) is the user's to fix; any other OSError keeps its traceback.
        message = describe_storage_error(err)
        if show_traceback or message is None:
            raise
        _fail(f"{message}\n(Set LIGHTNING_GPT_TRACEBACK=1 to see the full traceback.)")
    except Exception as err:
        # A library that wraps the OSError of a full disk in its own error (torch.save: RuntimeError "unexpected
        # pos"), raised where no writer of ours named the file: still one paragraph.
        message = describe_storage_error(err)
        if show_traceback or message is None:
            raise
        _fail(f"{message}\n(Set LIGHTNING_GPT_TRACEBACK=1 to see the full traceback.)")


def __getattr__(name: str) -> Any:
    # The Lightning classes are imported on first use, so ``lightning-gpt generate`` starts without importing Lightning.
    if name in ("GPTLightningCLI", "InterruptCheckpoint"):
        from lightning_gpt.cli import fit

        return getattr(fit, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


if __name__ == "__main__":
    main()
