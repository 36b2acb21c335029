#!/usr/bin/env python3
"""Ablation of the design at one training budget: injection, cell, clipping, decoding. Prints JSON and a table.

Every run trains on the Flickr8k train split minus 500 held-out images (seeded; the model is selected on those by
CIDEr-D), then the selected model is scored on the val split with beam 3 (the baseline also greedy and beam 5).
Gradient-norm statistics come from each run's log.csv (sampled every 50 steps, before clipping).

Usage: python scripts/ablation.py [--data ../shared/data/flickr8k] [--epochs 5] [--seeds 0] [--out runs/ablation]
       [--only baseline,init_only,...]
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
import time
from pathlib import Path

from captioner.config import ModelConfig, TrainConfig
from captioner.data import load_dataset
from captioner.evaluate import evaluate
from captioner.generate import GenerationConfig
from captioner.model import Captioner
from captioner.train import train

VARIANTS = {
    "baseline": ({}, {}),
    "init_only": ({"inject": "init_only"}, {}),
    "gru": ({"cell": "gru"}, {}),
    "rnn": ({"cell": "rnn"}, {}),
    "no_clip": ({}, {"clip_norm": 0.0}),
}
DECODINGS = {"greedy": GenerationConfig(method="greedy"), "beam3": GenerationConfig(beam_size=3),
             "beam5": GenerationConfig(beam_size=5)}


def run_one(name: str, seed: int, args) -> dict:
    model_kw, train_kw = VARIANTS[name]
    out = args.out / f"{name}-s{seed}"
    cfg = TrainConfig(data=str(args.data), out=str(out), epochs=args.epochs, seed=seed, holdout=500,
                      select_by="cider", cache_dir=args.cache_dir, **train_kw)
    t0 = time.perf_counter()
    train(cfg, ModelConfig(**model_kw))
    minutes = (time.perf_counter() - t0) / 60
    model = Captioner.from_pretrained(out / "model")
    val = load_dataset(args.data, "val")
    wanted = DECODINGS if name == "baseline" else {"beam3": DECODINGS["beam3"]}
    scores = {}
    for label, decoding in wanted.items():
        report, _ = evaluate(model, val, decoding, cache_dir=args.cache_dir, progress=False)
        scores[label] = {k: round(v, 4) for k, v in report["metrics"].items()}
        scores[label]["identical_caption_rate"] = round(report["identical_caption_rate"], 4)
    norms = [float(r["grad_norm"]) for r in csv.DictReader(open(out / "log.csv")) if r["grad_norm"]]
    return {"variant": name, "seed": seed, "train_minutes": round(minutes, 1), "scores": scores,
            "grad_norm": {"mean": round(statistics.fmean(norms), 3), "max": round(max(norms), 3)} if norms else {}}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[1].parent / "shared" / "data"
                        / "flickr8k")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--out", type=Path, default=Path("runs/ablation"))
    parser.add_argument("--cache-dir", default=None)
    parser.add_argument("--only", default=",".join(VARIANTS))
    args = parser.parse_args()
    results = []
    for name in args.only.split(","):
        for seed in (int(s) for s in args.seeds.split(",")):
            results.append(run_one(name, seed, args))
            print(json.dumps(results[-1]), flush=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
