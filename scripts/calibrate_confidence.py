#!/usr/bin/env python3
"""Fit a model's caption confidence (``confidence.json``, see :mod:`captioner.generation.confidence`) and draw its
reliability diagram.

A caption counts as right when its CIDEr-D against the photo's reference captions reaches ``--target`` (0.5: it says
much of what people said; per-image CIDEr-D with the document frequencies of the set it belongs to). The fit uses
images the model never trained on: the training split's held-out images (``--holdout N --holdout-seed S``, as the
model's training held them out) and the ``--also`` sets, plus ``--blank`` blank, uniform and tiny images that no
caption describes (labelled wrong). The model's own default decoding (beam 3, guided when it guides) makes the
captions. The reliability diagram and its table (expected calibration error) are measured on the ``--report`` sets,
which the fit did not see.

Usage: python scripts/calibrate_confidence.py MODEL_DIR --data ../shared/data/flickr8k --holdout 500
       --also ../shared/data/coco_mini:mini --report ../shared/data/coco_tiny:tiny --report ../shared/data/flickr8k:val
       [--cache-dir runs/cache] [--plot docs/images/confidence_reliability.png] [--out runs/confidence.json]
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

import torch
from PIL import Image

from captioner.data import load_dataset
from captioner.features import image_features
from captioner.generation import GenerationConfig
from captioner.generation.confidence import CONFIDENCE_FILE, ConfidenceModel, fit, signals
from captioner.metrics.coco import cider_from_tokens, prepare_tokens
from captioner.models.files import resolve_model_dir
from captioner.pipeline import Captioner
from captioner.training.config import TrainConfig
from captioner.training.splits import load_splits


def caption_signals(model, dataset, cache_dir) -> tuple[torch.Tensor, torch.Tensor]:
    """Signal rows ``(N, S)`` and per-image CIDEr-D ``(N,)`` of the model's default captions of a caption set."""
    paths = [item.path for item in dataset.items]
    features, failed = image_features(model, paths, cache_dir=cache_dir, progress=False)
    keep = [i for i in range(len(paths)) if i not in failed]
    rows, best = [], []
    for start in range(0, len(keep), 64):
        part = torch.tensor(keep[start : start + 64])
        hyps = [h[0] for h in model.caption_features(features[part].float(), GenerationConfig())]
        rows.append(signals(hyps, model.imagenet_logits(features[part].float()), features[part].float()))
        best += [model.vocab.decode(h.tokens) for h in hyps]
    refs = {i: dataset.items[keep[i]].captions for i in range(len(keep))}
    hyp_tokens, ref_tokens = prepare_tokens(dict(enumerate(best)), refs)
    return torch.cat(rows), torch.tensor(cider_from_tokens(hyp_tokens, ref_tokens), dtype=torch.float32)


def blank_signals(model, count: int, seed: int = 0) -> torch.Tensor:
    """Signal rows of blank, uniform, tiny and nearly uniform images (what no caption describes)."""
    rng = random.Random(seed)
    images = []
    for i in range(count):
        colour = tuple(rng.randrange(256) for _ in range(3))
        size = [(1, 1), (8, 8), (320, 240), (640, 480)][i % 4]
        image = Image.new("RGB", size, colour)
        if i % 5 == 4:  # a faint gradient: still nothing to describe
            image = Image.linear_gradient("L").convert("RGB").resize(size)
        images.append(image)
    pixels = torch.stack([model.transform(image) for image in images])
    features = model.encode(pixels)
    hyps = [h[0] for h in model.caption_features(features, GenerationConfig())]
    return signals(hyps, model.imagenet_logits(features), features)


def reliability(confidence: torch.Tensor, right: torch.Tensor, bins: int = 10) -> dict:
    """Per confidence bin: the mean confidence, the share right, and the count; and the expected calibration
    error (the count-weighted mean gap)."""
    table, gap = [], 0.0
    for b in range(bins):
        low, high = b / bins, (b + 1) / bins
        mask = (confidence >= low) & ((confidence < high) if b < bins - 1 else (confidence <= high))
        if int(mask.sum()):
            mean, share = float(confidence[mask].mean()), float(right[mask].float().mean())
            table.append({"bin": [low, high], "confidence": round(mean, 3), "right": round(share, 3),
                          "count": int(mask.sum())})
            gap += abs(mean - share) * int(mask.sum())
    return {"ece": round(gap / max(len(confidence), 1), 4), "bins": table}


def plot(reports: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", label="perfectly calibrated")
    for name, report in reports.items():
        xs = [b["confidence"] for b in report["bins"]]
        ys = [b["right"] for b in report["bins"]]
        ax.plot(xs, ys, marker="o", label=f"{name} (ECE {report['ece']:.3f})")
    ax.set_xlabel("confidence")
    ax.set_ylabel("share of captions right")
    ax.set_title("Caption confidence: reliability")
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--data", required=True)
    parser.add_argument("--holdout", type=int, default=500)
    parser.add_argument("--holdout-seed", type=int, default=0)
    parser.add_argument("--also", action="append", default=[], metavar="PATH:SPLIT")
    parser.add_argument("--report", action="append", default=[], metavar="PATH:SPLIT")
    parser.add_argument("--blank", type=int, default=40)
    parser.add_argument("--target", type=float, default=0.5)
    parser.add_argument("--cache-dir", default=None)
    parser.add_argument("--plot", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=None, help="also write the fit and the reliability tables here")
    args = parser.parse_args()
    directory = resolve_model_dir(args.model)
    model = Captioner.from_pretrained(directory)
    model.confidence_model = None
    cfg = TrainConfig(data=args.data, out="unused", holdout=args.holdout, holdout_seed=args.holdout_seed)
    _, held_out = load_splits(cfg)
    sets = [("held-out training images", held_out)]
    sets += [(spec, load_dataset(*spec.rsplit(":", 1))) for spec in args.also]
    rows, labels = [], []
    for _, dataset in sets:
        signal, cider = caption_signals(model, dataset, args.cache_dir)
        rows.append(signal)
        labels.append(cider >= args.target)
    rows.append(blank_signals(model, args.blank))
    labels.append(torch.zeros(args.blank, dtype=torch.bool))
    weights, mean, scale, bias = fit(torch.cat(rows), torch.cat(labels))
    described = ", ".join(name for name, _ in sets) + f", {args.blank} blank/uniform images"
    fitted = ConfidenceModel(weights, mean, scale, bias, target=f"per-image CIDEr-D >= {args.target}",
                             data=described)
    fitted.save(directory / CONFIDENCE_FILE)
    reports = {}
    for spec in args.report:
        signal, cider = caption_signals(model, load_dataset(*spec.rsplit(":", 1)), args.cache_dir)
        reports[spec] = reliability(fitted(signal), cider >= args.target)
    blank = fitted(blank_signals(model, args.blank, seed=1))
    summary = {"weights": dict(zip(("mean_log_prob", "length", "top_class_prob", "spread"), weights)),
               "reliability": reports, "blank_images_max_confidence": round(float(blank.max()), 4)}
    print(json.dumps(summary, indent=1))
    if args.out:
        args.out.write_text(json.dumps(summary, indent=1) + "\n")
    if args.plot:
        plot(reports, args.plot)


if __name__ == "__main__":
    main()
