"""Top-level parser and error handling: every failure becomes one ``error:`` line and a non-zero exit code."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import threading
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
    """Run the CLI; returns the exit code (0 ok, 1 failure, 2 bad arguments, 130 interrupted).

    Run as the ``captioner`` command (``argv`` None), a subcommand that asks for it (``exit_at_once``: caption) ends
    the process as soon as it is done (:func:`end_process`).
    """
    code, args = _run(argv)
    if argv is None and getattr(args, "exit_at_once", False):
        end_process(code)
    return code


def end_process(code: int) -> None:
    """End the process with ``code`` without the interpreter's teardown, once the output is flushed and logging shut
    down: with torch and ONNX Runtime loaded, tearing down thousands of modules takes longer than captioning a photo
    (docs/performance.md). Returns instead where that is not safe: a live non-daemon thread (which the interpreter
    would wait for), or output that cannot be flushed."""
    if any(t.is_alive() and not t.daemon for t in threading.enumerate() if t is not threading.main_thread()):
        return
    logging.shutdown()
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except (OSError, ValueError):
        return
    os._exit(code)


def _run(argv: Sequence[str] | None) -> tuple[int, argparse.Namespace | None]:
    """Parse and run; the exit code and the parsed arguments (None when parsing ended the run)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version and argument errors (already printed)
        return int(exc.code or 0), None
    if args.command is None:
        parser.print_help()
        return 2, args
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s: %(message)s")
    try:
        return int(args.run(args) or 0), args
    except CliError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.code, args
    except SaveError as err:  # disk full or no permission while writing: the previous files are intact
        print(f"error: {err}", file=sys.stderr)
        return 1, args
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130, args
    except BrokenPipeError:
        return 1, args
    except Exception as err:  # last resort: never a traceback for users
        if os.environ.get("CAPTIONER_DEBUG"):
            raise
        print(f"error: {type(err).__name__}: {err} (set CAPTIONER_DEBUG=1 for the traceback)", file=sys.stderr)
        return 1, args

if __name__ == "__main__":
    sys.exit(main())
