"""``captioner score``: score captions made elsewhere (COCO results format) against a dataset split."""

from __future__ import annotations

import argparse
import json

from captioner.cli.common import CliError, add_dataset_options
from captioner.cli.evaluate import check_output_files, format_table, load_split, write_json


def add_parser(sub) -> None:
    parser = sub.add_parser(
        "score", help="score captions made elsewhere",
        description="Score a COCO results file ([{\"image_id\": ..., \"caption\": ...}], file_name accepted "
        "instead of image_id) against all references of a split: BLEU-1..4, CIDEr-D, ROUGE-L as coco-caption "
        "computes them, plus nltk's corpus BLEU (table and JSON on one scale: BLEU-n and ROUGE-L 0-1, CIDEr-D "
        "coco-caption's 0-10). Every image of the split needs exactly one caption unless "
        "--allow-missing is given.",
    )
    parser.add_argument("--predictions", required=True, metavar="FILE", help="COCO results JSON file")
    add_dataset_options(parser)
    parser.add_argument("--split", default=None, help="split the captions belong to (default: the dataset's only "
                        "split, else val, as evaluate)")
    parser.add_argument("--allow-missing", action="store_true",
                        help="score only the images that have a caption instead of stopping")
    parser.add_argument("--out", metavar="FILE", help="write the report as JSON here")
    parser.add_argument("--json", action="store_true", help="print the report as JSON instead of a table")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from captioner.data import DatasetError
    from captioner.data.base import read_json
    from captioner.evaluate import build_report, from_coco_results

    check_output_files(args.out)
    dataset = load_split(args)
    try:
        predictions = from_coco_results(read_json_file(args.predictions, read_json), dataset, args.predictions)
    except DatasetError as err:
        raise CliError(str(err)) from None
    if not predictions:
        raise CliError(f"{args.predictions}: no captions to score")
    missing = len(dataset) - len(predictions)
    if missing and not args.allow_missing:
        raise CliError(f"{args.predictions}: {missing} of {len(dataset)} images of split {dataset.split!r} have no "
                       "caption; caption them all or pass --allow-missing")
    report = build_report(predictions, dataset)
    report.update(predictions_file=args.predictions, n_missing=missing)
    write_json(args.out, report)
    print(json.dumps(report, indent=2, sort_keys=True) if args.json else format_table(report))
    return 0


def read_json_file(path: str, read_json):
    from pathlib import Path

    if not Path(path).is_file():
        raise CliError(f"--predictions {path}: no such file")
    return read_json(Path(path))
