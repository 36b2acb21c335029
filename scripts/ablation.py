#!/usr/bin/env python3
"""Ablation of the design at one training budget: injection, cell, clipping, decoding. Writes JSON and a table.

Every run trains the shipped architecture on the Flickr8k train split minus 500 held-out images (seeded; the epoch
with the best held-out CIDEr-D is kept), cross-entropy only, for the same number of epochs; the selected model is
then scored on the val split with beam 3 (the baseline also greedy and beam 5). The gradient norm is logged at
every step (before clipping), so the trace shows whether clipping ever engages.

Usage: python scripts/ablation.py [--data ../shared/data/flickr8k] [--encoder efficientnet_lite2] [--epochs 6]
       [--lr 1e-3] [--schedule cosine] [--seeds 0,1,2] [--jobs 2] [--out runs/ablation]
       [--only baseline,init_only,...] [--cache-dir DIR]

Runs already finished in --out (their ``result.json`` exists) are not trained again, so the script can be
stopped and restarted, and seeds can be added later.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

VARIANTS = {
    "baseline": ("LSTM, image at every step (the design)", {}, {}),
    "init_only": ("LSTM, image only sets the initial state", {"inject": "init_only"}, {}),
    "gru": ("GRU, image at every step", {"cell": "gru"}, {}),
    "rnn": ("vanilla RNN (tanh), image at every step", {"cell": "rnn"}, {}),
    "no_clip": ("LSTM, every step, no gradient clipping", {}, {"clip_norm": 0.0}),
    "rnn_no_clip": ("vanilla RNN, every step, no gradient clipping", {"cell": "rnn"}, {"clip_norm": 0.0}),
}
DECODINGS = ("greedy", "beam3", "beam5")
CLIP = 5.0


def _decoding(name: str):
    from captioner.generate import GenerationConfig

    return GenerationConfig(method="greedy") if name == "greedy" else GenerationConfig(beam_size=int(name[4:]))


def run_one(name: str, seed: int, args: argparse.Namespace, threads: int) -> dict:
    """Train one variant with one seed (or read its earlier result) and score it on val."""
    from captioner.config import ModelConfig, TrainConfig
    from captioner.data import load_dataset
    from captioner.evaluate import evaluate
    from captioner.model import Captioner
    from captioner.train import train

    out = args.out / f"{name}-s{seed}"
    if (out / "result.json").is_file():
        return json.loads((out / "result.json").read_text())
    _, model_kw, train_kw = VARIANTS[name]
    cfg = TrainConfig(data=str(args.data), out=str(out), epochs=args.epochs, seed=seed, holdout=500, lr=args.lr,
                      schedule=args.schedule, select_by="cider", cache_dir=args.cache_dir, num_threads=threads,
                      log_every=1, **{"clip_norm": CLIP, **train_kw})
    t0 = time.perf_counter()
    result = train(cfg, ModelConfig(encoder=args.encoder, **model_kw))
    minutes = (time.perf_counter() - t0) / 60
    model = Captioner.from_pretrained(out / "model")
    val = load_dataset(args.data, "val")
    scores = {}
    for label in DECODINGS if name == "baseline" else ("beam3",):
        report, _ = evaluate(model, val, _decoding(label), cache_dir=args.cache_dir, progress=False)
        scores[label] = {k: round(v, 4) for k, v in report["metrics"].items()}
        scores[label]["identical_caption_rate"] = round(report["identical_caption_rate"], 4)
    with open(out / "log.csv", newline="", encoding="utf-8") as handle:
        norms = [float(r["grad_norm"]) for r in csv.DictReader(handle) if r["grad_norm"]]
    record = {"variant": name, "seed": seed, "epochs": args.epochs, "selected_epoch": result.best["epoch"],
              "train_minutes": round(minutes, 1), "scores": scores, "grad_norm": _norm_stats(norms)}
    (out / "result.json").write_text(json.dumps(record, indent=2) + "\n")
    return record


def _norm_stats(norms: list[float]) -> dict:
    ordered = sorted(norms)
    return {"steps": len(norms), "mean": round(statistics.fmean(norms), 3),
            "median": round(ordered[len(ordered) // 2], 3),
            "p99": round(ordered[int(0.99 * (len(ordered) - 1))], 3), "max": round(ordered[-1], 3),
            "first_100_max": round(max(norms[:100]), 3), f"steps_above_{CLIP:g}": sum(n > CLIP for n in norms)}


def _mean_spread(values: list[float], digits: int = 4) -> str:
    """``mean ± half-range`` (just the value for one seed)."""
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.fmean(values):.{digits}f} ± {(max(values) - min(values)) / 2:.{digits}f}"


def table(results: list[dict]) -> str:
    """Markdown table: one row per variant (and one per decoding of the baseline), mean ± spread over seeds."""
    lines = ["| variant | seeds | BLEU-4 | CIDEr-D | ROUGE-L | identical-caption rate | grad norm median / p99 / max "
             f"| steps with norm > {CLIP:g} |", "|---|---|---|---|---|---|---|---|"]
    by_variant: dict[str, list[dict]] = {}
    for record in results:
        by_variant.setdefault(record["variant"], []).append(record)
    for name, records in by_variant.items():
        decodings = DECODINGS if name == "baseline" else ("beam3",)
        for decoding in decodings:
            rows = [r["scores"][decoding] for r in records]
            label = VARIANTS[name][0] + ("" if decoding == "beam3" else f" — {decoding} decoding")
            norms = [r["grad_norm"] for r in records]
            lines.append(
                f"| {label} | {len(records)} | {_mean_spread([s['bleu4'] for s in rows])} "
                f"| {_mean_spread([s['cider'] for s in rows], 3)} | {_mean_spread([s['rouge_l'] for s in rows])} "
                f"| {_mean_spread([s['identical_caption_rate'] for s in rows], 3)} "
                f"| {statistics.fmean(n['median'] for n in norms):.2f} "
                f"/ {statistics.fmean(n['p99'] for n in norms):.2f} / {max(n['max'] for n in norms):.2f} "
                f"| {sum(n[f'steps_above_{CLIP:g}'] for n in norms)} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[1].parent / "shared" / "data"
                        / "flickr8k")
    parser.add_argument("--encoder", default="efficientnet_lite2")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--schedule", default="cosine")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--jobs", type=int, default=1, help="runs trained at once (each with 2/jobs threads)")
    parser.add_argument("--out", type=Path, default=Path("runs/ablation"))
    parser.add_argument("--cache-dir", default=None)
    parser.add_argument("--only", default=",".join(VARIANTS))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    todo = [(name, int(seed)) for name in args.only.split(",") for seed in args.seeds.split(",")]
    threads = max(1, 2 // max(args.jobs, 1))
    with ProcessPoolExecutor(max_workers=max(args.jobs, 1)) as pool:
        futures = [pool.submit(run_one, name, seed, args, threads) for name, seed in todo]
        results = []
        for future in futures:
            results.append(future.result())
            print(json.dumps(results[-1]), flush=True)
    results += [json.loads(p.read_text()) for p in sorted(args.out.glob("*/result.json"))
                if json.loads(p.read_text()) not in results]
    results.sort(key=lambda r: (list(VARIANTS).index(r["variant"]), r["seed"]))
    (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (args.out / "table.md").write_text(table(results) + "\n")
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
