"""Top-level parser and error handling: every failure becomes one ``error:`` line and a non-zero exit code."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from captioner.cli import (
    caption,
    data,
    ensemble,
    evaluate,
    export,
    finetune,
    inspect,
    merge,
    plot,
    score,
    serve,
    train,
    visualize,
)
from captioner.cli.common import CliError
from captioner.fileio import SaveError
from captioner.version import __version__

SUBCOMMANDS = (caption, merge, train, finetune, ensemble, export, evaluate, score, data, inspect, visualize, plot,
               serve)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2, no usage dump
        self.exit(2, f"error: {message} (see '{self.prog} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="captioner", description="Caption images, train and evaluate captioning models.")
    parser.add_argument("--version", action="version", version=f"captioner {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details (INFO level)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for module in SUBCOMMANDS:
        module.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code (0 ok, 1 failure, 2 bad arguments, 130 interrupted)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version and argument errors (already printed)
        return int(exc.code or 0)
    if args.command is None:
        parser.print_help()
        return 2
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s: %(message)s")
    try:
        return int(args.run(args) or 0)
    except CliError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.code
    except SaveError as err:  # disk full or no permission while writing: the previous files are intact
        print(f"error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 1
    except Exception as err:  # last resort: never a traceback for users
        if os.environ.get("CAPTIONER_DEBUG"):
            raise
        print(f"error: {type(err).__name__}: {err} (set CAPTIONER_DEBUG=1 for the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
