"""``captioner inspect``: every layer's parameter count, the recurrent layer's textbook count next to PyTorch's,
and the facts of a model (encoder, preprocessing, vocabulary, training data)."""

from __future__ import annotations

import argparse
import json

from captioner.cli.common import add_model_option, load_model


def add_parser(sub) -> None:
    parser = sub.add_parser(
        "inspect", help="count a model's parameters layer by layer and explain the recurrent layer's count",
        description="Print a table of every layer with its parameter count (the encoder by stage, the decoder "
        "layer by layer). For each recurrent layer the count the textbook formula gives — per gate h·(h+x) + h, "
        "times 4 gates for an LSTM, 3 for a GRU, 1 for a plain RNN, plus PyTorch's second bias — is shown next "
        "to the measured one, and the first layer's input weights W_ih are split into word-embedding columns and "
        "image columns (the image fed at every step). Also the vocabulary size, the encoder and its "
        "preprocessing, and the training data's hash from the model card.",
    )
    add_model_option(parser)
    parser.add_argument("--json", action="store_true", help="print the same facts as one JSON object")
    parser.add_argument("--no-encoder", action="store_true",
                        help="leave the encoder out (it is not built, which saves a few seconds)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from captioner.inspection.params import format_report, inspect_model
    from captioner.models.files import resolve_model_dir

    model = load_model(args.model, "cpu")
    report = inspect_model(model, resolve_model_dir(args.model), encoder=not args.no_encoder)
    report["model"] = str(resolve_model_dir(args.model))
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 0
