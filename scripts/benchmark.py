#!/usr/bin/env python3
"""Speed and memory benchmark of issues 13 and 27, one run, JSON to stdout (and ``--out``); never asserted in tests.

Phases (``--only``/``--skip`` take comma-separated names; every figure at ``--threads`` threads, CPU only):

- ``matmul``: the machine's dense fp32 ceiling, a large ``torch.matmul`` (best of a few), ``matmul_gflops``;
- ``first_run``: ``captioner caption ONE.jpg`` with an empty captioner cache, the one-time ONNX export of the default
  model included (``first_run_s``); later phases reuse that cache (without this phase, an untimed run fills it);
- ``train``: the default recipe's steady-state steps (warm feature cache), a naive tutorial loop, ``train_mfu``,
  and the training child's peak RSS;
- ``encoder``: the encoder's FLOPs per image and the share of the matmul ceiling the backend reaches;
- ``caption``: in-process images/s through the ``captioner caption`` code path (batch 32, beam 3, model load
  excluded), guided and plain (``caption_images_per_s`` is the model's default of the two);
- ``cli``: ``captioner caption DIR --beam-size 3 --batch-size 32`` with no backend flag over ``--cli-images`` photos
  as one process, model load included (``cli_caption_images_per_s``; ``--plain``: ``cli_plain_images_per_s``);
- ``cold``: ``captioner caption ONE.jpg`` as a fresh process, median of ``--cold-repeats`` (``cli_cold_s``), and
  the phases of a cold caption; ``imports``: the costliest imports of that command (``-X importtime``);
- ``train_rss``: peak RSS of a cold-cache training setup at each of ``--train-rss-sizes`` images (an empty feature
  cache each) and the slope in MB per 1,000 images;
- ``caption_rss``: peak RSS of ``captioner caption`` over each of ``--caption-rss-sizes`` photos of
  ``--caption-rss-dir`` and its slope.

Usage: python scripts/benchmark.py [--cache-dir runs/cache] [--only caption,cli] [--skip train_rss] [--quick]
       [--backend auto|onnxruntime|torch] [--out bench.json]   (docs/performance.md has the full commands)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the bench package beside this script

from bench.captioning import (  # noqa: E402
    backend_args,
    encoder_figures,
    measure_caption,
    measure_caption_rss,
    measure_cli,
)
from bench.cold import measure_cold_start, measure_first_run, measure_imports  # noqa: E402
from bench.common import (  # noqa: E402
    REPO,
    SHARED,
    captioner_cmd,
    child_env,
    folder_images,
    guarded,
    machine_info,
    matmul_gflops,
    r,
    run_measured,
    select_phases,
    val_images,
)
from bench.training import child_rss, child_train, measure_train_rss, measure_training  # noqa: E402

PHASES = ("matmul", "first_run", "train", "encoder", "caption", "cli", "cold", "imports", "train_rss", "caption_rss")
NEEDS_EXPORT = {"encoder", "caption", "cli", "cold", "imports", "caption_rss"}  # the default backend's export

TARGETS = {  # issues 13 and 27: key -> (comparison, bound)
    "train_speedup_vs_naive": (">=", 10.0),
    "train_mfu": (">=", 0.70),
    "caption_images_per_s": (">=", 55.0),
    "cli_caption_images_per_s": (">=", 40.0),
    "cli_cold_s": ("<=", 1.5),
    "first_run_s": ("<=", 15.0),
    "peak_rss_mb": ("<=", 2048.0),
    "train_rss_slope_mb_per_1000": ("<=", 50.0),
    "caption_rss_slope_mb_per_1000": ("<=", 50.0),
}
PEAKS = ("peak_rss_mb_training", "peak_rss_mb_train_cold", "peak_rss_mb_caption")

NOTES = [
    "CPU only; every figure at the thread count in machine.torch_threads (children get OMP_NUM_THREADS).",
    "Backend: machine.backend ('auto' is the default a new user gets: ONNX Runtime on the CPU, the default model "
    "exported once into the benchmark's own captioner cache, CAPTIONER_CACHE).",
    "first_run_s: captioner caption ONE.jpg with an empty captioner cache (export included); cli_cold_s: the same "
    "command once the export exists, median of cli_cold_repeats fresh processes. captioner's modules are compiled "
    "to bytecode first (machine.bytecode_precompiled), as an installed package's are.",
    "caption_images_per_s / guided_images_per_s / plain_images_per_s: in-process, the captioner caption path "
    "(load_captioner, load_image at the encoder's size, caption_images, decode), batch 32, beam 3, model load and a "
    "warm-up batch excluded, guided and plain decoding timed batch by batch in turns; caption_images_per_s is the "
    "model's default decoding (caption_detail.default_is_guided).",
    "cli_caption_images_per_s: `captioner caption DIR --beam-size 3 --batch-size 32` (no backend flag) over "
    "cli_caption_images photos, images / wall time of the whole process, model load included; cli_plain_images_per_s "
    "adds --plain.",
    "train_captions_per_s: steady-state steps of the default recipe (attention, efficientnet_lite2, batch 128 by "
    "image) through captioner.training's own step, features read from the warm cache; train_mfu: 6 x trainable "
    "decoder params x real tokens per step / step time / matmul_gflops (FLOPs are 2 x multiply-adds).",
    "peak_rss_mb_train_cold and train_rss_runs: a training setup of N Flickr8k training images with an EMPTY feature "
    "cache (so it extracts every feature), two steps and one validation of rss_val_images images; "
    "train_rss_slope_mb_per_1000: least-squares slope of its peak RSS over N.",
    "peak_rss_mb_caption and caption_rss_runs: captioner caption --json over the first N photos of the "
    "caption-rss folder; caption_rss_slope_mb_per_1000 likewise. peak_rss_mb: the largest of every peak measured.",
]


def check_targets(report: dict) -> dict:
    """Pass/fail of each target (None: not measured)."""
    out = {}
    for key, (op, bound) in TARGETS.items():
        value = report.get(key)
        ok = None if value is None else (value >= bound if op == ">=" else value <= bound)
        out[key] = {"value": value, "target": f"{op} {bound:g}", "pass": ok}
    return out


def finish_report(report: dict, errors: dict) -> dict:
    """The overall peak RSS, the targets, the notes and the errors, added to the measured figures."""
    peaks = [report[k] for k in PEAKS if report.get(k) is not None]
    report["peak_rss_mb"] = max(peaks) if peaks else None
    report["targets"] = check_targets(report)
    report["notes"] = NOTES
    report["errors"] = errors
    return report


def compile_bytecode() -> bool:
    """Compile captioner's modules to bytecode, as installing the package does (this checkout may run with
    PYTHONDONTWRITEBYTECODE, which would make every cold start compile them again)."""
    proc = subprocess.run([sys.executable, "-m", "compileall", "-q", str(REPO / "captioner")], capture_output=True,
                          check=False)
    return proc.returncode == 0


def ensure_export(args: argparse.Namespace, image: Path, errors: dict) -> None:
    """Fill the benchmark's captioner cache with the default backend's export (untimed), when no first run did."""
    result = run_measured(captioner_cmd() + ["caption", str(image)] + backend_args(args),
                          child_env(args.threads, args.captioner_cache))
    if result["rc"] != 0:
        errors["export"] = f"exit {result['rc']}: {result['stderr_tail']}"


def run_phase(name: str, args: argparse.Namespace, report: dict, errors: dict) -> None:
    """Measure one phase into ``report`` (a failure is recorded under ``errors`` and the benchmark goes on)."""
    image = val_images(args.data, 1)[0]
    paths = val_images(args.data, args.images)
    if name == "matmul":
        report["matmul_gflops"] = r(guarded("matmul", errors, matmul_gflops, 1024 if args.quick else 4096,
                                            3 if args.quick else 5), 1)
        return
    calls = {
        "first_run": lambda: measure_first_run(args, image, errors),
        "train": lambda: measure_training(args, report.get("matmul_gflops"), errors),
        "encoder": lambda: encoder_figures(args, paths, report.get("matmul_gflops")),
        "caption": lambda: measure_caption(args, paths),
        "cli": lambda: measure_cli(args, val_images(args.data, args.cli_images), errors),
        "cold": lambda: measure_cold_start(args, image, errors),
        "imports": lambda: {"imports": measure_imports(args, image, errors)},
        "train_rss": lambda: measure_train_rss(args, args.train_rss_sizes, errors),
        "caption_rss": lambda: measure_caption_rss(args, folder_images(args.caption_rss_dir, max(
            args.caption_rss_sizes)), args.caption_rss_sizes, errors),
    }
    report.update(guarded(name, errors, calls[name]) or {})


def build_report(args: argparse.Namespace, phases: list[str]) -> dict:
    """Every selected phase in order; a failing one is recorded under ``errors``."""
    import torch

    torch.set_num_threads(args.threads)
    errors: dict = {}
    machine = {**machine_info(), "backend": args.backend, "bytecode_precompiled": args.compile and compile_bytecode()}
    report: dict = {"benchmark": "captioner issues 13 and 27", "quick": args.quick, "phases": phases,
                    "machine": machine}
    exported = args.backend == "torch"  # the torch backend needs no export
    for name in phases:
        if name in NEEDS_EXPORT and not exported:
            ensure_export(args, val_images(args.data, 1)[0], errors)
        run_phase(name, args, report, errors)
        exported = exported or name in ("first_run", *NEEDS_EXPORT)
    report["machine"]["load_avg_end"] = [round(x, 2) for x in os.getloadavg()]
    return finish_report(report, errors)


def get_args_parser() -> argparse.ArgumentParser:
    """The command-line options (``--child-train`` and ``--child-rss`` are the children's, hidden)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=SHARED / "flickr8k",
                        help="Flickr8k caption folder (captions.txt, images/, splits/)")
    parser.add_argument("--cache-dir", type=Path, default=None,
                        help="feature cache of the train phase (default: a temporary one, so the train split is "
                        "extracted first; runs/cache already holds the Lite2 maps of Flickr8k)")
    parser.add_argument("--only", default=None, metavar="PHASES", help=f"run only these ({', '.join(PHASES)})")
    parser.add_argument("--skip", default=None, metavar="PHASES", help="leave these out")
    parser.add_argument("--skip-train", action="store_true", help="the same as --skip train")
    parser.add_argument("--images", type=int, default=None, help="validation images captioned in-process (300)")
    parser.add_argument("--cli-images", type=int, default=None, help="photos of the cli phase (500)")
    parser.add_argument("--cold-repeats", type=int, default=None, help="fresh processes of cli_cold_s (5)")
    parser.add_argument("--caption-batch", type=int, default=32, help="captioning batch size (default: 32)")
    parser.add_argument("--train-images", type=int, default=None,
                        help="cut the train phase's split to N images (default: all, as a real run; --quick: 60)")
    parser.add_argument("--naive-steps", type=int, default=3, help="steps of the naive loop timed (default: 3)")
    parser.add_argument("--train-rss-sizes", type=_sizes, default=None, metavar="N,N,...",
                        help="training images of the cold-cache memory setups (default: 1000,3000,6000)")
    parser.add_argument("--rss-val-images", type=int, default=None, help="validation images of those (default: 100)")
    parser.add_argument("--caption-rss-sizes", type=_sizes, default=None, metavar="N,N,...",
                        help="photos of the captioning memory runs (default: 1000,5000)")
    parser.add_argument("--caption-rss-dir", type=Path, default=SHARED / "coco_unlabeled" / "images",
                        help="folder of photos of the captioning memory runs")
    parser.add_argument("--threads", type=int, default=None, help="threads (default: the usable CPUs)")
    parser.add_argument("--backend", choices=["auto", "onnxruntime", "torch"], default="auto",
                        help="captioning backend (auto, the default: no --backend flag, as a new user runs it)")
    parser.add_argument("--model", default="default", help="model directory (default: the embedded model)")
    parser.add_argument("--no-compile", dest="compile", action="store_false",
                        help="do not compile captioner's modules to bytecode before measuring")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke check that everything runs")
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    parser.add_argument("--child-train", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--child-rss", type=int, default=0, help=argparse.SUPPRESS)
    return parser


def _sizes(text: str) -> list[int]:
    try:
        sizes = sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers separated by commas, got {text!r}") from None
    if not sizes or sizes[0] < 1:
        raise argparse.ArgumentTypeError(f"expected positive numbers, got {text!r}")
    return sizes


def fill_defaults(args: argparse.Namespace) -> None:
    """Sizes left unset: full ones, or tiny ones with ``--quick``."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    args.threads = args.threads or usable
    quick = {"images": 16, "cli_images": 8, "cold_repeats": 2, "train_images": 60, "train_rss_sizes": [20, 40],
             "rss_val_images": 8, "caption_rss_sizes": [8, 16]}
    full = {"images": 300, "cli_images": 500, "cold_repeats": 5, "train_images": 0,
            "train_rss_sizes": [1000, 3000, 6000], "rss_val_images": 100, "caption_rss_sizes": [1000, 5000]}
    for key, value in (quick if args.quick else full).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.quick:
        args.caption_batch = min(args.caption_batch, 8)


def main(argv: list[str] | None = None) -> int:
    """Measure the selected phases and print the JSON report (or run as one of the children)."""
    args = get_args_parser().parse_args(argv)
    fill_defaults(args)
    if args.child_train:
        return child_train(args)
    if args.child_rss:
        return child_rss(args)
    try:
        skip = ",".join(filter(None, [args.skip, "train" if args.skip_train else None]))
        phases = select_phases(PHASES, args.only, skip)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if not (args.data / "captions.txt").is_file():
        print(f"error: {args.data}: not a caption folder (give --data)", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory(prefix="captioner-bench-") as tmp:
        args.cache_dir = args.cache_dir or Path(tmp) / "features"
        args.captioner_cache = Path(tmp) / "captioner-cache"  # empty: the first run exports the default into it
        os.environ["CAPTIONER_CACHE"] = str(args.captioner_cache)  # the in-process phases read the same export
        report = build_report(args, phases)
    text = json.dumps(report, indent=2)
    if args.out:
        args.out.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
