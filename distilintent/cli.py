"""``distilintent`` command line: one subcommand per module in :mod:`distilintent.commands`.

Each command module defines ``HELP``, ``add_arguments(parser)`` and ``run(args) -> int`` and imports
its heavy dependencies inside ``run``. Errors print one line (``--verbose`` shows the traceback).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from distilintent import __version__

COMMANDS = ("train", "evaluate", "calibrate", "export", "detect", "serve", "bench")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="distilintent", description="Train, export and serve intent models.")
    parser.add_argument("--version", action="version", version=f"distilintent {__version__}")
    parser.add_argument("--verbose", "-v", action="store_true", help="show tracebacks and debug logs")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"distilintent.commands.{name}")
        except Exception as err:  # a broken install must not make a command vanish from --help
            raise ImportError(f"the distilintent {name} command cannot be loaded ({type(err).__name__}: {err}); "
                              "reinstall distilintent") from err
        sub = subparsers.add_parser(name, help=module.HELP, description=module.HELP)
        sub.add_argument("--verbose", "-v", action="store_true", default=argparse.SUPPRESS,
                         help="show tracebacks and debug logs")
        module.add_arguments(sub)
        sub.set_defaults(handler=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.handler(args) or 0)
    except KeyboardInterrupt:
        print("distilintent: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # noqa: BLE001 - the CLI turns every failure into one line
        if args.verbose:
            raise
        message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        print(f"distilintent {args.command}: error: {message}", file=sys.stderr)
        return 1
