"""Mean image sensitivity by step: for each model, greedy captions of validation images, then at every step the
total variation distance between the next-word distribution with the photo and with the model's mean training
image (``captioner visualize``'s measure), averaged over the images (docs/ablation.md, "Image sensitivity").

Usage: python scripts/image_sensitivity.py MODEL [MODEL ...] --data ../shared/data/flickr8k --images 200
"""

from __future__ import annotations

import argparse
import json

import torch

from captioner.generation import GenerationConfig
from captioner.inspection.visualize import image_sensitivity, trace
from captioner.pipeline import Captioner
from captioner.training.config import TrainConfig
from captioner.training.splits import load_splits, prepare_split


def by_step(model: Captioner, features: torch.Tensor, max_length: int) -> list[tuple[float, int]]:
    """(sum of TV distances, images) per step position over ``features`` ``(N, ...)``."""
    sums: list[list[float]] = []
    search = GenerationConfig(method="greedy", max_length=max_length)
    for i in range(features.shape[0]):
        image = features[i : i + 1].float()
        best = model.caption_features(image, search)[0][0]
        inputs = [model.vocab.start_id] + best.tokens
        tv = image_sensitivity(trace(model, image, inputs), trace(model, model.image_mean.unsqueeze(0), inputs))["tv"]
        for t, value in enumerate(tv.tolist()):
            if t == len(sums):
                sums.append([0.0, 0])
            sums[t][0] += value
            sums[t][1] += 1
    return [(s, n) for s, n in sums]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+", help="model directories with image_mean.safetensors (or 'default')")
    parser.add_argument("--data", default="../shared/data/flickr8k")
    parser.add_argument("--images", type=int, default=200, help="validation images (default: 200)")
    parser.add_argument("--cache-dir", default=None)
    parser.add_argument("--max-length", type=int, default=16)
    parser.add_argument("--min-images", type=int, default=20, help="report steps reached by at least this many")
    args = parser.parse_args()
    report = {}
    for name in args.models:
        model = Captioner.from_pretrained(name)
        if model.image_mean is None:
            raise SystemExit(f"{name} has no image_mean.safetensors (models trained before it existed)")
        cfg = TrainConfig(data=args.data, out="unused", cache_dir=args.cache_dir, val_max_images=args.images)
        _, val = load_splits(cfg)
        split = prepare_split(model, val, cfg, live=False, training=False)
        sums = by_step(model, split.features[torch.arange(len(val))], args.max_length)
        report[name] = [round(s / n, 3) for s, n in sums if n >= args.min_images]
        print(name, report[name], flush=True)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
