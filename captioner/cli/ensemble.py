"""``captioner ensemble``: combine trained models over one encoder into an ensemble, or average their weights."""

from __future__ import annotations

import argparse
from pathlib import Path

from captioner.cli.common import CliError, check_output_dir, load_model

_MODEL_FILES = {"model.safetensors", "config.json", "vocab.json", "README.md"}


def add_parser(sub) -> None:
    parser = sub.add_parser(
        "ensemble", help="combine trained models into an ensemble (or average their weights)",
        description="Write one model directory holding the decoders of several models trained with the same encoder "
        "and vocabulary; captioning then searches the mean of their per-step log-probabilities (slower by about "
        "the number of decoders, usually better captions). With --average, the decoders' weights are averaged "
        "into one decoder instead (checkpoint averaging: give checkpoints of one run, e.g. the OUT/epochs/* of "
        "`captioner train --keep-epochs K`); the result is as fast as one model.",
    )
    parser.add_argument("--models", nargs="+", required=True, metavar="DIR", help="model directories to combine")
    parser.add_argument("--out", required=True, metavar="DIR", help="model directory to write")
    parser.add_argument("--average", action="store_true",
                        help="average the weights into one decoder instead of keeping them side by side")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing model directory at --out")
    parser.set_defaults(run=run)


def check_out(out: Path, models: list[str], overwrite: bool) -> None:
    """Refuse to replace anything but a model directory the user allowed to be replaced, or a source model."""
    check_output_dir(out, [Path(m) for m in models], "one of the --models; write the combined model elsewhere",
                     _MODEL_FILES, "a model", overwrite)


def run(args: argparse.Namespace) -> int:
    from captioner.combine import combine, ensemble_card
    from captioner.models.ensemble import EnsembleError

    out = Path(args.out)
    check_out(out, args.models, args.overwrite)
    models = [load_model(name, "cpu") for name in args.models]
    try:
        combined = combine(models, args.models, average=args.average)
    except EnsembleError as err:
        raise CliError(str(err)) from None
    combined.save_pretrained(out, card=ensemble_card(combined, args.models, args.average))
    kind = "1 averaged decoder" if args.average else f"{combined.config.num_decoders} decoder(s)"
    print(f"wrote {out}: {kind} over {combined.config.encoder}")
    return 0
