"""``captioner visualize``: the decoder's cells, probabilities, attention and image sensitivity along the caption
of one photo, as PNG figures and an HTML page."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from captioner.cli.common import (
    CliError,
    add_decoding_options,
    add_model_option,
    check_output_dir,
    generation_config,
    load_model,
    positive_int,
)

logger = logging.getLogger(__name__)

OUTPUT_FILES = {"index.html", "visualization.json", "photo.png", "cells.png", "sensitivity.png", "attention.png"}


def add_parser(sub) -> None:
    parser = sub.add_parser(
        "visualize", help="show the decoder's cells, probabilities, attention and image sensitivity for one photo",
        description="Caption IMAGE, then write into --out: cells.png (the hidden and cell state of the most active "
        "and the most image-sensitive recurrent units, one column per generated word), sensitivity.png (how much "
        "each next-word distribution changes when the photo's features are replaced by the mean training image's; "
        "the image enters the cell at every step, so it stays high, and fades for an init_only model), "
        "attention.png (each word's attention over the photo, for attention models), index.html (all of it with "
        "each step's probability and top-5 alternatives, and for attention models its attention entropy over the "
        "uniform distribution's) and visualization.json (the numbers). Needs matplotlib "
        "(pip install 'captioner[viz]').",
    )
    parser.add_argument("image", metavar="IMAGE", help="the photo to caption")
    add_model_option(parser)
    parser.add_argument("--out", required=True, metavar="DIR", help="directory to write the page and figures into")
    parser.add_argument("--reference", metavar="DIR", default=None,
                        help="photos whose mean features stand for 'no particular image' in the sensitivity "
                        "measure (default: the mean training image stored with the model, image_mean.safetensors)")
    parser.add_argument("--cells", type=positive_int, default=12,
                        help="units of each kind (most active, most image-sensitive) to show (default: 12)")
    add_decoding_options(parser)
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier visualization in --out")
    parser.add_argument("--json", action="store_true", help="print the numbers (visualization.json) to stdout")
    parser.set_defaults(run=run)


def reference_mean(model, folder: Path):
    """Mean features ``(D,)`` or ``(L, C)`` of the readable photos in ``folder``."""
    from captioner.features import encode_files
    from captioner.library.inputs import collect_images

    paths = [p for p, problem in collect_images([str(folder)]) if problem is None]
    if not paths:
        raise CliError(f"--reference {folder}: no images found; pass a folder of photos")
    features, failures = encode_files(model, paths, progress=False)
    good = [i for i in range(len(paths)) if i not in failures]
    if not good:
        raise CliError(f"--reference {folder}: none of its {len(paths)} images could be read")
    return features[good].mean(axis=0)


def run(args: argparse.Namespace) -> int:
    import torch

    from captioner.images import ImageLoadError, load_image
    from captioner.inspection.plots import PlotError
    from captioner.inspection.render import render
    from captioner.inspection.visualize import describe

    out = Path(args.out)
    check_output_dir(out, [], "", OUTPUT_FILES, "a visualization", args.overwrite)
    try:
        image = load_image(args.image)
    except ImageLoadError as err:
        raise CliError(str(err)) from None
    model = load_model(args.model, "cpu")
    baseline = model.image_mean
    if args.reference:
        baseline = torch.from_numpy(reference_mean(model, Path(args.reference))).float()
    elif baseline is None:
        logger.warning("the model has no mean training image (image_mean.safetensors): image sensitivity is left "
                       "out; pass --reference DIR with some photos to measure it")
    try:
        data = describe(model, image, baseline, generation_config(args), cells=args.cells)
        written = render(data, out)
    except (ValueError, PlotError) as err:
        raise CliError(str(err)) from None
    if args.json:
        print((out / "visualization.json").read_text(encoding="utf-8"))
    else:
        print(f"{data['caption']}\nwrote {', '.join(str(p) for p in written)}")
    return 0
