"""``captioner finetune``: adapt a trained model (default: the embedded one) to your own data."""

from __future__ import annotations

import argparse
from pathlib import Path

from captioner.cli.common import CliError, non_negative_int
from captioner.cli.options import add_field, fields_of
from captioner.cli.train import add_run_options, epoch_lines, prepare_out, run_training, train_config


def add_parser(sub) -> None:
    from captioner.training.config import FinetuneConfig, finetune_defaults

    parser = sub.add_parser(
        "finetune", help="fine-tune a model on your own data",
        description="Continue training a model directory (default: the embedded model) on new data. Optionally "
        "add the new data's frequent words to the vocabulary (existing ids and weights untouched), freeze parts, "
        "unfreeze the encoder's last blocks, stop early, resume after a crash, and report BLEU-4/CIDEr-D before "
        "and after on the new data's validation split and on --also-eval (to see what was forgotten): BLEU-4 as a "
        "fraction (0-1), CIDEr-D on coco-caption's scale (0-10), in the table and finetune_report.json alike. "
        "With no schedule typed the run adapts to the data's size: a budget of --steps optimiser steps (as many "
        "epochs as that takes, at most --max-epochs), a linear warm-up, Adam 1e-3 on a cosine schedule, and the "
        "epoch with the best validation CIDEr-D kept, stopping after --patience epochs without a better one "
        "(docs/ablation.md, 'Fine-tuning defaults').",
    )
    ft = FinetuneConfig()
    add_field(parser, ft, "base", "--from", metavar="DIR", help="model to start from: a model directory or 'default'")
    add_run_options(parser, finetune_defaults())
    add_field(parser, ft, "extend_vocab", action="store_true", show_default=False,
              help="append words of the new training captions seen at least --min-count times")
    add_field(parser, ft, "also_eval", metavar="PATH",
              help="a dataset the base model knew (e.g. its validation data), scored before and after")
    add_field(parser, ft, "also_eval_split", help="split of --also-eval")
    add_field(parser, ft, "also_eval_format", help="format of --also-eval (none: detected)")
    add_field(parser, ft, "eval_split", help="split of --data scored before and after (none: --val-split); use a "
              "split the run never sees for an honest figure")
    add_field(parser, ft, "eval_max_images", type=non_negative_int, metavar="N",
              help="score at most N images of each before/after set (the report, not the per-epoch validation: "
              "that is --val-max-images); 0 = all")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from captioner.training.config import FinetuneConfig
    from captioner.training.finetune import finetune, format_report

    prepare_out(args)
    if args.also_eval and not Path(args.also_eval).exists():
        raise CliError(f"--also-eval {args.also_eval}: no such file or directory")
    cfg = train_config(args)
    ft = FinetuneConfig(**fields_of(FinetuneConfig, args))
    with epoch_lines(args):
        result = run_training(lambda: finetune(cfg, ft, resume=args.resume))
    print(format_report(result.report))
    print(f"fine-tuned model: {result.train.model_dir}")
    return 0
