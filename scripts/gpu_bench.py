#!/usr/bin/env python3
"""GPU figures for docs/performance.md (run where a CUDA GPU is present; CI never runs it).

- Training of the default recipe (scripts/train_default.sh: attention over Lite2's map, batch 128 by image) on
  cached features, steady-state captions/s through the training loop's own step, at ``--precision`` fp32, bf16 and
  fp16 (autocast; fp16 with the gradient scaler), and the loss after the same steps (AMP must still learn).
- Captioning (encoder + beam 3, the ``caption`` command's library call) on CUDA: images/s at batch 32 and 128,
  fp32 (the product does inference in fp32), and whether the greedy captions equal the CPU's on the first images.

Usage: python scripts/gpu_bench.py --data DIR --out gpu.json [--steps 60] [--caption-images 500]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench.captioning import caption_batch  # noqa: E402
from bench.common import val_images  # noqa: E402
from bench.training import build_recipe_run, recipe_batches  # noqa: E402


def time_training(data: Path, cache: Path, tmp: Path, precision: str, steps: int, device: str,
                  train_images: int = 0) -> dict:
    """Captions/s of ``steps`` steps after 10 warm-up steps, and the mean loss of the last 10."""
    from captioner.training.xe import train_mode, xe_step

    run, _ = build_recipe_run(data, cache, tmp / precision, os.cpu_count() or 1, train_images, device,
                              precision)
    batches = recipe_batches(run)
    while len(batches) < steps + 10:
        batches = batches + batches
    train_mode(run)
    for batch in batches[:10]:
        xe_step(run, batch)
    _sync(device)
    t0, losses = time.perf_counter(), []
    for batch in batches[10 : 10 + steps]:
        losses.append(xe_step(run, batch)[0])  # .item() inside syncs each step, as the real loop does
    seconds = time.perf_counter() - t0
    captions = sum(len(b) for b in batches[10 : 10 + steps])
    return {"captions_per_s": round(captions / seconds, 1), "step_ms": round(1000 * seconds / steps, 2),
            "loss_last10": round(sum(losses[-10:]) / len(losses[-10:]), 4), "steps": steps}


def _sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def time_captioning(paths: list[Path], batch: int, device: str) -> float:
    """Images/s of encoder + beam 3 on CUDA (model load and a warm-up batch excluded)."""
    from captioner.generation import GenerationConfig
    from captioner.pipeline import Captioner

    model = Captioner.from_pretrained("default", device=device)
    config = GenerationConfig(method="beam", beam_size=3)
    caption_batch(model, paths[:batch], config)
    _sync(device)
    t0 = time.perf_counter()
    for start in range(0, len(paths), batch):
        caption_batch(model, paths[start : start + batch], config)
    _sync(device)
    return round(len(paths) / (time.perf_counter() - t0), 1)


def cpu_agreement(paths: list[Path], device: str) -> dict:
    """Greedy captions of the same images on CPU and CUDA: how many are identical."""
    from captioner.generation import GenerationConfig
    from captioner.pipeline import Captioner

    config = GenerationConfig(method="greedy")
    got = {d: caption_batch(Captioner.from_pretrained("default", device=d), paths, config) for d in ("cpu", device)}
    return {"images": len(paths), "identical": sum(a == b for a, b in zip(got["cpu"], got[device]))}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=Path("gpu.json"))
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--caption-images", type=int, default=500)
    parser.add_argument("--device", default="cuda", help="cuda (cpu only to smoke-test this script)")
    parser.add_argument("--precisions", default="fp32,bf16,fp16")
    parser.add_argument("--train-images", type=int, default=0,
                        help="train on N images of the split (a fifth more held out; 0: the recipe's 500 held out)")
    args = parser.parse_args()
    import torch

    name = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    report = {"device": name, "torch": torch.__version__, "training": {}, "captioning": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for precision in args.precisions.split(","):
            report["training"][precision] = time_training(args.data, Path(tmp) / "cache", Path(tmp), precision,
                                                          args.steps, args.device, args.train_images)
            print(precision, report["training"][precision], flush=True)
    paths = val_images(args.data, args.caption_images)
    for batch in (32, 128):
        report["captioning"][f"images_per_s_batch{batch}"] = time_captioning(paths, batch, args.device)
        print(batch, report["captioning"], flush=True)
    report["captioning"]["cpu_vs_cuda_greedy"] = cpu_agreement(paths[:50], args.device)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
