"""``captioner train``: train a captioner on a dataset (the frozen encoder's features are cached).

The run options (data, schedule, checkpoints, freezing) are shared with ``captioner finetune``.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Callable
from pathlib import Path

from captioner.cli.common import (
    CliError, add_dataset_options, add_image_options, apply_image_options, bounded, check_writable_dir,
    non_negative_float, non_negative_int, positive_int,
)


def add_parser(sub) -> None:
    from captioner.config import ATTENTION_INITS, CELL_TYPES, INJECT_MODES, POOLINGS

    parser = sub.add_parser(
        "train", help="train a model on a caption dataset",
        description="Train a decoder on a frozen pretrained encoder. Writes OUT/model (best model directory), "
        "OUT/log.csv (step/epoch/loss/validation metrics), OUT/summary.json and OUT/training_state.pt (for "
        "--resume).",
    )
    add_run_options(parser, epochs=10, lr=4e-4)
    arch = parser.add_argument_group("architecture")
    arch.add_argument("--encoder", default="efficientnet_lite0", help="image encoder (default: efficientnet_lite0; "
                      "also resnet18/50/101/152, efficientnet_b0, mobilenet_v3_large)")
    arch.add_argument("--pooling", choices=POOLINGS, default="avg",
                      help="image vector from the encoder's feature map: avg (spatial mean, default) or avgmax "
                      "(mean and max concatenated, twice as wide)")
    arch.add_argument("--embed-dim", type=positive_int, default=256, help="word embedding width (default: 256)")
    arch.add_argument("--hidden-dim", type=positive_int, default=512, help="recurrent state width (default: 512)")
    arch.add_argument("--image-proj-dim", type=positive_int, default=256,
                      help="projected image width fed at every step (default: 256)")
    arch.add_argument("--layers", type=positive_int, default=1, help="recurrent layers (default: 1)")
    arch.add_argument("--dropout", type=bounded(float, 0.0), default=0.5, help="dropout (default: 0.5)")
    arch.add_argument("--cell", choices=CELL_TYPES, default="lstm", help="recurrent cell (default: lstm)")
    arch.add_argument("--inject", choices=INJECT_MODES, default="every_step",
                      help="every_step: the pooled image vector concatenated to every input (default); init_only: "
                      "it sets the initial state only; attention: a soft attention over the encoder's feature map "
                      "gives the context concatenated to every input")
    arch.add_argument("--attention-dim", type=positive_int, default=256,
                      help="with --inject attention: width of the attention's scoring layer (default: 256)")
    arch.add_argument("--no-attention-gate", dest="attention_gate", action="store_false",
                      help="with --inject attention: no sigmoid gate on the context (default: gated)")
    arch.add_argument("--attention-init", choices=ATTENTION_INITS, default="mean",
                      help="with --inject attention: the feature map's mean sets the initial state (mean, "
                      "default) or it starts at zeros")
    parser.set_defaults(run=run)


def add_run_options(parser: argparse.ArgumentParser, epochs: int, lr: float) -> None:
    """Options of a training run, shared by ``train`` and ``finetune``."""
    from captioner.config import FREEZABLE, SCHEDULES, SELECT_BY

    add_dataset_options(parser)
    parser.add_argument("--out", required=True, metavar="DIR", help="run directory to write")
    parser.add_argument("--train-split", default="train",
                        help="split to train on; join splits with '+', e.g. train+restval (default: train)")
    parser.add_argument("--val-split", default="val", help="split validated on each epoch; 'none' to skip "
                        "(default: val)")
    parser.add_argument("--epochs", type=non_negative_int, default=epochs, help=f"cross-entropy passes over the "
                        f"captions; 0 with --scst-epochs: self-critical training only (default: {epochs})")
    parser.add_argument("--batch-size", type=positive_int, default=128, help="captions per step (default: 128)")
    parser.add_argument("--lr", type=non_negative_float, default=lr, help=f"Adam learning rate (default: {lr:g})")
    parser.add_argument("--schedule", choices=SCHEDULES, default="constant",
                        help="learning-rate schedule: constant, cosine (to 0 at the end) or plateau (halve when the "
                        "--select-by figure stops improving) (default: constant)")
    parser.add_argument("--warmup-steps", type=non_negative_int, default=0, help="linear warm-up steps (default: 0)")
    parser.add_argument("--clip-norm", type=non_negative_float, default=5.0,
                        help="clip the global gradient norm to this; 0 disables (default: 5.0)")
    parser.add_argument("--min-count", type=positive_int, default=5,
                        help="words rarer than this in the training captions become <unk> (default: 5)")
    parser.add_argument("--select-by", choices=SELECT_BY, default="bleu4",
                        help="validation figure that picks the saved model: CIDEr-D or BLEU-4 (coco-caption's) of "
                        "greedy captions, or the loss (default: bleu4)")
    parser.add_argument("--patience", type=non_negative_int, default=0,
                        help="stop after K epochs without a better --select-by figure; 0 never stops early")
    parser.add_argument("--holdout", type=non_negative_int, default=0, metavar="N",
                        help="validate on N images held out of the training split (seeded) instead of --val-split, "
                        "so that model selection never sees the validation split (default: 0, off)")
    parser.add_argument("--holdout-seed", type=int, default=None, metavar="SEED",
                        help="seed of the held-out draw (default: --seed); train ensemble members with different "
                        "--seed and one --holdout-seed so that none of them sees the images the ensemble is judged on")
    parser.add_argument("--label-smoothing", type=bounded(float, 0.0), default=0.0,
                        help="cross-entropy label smoothing (default: 0)")
    parser.add_argument("--flip-features", action="store_true",
                        help="augment: also cache the vectors of the mirrored training images and train on the "
                        "original or the mirror image with equal chance at each step (default: off)")
    parser.add_argument("--tensorboard", action="store_true",
                        help="also log loss, gradient norm, learning rate and validation scores to TensorBoard "
                        "(RUN/tensorboard; view with `tensorboard --logdir RUN/tensorboard`; needs "
                        "pip install 'captioner[tensorboard]')")
    parser.add_argument("--batch-by-image", action="store_true",
                        help="batches of whole images (all their captions together, about --batch-size captions), "
                        "so each image's features are projected once per step: much faster for attention models "
                        "(default: captions batched by length)")
    parser.add_argument("--image-size", type=non_negative_int, default=0, metavar="N",
                        help="resize each image's shorter side to N and center-crop N x N, so a square image is seen "
                        "whole (default: 0, the encoder's own preprocessing, whose crop cuts the borders off)")
    parser.add_argument("--attention-reg", type=non_negative_float, default=0.0, metavar="LAMBDA",
                        help="doubly stochastic attention penalty LAMBDA * sum_i (1 - sum_t alpha_ti)^2 (attention "
                        "models; default: 0, off)")
    parser.add_argument("--keep-epochs", type=non_negative_int, default=0, metavar="K",
                        help="also keep the last K epochs' models in OUT/epochs/NNN, e.g. for checkpoint averaging "
                        "with `captioner ensemble --average` (default: 0)")
    parser.add_argument("--val-max-images", type=non_negative_int, default=0,
                        help="validate on the first N images of the split only; 0 = all (default: 0)")
    scst = parser.add_argument_group("self-critical training (after the cross-entropy epochs)")
    scst.add_argument("--scst-epochs", type=non_negative_int, default=0, metavar="N",
                      help="then N epochs optimising the CIDEr-D of sampled captions, starting from the best "
                      "cross-entropy model (default: 0, off)")
    scst.add_argument("--scst-lr", type=non_negative_float, default=5e-5, help="their learning rate (default: 5e-5)")
    scst.add_argument("--scst-samples", type=bounded(int, 2), default=5, metavar="K",
                      help="captions sampled per image; each is judged against the mean of the others (default: 5)")
    scst.add_argument("--scst-batch-size", type=positive_int, default=50, metavar="IMAGES",
                      help="images per self-critical step (default: 50)")
    parser.add_argument("--freeze", default="", help=f"comma-separated parts not to train: {', '.join(FREEZABLE)}")
    parser.add_argument("--unfreeze-encoder", type=non_negative_int, default=0, metavar="N",
                        help="also train the encoder's last N blocks (features are then not cached; slow on CPU)")
    parser.add_argument("--encoder-lr", type=non_negative_float, default=None,
                        help="learning rate of the unfrozen encoder blocks (default: --lr / 10)")
    parser.add_argument("--train-bn", action="store_true",
                        help="let the unfrozen encoder blocks' BatchNorm statistics update (default: eval mode)")
    parser.add_argument("--seed", type=int, default=0, help="random seed; CPU runs are repeatable (default: 0)")
    parser.add_argument("--log-every", type=positive_int, default=50, metavar="STEPS",
                        help="log the training loss and gradient norm every N steps (default: 50)")
    parser.add_argument("--save-every", type=non_negative_int, default=0, metavar="STEPS",
                        help="also save the resume state every N steps (default: at each epoch's end only)")
    parser.add_argument("--max-nonfinite-steps", type=positive_int, default=5, metavar="K",
                        help="a step whose loss or gradients are NaN/inf is skipped with a warning; K such steps "
                        "in a row stop the run, the last saved state intact (default: 5)")
    parser.add_argument("--keep-checkpoints", type=non_negative_int, default=2, metavar="K",
                        help="earlier resume states kept in OUT/checkpoints (default: 2)")
    parser.add_argument("--resume", action="store_true",
                        help="continue the interrupted run in --out exactly where its last state left it")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the model and log of an earlier run in --out (default: refuse)")
    parser.add_argument("--cache-dir", default=None, metavar="DIR",
                        help="feature cache (default: $CAPTIONER_CACHE or ~/.cache/captioner/features)")
    parser.add_argument("--threads", type=non_negative_int, default=0, help="torch CPU threads; 0 = torch's default")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda", "mps"], default="cpu",
                        help="where to train: auto picks CUDA, else Apple MPS, else the CPU (default: cpu, "
                        "where a seeded run is repeatable)")
    parser.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"], default="auto",
                        help="training arithmetic: fp32, or bf16/fp16 mixed precision (autocast; fp16 with a "
                        "gradient scaler, GPU only; bf16 also on the CPU); auto = fp16 on CUDA, fp32 elsewhere "
                        "(default: auto)")
    add_image_options(parser)
    parser.add_argument("--dry-run", action="store_true",
                        help="a couple of batches of everything on a few images, to check the wiring in seconds")


def prepare_out(args: argparse.Namespace) -> None:
    """Refuse to clobber an earlier run unless --overwrite; --resume needs one."""
    if args.tensorboard:  # before anything in the run directory is touched
        from captioner.tblog import require_tensorboard

        try:
            require_tensorboard()
        except ValueError as err:
            raise CliError(str(err)) from None
    out = Path(args.out)
    check_writable_dir(out, "--out")
    if not Path(args.data).exists():
        raise CliError(f"--data {args.data}: no such file or directory")
    if args.resume:
        if not (out / "training_state.pt").is_file():
            raise CliError(f"--resume: {out} holds no training_state.pt to continue from; run without --resume")
        return
    earlier = [name for name in ("model", "log.csv", "training_state.pt") if (out / name).exists()]
    if earlier and not args.overwrite:
        raise CliError(f"--out {out} already holds an earlier run ({', '.join(earlier)}); choose another --out, "
                       "pass --resume to continue it or --overwrite to replace it")
    for name in ("log.csv", "training_state.pt"):
        if args.overwrite:
            (out / name).unlink(missing_ok=True)  # missing_ok: the processes of a torchrun job all get here


def train_config(args: argparse.Namespace):
    """The ``TrainConfig`` the parsed options describe."""
    from captioner.config import TrainConfig

    apply_image_options(args)
    try:
        return TrainConfig(
            data=args.data, data_format=args.data_format, images=args.images, on_bad_image=args.on_bad_image,
            out=args.out, train_split=args.train_split,
            val_split=None if args.val_split.lower() == "none" else args.val_split, epochs=args.epochs,
            batch_size=args.batch_size, lr=args.lr, clip_norm=args.clip_norm, min_count=args.min_count,
            seed=args.seed, val_max_images=args.val_max_images, holdout=args.holdout,
            holdout_seed=args.holdout_seed,
            label_smoothing=args.label_smoothing, flip_features=args.flip_features, select_by=args.select_by,
            tensorboard=args.tensorboard,
            batch_by_image=args.batch_by_image, image_size=args.image_size, attention_reg=args.attention_reg,
            keep_epochs=args.keep_epochs,
            cache_dir=args.cache_dir,
            num_threads=args.threads, schedule=args.schedule, warmup_steps=args.warmup_steps,
            patience=args.patience, log_every=args.log_every, save_every=args.save_every,
            max_nonfinite_steps=args.max_nonfinite_steps,
            keep_checkpoints=args.keep_checkpoints,
            freeze=[f.strip() for f in args.freeze.split(",") if f.strip()],
            unfreeze_encoder=args.unfreeze_encoder, encoder_lr=args.encoder_lr, train_bn=args.train_bn,
            device=args.device, precision=args.precision, scst_epochs=args.scst_epochs, scst_lr=args.scst_lr,
            scst_samples=args.scst_samples, scst_batch_size=args.scst_batch_size, dry_run=args.dry_run,
            command=shlex.join(["captioner", *sys.argv[1:]]),
        )
    except ValueError as err:
        raise CliError(str(err), code=2) from None


def run_training(start: Callable):
    """Call ``start()`` and turn the failures a user can fix into one-line errors."""
    from captioner.data import DatasetError
    from captioner.encoders import EncoderWeightsError
    from captioner.model import ModelLoadError

    try:
        return start()
    except (DatasetError, EncoderWeightsError, ModelLoadError, FloatingPointError, FileNotFoundError,
            ValueError) as err:
        raise CliError(str(err)) from None


def run(args: argparse.Namespace) -> int:
    from captioner.config import ModelConfig
    from captioner.distributed import from_env
    from captioner.encoders import get_spec
    from captioner.train import train

    prepare_out(args)
    try:
        get_spec(args.encoder)
        model_cfg = ModelConfig(
            encoder=args.encoder, embed_dim=args.embed_dim, image_proj_dim=args.image_proj_dim,
            hidden_dim=args.hidden_dim, num_layers=args.layers, dropout=args.dropout, cell=args.cell,
            inject=args.inject, pooling=args.pooling, attention_dim=args.attention_dim,
            attention_gate=args.attention_gate, attention_init=args.attention_init,
        )
    except ValueError as err:
        raise CliError(str(err), code=2) from None
    cfg = train_config(args)
    result = run_training(lambda: train(cfg, model_cfg, resume=args.resume))
    if from_env().is_main:  # one line for a torchrun job, not one per process
        best = ", ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in result.best.items())
        print(f"best model: {result.model_dir} ({best})")
    return 0
