"""``captioner finetune``: adapt a trained model (default: the embedded one) to your own data."""

from __future__ import annotations

import argparse
from pathlib import Path

from captioner.cli.common import CliError, non_negative_int
from captioner.cli.train import add_run_options, prepare_out, run_training, train_config


def add_parser(sub) -> None:
    parser = sub.add_parser(
        "finetune", help="fine-tune a model on your own data",
        description="Continue training a model directory (default: the embedded model) on new data. Optionally "
        "add the new data's frequent words to the vocabulary (existing ids and weights untouched), freeze parts, "
        "unfreeze the encoder's last blocks, stop early, resume after a crash, and report BLEU-4/CIDEr-D before "
        "and after on the new data's validation split and on --also-eval (to see what was forgotten).",
    )
    parser.add_argument("--from", dest="base", default="default", metavar="DIR",
                        help="model to start from: a model directory or 'default' (default: default)")
    add_run_options(parser, epochs=5, lr=1e-4)
    parser.add_argument("--extend-vocab", action="store_true",
                        help="append words of the new training captions seen at least --min-count times")
    parser.add_argument("--also-eval", metavar="PATH",
                        help="a dataset the base model knew (e.g. its validation data), scored before and after")
    parser.add_argument("--also-eval-split", default="val", help="split of --also-eval (default: val)")
    parser.add_argument("--also-eval-format", default=None, help="format of --also-eval (default: detected)")
    parser.add_argument("--eval-split", default=None,
                        help="split of --data scored before and after (default: --val-split); use a split the run "
                        "never sees for an honest figure")
    parser.add_argument("--eval-max-images", type=non_negative_int, default=0,
                        help="score at most N images of each before/after set; 0 = all (default: 0)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from captioner.config import FinetuneConfig
    from captioner.finetune import finetune, format_report

    prepare_out(args)
    if args.also_eval and not Path(args.also_eval).exists():
        raise CliError(f"--also-eval {args.also_eval}: no such file or directory")
    cfg = train_config(args)
    ft = FinetuneConfig(base=args.base, extend_vocab=args.extend_vocab, also_eval=args.also_eval,
                        also_eval_split=args.also_eval_split, also_eval_format=args.also_eval_format,
                        eval_split=args.eval_split, eval_max_images=args.eval_max_images)
    result = run_training(lambda: finetune(cfg, ft, resume=args.resume))
    print(format_report(result.report))
    print(f"fine-tuned model: {result.train.model_dir}")
    return 0
