#!/usr/bin/env python3
"""Plain vs tag-guided decoding on everyday photos and on Flickr8k: BLEU-4, CIDEr-D (coco-caption's), the share of
captions naming the photo's main object, the share with a word in an ungrammatical slot, and images per second.

- The main object of an image is the tag word (a word of captioner/generation/imagenet_words.json) that the most of
  its references name (synonyms and plurals count), if at least two do; images without one are left out of the
  share. A caption names it when it contains the word, a synonym or the plural.
- Ungrammatical slots: :func:`captioner.generation.tags.ungrammatical_slots` ("a <mass noun>", article mismatch,
  "<preposition> a <verb>").
- Images per second: the whole caption pass of the chosen backend (decode, preprocess, encode, search; no feature
  cache), after the model is loaded.

A set is ``NAME=PATH:SPLIT`` and may join several (``coco=A:mini+B:tiny``): they are scored as one set.

Usage: python scripts/everyday_eval.py --set coco=../shared/data/coco_mini:mini+../shared/data/coco_tiny:tiny
       --set flickr=../shared/data/flickr8k:val [--model default] [--backend auto] [--decodings plain,guided]
       [--out runs/everyday.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from pathlib import Path

from captioner.data import CaptionSet, load_dataset
from captioner.evaluate import build_report, predict
from captioner.generation import GenerationConfig
from captioner.generation.tags import tag_named, tag_words, ungrammatical_slots
from captioner.vocab import tokenize


def load_set(spec: str) -> tuple[str, CaptionSet]:
    """``NAME=PATH:SPLIT[+PATH:SPLIT...]`` -> (name, the joined caption set)."""
    name, _, parts = spec.partition("=")
    items, root = [], None
    for part in parts.split("+"):
        path, _, split = part.rpartition(":")
        data = load_dataset(path, split)
        items += data.items
        root = root or data.root
    return name, CaptionSet(root, name, items)


def main_objects(dataset: CaptionSet) -> dict[str, str]:
    """Image name -> its main object word (see the module docstring)."""
    words = list(tag_words())
    found = {}
    for item in dataset.items:
        counts = Counter()
        for caption in item.captions:
            tokens = set(tokenize(caption))
            counts.update(w for w in words if tag_named(w, tokens))
        if counts:
            word, n = counts.most_common(1)[0]
            if n >= 2:
                found[item.name] = word
    return found


def measure(model, dataset: CaptionSet, config: GenerationConfig, objects: dict[str, str],
            use_cache: bool = False, cache_dir: str | None = None) -> dict:
    start = time.perf_counter()
    predictions, failures = predict(model, dataset, config, cache_dir=cache_dir, batch_size=32, progress=False,
                                    use_cache=use_cache)
    seconds = time.perf_counter() - start
    report = build_report(predictions, dataset)
    named = [tag_named(objects[p.image], tokenize(p.caption)) for p in predictions if p.image in objects]
    bad = [p for p in predictions if ungrammatical_slots(p.caption)]
    return {"bleu4": round(report["metrics"]["bleu4"], 4), "cider": round(report["metrics"]["cider"], 4),
            "main_object_named": round(sum(named) / max(len(named), 1), 3), "images_with_main_object": len(named),
            "ungrammatical": round(len(bad) / max(len(predictions), 1), 3),
            "images_per_s": round(len(predictions) / seconds, 2), "n_images": len(predictions),
            "unreadable": len(failures), "unique_captions": report["unique_captions"],
            "ungrammatical_examples": [p.caption for p in bad[:5]],
            "examples": [[p.image, p.caption] for p in predictions[:8]]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--set", dest="sets", action="append", required=True, metavar="NAME=PATH:SPLIT[+...]")
    parser.add_argument("--model", default="default")
    parser.add_argument("--backend", default="auto", choices=["auto", "onnxruntime", "torch"])
    parser.add_argument("--decodings", default="plain,guided", help="plain, guided and/or default (the model's)")
    parser.add_argument("--beam-size", type=int, default=3)
    parser.add_argument("--cached", action="store_true",
                        help="read features from the feature cache (faster; images/s then measures the search only)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from captioner.cli.common import load_captioner  # the commands' own choice of backend

    model = load_captioner(argparse.Namespace(model=args.model, backend=args.backend, device="cpu"))
    guided = {"plain": False, "guided": True, "default": None}
    results = {"model": args.model, "backend": type(model).__name__}
    for spec in args.sets:
        name, dataset = load_set(spec)
        objects = main_objects(dataset)
        for decoding in args.decodings.split(","):
            config = GenerationConfig(beam_size=args.beam_size, guided=guided[decoding])
            results[f"{name}/{decoding}"] = row = measure(model, dataset, config, objects, args.cached)
            print(f"{name}/{decoding}", {k: v for k, v in row.items() if not k.endswith("examples")}, flush=True)
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
