"""Calibrate a model's image tags: how often each tag word is named by the references of the photos it is given to.

Tags every training image (the encoder's ImageNet head, threshold --threshold, at most --max-tags) and every image of
the --also development sets, counts for each word how many of the images it was given to have a reference caption
naming it (the word, a synonym of the tag map, or a plural), and writes ``tag_calibration.json`` into the model
directory. Guided decoding then leaves out the words named by fewer than --min-precision of their images (given to at
least --min-count): on Flickr8k the head's "swimsuit", "ski", "beam", "torch" fire on many photos their captions
never mention; on everyday COCO photos others misfire. Only training and development data are read (never a test
set).

Usage: python scripts/calibrate_tags.py MODEL_DIR --data ../shared/data/flickr8k [--holdout 500 --holdout-seed 0]
       [--also ../shared/data/coco_mini:mini --also ../shared/data/coco_tiny:tiny]
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

import torch

from captioner.data import load_dataset
from captioner.features import image_features
from captioner.generation import GenerationConfig
from captioner.generation.tags import tag_named
from captioner.models.files import TAG_CALIBRATION_FILE, resolve_model_dir
from captioner.pipeline import Captioner
from captioner.training.config import TrainConfig
from captioner.training.splits import load_splits
from captioner.vocab import tokenize


def count_tags(model, dataset, cache_dir, threshold: float, max_tags: int) -> dict[str, list[int]]:
    """Word -> [images whose references name it, images tagged with it]."""
    features, failed = image_features(model, [i.path for i in dataset.items], cache_dir=cache_dir, lazy=True,
                                      progress=False)
    fired, named = Counter(), Counter()
    for start in range(0, len(dataset), 256):
        rows = [i for i in range(start, min(start + 256, len(dataset))) if i not in failed]
        config = GenerationConfig(tag_threshold=threshold, max_tags=max_tags)
        for i, tags in zip(rows, model.image_tags(features[torch.tensor(rows)], config)):
            refs = {w for caption in dataset.items[i].captions for w in tokenize(caption)}
            for tag in tags:
                fired[tag.word] += 1
                named[tag.word] += tag_named(tag.word, refs)
    return {word: [named[word], fired[word]] for word in sorted(fired)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--data", required=True)
    parser.add_argument("--holdout", type=int, default=500, help="as the model's training held out (default: 500)")
    parser.add_argument("--holdout-seed", type=int, default=0)
    parser.add_argument("--threshold", type=float, default=0.05)
    parser.add_argument("--max-tags", type=int, default=2)
    parser.add_argument("--min-precision", type=float, default=0.3)
    parser.add_argument("--min-count", type=int, default=10)
    parser.add_argument("--also", action="append", default=[], metavar="PATH:SPLIT",
                        help="a development set whose counts are added (e.g. everyday photos)")
    parser.add_argument("--cache-dir", default=None)
    args = parser.parse_args()
    directory = resolve_model_dir(args.model)
    model = Captioner.from_pretrained(directory)
    model.tag_calibration = None  # count with every word
    cfg = TrainConfig(data=args.data, out="unused", holdout=args.holdout, holdout_seed=args.holdout_seed)
    train, _ = load_splits(cfg)
    words = count_tags(model, train, args.cache_dir, args.threshold, args.max_tags)
    sources = [f"{args.data} train split ({len(train)} images, {args.holdout} held out)"]
    for spec in args.also:
        path, _, split = spec.rpartition(":")
        extra = load_dataset(path, split)
        for word, (hits, fired) in count_tags(model, extra, args.cache_dir, args.threshold, args.max_tags).items():
            words[word] = [words.get(word, [0, 0])[0] + hits, words.get(word, [0, 0])[1] + fired]
        sources.append(f"{path} {split} split ({len(extra)} images)")
    words = dict(sorted(words.items()))
    calibration = {"data": "; ".join(sources),
                   "threshold": args.threshold, "max_tags": args.max_tags, "min_precision": args.min_precision,
                   "min_count": args.min_count, "words": words}
    (Path(directory) / TAG_CALIBRATION_FILE).write_text(json.dumps(calibration, indent=0) + "\n", encoding="utf-8")
    low = [w for w, (hits, n) in words.items() if n >= args.min_count and hits / n < args.min_precision]
    print(f"wrote {directory / TAG_CALIBRATION_FILE}: {len(words)} words seen, {len(low)} left out: "
          f"{', '.join(sorted(low))}")


if __name__ == "__main__":
    main()
