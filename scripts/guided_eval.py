"""Plain vs tag-guided decoding: BLEU-4, CIDEr-D and the share of captions naming the photo's main object.

The main object of an image is the tag word (any word of captioner/generation/imagenet_words.json) that most of its
reference captions use: the most frequent such word, if at least two references contain it (images without one are left out
of the share). A caption names it when it contains that word.

Usage: python scripts/guided_eval.py --data ../shared/data/coco_mini --split all [--thresholds 0.2,0.3,0.5]
       [--model default] [--cache-dir runs/cache] [--out runs/guided_coco.json]
"""

from __future__ import annotations

import argparse
import json
from collections import Counter

from captioner.data import load_dataset
from captioner.evaluate import evaluate
from captioner.generation import GenerationConfig
from captioner.generation import guided as guided_module
from captioner.generation.tags import tag_table
from captioner.pipeline import Captioner
from captioner.vocab import tokenize


def main_objects(dataset) -> dict[str, str]:
    """Image name -> its main object word (see the module docstring)."""
    words = {e["word"] for e in tag_table() if " " not in e["word"]}
    found = {}
    for item in dataset.items:
        counts = Counter(w for caption in item.captions for w in set(tokenize(caption)) if w in words)
        if counts:
            word, n = counts.most_common(1)[0]
            if n >= 2:
                found[item.name] = word
    return found


def run(model, dataset, config, objects, cache_dir) -> dict:
    report, predictions = evaluate(model, dataset, config, cache_dir=cache_dir, progress=False)
    named = [objects[p.image] in tokenize(p.caption) for p in predictions if p.image in objects]
    return {"bleu4": round(report["metrics"]["bleu4"], 4), "cider": round(report["metrics"]["cider"], 4),
            "main_object_named": round(sum(named) / max(len(named), 1), 3), "images_with_main_object": len(named),
            "n_images": report["n_images"], "unique_captions": report["unique_captions"],
            "examples": [[p.image, p.caption] for p in predictions[:5]]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--split", default="val")
    parser.add_argument("--model", default="default")
    parser.add_argument("--thresholds", default="0.2,0.3,0.5")
    parser.add_argument("--max-tags", type=int, default=2)
    parser.add_argument("--beam-size", type=int, default=3)
    parser.add_argument("--limit", type=int, default=0, help="first N images only (0: all)")
    parser.add_argument("--cache-dir", default=None)
    parser.add_argument("--out", default=None)
    parser.add_argument("--new-row-init", choices=["group", "all"], default="group",
                        help="how rows of words the decoder lacks start (captioner.generation.guided.NEW_ROW_INIT)")
    args = parser.parse_args()
    guided_module.NEW_ROW_INIT = args.new_row_init
    model = Captioner.from_pretrained(args.model)
    dataset = load_dataset(args.data, args.split)
    if args.limit:
        dataset = dataset.subset(args.limit)
    objects = main_objects(dataset)
    plain = GenerationConfig(beam_size=args.beam_size)
    results = {"data": args.data, "split": args.split, "plain": run(model, dataset, plain, objects, args.cache_dir)}
    print("plain", {k: v for k, v in results["plain"].items() if k != "examples"}, flush=True)
    for threshold in (float(t) for t in args.thresholds.split(",")):
        guided = GenerationConfig(beam_size=args.beam_size, guided=True, tag_threshold=threshold,
                                  max_tags=args.max_tags)
        results[f"guided@{threshold}"] = run(model, dataset, guided, objects, args.cache_dir)
        print(f"guided@{threshold}", {k: v for k, v in results[f"guided@{threshold}"].items() if k != "examples"},
              flush=True)
    if args.out:
        with open(args.out, "w") as handle:
            json.dump(results, handle, indent=2)


if __name__ == "__main__":
    main()
