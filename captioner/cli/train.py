"""``captioner train``: train a captioner on a dataset (the frozen encoder's features are cached).

The run options (data, schedule, checkpoints, freezing) are shared with ``captioner finetune``. Their defaults are
the recipe of the shipped default model: ``TrainConfig``'s defaults, and the architecture options' from
``captioner.training.config.recipe_model_config()`` (``ModelConfig`` with the recipe's fields). While it trains, a
progress bar per epoch (on a terminal) and one line per epoch go to stderr, unless ``--quiet``.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import shlex
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

from captioner.cli.common import (
    CliError,
    add_dataset_options,
    add_image_options,
    apply_image_options,
    bounded,
    check_writable_dir,
    non_negative_float,
    non_negative_int,
    positive_int,
)
from captioner.cli.options import add_field, fields_of, show


def add_parser(sub) -> None:
    from captioner.config import ATTENTION_INITS, CELL_TYPES, INJECT_MODES, POOLINGS
    from captioner.training.config import TrainConfig, recipe_model_config

    parser = sub.add_parser(
        "train", help="train a model on a caption dataset",
        description="Train a decoder on a frozen pretrained encoder. Writes OUT/model (best model directory), "
        "OUT/log.csv (step/epoch/loss/validation metrics), OUT/summary.json and OUT/training_state.pt (for "
        "--resume). The defaults are the recipe that made the shipped default model (Lite2 feature maps, an "
        "attention LSTM, Adam 1e-3 with a cosine schedule, the epoch with the best validation CIDEr-D kept); a "
        "progress bar and one line per epoch go to stderr unless --quiet.",
    )
    add_run_options(parser, TrainConfig())
    arch, m = parser.add_argument_group("architecture (default: the shipped model's recipe)"), recipe_model_config()
    add_field(arch, m, "encoder", help="image encoder (also efficientnet_lite1/2, resnet18/50/101/152, "
              "efficientnet_b0, mobilenet_v3_large)")
    add_field(arch, m, "pooling", choices=POOLINGS, help="image vector from the encoder's feature map: avg (spatial "
              "mean) or avgmax (mean and max concatenated, twice as wide)")
    add_field(arch, m, "embed_dim", type=positive_int, help="word embedding width")
    add_field(arch, m, "hidden_dim", type=positive_int, help="recurrent state width")
    add_field(arch, m, "image_proj_dim", type=positive_int, help="projected image width fed at every step")
    add_field(arch, m, "num_layers", "--layers", type=positive_int, help="recurrent layers")
    add_field(arch, m, "dropout", type=bounded(float, 0.0), help="dropout")
    add_field(arch, m, "cell", choices=CELL_TYPES, help="recurrent cell")
    add_field(arch, m, "inject", choices=INJECT_MODES, help="every_step: the pooled image vector concatenated to "
              "every input; init_only: it sets the initial state only; attention: a soft attention over the "
              "encoder's feature map gives the context concatenated to every input")
    add_field(arch, m, "attention_dim", type=positive_int,
              help="with --inject attention: width of the attention's scoring layer")
    add_field(arch, m, "attention_gate", "--no-attention-gate", action="store_false", show_default=False,
              help="with --inject attention: no sigmoid gate on the context (default: gated)")
    add_field(arch, m, "attention_init", choices=ATTENTION_INITS, help="with --inject attention: the feature map's "
              "mean sets the initial state (mean) or it starts at zeros")
    parser.set_defaults(run=run)


def add_run_options(parser: argparse.ArgumentParser, defaults) -> None:
    """Options of a training run, shared by ``train`` and ``finetune`` (``defaults``: their ``TrainConfig``)."""
    add_dataset_options(parser)
    parser.add_argument("--out", required=True, metavar="DIR", help="run directory to write")
    _data_options(parser, defaults)
    _schedule_options(parser, defaults)
    _scst_options(parser.add_argument_group("self-critical training (after the cross-entropy epochs)"), defaults)
    _encoder_options(parser, defaults)
    _checkpoint_options(parser, defaults)
    _machine_options(parser, defaults)
    add_image_options(parser)
    add_field(parser, defaults, "progress", "--quiet", action="store_false", show_default=False,
              help="no progress bar and no per-epoch lines on stderr, only warnings and errors (default: a bar per "
              "epoch when stderr is a terminal, and one line per epoch with the validation figures)")
    add_field(parser, defaults, "dry_run", action="store_true", show_default=False,
              help="a couple of batches of everything on a few images, to check the wiring in seconds")


def _epochs(text: str) -> int | None:
    return None if text.lower() == "auto" else non_negative_int(text)


def _split_or_none(text: str) -> str | None:
    return None if text.lower() == "none" else text


def _names(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _data_options(parser: argparse.ArgumentParser, d) -> None:
    add_field(parser, d, "train_split", help="split to train on; join splits with '+', e.g. train+restval")
    add_field(parser, d, "val_split", type=_split_or_none, help="split validated on each epoch; 'none' to skip")
    add_field(parser, d, "min_count", type=positive_int, help="words rarer than this in the training captions "
              "become <unk>")
    add_field(parser, d, "holdout", type=non_negative_int, metavar="N", help="validate on N images held out of the "
              "training split (seeded) instead of --val-split, so that model selection never sees the validation "
              "split (0: off)")
    add_field(parser, d, "extra_data", metavar="PATH[:SPLIT]", action="append", help="add another dataset's "
              "training split (or SPLIT) to the training data, after the held-out draw, e.g. pseudo-captions from "
              "`captioner data pseudo-label`; repeatable")
    add_field(parser, d, "holdout_seed", type=int, metavar="SEED", help="seed of the held-out draw (none: --seed); "
              "train ensemble members with different --seed and one --holdout-seed so that none of them sees the "
              "images the ensemble is judged on")
    add_field(parser, d, "val_max_images", type=non_negative_int, metavar="N",
              help="validate on the first N images of the split only; 0 = all")
    add_field(parser, d, "flip_features", action="store_true", show_default=False, help="augment: also cache the "
              "vectors of the mirrored training images and train on the original or the mirror image with equal "
              "chance at each step (default: off)")
    add_field(parser, d, "batch_by_image", action=argparse.BooleanOptionalAction, show_default=False,
              help="batches of whole images (all their captions together, about --batch-size captions), so each "
              "image's features are projected once per step: much faster for attention models; --no-batch-by-image "
              f"batches captions by length across images (default: {show(d.batch_by_image)})")
    add_field(parser, d, "image_size", type=non_negative_int, metavar="N", help="resize each image's shorter side to "
              "N and center-crop N x N, so a square image is seen whole (0: the encoder's own preprocessing, whose "
              "crop cuts the borders off)")


def _schedule_options(parser: argparse.ArgumentParser, d) -> None:
    from captioner.training.config import SCHEDULES, SELECT_BY

    auto = "auto" if d.epochs is None else show(d.epochs)
    add_field(parser, d, "epochs", type=_epochs, show_default=False, help="cross-entropy passes over the captions; "
              "0 with --scst-epochs: self-critical training only; auto: enough epochs for --steps optimiser steps, "
              f"at most --max-epochs (default: {auto})")
    add_field(parser, d, "steps", type=positive_int, help="with --epochs auto: the budget in optimiser steps")
    add_field(parser, d, "max_epochs", type=positive_int, help="with --epochs auto: the most epochs it may take")
    add_field(parser, d, "batch_size", type=positive_int, help="captions per step")
    add_field(parser, d, "lr", type=non_negative_float, help="Adam learning rate")
    add_field(parser, d, "schedule", choices=SCHEDULES, help="learning-rate schedule: constant, cosine (to 0 at the "
              "end) or plateau (halve when the --select-by figure stops improving)")
    add_field(parser, d, "warmup_steps", type=non_negative_int, help="linear warm-up steps")
    add_field(parser, d, "clip_norm", type=non_negative_float, help="clip the global gradient norm to this; 0 disables")
    add_field(parser, d, "select_by", choices=SELECT_BY, help="validation figure that picks the saved model: CIDEr-D "
              "or BLEU-4 (coco-caption's) of greedy captions, or the loss; where the figure is about zero or tied "
              "(tiny validation sets) the loss decides, and summary.json says so")
    add_field(parser, d, "patience", type=non_negative_int,
              help="stop after K epochs without a better --select-by figure; 0 never stops early")
    add_field(parser, d, "label_smoothing", type=bounded(float, 0.0), help="cross-entropy label smoothing")
    add_field(parser, d, "attention_reg", type=non_negative_float, metavar="LAMBDA", help="doubly stochastic "
              "attention penalty LAMBDA * sum_i (1 - sum_t alpha_ti)^2 (attention models; 0: off)")
    add_field(parser, d, "seed", type=int, help="random seed; CPU runs are repeatable")


def _scst_options(group, d) -> None:
    add_field(group, d, "scst_epochs", type=non_negative_int, metavar="N", help="then N epochs optimising the "
              "CIDEr-D of sampled captions, starting from the best cross-entropy model (0: off)")
    add_field(group, d, "scst_lr", type=non_negative_float, help="their learning rate")
    add_field(group, d, "scst_samples", type=bounded(int, 2), metavar="K",
              help="captions sampled per image; each is judged against the mean of the others")
    add_field(group, d, "scst_batch_size", type=positive_int, metavar="IMAGES", help="images per self-critical step")


def _encoder_options(parser: argparse.ArgumentParser, d) -> None:
    from captioner.training.config import FREEZABLE

    add_field(parser, d, "freeze", type=_names, help=f"comma-separated parts not to train: {', '.join(FREEZABLE)}")
    add_field(parser, d, "unfreeze_encoder", type=non_negative_int, metavar="N",
              help="also train the encoder's last N blocks (features are then not cached; slow on CPU)")
    add_field(parser, d, "encoder_lr", type=non_negative_float,
              help="learning rate of the unfrozen encoder blocks (none: --lr / 10)")
    add_field(parser, d, "train_bn", action="store_true", show_default=False,
              help="let the unfrozen encoder blocks' BatchNorm statistics update (default: eval mode)")


def _checkpoint_options(parser: argparse.ArgumentParser, d) -> None:
    add_field(parser, d, "log_every", type=positive_int, metavar="STEPS",
              help="log the training loss and gradient norm every N steps")
    add_field(parser, d, "save_every", type=non_negative_int, metavar="STEPS",
              help="also save the resume state every N steps (0: at each epoch's end only)")
    add_field(parser, d, "max_nonfinite_steps", type=positive_int, metavar="K", help="a step whose loss or gradients "
              "are NaN/inf is skipped with a warning; K such steps in a row stop the run, the last saved state intact")
    add_field(parser, d, "keep_checkpoints", type=non_negative_int, metavar="K",
              help="earlier resume states kept in OUT/checkpoints")
    add_field(parser, d, "keep_epochs", type=non_negative_int, metavar="K", help="also keep the last K epochs' "
              "models in OUT/epochs/NNN, e.g. for checkpoint averaging with `captioner ensemble --average`")
    add_field(parser, d, "tensorboard", action="store_true", show_default=False, help="also log loss, gradient norm, "
              "learning rate and validation scores to TensorBoard (RUN/tensorboard; view with `tensorboard "
              "--logdir RUN/tensorboard`; needs pip install 'captioner[tensorboard]')")
    parser.add_argument("--resume", action="store_true",
                        help="continue the interrupted run in --out exactly where its last state left it")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the model and log of an earlier run in --out (default: refuse)")


def _machine_options(parser: argparse.ArgumentParser, d) -> None:
    from captioner.config import DEVICES
    from captioner.training.config import PRECISIONS

    add_field(parser, d, "cache_dir", metavar="DIR",
              help="feature cache (none: $CAPTIONER_CACHE/features or ~/.cache/captioner/features)")
    add_field(parser, d, "num_threads", "--threads", type=non_negative_int, help="torch CPU threads; 0 = torch's "
              "default")
    add_field(parser, d, "device", choices=DEVICES, help="where to train: auto picks CUDA, else Apple MPS, else the "
              "CPU (on the CPU a seeded run is repeatable)")
    add_field(parser, d, "precision", choices=PRECISIONS, help="training arithmetic: fp32, or bf16/fp16 mixed "
              "precision (autocast; fp16 with a gradient scaler, GPU only; bf16 also on the CPU); auto = fp16 on "
              "CUDA, fp32 elsewhere")


def prepare_out(args: argparse.Namespace) -> None:
    """Refuse to clobber an earlier run unless --overwrite; --resume needs one.

    A run killed before its first ``training_state.pt`` (a ``log.csv`` and nothing else to resume) is started again
    from the beginning by --resume, with a note saying so; a rerun without --resume says that --resume will (or
    --overwrite), so the two messages agree.
    """
    if args.tensorboard:  # before anything in the run directory is touched
        from captioner.training.logs import require_tensorboard

        try:
            require_tensorboard()
        except ValueError as err:
            raise CliError(str(err)) from None
    out = Path(args.out)
    check_writable_dir(out, "--out")
    if not Path(args.data).exists():
        raise CliError(f"--data {args.data}: no such file or directory")
    earlier = [name for name in ("model", "log.csv", "training_state.pt") if (out / name).exists()]
    unsaved = earlier == ["log.csv"]  # killed before its first state: nothing to continue, nothing to lose
    if args.resume and "training_state.pt" in earlier:
        return
    if args.resume and not unsaved:
        hint = "pass --overwrite to replace its run, or choose another --out" if earlier else "run without --resume"
        raise CliError(f"--resume: {out} holds no training_state.pt to continue from; {hint}")
    if args.resume:
        args.resume, args.overwrite = False, True
        _note(f"{out} holds no training_state.pt (its run was stopped before the first save): --resume starts it "
              "again from the beginning")
    if earlier and not args.overwrite:
        resume = ("pass --resume to continue it, " if "training_state.pt" in earlier else
                  "pass --resume to start it again from the beginning (it stopped before its first saved state), "
                  if unsaved else "")
        raise CliError(f"--out {out} already holds an earlier run ({', '.join(earlier)}); choose another --out, "
                       f"{resume}or pass --overwrite to replace it")
    for name in ("log.csv", "training_state.pt"):
        if args.overwrite:
            (out / name).unlink(missing_ok=True)  # missing_ok: the processes of a torchrun job all get here


def _note(text: str) -> None:
    """One ``note:`` line on stderr (from the first process of a torchrun job only)."""
    import os

    if os.environ.get("RANK", "0") == "0":
        print(f"note: {text}", file=sys.stderr)


def train_config(args: argparse.Namespace):
    """The ``TrainConfig`` the parsed options describe."""
    from captioner.training.config import TrainConfig

    apply_image_options(args)
    try:
        return TrainConfig(**fields_of(TrainConfig, args, command=shlex.join(["captioner", *sys.argv[1:]])))
    except ValueError as err:
        raise CliError(str(err), code=2) from None


def run_training(start: Callable):
    """Call ``start()`` and turn the failures a user can fix into one-line errors."""
    from captioner.data import DatasetError
    from captioner.models.encoders import EncoderWeightsError
    from captioner.models.files import ModelLoadError

    try:
        return start()
    except (DatasetError, EncoderWeightsError, ModelLoadError, FloatingPointError, FileNotFoundError,
            ValueError) as err:
        raise CliError(str(err)) from None


def run(args: argparse.Namespace) -> int:
    from captioner.config import ModelConfig
    from captioner.models.encoders import get_spec
    from captioner.training.distributed import from_env
    from captioner.training.loop import train

    prepare_out(args)
    try:
        get_spec(args.encoder)
        model_cfg = ModelConfig(**fields_of(ModelConfig, args))
    except ValueError as err:
        raise CliError(str(err), code=2) from None
    cfg = train_config(args)
    with epoch_lines(args):
        result = run_training(lambda: train(cfg, model_cfg, resume=args.resume))
    if from_env().is_main:  # one line for a torchrun job, not one per process
        print(f"best model: {result.model_dir} ({best_figures(result.best)})")
    return 0


def best_figures(best: dict) -> str:
    """The best epoch's row in one line (without the selection's wording, which summary.json keeps)."""
    from captioner.training.report import fmt_row

    return fmt_row({k: v for k, v in best.items() if k != "selection"}, sep=", ")


@contextlib.contextmanager
def epoch_lines(args: argparse.Namespace) -> Iterator[None]:
    """Show the training loop's plan and epoch lines (``captioner.training.report.EPOCH_LOG``, INFO) on stderr as
    plain lines, like the CLI's other status lines, unless ``--quiet``; with ``-v`` they are not shown twice."""
    from captioner.training.report import EPOCH_LOG

    if not args.progress:
        yield
        return
    log = logging.getLogger(EPOCH_LOG)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    log.addHandler(handler)
    level, propagate = log.level, log.propagate
    log.setLevel(logging.INFO)
    log.propagate = False
    try:
        yield
    finally:
        log.removeHandler(handler)
        log.setLevel(level)
        log.propagate = propagate
