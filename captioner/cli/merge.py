"""``captioner merge-results FILE... --out FILE``: join the results files of a library's shards into one."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from captioner.cli.common import CliError


def add_parser(sub) -> None:
    parser = sub.add_parser(
        "merge-results", help="join the results files of several shards",
        description="Join results files written by `captioner caption --out ... --shard K/N` (or any runs over "
        "different photos) into one file, sorted by image. A photo found in two files is an error.",
    )
    parser.add_argument("inputs", nargs="+", metavar="FILE", help="results files (.jsonl, .csv, .tsv or .json)")
    parser.add_argument("--out", required=True, metavar="FILE", help="the joined file (format from its extension)")
    parser.add_argument("--format", dest="results_format", choices=["jsonl", "csv", "tsv", "json"],
                        help="the joined file's format (default: from --out's extension)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from captioner.library.results import ResultsError, merge_results

    out = Path(args.out)
    if out.exists() and not args.overwrite:
        raise CliError(f"--out {out} already exists; pass --overwrite to replace it")
    if any(Path(p).resolve() == out.resolve() for p in args.inputs):
        raise CliError(f"--out {out} is one of the inputs; write the joined file elsewhere")
    try:
        count = merge_results([Path(p) for p in args.inputs], out, args.results_format)
    except ResultsError as err:
        raise CliError(str(err)) from None
    print(f"{out}: {count} rows from {len(args.inputs)} files", file=sys.stderr)
    return 0
