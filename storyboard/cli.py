"""The `storyboard` command: a thin layer over the library.

Each area registers its subcommands from `storyboard.commands.<area>` through
a `register(subparsers)` function; a command handler returns an exit code.
Errors the library raises on purpose print one line and exit 1, never a
traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence

from storyboard.errors import StoryboardError

COMMAND_MODULES = ("store", "simulator", "doctor")

Handler = Callable[[argparse.Namespace], int]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Handler = args.handler
    try:
        return handler(args)
    except StoryboardError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
