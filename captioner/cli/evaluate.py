"""``captioner evaluate``: caption a split with the shared search and score it with BLEU-1..4."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from captioner.cli.common import (
    CliError, add_dataset_options, add_decoding_options, add_device_option, add_image_options, add_model_option,
    apply_image_options, positive_int,
)


def add_parser(sub) -> None:
    parser = sub.add_parser(
        "evaluate", help="score a model on a dataset split",
        description="Caption every image of a split (free-running decoding, the same search as 'caption') and "
        "score the captions against all references with corpus BLEU-1..4 (nltk, no smoothing).",
    )
    add_model_option(parser)
    add_dataset_options(parser)
    parser.add_argument("--split", default="val", help="split to evaluate (default: val)")
    add_decoding_options(parser)
    parser.add_argument("--batch-size", type=positive_int, default=128, help="images per batch (default: 128)")
    parser.add_argument("--limit", type=int, default=0, help="evaluate the first N images only; 0 = all")
    parser.add_argument("--out", metavar="FILE", help="write the report as JSON here")
    parser.add_argument("--predictions", metavar="FILE", help="write the generated captions as JSON here")
    parser.add_argument("--cache-dir", default=None, metavar="DIR", help="feature cache directory")
    parser.add_argument("--json", action="store_true", help="print the report as JSON instead of a table")
    add_image_options(parser)
    add_device_option(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from captioner.cli.common import generation_config, load_model
    from captioner.data import DatasetError, load_dataset
    from captioner.evaluate import evaluate

    for option in (args.out, args.predictions):
        if option and Path(option).is_dir():
            raise CliError(f"{option} is a directory; give a file name")
        if option and not Path(option).resolve().parent.is_dir():
            raise CliError(f"{option}: directory {Path(option).parent} does not exist; create it first")
    apply_image_options(args)
    try:
        dataset = load_dataset(args.data, args.split, args.data_format, args.images)
    except DatasetError as err:
        raise CliError(str(err)) from None
    if args.limit > 0:
        dataset = dataset.subset(args.limit)
    model = load_model(args.model, args.device)
    try:
        report, predictions = evaluate(model, dataset, generation_config(args), cache_dir=args.cache_dir,
                                       batch_size=args.batch_size, on_bad_image=args.on_bad_image)
    except DatasetError as err:
        raise CliError(str(err)) from None
    report["model"] = str(args.model)
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    if args.predictions:
        rows = [{"image": p.image, "caption": p.caption, "log_prob": p.log_prob} for p in predictions]
        Path(args.predictions).write_text(json.dumps(rows, indent=1) + "\n", encoding="utf-8")
    print(json.dumps(report, indent=2) if args.json else format_table(report))
    return 0


def format_table(report: dict) -> str:
    """A small text table of the metrics (shown as percentages)."""
    lines = [f"{report['data']} [{report['split']}]: {report['n_images']} images, "
             f"{report['unique_captions']} unique captions, decoding {_decoding(report['decoding'])}"]
    lines += [f"{name.upper():<7} {100 * value:6.2f}" for name, value in report["metrics"].items()]
    return "\n".join(lines)


def _decoding(d: dict) -> str:
    return "greedy" if d["method"] == "greedy" else f"beam {d['beam_size']}"
