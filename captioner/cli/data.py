"""``captioner data check|convert|subset|features|pseudo-label|download``: inspect, convert, subset, pre-encode,
pseudo-label and download datasets."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from captioner.cli.common import (
    CliError,
    add_image_options,
    apply_image_options,
    non_negative_int,
    positive_int,
    probability,
)
from captioner.cli.options import add_field


def add_parser(sub) -> None:
    parser = sub.add_parser("data", help="check and convert datasets",
                            description="Dataset tools: 'check' reports problems, 'convert' writes a caption folder.")
    actions = parser.add_subparsers(dest="data_command", metavar="ACTION", required=True,
                                    parser_class=type(parser))
    check = actions.add_parser(
        "check", help="report counts and problems of a dataset",
        description="Print per split: images, captions, unreadable or missing images, empty and duplicate "
        "captions, caption length distribution and vocabulary coverage; then, on stderr, one 'warning: ...' or "
        "'error: ...' line per problem, naming the file and line (or JSON entry): every entry of every file is "
        "either used or listed. Exits 1 when there are errors.")
    _source_options(check)
    check.add_argument("--min-count", type=positive_int, default=5,
                       help="vocabulary threshold for the coverage column (default: 5)")
    check.add_argument("--no-verify-images", action="store_true",
                       help="only check that image files exist (faster) instead of decoding each")
    check.add_argument("--json", action="store_true", help="print the report as JSON")
    check.add_argument("--max-problems", type=non_negative_int, default=50, metavar="N",
                       help="list at most N errors and N warnings, then count the rest (0: list all; default: 50)")
    add_image_options(check, bad_image_choice=False)
    check.set_defaults(run=run_check)

    convert = actions.add_parser(
        "convert", help="convert any format to a caption folder",
        description="Write a caption folder (images/, captions.txt, splits/) from any supported format. Images "
        "are hard-linked, or copied when linking is impossible; never moved. OUT must not exist.")
    _source_options(convert)
    convert.add_argument("--to", choices=["folder"], default="folder", help="output format (default: folder)")
    convert.add_argument("out", metavar="OUT", help="new directory to write")
    convert.add_argument("--splits", default=None,
                         help="comma-separated splits to convert (default: all the source has)")
    convert.add_argument("--copy", action="store_true", help="copy images instead of hard-linking them")
    convert.set_defaults(run=run_convert)
    _add_subset_parser(actions)
    _add_features_parser(actions)
    _add_pseudo_label_parser(actions)
    from captioner.cli import download as download_cli

    download_cli.add_parser(actions)


def _add_subset_parser(actions) -> None:
    subset = actions.add_parser(
        "subset", help="make a reproducible COCO subset from the annotation files",
        description="Select COCO images by count (seeded), category names or ids, split them by ratios and write "
        "annotations/captions_<split>.json, a caption folder (captions.txt, splits/, images/ linked when --images "
        "holds them) and manifest.json (arguments, sha256 of inputs and images). Same arguments: byte-identical "
        "output. Runs on the annotation files alone; download the images afterwards with the manifest.")
    subset.add_argument("captions", metavar="CAPTIONS_JSON", help="COCO captions file, e.g. captions_train2017.json")
    subset.add_argument("out", metavar="OUT", help="new directory to write")
    subset.add_argument("--instances", metavar="JSON", help="COCO instances file (needed for --categories)")
    subset.add_argument("--count", type=positive_int, help="number of images to draw (default: all that qualify)")
    subset.add_argument("--categories", help="comma-separated category names, e.g. dog,cat")
    subset.add_argument("--ids", help="comma-separated image ids, or @FILE with one id per line")
    subset.add_argument("--split-ratios", default="0.8,0.1,0.1",
                        help="train,val[,test] shares summing to 1 (default: 0.8,0.1,0.1)")
    subset.add_argument("--seed", type=int, default=0, help="seed for the draw and the split (default: 0)")
    subset.add_argument("--images", metavar="DIR", help="folder holding the images already (linked and hashed)")
    subset.set_defaults(run=run_subset)


def _add_features_parser(actions) -> None:
    from captioner.config import POOLINGS
    from captioner.training.config import RECIPE_MODEL  # train's defaults: what its runs will read

    features = actions.add_parser(
        "features", help="encode a dataset's images into the feature cache once, for several training runs",
        description="Encode the images of the given splits with a frozen encoder into the memory-mapped feature "
        "cache that `captioner train` reads (same --cache-dir), so that runs started afterwards, even in parallel, "
        "find every image encoded. Images already cached are skipped; unreadable ones are counted and reported.")
    _source_options(features)
    features.add_argument("--splits", default="train,val", help="comma-separated splits (default: train,val)")
    encoder, maps = RECIPE_MODEL["encoder"], RECIPE_MODEL["inject"] == "attention"
    features.add_argument("--encoder", default=encoder, help=f"encoder name (default: {encoder}, as `train`'s)")
    features.add_argument("--map", action=argparse.BooleanOptionalAction, default=maps,
                          help="cache the unpooled feature maps that `train --inject attention` reads (float16); "
                          "--no-map: the pooled vectors of the other --inject modes (default: "
                          f"{'maps' if maps else 'vectors'}, as `train`'s)")
    features.add_argument("--pooling", choices=POOLINGS, default="avg", help="pooling of the vectors (default: avg)")
    features.add_argument("--image-size", type=non_negative_int, default=0, metavar="N",
                          help="as `train --image-size` (default: 0, the encoder's own preprocessing)")
    features.add_argument("--mirror", action="store_true",
                          help="cache the mirrored images' features (what `train --flip-features` adds)")
    features.add_argument("--cache-dir", default=None, metavar="DIR",
                          help="feature-cache directory (default: $CAPTIONER_CACHE or ~/.cache/captioner/features)")
    features.add_argument("--batch-size", type=positive_int, default=32, help="images per forward pass (default: 32)")
    features.add_argument("--threads", type=positive_int, default=None, help="CPU threads (default: torch's choice)")
    features.add_argument("--json", action="store_true", help="print the summary as JSON")
    features.set_defaults(run=run_features)


def _add_pseudo_label_parser(actions) -> None:
    from captioner.training.pseudo import PseudoLabelConfig

    pseudo = actions.add_parser(
        "pseudo-label", help="caption unlabelled photos with a teacher model, for self-training",
        description="Caption a directory of photos nobody captioned with a trained model's tag-guided decoding, "
        "keep the captions it can be trusted with (a confident tag, a fluent caption) and write them as a caption "
        "folder (images/ links to the photos) that `captioner train --extra-data OUT` adds to the training data. "
        "OUT/pseudo_labels.jsonl lists every photo and why it was left out.")
    pseudo.add_argument("images", metavar="IMAGES", help="directory of photos (searched recursively)")
    pseudo.add_argument("out", metavar="OUT", help="new directory to write")
    pseudo.add_argument("--model", default="default", metavar="DIR", help="the teacher model (default: default)")
    p = PseudoLabelConfig()
    add_field(pseudo, p, "min_tag_prob", type=probability, metavar="P",
              help="keep a photo whose most probable tag reaches P")
    add_field(pseudo, p, "min_token_log_prob", type=float, metavar="L",
              help="keep a caption whose log-probability per token reaches L")
    add_field(pseudo, p, "captions_per_image", type=positive_int, metavar="N", help="keep up to N captions a photo")
    add_field(pseudo, p, "beam_size", type=positive_int, help="beams of the guided search")
    pseudo.add_argument("--cache-dir", default=None, metavar="DIR",
                        help="feature cache (default: $CAPTIONER_CACHE/features)")
    pseudo.add_argument("--threads", type=positive_int, default=None, help="CPU threads (default: torch's choice)")
    pseudo.set_defaults(run=run_pseudo_label)



def run_pseudo_label(args: argparse.Namespace) -> int:
    from captioner.cli.common import load_model
    from captioner.cli.options import fields_of
    from captioner.library.inputs import collect_images
    from captioner.training.pseudo import PseudoLabelConfig, pseudo_label, write_caption_folder

    images = Path(args.images)
    if not images.is_dir():
        raise CliError(f"{images} is not a directory of photos")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    paths = [p for p, problem in collect_images([str(images)]) if problem is None]
    if not paths:
        raise CliError(f"{images} holds no image files")
    model = load_model(args.model, "cpu")
    records = pseudo_label(model, paths, PseudoLabelConfig(**fields_of(PseudoLabelConfig, args)), args.cache_dir)
    try:
        kept = write_caption_folder(Path(args.out), images, records)
    except (ValueError, OSError) as err:
        raise CliError(str(err)) from None
    print(f"{args.out}: pseudo-captions for {kept} of {len(paths)} photos (the others: {Path(args.out)}"
          "/pseudo_labels.jsonl says why)")
    return 0


def _source_options(parser: argparse.ArgumentParser) -> None:
    from captioner.data import FORMATS

    parser.add_argument("path", metavar="PATH", help="dataset directory or annotation file")
    parser.add_argument("--format", dest="data_format", choices=sorted(FORMATS), default=None,
                        help="dataset format (default: detected)")
    parser.add_argument("--images", default=None, metavar="DIR", help="images directory override")


def run_check(args: argparse.Namespace) -> int:
    from captioner.data import DatasetError
    from captioner.data.check import check_dataset, format_report, problem_lines

    apply_image_options(args)
    try:
        report = check_dataset(args.path, args.data_format, args.images, args.min_count,
                               verify_images=not args.no_verify_images, progress=sys.stderr.isatty(),
                               max_listed=args.max_problems)
    except DatasetError as err:
        raise CliError(str(err)) from None
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    sys.stdout.flush()
    for line in problem_lines(report):
        print(line, file=sys.stderr)
    return 1 if report["error_count"] else 0


def run_convert(args: argparse.Namespace) -> int:
    from captioner.data import DatasetError
    from captioner.data.convert import convert_to_folder

    splits = [s.strip() for s in args.splits.split(",") if s.strip()] if args.splits else None
    try:
        stats = convert_to_folder(args.path, args.out, args.data_format, args.images, splits, copy=args.copy)
    except DatasetError as err:
        raise CliError(str(err)) from None
    print(f"wrote {args.out}: {stats['images']} images ({stats['linked']} linked, {stats['copied']} copied), "
          f"{stats['captions']} captions, splits {stats['splits']}")
    return 0


def run_subset(args: argparse.Namespace) -> int:
    from pathlib import Path

    from captioner.data import DatasetError
    from captioner.data.coco_subset import SubsetSpec, make_subset

    try:
        spec = SubsetSpec(
            count=args.count, seed=args.seed, ratios=tuple(_floats(args.split_ratios)),
            categories=[c.strip() for c in args.categories.split(",") if c.strip()] if args.categories else None,
            ids=_ids(args.ids) if args.ids else None,
        )
        manifest = make_subset(Path(args.captions), Path(args.out), spec,
                               Path(args.instances) if args.instances else None,
                               Path(args.images) if args.images else None)
    except (DatasetError, OSError) as err:
        raise CliError(str(err)) from None
    print(f"wrote {args.out}: {manifest['counts']} images per split, {manifest['images_present']} image files "
          "linked")
    return 0


def run_features(args: argparse.Namespace) -> int:
    import torch

    from captioner.config import ModelConfig
    from captioner.data import DatasetError, load_dataset
    from captioner.features import fill_cache

    if args.threads:
        torch.set_num_threads(args.threads)
    splits = [s.strip() for s in args.splits.split(",") if s.strip()]
    try:
        config = ModelConfig(encoder=args.encoder, pooling=args.pooling,
                             inject="attention" if args.map else "every_step")
        paths = list(dict.fromkeys(item.path for split in splits
                                   for item in load_dataset(args.path, split, args.data_format, args.images).items))
        summary = fill_cache(config, paths, cache_dir=args.cache_dir, mirror=args.mirror, batch_size=args.batch_size,
                             image_size=args.image_size)
    except (DatasetError, ValueError) as err:
        raise CliError(str(err)) from None
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(f"{summary['images']} images of {', '.join(splits)}: {summary['new']} encoded now, "
              f"{len(summary['unreadable'])} unreadable; cache {summary['dir']} ({summary['key']})")
    for path, reason in summary["unreadable"].items():
        print(f"warning: {path}: {reason}", file=sys.stderr)
    return 0


def _floats(text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",")]
    except ValueError:
        raise CliError(f"--split-ratios: expected numbers like 0.8,0.1,0.1, got {text!r}", code=2) from None


def _ids(text: str) -> list[int]:
    from pathlib import Path

    raw = Path(text[1:]).read_text().split() if text.startswith("@") else text.split(",")
    try:
        return [int(v) for v in raw if v.strip()]
    except ValueError:
        raise CliError(f"--ids: expected whole numbers, got {text!r}", code=2) from None
