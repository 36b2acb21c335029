"""``captioner train``: train a captioner on a dataset (the frozen encoder's features are cached)."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from captioner.cli.common import (
    CliError, add_dataset_options, add_image_options, apply_image_options, check_writable_dir, non_negative_float,
    positive_int,
)


def add_parser(sub) -> None:
    from captioner.config import CELL_TYPES, INJECT_MODES, SELECT_BY

    parser = sub.add_parser(
        "train", help="train a model on a caption dataset",
        description="Train a decoder on a frozen pretrained encoder. Writes OUT/model (best model directory), "
        "OUT/log.csv (step/epoch/loss/validation metrics) and OUT/summary.json.",
    )
    add_dataset_options(parser)
    parser.add_argument("--out", required=True, metavar="DIR", help="run directory to write")
    parser.add_argument("--train-split", default="train",
                        help="split to train on; join splits with '+', e.g. train+restval (default: train)")
    parser.add_argument("--val-split", default="val", help="split validated on each epoch; 'none' to skip "
                        "(default: val)")
    parser.add_argument("--epochs", type=positive_int, default=10, help="passes over the captions (default: 10)")
    parser.add_argument("--batch-size", type=positive_int, default=128, help="captions per step (default: 128)")
    parser.add_argument("--lr", type=non_negative_float, default=4e-4, help="Adam learning rate (default: 4e-4)")
    parser.add_argument("--clip-norm", type=non_negative_float, default=5.0,
                        help="clip the global gradient norm to this; 0 disables (default: 5.0)")
    parser.add_argument("--min-count", type=positive_int, default=5,
                        help="words rarer than this in the training captions become <unk> (default: 5)")
    parser.add_argument("--encoder", default="efficientnet_lite0", help="image encoder (default: "
                        "efficientnet_lite0; see 'captioner train --list-encoders')")
    parser.add_argument("--embed-dim", type=positive_int, default=256, help="word embedding width (default: 256)")
    parser.add_argument("--hidden-dim", type=positive_int, default=512, help="recurrent state width (default: 512)")
    parser.add_argument("--image-proj-dim", type=positive_int, default=256,
                        help="projected image width fed at every step (default: 256)")
    parser.add_argument("--layers", type=positive_int, default=1, help="recurrent layers (default: 1)")
    parser.add_argument("--dropout", type=non_negative_float, default=0.5, help="dropout (default: 0.5)")
    parser.add_argument("--cell", choices=CELL_TYPES, default="lstm", help="recurrent cell (default: lstm)")
    parser.add_argument("--inject", choices=INJECT_MODES, default="every_step",
                        help="every_step: image concatenated to every input (default); init_only: image sets the "
                        "initial state only")
    parser.add_argument("--select-by", choices=SELECT_BY, default="bleu4",
                        help="validation figure that picks the saved model: CIDEr-D or BLEU-4 (coco-caption's) of "
                        "greedy captions, or the loss (default: bleu4)")
    parser.add_argument("--val-max-images", type=int, default=0,
                        help="validate on the first N images of the split only; 0 = all (default: 0)")
    parser.add_argument("--seed", type=int, default=0, help="random seed; CPU runs are repeatable (default: 0)")
    parser.add_argument("--cache-dir", default=None, metavar="DIR",
                        help="feature cache (default: $CAPTIONER_CACHE or ~/.cache/captioner/features)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads; 0 = torch's default")
    add_image_options(parser)
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the model and log of an earlier run in --out (default: refuse)")
    parser.add_argument("--dry-run", action="store_true",
                        help="a couple of batches of everything on a few images, to check the wiring in seconds")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from captioner.config import ModelConfig, TrainConfig
    from captioner.data import DatasetError
    from captioner.encoders import EncoderWeightsError, get_spec
    from captioner.train import train

    out = Path(args.out)
    check_writable_dir(out, "--out")
    earlier = [name for name in ("model", "log.csv") if (out / name).exists()]
    if earlier and not args.overwrite:
        raise CliError(f"--out {out} already holds an earlier run ({', '.join(earlier)}); choose another --out or "
                       "pass --overwrite")
    if args.overwrite and (out / "log.csv").exists():
        (out / "log.csv").unlink()
    if not Path(args.data).exists():
        raise CliError(f"--data {args.data}: no such file or directory")
    try:
        get_spec(args.encoder)
        model_cfg = ModelConfig(
            encoder=args.encoder, embed_dim=args.embed_dim, image_proj_dim=args.image_proj_dim,
            hidden_dim=args.hidden_dim, num_layers=args.layers, dropout=args.dropout, cell=args.cell,
            inject=args.inject,
        )
    except ValueError as err:
        raise CliError(str(err), code=2) from None
    apply_image_options(args)
    cfg = TrainConfig(
        data=args.data, data_format=args.data_format, images=args.images, on_bad_image=args.on_bad_image,
        out=args.out, train_split=args.train_split,
        val_split=None if args.val_split.lower() == "none" else args.val_split, epochs=args.epochs,
        batch_size=args.batch_size, lr=args.lr, clip_norm=args.clip_norm, min_count=args.min_count, seed=args.seed,
        val_max_images=args.val_max_images, select_by=args.select_by, cache_dir=args.cache_dir,
        num_threads=args.threads, dry_run=args.dry_run, command=shlex.join(["captioner", *sys.argv[1:]]),
    )
    try:
        result = train(cfg, model_cfg)
    except (DatasetError, EncoderWeightsError, FloatingPointError) as err:
        raise CliError(str(err)) from None
    best = ", ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in result.best.items())
    print(f"best model: {result.model_dir} ({best})")
    return 0
