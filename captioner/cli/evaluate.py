"""``captioner evaluate``: caption a split with the shared search and score it with BLEU-1..4."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from captioner.cli.common import (
    CliError,
    add_backend_option,
    add_dataset_options,
    add_decoding_options,
    add_device_option,
    add_guided_options,
    add_image_options,
    add_model_option,
    apply_image_options,
    non_negative_int,
    positive_int,
)


def add_parser(sub) -> None:
    parser = sub.add_parser(
        "evaluate", help="score a model on a dataset split",
        description="Caption every image of a split (free-running decoding, the same search as 'caption') and "
        "score the captions against all references: BLEU-1..4, CIDEr-D and ROUGE-L exactly as coco-caption "
        "computes them (Java-free), plus nltk's corpus BLEU. A collapsed output (one caption for many images) "
        "raises a loud warning. Table and JSON use one scale: BLEU-n and ROUGE-L as fractions (0-1), CIDEr-D on "
        "coco-caption's scale (0-10). See docs/metrics.md.",
    )
    add_model_option(parser)
    add_dataset_options(parser)
    parser.add_argument("--split", default=None, help="split to evaluate (default: the dataset's only split, else "
                        "val)")
    add_decoding_options(parser)
    add_guided_options(parser)
    parser.add_argument("--batch-size", type=positive_int, default=128, help="images per batch (default: 128)")
    parser.add_argument("--max-images", type=non_negative_int, default=0, metavar="N",
                        help="evaluate the first N images of the split only; 0 = all (default: 0); the same family "
                        "as train's --val-max-images and finetune's --eval-max-images")
    parser.add_argument("--limit", type=non_negative_int, dest="max_images", default=argparse.SUPPRESS,
                        help=argparse.SUPPRESS)  # old spelling
    parser.add_argument("--out", metavar="FILE", help="write the report as JSON here")
    parser.add_argument("--predictions", metavar="FILE",
                        help="write the captions here in the COCO results format (image_id, caption, file_name)")
    parser.add_argument("--cache-dir", default=None, metavar="DIR", help="feature cache directory")
    parser.add_argument("--json", action="store_true", help="print the report as JSON instead of a table")
    add_image_options(parser)
    add_device_option(parser)
    add_backend_option(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from captioner.cli.common import generation_config, load_captioner
    from captioner.data import DatasetError
    from captioner.evaluate import evaluate, to_coco_results

    check_output_files(args.out, args.predictions)
    apply_image_options(args)
    dataset = load_split(args)
    if args.max_images:
        dataset = dataset.subset(args.max_images)
    model = load_captioner(args)
    start = time.perf_counter()
    try:
        report, predictions = evaluate(model, dataset, generation_config(args), cache_dir=args.cache_dir,
                                       batch_size=args.batch_size, on_bad_image=args.on_bad_image)
    except DatasetError as err:
        raise CliError(str(err)) from None
    seconds = time.perf_counter() - start
    report["model"] = str(args.model)
    write_json(args.predictions, to_coco_results(predictions))
    write_json(args.out, report)
    print(json.dumps(report, indent=2, sort_keys=True) if args.json else format_table(report))
    print(f"captioned and scored {len(predictions)} images in {seconds:.1f} s "
          f"({1000 * seconds / max(len(predictions), 1):.1f} s per 1000 images)", file=sys.stderr)
    return 0


def check_output_files(*paths: str | None) -> None:
    """Fail before any work when an output file cannot be written."""
    for option in paths:
        if option and Path(option).is_dir():
            raise CliError(f"{option} is a directory; give a file name")
        if option and not Path(option).resolve().parent.is_dir():
            raise CliError(f"{option}: directory {Path(option).parent} does not exist; create it first")


def load_split(args: argparse.Namespace):
    """The split ``--split`` names; by default the dataset's only split, else ``val``."""
    from captioner.data import DatasetError, list_splits, load_dataset

    try:
        if args.split is None:
            splits = list_splits(args.data, args.data_format)
            args.split = splits[0] if len(splits) == 1 else "val"
        return load_dataset(args.data, args.split, args.data_format, args.images)
    except DatasetError as err:
        raise CliError(str(err)) from None


def write_json(path: str | None, data) -> None:
    """Write JSON atomically (stable key order, so equal reports are equal bytes)."""
    if path:
        from captioner.fileio import atomic_write_text

        atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n")


SCALE_NOTE = ("scores as in the JSON report: BLEU-n and ROUGE-L are fractions (0-1), CIDEr-D is on coco-caption's "
              "scale (0-10)")
SCALES = {"bleu1": "0-1", "bleu2": "0-1", "bleu3": "0-1", "bleu4": "0-1", "cider": "0-10", "rouge_l": "0-1"}
_LABELS = {"bleu1": "BLEU-1", "bleu2": "BLEU-2", "bleu3": "BLEU-3", "bleu4": "BLEU-4", "cider": "CIDEr-D",
           "rouge_l": "ROUGE-L"}


def format_table(report: dict) -> str:
    """The metrics as a text table on the JSON report's scale (see docs/metrics.md): coco-caption's metrics, then
    nltk's BLEU, each row labelled with its range; four decimals."""
    decoding = report.get("decoding")
    how = "captions made elsewhere" if decoding is None else _decoding(decoding)
    lines = [f"{report['data']} [{report['split']}]: {report['n_images']} images, {how}", SCALE_NOTE,
             f"{'metric':<10}{'scale':<7}{'coco-caption':>14}{'nltk':>10}"]
    for name, value in report["metrics"].items():
        nltk = report["nltk_bleu"].get(name)
        extra = f"{nltk:>10.4f}" if nltk is not None else ""
        lines.append(f"{_LABELS.get(name, name):<10}{SCALES.get(name, ''):<7}{value:>14.4f}{extra}")
    lines.append(f"unique captions {report['unique_captions']}/{report['n_images']}, identical-caption rate "
                 f"{report['identical_caption_rate']:.3f}, vocabulary used {report['vocab_used']}, mean length "
                 f"{report['mean_length']:.2f}")
    lines += [f"WARNING: {w}" for w in report["warnings"]]
    return "\n".join(lines)


def _decoding(d: dict) -> str:
    return "greedy" if d["method"] == "greedy" else f"beam {d['beam_size']}"
