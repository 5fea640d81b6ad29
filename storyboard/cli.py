"""The `storyboard` command: a thin layer over the library.

Each area registers its subcommands from `storyboard.commands.<area>` through
a `register(subparsers)` function; a command handler returns an exit code.
Every error ends in one line on stderr, never a traceback: errors the library
raises on purpose exit 1; a usage error exits 2, and a misspelt command is
answered with the closest real one.

A layer above the library (the flows' `storyboard render`) adds its own
subcommands without the library importing it: pass `register(subparsers)`
functions as `extra`, to `build_parser(extra=...)` or `main(argv, extra=...)`,
from that layer's own console entry point.
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import os
import sys
from collections.abc import Callable, Iterable, Sequence
from typing import Any, NoReturn

from storyboard.errors import StoryboardError

COMMAND_MODULES = ("store", "simulator", "doctor", "pictures")

Handler = Callable[[argparse.Namespace], int]
Register = Callable[[Any], None]


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors: its usage block would bury the message."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {message} (see `{self.prog} --help`)\n")


def build_parser(extra: Iterable[Register] = ()) -> Parser:
    parser = Parser(
        prog="storyboard", description="Storyboard image stage: store, simulator and tools."
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f"storyboard.commands.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"storyboard.commands.{name}":
                raise
            continue
        module.register(subparsers)
    for register in extra:
        register(subparsers)
    parser.set_defaults(commands=sorted(subparsers.choices))
    return parser


def unknown_command(parser: argparse.ArgumentParser, argv: Sequence[str]) -> str | None:
    """The one-line answer to a misspelt command, or None when the command exists."""
    commands: list[str] = parser.get_default("commands")
    # The top level takes no option but --help, so the first other word is the command.
    word = next((a for a in argv if not a.startswith("-")), None)
    if word is None or word in commands:
        return None
    close = difflib.get_close_matches(word, commands, n=1, cutoff=0.5)
    hint = f"did you mean {close[0]!r}?" if close else f"the commands are {', '.join(commands)}"
    return f"error: unknown command {word!r}; {hint}"


def main(argv: Sequence[str] | None = None, *, extra: Iterable[Register] = ()) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(extra)
    if problem := unknown_command(parser, argv):
        print(problem, file=sys.stderr)
        return 2
    args = parser.parse_args(argv)
    handler: Handler = args.handler
    try:
        code = handler(args)
        sys.stdout.flush()  # a closed pipe shows here, not in the interpreter's exit
        return code
    except BrokenPipeError:
        return closed_pipe()
    except StoryboardError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


# What a shell reports for a command a closed pipe stopped (128 + SIGPIPE).
CLOSED_PIPE_STATUS = 141


def closed_pipe() -> int:
    """The reader of our output went away (`| head -1`): end quietly, as a command a
    closed pipe stops does. Python would try once more to flush stdout at exit and print
    the error, so stdout points at /dev/null from here on."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return CLOSED_PIPE_STATUS


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
