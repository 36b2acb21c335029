"""``captioner plot``: PNG training curves (loss, validation BLEU-4 / CIDEr-D, gradient norm) of a run."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from captioner.cli.common import CliError


def add_parser(sub) -> None:
    parser = sub.add_parser(
        "plot", help="draw a training run's loss, validation scores and gradient norm as PNG files",
        description="Read RUN_DIR/log.csv (written by `captioner train`) and write loss.png (training loss per "
        "logged step as a line, the epoch's mean training loss and the validation loss as markers per epoch), "
        "validation.png (greedy BLEU-4 and CIDEr-D per epoch) and "
        "grad_norm.png (the gradient norm before clipping, with the clipping threshold). Works while the run is "
        "still training. Needs matplotlib (pip install 'captioner[viz]').",
    )
    parser.add_argument("run_dir", metavar="RUN_DIR", help="a training run's directory (holding log.csv)")
    parser.add_argument("--out", metavar="DIR", default=None, help="where to write the PNGs (default: RUN_DIR/plots)")
    parser.add_argument("--json", action="store_true", help="print the files written as a JSON list")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from captioner.cli.common import check_writable_dir
    from captioner.inspection.plots import PlotError, plot_run

    run_dir = Path(args.run_dir)
    if not run_dir.is_dir():
        raise CliError(f"{run_dir} is not a directory: pass a training run's directory")
    out = Path(args.out) if args.out else run_dir / "plots"
    check_writable_dir(out, "--out")
    try:
        written = plot_run(run_dir, out)
    except PlotError as err:
        raise CliError(str(err)) from None
    print(json.dumps([str(p) for p in written]) if args.json else "wrote " + ", ".join(str(p) for p in written))
    return 0
