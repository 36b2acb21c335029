"""Captioning figures: images per second through the ``captioner caption`` code path, the encoder's FLOPs and
speed, the ONNX export the onnxruntime backend needs, and the peak memory of ``captioner caption`` over a folder."""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from bench.common import captioner_cmd, child_env, r, run_measured


def backend_args(args: argparse.Namespace) -> list[str]:
    """Extra ``captioner caption`` options that select the backend and its model."""
    if args.backend == "torch":
        return ["--model", args.model] if args.model != "default" else []
    return ["--backend", args.backend, "--model", str(args.onnx_dir)]


def load_caption_model(args: argparse.Namespace):
    """The model as ``captioner caption`` loads it (``cli.caption.load_backend``, or ``cli.common.load_model``
    where the CLI has no backends), on the CPU."""
    from captioner.cli import caption

    model = args.model if args.backend == "torch" else str(args.onnx_dir)
    load_backend = getattr(caption, "load_backend", None)
    if load_backend is not None:
        return load_backend(argparse.Namespace(backend=args.backend, model=model, device="cpu"))
    if args.backend != "torch":
        raise RuntimeError(f"this captioner's caption command has no --backend {args.backend}")
    return caption.load_model(model, "cpu")


def caption_batch(model, paths: list[Path], config) -> list[str]:
    """What ``captioner caption`` does per batch (``cli/caption.py``), without printing: read, caption, decode."""
    from captioner.images import load_image

    hyps = model.caption_images([load_image(p) for p in paths], config)
    return [model.vocab.decode(h[0].tokens) for h in hyps]


def measure_caption(args: argparse.Namespace, paths: list[Path]) -> dict:
    """Images/s over ``paths`` in batches of ``args.caption_batch`` (beam 3) after a warm-up batch, and the
    median warm latency of one image."""
    from captioner.cli.common import generation_config

    t0 = time.perf_counter()
    model = load_caption_model(args)
    load_s = time.perf_counter() - t0
    config = generation_config(argparse.Namespace(beam_size=3, max_length=20))
    size = args.caption_batch
    caption_batch(model, paths[:size], config)  # warm-up: builds the encoder, first-call costs
    t0 = time.perf_counter()
    for start in range(0, len(paths), size):
        caption_batch(model, paths[start : start + size], config)
    seconds = time.perf_counter() - t0
    singles = []
    for path in paths[: 3 if args.quick else 9]:
        t1 = time.perf_counter()
        caption_batch(model, [path], config)
        singles.append(time.perf_counter() - t1)
    return {"caption_images_per_s": r(len(paths) / seconds, 2), "caption_ms_single": r(
        1000 * statistics.median(singles), 1), "caption_detail": {
        "images": len(paths), "batch_size": size, "beam_size": 3, "seconds": r(seconds, 2),
        "model_load_s": r(load_s, 3), "single_ms_all": [r(1000 * s, 1) for s in singles]}}


def encoder_figures(args: argparse.Namespace, paths: list[Path], gflops: float | None) -> dict:
    """Encoder FLOPs per image (``FlopCounterMode`` on the PyTorch encoder, 2 per multiply-add, convolutions and
    matmuls only) and the share of the matmul ceiling the backend's encoder reaches at batch ``caption_batch``
    (real preprocessed images, best of a few)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from captioner.cli.common import load_model
    from captioner.images import load_image

    model = load_model(args.model, "cpu")
    crop = model.config.preprocess.crop
    counter = FlopCounterMode(display=False)
    with counter, torch.inference_mode():
        model.encoder.eval()(torch.zeros(1, 3, crop, crop).contiguous(memory_format=torch.channels_last))
    per_image = counter.get_total_flops() / 1e9
    pixels = torch.stack([model.transform(load_image(p)) for p in paths[: args.caption_batch]])  # (B, 3, H, W)
    runner = model if args.backend == "torch" else load_caption_model(args)  # the backend's own encoder
    runner.encode(pixels)  # warm-up
    times = []
    for _ in range(2 if args.quick else 5):
        t0 = time.perf_counter()
        runner.encode(pixels)
        times.append(time.perf_counter() - t0)
    images_per_s = len(pixels) / min(times)
    achieved = per_image * images_per_s
    return {"encoder_gflops_per_image": r(per_image, 3), "encoder_images_per_s": r(images_per_s, 2),
            "encoder_gflops_per_s": r(achieved, 2),
            "encoder_fraction_of_matmul": r(achieved / gflops, 4) if gflops else None,
            "encoder_input": [len(pixels), 3, crop, crop]}


def measure_caption_rss(args: argparse.Namespace, paths: list[Path], cold_s: float | None, errors: dict) -> dict:
    """``captioner caption DIR --batch-size 32 --beam-size 3 --json`` over a folder of symlinked images: its
    peak RSS, wall time and, less one cold single-image run, its steady images/s through the real CLI."""
    with tempfile.TemporaryDirectory() as tmp:
        for path in paths:
            (Path(tmp) / path.name).symlink_to(path.resolve())
        cmd = captioner_cmd() + ["caption", tmp, "--batch-size", str(args.caption_batch), "--beam-size", "3",
                                 "--json"] + backend_args(args)
        result = run_measured(cmd, child_env(args.threads))
    if result["rc"] != 0:
        errors["caption_rss"] = f"exit {result['rc']}: {result['stderr_tail']}"
        return {}
    steady = (len(paths) - 1) / (result["wall_s"] - cold_s) if cold_s and result["wall_s"] > cold_s else None
    return {"peak_rss_mb_caption": r(result["peak_rss_mb"], 1), "caption_cli_images": len(paths),
            "caption_cli_wall_s": r(result["wall_s"], 2), "caption_cli_images_per_s": r(steady, 2)}


def prepare_onnx(args: argparse.Namespace, tmp: Path, errors: dict) -> bool:
    """With ``--backend onnxruntime`` and no ``--onnx-dir``: export the torch model with ``captioner export``."""
    if args.backend == "torch" or args.onnx_dir:
        return True
    args.onnx_dir = tmp / "onnx"
    cmd = captioner_cmd() + ["export", "--model", args.model, "--format", "onnx", "--out", str(args.onnx_dir)]
    result = run_measured(cmd, child_env(args.threads))
    if result["rc"] != 0:
        errors["onnx_export"] = f"exit {result['rc']}: {result['stderr_tail']}"
        return False
    return True
