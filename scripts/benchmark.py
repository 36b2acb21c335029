#!/usr/bin/env python3
"""Speed and memory benchmark of issue 13, one run, JSON to stdout (and ``--out``); never asserted in tests.

What it measures (CPU only; every figure at ``--threads`` torch threads):

- ``matmul_gflops``: the machine's dense fp32 ceiling, a large ``torch.matmul`` (best of a few);
- training of the default recipe (attention decoder on EfficientNet-Lite2 9x9 maps, batch 128 by image) with
  the feature cache warm, steady-state steps through the training loop's own step (``captioner.training``), against
  a naive tutorial loop that loads, transforms and encodes one image per caption at every step; ``train_mfu``;
- captioning through the ``captioner caption`` code path (batch 32, beam 3), the model load excluded;
- the cold start of ``captioner caption ONE.jpg`` as a fresh process, its import time and top import costs;
- the encoder's FLOPs per image and the share of the matmul ceiling it reaches;
- peak resident memory of a training process on the whole train split and of captioning 1000 images.

The training figures and the training memory come from one child process (``--child-train``) that loads the
split as ``captioner train`` does; its peak RSS is read before the naive baseline loads the encoder.

Usage: python scripts/benchmark.py [--data ../shared/data/flickr8k] [--cache-dir runs/cache] [--images 300]
       [--threads N] [--backend torch|onnxruntime] [--quick] [--out bench.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the bench package beside this script

from bench.captioning import encoder_figures, measure_caption, measure_caption_rss, prepare_onnx  # noqa: E402
from bench.cold import measure_cold_start, measure_imports  # noqa: E402
from bench.common import REPO, guarded, machine_info, matmul_gflops, r, val_images  # noqa: E402
from bench.training import child_train, measure_training  # noqa: E402

TARGETS = {  # issue 13: (key, comparison, bound)
    "train_speedup_vs_naive": (">=", 10.0),
    "train_mfu": (">=", 0.70),
    "caption_images_per_s": (">=", 40.0),
    "cli_cold_s": ("<=", 3.0),
    "peak_rss_mb": ("<=", 2048.0),
}


def check_targets(report: dict) -> dict:
    """Pass/fail of each target of issue 13 (None: not measured)."""
    out = {}
    for key, (op, bound) in TARGETS.items():
        value = report.get(key)
        ok = None if value is None else (value >= bound if op == ">=" else value <= bound)
        out[key] = {"value": value, "target": f"{op} {bound:g}", "pass": ok}
    return out


NOTES = [
    "CPU only; every figure at the thread count in machine.torch_threads (children get OMP_NUM_THREADS).",
    "train_captions_per_s: steady-state steps of the default recipe (attention, efficientnet_lite2, batch 128 by "
    "image) through captioner.training's own step, features read from the warm cache; warm-up steps excluded.",
    "train_naive_captions_per_s: tutorial loop (each caption's image read, transformed and encoded under no_grad "
    "at every step, then the same decoder step), measured over a few batches only and taken per caption.",
    "train_mfu: 6 x trainable decoder params x real (unpadded) target tokens per step / step time / "
    "matmul_gflops; train_mfu_counted uses FlopCounterMode's count of one step (forward+backward, includes the "
    "attention over the 81 locations) instead.",
    "FLOPs everywhere are 2 x multiply-adds (torch.utils.flop_counter's convention; convolutions and matmuls "
    "only, no elementwise ops).",
    "caption_images_per_s: the captioner caption path (load_model, load_image, model.caption_images, decode), "
    "model load and a warm-up batch excluded; caption_cli_images_per_s: the real CLI over the 1000-image folder "
    "less one cold single-image run.",
    "peak_rss_mb: the larger of peak_rss_mb_training (a child that sets up the train split as captioner train "
    "does, reading cached features batch by batch, runs steps and one validation; read before the naive loop "
    "builds the encoder; with a cold cache the setup extracts the features and the peak includes that) and "
    "peak_rss_mb_caption (captioner caption over the image folder); both via the process's own ru_maxrss.",
]


def build_report(args: argparse.Namespace, tmp: Path) -> dict:
    """Every measurement in order; a failing one is recorded under ``errors``."""
    import torch

    torch.set_num_threads(args.threads)
    errors: dict = {}
    report: dict = {"benchmark": "captioner issue 13", "quick": args.quick, "backend": args.backend,
                    "machine": machine_info()}
    gflops = guarded("matmul", errors, matmul_gflops, 1024 if args.quick else 4096, 3 if args.quick else 5)
    report["matmul_gflops"] = r(gflops, 1)
    if not args.skip_train:
        report.update(guarded("train", errors, measure_training, args, gflops, errors) or {})
    paths = val_images(args.data, args.images)
    if prepare_onnx(args, tmp, errors):
        report.update(guarded("encoder", errors, encoder_figures, args, paths, gflops) or {})
        report.update(guarded("caption", errors, measure_caption, args, paths) or {})
    report.update(guarded("cold_start", errors, measure_cold_start, args, paths[0], errors) or {})
    report["imports"] = guarded("imports", errors, measure_imports, args, paths[0], errors)
    rss_paths = val_images(args.data, args.rss_images)
    report.update(guarded("caption_rss", errors, measure_caption_rss, args, rss_paths, report.get("cli_cold_s"),
                          errors) or {})
    rss = [report.get(k) for k in ("peak_rss_mb_training", "peak_rss_mb_caption") if report.get(k) is not None]
    report["peak_rss_mb"] = max(rss) if rss else None
    report["machine"]["load_avg_end"] = [round(x, 2) for x in os.getloadavg()]
    report["targets"] = check_targets(report)
    report["notes"] = NOTES
    report["errors"] = errors
    return report


def get_args_parser() -> argparse.ArgumentParser:
    """The command-line options (``--child-train`` is the training child's, hidden)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "flickr8k",
                        help="Flickr8k caption folder (captions.txt, images/, splits/)")
    parser.add_argument("--cache-dir", type=Path, default=None,
                        help="feature cache (default: a temporary one, so the train split is extracted first; "
                        "runs/cache already holds the Lite2 maps of Flickr8k)")
    parser.add_argument("--images", type=int, default=None, help="validation images captioned (default: 300)")
    parser.add_argument("--rss-images", type=int, default=None,
                        help="images in the folder given to captioner caption for its memory (default: 1000)")
    parser.add_argument("--caption-batch", type=int, default=32, help="captioning batch size (default: 32)")
    parser.add_argument("--train-images", type=int, default=None,
                        help="cut the train split to N images (default: all, as a real run; --quick: 60)")
    parser.add_argument("--naive-steps", type=int, default=3, help="steps of the naive loop timed (default: 3)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: the usable CPUs)")
    parser.add_argument("--backend", choices=["torch", "onnxruntime"], default="torch",
                        help="backend of the captioning measurements (captioner caption --backend)")
    parser.add_argument("--model", default="default", help="torch model directory (default: the embedded model)")
    parser.add_argument("--onnx-dir", type=Path, default=None,
                        help="with --backend onnxruntime: an export directory (default: captioner export of "
                        "--model into a temporary directory)")
    parser.add_argument("--skip-train", action="store_true",
                        help="leave out the training figures (e.g. when comparing caption backends)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke check that everything runs")
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    parser.add_argument("--child-train", action="store_true", help=argparse.SUPPRESS)
    return parser


def fill_defaults(args: argparse.Namespace) -> None:
    """Sizes left unset: full ones, or tiny ones with ``--quick``."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    args.threads = args.threads or usable
    quick = {"images": 16, "rss_images": 16, "train_images": 60}
    full = {"images": 300, "rss_images": 1000, "train_images": 0}
    for key, value in (quick if args.quick else full).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.quick:
        args.caption_batch = min(args.caption_batch, 8)


def main(argv: list[str] | None = None) -> int:
    """Measure everything and print the JSON report (or, as ``--child-train``, the training child's part)."""
    args = get_args_parser().parse_args(argv)
    fill_defaults(args)
    if args.child_train:
        return child_train(args)
    if not (args.data / "captions.txt").is_file():
        print(f"error: {args.data}: not a caption folder (give --data)", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory(prefix="captioner-bench-") as tmp:
        if args.cache_dir is None:
            args.cache_dir = Path(tmp) / "cache"
        report = build_report(args, Path(tmp))
    text = json.dumps(report, indent=2)
    if args.out:
        args.out.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
