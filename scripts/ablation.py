#!/usr/bin/env python3
"""Ablation of the design at one training budget: injection (pooled vector or attention), cell, clipping,
decoding, ensembles and checkpoint averaging. Writes JSON and a table.

Every run trains the shipped architecture on the Flickr8k train split minus 500 held-out images (the same images for
every seed: draw seed 0; the epoch with the best held-out CIDEr-D is kept) for the same number of cross-entropy
epochs, then ``--scst-epochs`` self-critical epochs; the selected model is then scored on the val split with beam 3
(the baseline also greedy and beam 5). The gradient norm is logged at every step (before clipping), so the trace
shows whether clipping ever engages. Each row also gives the training minutes and the search speed on cached
features (images/s, beam 3, batch 128), where an ensemble's cost shows.

``--ensembles sat:3,5`` adds ensembles of the first 3 and 5 seeds of a variant (``captioner.combine.combine``);
``--average sat:3`` the weight average of the last 3 epoch models of the variant's first seed.

Usage: python scripts/ablation.py [--data ../shared/data/flickr8k] [--encoder efficientnet_lite2] [--epochs 6]
       [--lr 1e-3] [--schedule cosine] [--scst-epochs 0] [--seeds 0,1,2] [--jobs 2] [--out runs/ablation]
       [--only baseline,init_only,...] [--cache-dir DIR] [--ensembles VARIANT:N,M] [--average VARIANT:K]

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
from types import SimpleNamespace

VARIANTS = {
    "baseline": ("LSTM, image at every step (the design)", {}, {}),
    "init_only": ("LSTM, image only sets the initial state", {"inject": "init_only"}, {}),
    "gru": ("GRU, image at every step", {"cell": "gru"}, {}),
    "rnn": ("vanilla RNN (tanh), image at every step", {"cell": "rnn"}, {}),
    "no_clip": ("LSTM, every step, no gradient clipping", {}, {"clip_norm": 0.0}),
    "rnn_no_clip": ("vanilla RNN, every step, no gradient clipping", {"cell": "rnn"}, {"clip_norm": 0.0}),
    "attention": ("LSTM, attention context at every step, zero initial state",
                  {"inject": "attention", "attention_init": "zeros"}, {"batch_by_image": True}),
    "sat": ("LSTM, attention context at every step, the map's mean sets the initial state",
            {"inject": "attention", "attention_init": "mean"}, {"batch_by_image": True}),
}
DECODINGS = ("greedy", "beam3", "beam5")
CLIP = 5.0


def _decoding(name: str):
    from captioner.generation import GenerationConfig

    return GenerationConfig(method="greedy") if name == "greedy" else GenerationConfig(beam_size=int(name[4:]))


def run_one(name: str, seed: int, args: argparse.Namespace, threads: int) -> dict:
    """Train one variant with one seed (or read its earlier result) and score it on val."""
    from captioner.config import ModelConfig
    from captioner.pipeline import Captioner
    from captioner.training.config import TrainConfig
    from captioner.training.loop import train

    out = args.out / f"{name}-s{seed}"
    if (out / "result.json").is_file():
        record = json.loads((out / "result.json").read_text())
        if args.respeed:  # the search speed again, on a machine with nothing else running
            record["images_per_s"] = search_speed(Captioner.from_pretrained(out / "model"), args)
            (out / "result.json").write_text(json.dumps(record, indent=2) + "\n")
        return record
    _, model_kw, train_kw = VARIANTS[name]
    cfg = TrainConfig(data=str(args.data), out=str(out), epochs=args.epochs, seed=seed, holdout=500, holdout_seed=0,
                      lr=args.lr, schedule=args.schedule, select_by="cider", cache_dir=args.cache_dir,
                      num_threads=threads, log_every=1, scst_epochs=args.scst_epochs, patience=args.patience,
                      keep_epochs=args.keep_epochs, **{"clip_norm": CLIP, **train_kw})
    if (out / "summary.json").is_file():  # trained elsewhere with this recipe (e.g. by train_default.sh): score it
        summary = json.loads((out / "summary.json").read_text())
        result = SimpleNamespace(best=summary["best"], timings=summary["timings"])
    else:
        result = train(cfg, ModelConfig(encoder=args.encoder, **model_kw))
    # the budget's epochs with their validation, not the feature extraction (a run trained longer elsewhere, e.g.
    # with a second self-critical epoch that was not selected, is charged for the budget's epochs only)
    minutes = sum(result.timings["epoch_s"][: args.epochs + args.scst_epochs]) / 60
    with open(out / "log.csv", newline="", encoding="utf-8") as handle:
        norms = [float(r["grad_norm"]) for r in csv.DictReader(handle) if r["grad_norm"]]
    record = {"variant": name, "seed": seed, "epochs": args.epochs, "scst_epochs": args.scst_epochs,
              "selected_epoch": result.best["epoch"], "train_minutes": round(minutes, 1),
              **score(Captioner.from_pretrained(out / "model"), args, DECODINGS if name == "baseline" else ("beam3",)),
              "grad_norm": _norm_stats(norms)}
    (out / "result.json").write_text(json.dumps(record, indent=2) + "\n")
    return record


def score(model, args: argparse.Namespace, decodings=("beam3",)) -> dict:
    """Val-split figures of a model for each decoding, and its search speed on cached features (beam 3)."""
    from captioner.data import load_dataset
    from captioner.evaluate import evaluate

    val = load_dataset(args.data, "val")
    scores = {}
    for label in decodings:
        report, _ = evaluate(model, val, _decoding(label), cache_dir=args.cache_dir, progress=False)
        scores[label] = {k: round(v, 4) for k, v in report["metrics"].items()}
        scores[label].update(identical_caption_rate=round(report["identical_caption_rate"], 4),
                             distinct=report["unique_captions"])
    return {"scores": scores, "images_per_s": search_speed(model, args)}


def search_speed(model, args: argparse.Namespace) -> float:
    """Images/s of beam-3 search on the val images' cached features (batch 128, ``--speed-threads`` threads)."""
    import torch

    from captioner.data import load_dataset
    from captioner.evaluate import caption_vectors
    from captioner.features import image_features

    val = load_dataset(args.data, "val")
    features, _ = image_features(model, [item.path for item in val.items], cache_dir=args.cache_dir, progress=False)
    torch.set_num_threads(args.speed_threads)
    t0 = time.perf_counter()
    caption_vectors(model, features, _decoding("beam3"), batch_size=128)
    return round(len(val) / (time.perf_counter() - t0), 1)


def combined(args: argparse.Namespace, results: list[dict]) -> list[dict]:
    """Ensembles (``--ensembles``) and checkpoint averages (``--average``) of trained runs, scored like them."""
    from captioner.combine import combine
    from captioner.pipeline import Captioner

    records = []
    for spec, average in [(s, False) for s in args.ensembles.split(",") if s] + [
            (s, True) for s in args.average.split(",") if s]:
        variant, counts = spec.split(":")
        for count in counts.split("+"):
            if average:
                dirs, label = _epoch_dirs(args.out / f"{variant}-s0", count), f"{variant}: weight average of epochs "
                label += f"{int(dirs[0].name)}-{int(dirs[-1].name)} (seed 0)"
            else:
                n = int(count)
                dirs, label = [args.out / f"{variant}-s{i}" / "model" for i in range(n)], f"{variant}: ensemble of {n}"
            model = combine([Captioner.from_pretrained(d) for d in dirs], [str(d) for d in dirs], average=average)
            minutes = sum(r["train_minutes"] for r in results if r["variant"] == variant and
                          (average and r["seed"] == 0 or not average and r["seed"] < n))
            records.append({"variant": label, "seed": 0, "train_minutes": round(minutes, 1),
                            "members": [str(d) for d in dirs], **score(model, args)})
    return records


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


def _epoch_dirs(run: Path, count: str) -> list[Path]:
    """Kept epoch models of a run: the last N (``"3"``) or a range of epochs (``"8-10"``)."""
    epochs = sorted(p for p in (run / "epochs").iterdir() if p.name.isdigit())
    if "-" in count:
        first, last = map(int, count.split("-"))
        return [p for p in epochs if first <= int(p.name) <= last]
    return epochs[-int(count):]


def table(results: list[dict]) -> str:
    """Markdown table: one row per variant (and one per decoding of the baseline), mean ± spread over seeds."""
    lines = ["| variant | seeds | BLEU-4 | CIDEr-D | ROUGE-L | distinct captions | identical-caption rate "
             f"| grad norm median / p99 / max | steps with norm > {CLIP:g} | training minutes | images/s |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    by_variant: dict[str, list[dict]] = {}
    for record in results:
        by_variant.setdefault(record["variant"], []).append(record)
    for name, records in by_variant.items():
        decodings = DECODINGS if name == "baseline" else ("beam3",)
        for decoding in decodings:
            rows = [r["scores"][decoding] for r in records]
            label = VARIANTS[name][0] if name in VARIANTS else name
            label += "" if decoding == "beam3" else f" — {decoding} decoding"
            norms = [r["grad_norm"] for r in records if "grad_norm" in r]
            norm_cells = (f"{statistics.fmean(n['median'] for n in norms):.2f} / "
                          f"{statistics.fmean(n['p99'] for n in norms):.2f} / {max(n['max'] for n in norms):.2f} "
                          f"| {sum(n[f'steps_above_{CLIP:g}'] for n in norms)}") if norms else "— | —"
            lines.append(
                f"| {label} | {len(records)} | {_mean_spread([s['bleu4'] for s in rows])} "
                f"| {_mean_spread([s['cider'] for s in rows], 3)} | {_mean_spread([s['rouge_l'] for s in rows])} "
                f"| {_optional([s.get('distinct') for s in rows], 0)} "
                f"| {_mean_spread([s['identical_caption_rate'] for s in rows], 3)} | {norm_cells} "
                f"| {_optional([r.get('train_minutes') for r in records], 1)} "
                f"| {_optional([r.get('images_per_s') for r in records], 0)} |")
    return "\n".join(lines)


def _optional(values: list, digits: int) -> str:
    """Mean ± spread of the values that were measured (older results lack some columns)."""
    present = [v for v in values if v is not None]
    return _mean_spread(present, digits) if present else "—"


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
    parser.add_argument("--scst-epochs", type=int, default=0)
    parser.add_argument("--patience", type=int, default=0)
    parser.add_argument("--keep-epochs", type=int, default=0, help="keep the last K epoch models (for --average)")
    parser.add_argument("--ensembles", default="", help="e.g. sat:3+5 (ensembles of the first 3 and 5 seeds)")
    parser.add_argument("--average", default="", help="e.g. sat:3+8-10 (weights of the last 3 epochs of seed 0, and "
                        "of its epochs 8 to 10)")
    parser.add_argument("--speed-threads", type=int, default=2, help="threads for the search-speed figure")
    parser.add_argument("--respeed", action="store_true",
                        help="measure the search speed of finished runs again (do it with nothing else running)")
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
    results += combined(args, results)
    (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (args.out / "table.md").write_text(table(results) + "\n")
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
