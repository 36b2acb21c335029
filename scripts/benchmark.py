#!/usr/bin/env python3
"""Speed benchmarks, printed as JSON (never asserted in tests).

Measures on a subset of the Flickr8k training images:
- feature extraction, images/s, with the cache cold (empty) and warm;
- one training epoch, captions/s, counting feature extraction: cache cold vs warm;
- one self-critical epoch of the default model (5 sampled captions per image), sampled captions/s;
- caption search, images/s, greedy and beam 3, on cached vectors;
- the ``caption`` path end to end (load, preprocess, encode, beam 3), images/s.

Usage: python scripts/benchmark.py [--data ../shared/data/flickr8k] [--images 500] [--out bench.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path


def make_subset(src: Path, dst: Path, n: int) -> Path:
    """A caption folder with the first n training images of src (symlinked)."""
    names = (src / "splits" / "train.txt").read_text().split()[:n]
    wanted = set(names)
    (dst / "images").mkdir(parents=True)
    (dst / "splits").mkdir()
    lines = ["image\tcaption"]
    for line in (src / "captions.txt").read_text(encoding="utf-8").splitlines()[1:]:
        if line.partition("\t")[0] in wanted:
            lines.append(line)
    (dst / "captions.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (dst / "splits" / "train.txt").write_text("\n".join(names) + "\n")
    for name in names:
        (dst / "images" / name).symlink_to((src / "images" / name).resolve())
    return dst


def time_training(data: Path, out: Path, cache: Path) -> dict:
    from captioner.config import TrainConfig
    from captioner.train import train

    cfg = TrainConfig(data=str(data), out=str(out), epochs=1, val_split=None, cache_dir=str(cache), min_count=1)
    t0 = time.perf_counter()
    result = train(cfg)
    total = time.perf_counter() - t0
    n_captions = sum(1 for _ in open(data / "captions.txt")) - 1
    return {
        "features_s": round(result.timings["features_s"], 3),
        "epoch_s": round(result.timings["epoch_s"][0], 3),
        "total_s": round(total, 3),
        "captions": n_captions,
        "captions_per_s_epoch_only": round(n_captions / result.timings["epoch_s"][0], 1),
        "captions_per_s_with_features": round(
            n_captions / (result.timings["features_s"] + result.timings["epoch_s"][0]), 1),
    }


def time_scst(data: Path, out: Path, cache: Path) -> dict:
    """One self-critical epoch of the default model on the subset (features cached beforehand)."""
    from captioner.config import TrainConfig
    from captioner.data import load_dataset
    from captioner.model import Captioner
    from captioner.train import fit

    cfg = TrainConfig(data=str(data), out=str(out), epochs=0, scst_epochs=1, val_split=None, cache_dir=str(cache))
    model = Captioner.from_pretrained("default")
    result = fit(model, cfg, load_dataset(data, "train"), None)
    seconds, images = result.timings["epoch_s"][0], len(load_dataset(data, "train"))
    return {"epoch_s": round(seconds, 3), "images": images, "sampled_captions": images * cfg.scst_samples,
            "sampled_captions_per_s": round(images * cfg.scst_samples / seconds, 1)}


def time_search(model, features) -> dict:
    from captioner.evaluate import caption_vectors
    from captioner.generate import GenerationConfig

    out = {}
    for name, cfg in {"greedy": GenerationConfig(method="greedy"), "beam3": GenerationConfig(beam_size=3)}.items():
        t0 = time.perf_counter()
        caption_vectors(model, features, cfg)
        out[f"{name}_images_per_s"] = round(len(features) / (time.perf_counter() - t0), 1)
    return out


def time_caption_path(model, paths: list[Path]) -> float:
    from captioner.generate import GenerationConfig
    from captioner.images import load_image

    t0 = time.perf_counter()
    for start in range(0, len(paths), 16):
        model.caption([load_image(p) for p in paths[start : start + 16]], GenerationConfig(beam_size=3))
    return round(len(paths) / (time.perf_counter() - t0), 1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    here = Path(__file__).resolve().parents[1]
    parser.add_argument("--data", type=Path, default=here.parent / "shared" / "data" / "flickr8k")
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if not (args.data / "captions.txt").is_file():
        print(f"error: {args.data}: not a caption folder (give --data)", file=sys.stderr)
        return 1
    import torch

    from captioner.features import image_features
    from captioner.model import Captioner

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = make_subset(args.data, tmp / "data", args.images)
        cold = time_training(data, tmp / "run_cold", tmp / "cache")
        warm = time_training(data, tmp / "run_warm", tmp / "cache")
        model = Captioner.from_pretrained("default")
        paths = sorted((data / "images").iterdir())
        feats, _ = image_features(model, paths, cache_dir=tmp / "cache", progress=False)
        report = {
            "benchmark": "captioner",
            "machine": {"python": platform.python_version(), "torch": torch.__version__,
                        "threads": torch.get_num_threads(), "cpus": os.cpu_count()},
            "images": args.images,
            "feature_extraction_images_per_s": {"cold": round(args.images / cold["features_s"], 1),
                                                "warm": round(args.images / max(warm["features_s"], 1e-9), 1)},
            "train_epoch": {"cold_cache": cold, "warm_cache": warm},
            "scst_epoch_default_model": time_scst(data, tmp / "run_scst", tmp / "cache"),
            "search_default_model": time_search(model, feats),
            "caption_end_to_end_images_per_s": time_caption_path(model, paths[:64]),
        }
    text = json.dumps(report, indent=2)
    if args.out:
        args.out.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
