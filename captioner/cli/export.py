"""``captioner export``: write a model as ONNX graphs that ``captioner caption --backend onnxruntime`` runs."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from captioner.cli.common import CliError, add_model_option, check_output_dir, load_model, positive_int

logger = logging.getLogger(__name__)


def add_parser(sub) -> None:
    parser = sub.add_parser(
        "export", help="export a model to ONNX (for the onnxruntime backend)",
        description="Write a self-contained directory of ONNX graphs: the image encoder, the decoder's per-image "
        "start and its one-step graph (LSTM state as explicit inputs and outputs, batch axes dynamic), with "
        "config.json, vocab.json and onnx_manifest.json. Caption with it by "
        "`captioner caption --backend onnxruntime --model OUT`. Ensembles are exported whole. After writing, "
        "the export is compared with the PyTorch model on two random images (needs onnxruntime).",
    )
    add_model_option(parser)
    parser.add_argument("--out", required=True, metavar="DIR", help="export directory to write")
    parser.add_argument("--format", dest="export_format", choices=["onnx"], default="onnx",
                        help="export format (default: onnx)")
    parser.add_argument("--opset", type=positive_int, default=17, help="ONNX opset (default: 17)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing export at --out")
    parser.set_defaults(run=run)


def check_out(out: Path, model: str, overwrite: bool) -> None:
    """Refuse to write into anything but a new directory, an empty one, or an export the user allows replacing."""
    from captioner.export.onnx import EXPORT_FILES
    from captioner.models.files import resolve_model_dir

    check_output_dir(out, [resolve_model_dir(model)], "the --model directory; write the export elsewhere",
                     set(EXPORT_FILES), "an export", overwrite)


def run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    check_out(out, args.model, args.overwrite)
    from captioner.export.onnx import ExportError, export_onnx, require_onnx

    try:
        require_onnx()  # before the slow model load
        model = load_model(args.model, "cpu")
        manifest = export_onnx(model, out, opset=args.opset)
    except ExportError as err:
        raise CliError(str(err)) from None
    graphs = ", ".join(manifest["graphs"].values())
    print(f"wrote {out}: {graphs} (opset {manifest['opset']}); {_check(model, out)}")
    return 0


def _check(model, out: Path) -> str:
    """Compare the export with the PyTorch model on two random images; a sentence for the summary line."""
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return "not compared with PyTorch (onnxruntime is not installed)"
    import torch

    from captioner.export.runtime import OnnxCaptioner
    from captioner.export.torch_decoder import compare_backends

    side = model.config.preprocess.crop
    diffs = compare_backends(model, OnnxCaptioner(out), torch.randn(2, 3, side, side))
    if diffs["logits"] > 1e-3:
        logger.warning("the export's step logits differ from PyTorch's by up to %.2g: captions may differ",
                       diffs["logits"])
    return (f"ONNX Runtime vs PyTorch on 2 random images: features max |diff| {diffs['features']:.1e}, "
            f"step logits max |diff| {diffs['logits']:.1e}")
