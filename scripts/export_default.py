#!/usr/bin/env python3
"""Package trained runs as the embedded default model (captioner/pretrained/default).

Given one or more run directories trained with the same encoder, vocabulary and held-out images (``--holdout N
--holdout-seed S``), the candidates are each run's best model alone and, with several runs, the ensemble of their
best models, of their best cross-entropy models (before self-critical training) and of both. Each
candidate is scored with the CLI's default search (beam 3) on the held-out images, which no run trained on, and the
best CIDEr-D wins: the validation split plays no part in the choice. The winner is then evaluated on the validation
split (greedy and beam 3) for the card, stored as float16 only if that changes no held-out caption, and written
with a model card (commands, data sha256, timings, the held-out selection table and the validation table).

Usage: python scripts/export_default.py RUN_DIR [RUN_DIR ...] --data ../shared/data/flickr8k [--split val]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
from pathlib import Path

from captioner.combine import combine
from captioner.data import load_dataset
from captioner.evaluate import evaluate
from captioner.fileio import files_sha256
from captioner.generation import GenerationConfig
from captioner.models.encoders import get_spec
from captioner.models.files import DEFAULT_MODEL_DIR
from captioner.pipeline import Captioner
from captioner.training.report import architecture_lines

IMAGE_MEAN_LINE = ("- `image_mean.safetensors`: the mean feature map of the training images (written by `captioner "
                   "train`), the 'no particular image' of `captioner visualize`'s image sensitivity; captioning never "
                   "reads it")
from captioner.training.splits import hold_out

BEAM3 = GenerationConfig(beam_size=3)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", type=Path, nargs="+", help="run directories written by 'captioner train'")
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--split", default="val")
    parser.add_argument("--dest", type=Path, default=DEFAULT_MODEL_DIR)
    parser.add_argument("--cache-dir", default=None, help="feature cache (default: the user cache directory)")
    parser.add_argument("--features-s", type=float, default=None,
                        help="seconds the feature cache took to fill before training (train_default.sh fills it "
                        "with `captioner data features`; default: the runs' own extraction time)")
    parser.add_argument("--no-repeat-ngram", default="0,2,3", metavar="N,N",
                        help="repetition guards tried on the held-out images with the chosen decoder (0: none); the "
                        "best CIDEr-D is saved as the model's default (default: 0,2,3)")
    args = parser.parse_args()

    summaries = [json.loads((run / "summary.json").read_text()) for run in args.runs]
    held_out = _held_out(args.data, [s["train_config"] for s in summaries])
    candidates = _candidates(args.runs)
    scored = {name: evaluate(model, held_out, BEAM3, cache_dir=args.cache_dir, progress=False)
              for name, model in candidates.items()}
    choice = max(scored, key=lambda name: scored[name][0]["metrics"]["cider"])
    model = candidates[choice]
    guards = _choose_guard(model, held_out, [int(n) for n in args.no_repeat_ngram.split(",")], args.cache_dir)
    best = max(guards, key=lambda n: guards[n][0])
    model.config = dataclasses.replace(model.config, no_repeat_ngram=best)
    dataset = load_dataset(args.data, args.split)
    tables = {name: evaluate(model, dataset, cfg, cache_dir=args.cache_dir)
              for name, cfg in {"greedy": GenerationConfig(method="greedy"), "beam3": BEAM3}.items()}
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(Path(tmp) / "half", half=True)
        half = Captioner.from_pretrained(Path(tmp) / "half")
        _, half_preds = evaluate(half, held_out, BEAM3, cache_dir=args.cache_dir, progress=False)
    changed = sum(a.caption != b.caption for a, b in zip(guards[best][2], half_preds))  # same guard, fp32 vs fp16
    card = _card(args, model, summaries, scored, choice, tables, changed, guards)
    model.save_pretrained(args.dest, card=card, half=changed == 0)
    print(card)
    return 0


def _choose_guard(model: Captioner, held_out, sizes: list[int], cache_dir) -> dict[int, tuple[float, int, list]]:
    """Held-out beam-3 CIDEr-D, the count of captions repeating a bigram and the predictions, for each
    ``no_repeat_ngram``."""
    out = {}
    for n in sizes:
        report, preds = evaluate(model, held_out, dataclasses.replace(BEAM3, no_repeat_ngram=n),
                                 cache_dir=cache_dir, progress=False)
        out[n] = (report["metrics"]["cider"], sum(_repeats_bigram(p.caption) for p in preds), preds)
    return out


def _repeats_bigram(caption: str) -> bool:
    words = caption.split()
    pairs = list(zip(words, words[1:]))
    return len(pairs) != len(set(pairs))


def _held_out(data: Path, configs: list[dict]):
    """The images every run held out of its training split (they must be the same ones)."""
    draws = {(c["holdout"], c["seed"] if c.get("holdout_seed") is None else c["holdout_seed"]) for c in configs}
    if len(draws) != 1 or not next(iter(draws))[0]:
        raise SystemExit(f"the runs must hold out the same images (--holdout N --holdout-seed S); got {sorted(draws)}")
    n, seed = draws.pop()
    return hold_out(load_dataset(data, "train"), n, seed)[1]


def _candidates(runs: list[Path]) -> dict[str, Captioner]:
    """Each run's best model alone and, with several runs, three ensembles: of their best models, of their best
    cross-entropy models (``OUT/model_xe``, kept by self-critical training) and of both."""
    best = [Captioner.from_pretrained(run / "model") for run in runs]
    models = {run.name: model for run, model in zip(runs, best)}
    if len(runs) > 1:
        models[f"ensemble of {len(runs)}"] = combine(best, [str(r / "model") for r in runs])
        xe_dirs = [run / "model_xe" for run in runs if (run / "model_xe" / "model.safetensors").is_file()]
        if len(xe_dirs) == len(runs):
            xe = [Captioner.from_pretrained(d) for d in xe_dirs]
            models[f"ensemble of {len(runs)} cross-entropy models"] = combine(xe, [str(d) for d in xe_dirs])
            models[f"ensemble of {2 * len(runs)} (both)"] = combine(
                best + xe, [str(r / "model") for r in runs] + [str(d) for d in xe_dirs])
    return models


def _metric_row(name: str, report: dict) -> str:
    m, nltk = report["metrics"], report["nltk_bleu"]
    return (f"| {name} | {100 * m['bleu1']:.2f} | {100 * m['bleu2']:.2f} | {100 * m['bleu3']:.2f} | "
            f"{100 * m['bleu4']:.2f} | {m['cider']:.3f} | {100 * m['rouge_l']:.2f} | {100 * nltk['bleu4']:.2f} "
            f"| {report['unique_captions']} / {report['n_images']} |")


def _card(args, model: Captioner, summaries: list[dict], scored: dict, choice: str, tables: dict,
          changed: int, guards: dict[int, tuple[float, int, list]]) -> str:
    data_files = [args.data / "captions.txt", *sorted((args.data / "splits").glob("*.txt"))]
    train_card = (args.runs[0] / "model" / "README.md").read_text().splitlines()
    command = next((line for line in train_card if line.startswith("- Command:")), "- Command: unknown")
    header = ("| decoding | BLEU-1 | BLEU-2 | BLEU-3 | BLEU-4 | CIDEr-D | ROUGE-L | nltk BLEU-4 | unique captions |\n"
              "|---|---|---|---|---|---|---|---|---|")
    c, first = model.config, summaries[0]
    features = args.features_s if args.features_s is not None else max(s["timings"]["features_s"] for s in summaries)
    per_run = [sum(s["timings"]["epoch_s"]) for s in summaries]
    n_held = next(iter(scored.values()))[0]["n_images"]
    return "\n".join([
        "# captioner default model",
        "",
        "The model `captioner caption` uses when no `--model` is given.",
        "",
        *architecture_lines(c),
        f"- Preprocessing: {get_spec(c.encoder).description}; resize {c.preprocess.resize} "
        f"({c.preprocess.interpolation}), center crop {c.preprocess.crop}, mean/std {c.preprocess.mean}/"
        f"{c.preprocess.std}",
        f"- Vocabulary: {c.vocab_size} tokens (min count {first['train_config']['min_count']})",
        f"- Training data: Flickr8k train split ({_train_images(args, first)}) from the developers' data folder; "
        f"data sha256 (captions.txt + split files): `{files_sha256(data_files)}`",
        command + (f" (runs {', '.join(r.name for r in args.runs)}: seeds "
                   f"{', '.join(str(s['train_config']['seed']) for s in summaries)})" if len(args.runs) > 1 else ""),
        "- Reproduce from scratch: `bash scripts/train_default.sh` (the same settings written out; the feature-cache "
        "location does not change the weights)",
        _training_line(first),
        *[_selection_line(run.name, s) for run, s in zip(args.runs, summaries)],
        f"- Time on 2 CPU cores: feature extraction {features:.0f} s, training {max(per_run):.0f} s for the "
        f"slowest of {len(per_run)} run(s) ({sum(per_run):.0f} s in all; train_default.sh trains two at a time, "
        "one core each)",
        f"- Weights stored as {'float16' if changed == 0 else 'float32'} ({changed} of {n_held} held-out "
        "captions change in float16)",
        IMAGE_MEAN_LINE,
        "",
        f"## Selection ({n_held} held-out training images, beam 3; the validation split was not looked at)",
        "",
        header,
        *[_metric_row(name + (" (chosen)" if name == choice else ""), report) for name, (report, _) in scored.items()],
        "",
        f"Repetition guard (`no_repeat_ngram`, no n-gram of that size twice in a caption; 0: none), {choice}, beam 3: "
        + "; ".join(f"{n}: CIDEr-D {cider:.3f}, {rep} captions repeating a bigram" for n, (cider, rep, _) in
                    guards.items())
        + f". Saved as the model's default: {c.no_repeat_ngram} (`--no-repeat-ngram` overrides it).",
        "",
        f"## Validation ({args.split} split, {tables['beam3'][0]['n_images']} images, 5 references each)",
        "",
        "coco-caption BLEU-1..4 and ROUGE-L in percent, CIDEr-D on coco-caption's scale (see docs/metrics.md), and",
        "nltk's corpus BLEU-4 for comparison; free-running decoding, max length 20. Measured with",
        "`python scripts/export_default.py` once the choice above was made.",
        "",
        header,
        *[_metric_row(name, report) for name, (report, _) in tables.items()],
        "",
        "## Limits",
        "",
        "Trained on a few thousand Flickr8k photos (mostly people and dogs outdoors): captions of other kinds of",
        "picture are often generic or wrong. Captions are lowercase without punctuation." + (
            " Self-critical training raises CIDEr-D by favouring the safest phrasing: fewer distinct captions and "
            "words than a cross-entropy model (see the unique-captions column)." if first["train_config"].get(
                "scst_epochs") else ""),
        "",
    ])


def _train_images(args, summary: dict) -> str:
    total, held = len(load_dataset(args.data, "train")), summary["train_config"].get("holdout", 0)
    return f"{total - held:,} images trained on, {held} held out for selection" if held else f"{total:,} images"


def _training_line(summary: dict) -> str:
    cfg = summary["train_config"]
    line = (f"- Training: {cfg['epochs']} cross-entropy epochs (teacher forcing, batch {cfg['batch_size']}"
            f"{' whole images' if cfg.get('batch_by_image') else ''}, Adam lr {cfg['lr']}, {cfg['schedule']} "
            f"schedule, clip-norm {cfg['clip_norm']}, early stop after {cfg['patience']} epochs without a better "
            "held-out figure)")
    if cfg.get("flip_features"):
        line += "; training images augmented with their mirror images (cached vectors of both, one drawn per step)"
    if cfg.get("scst_epochs"):
        line += (f", then {cfg['scst_epochs']} self-critical epochs (CIDEr-D reward, {cfg['scst_samples']} samples "
                 f"per image, lr {cfg['scst_lr']}) from the best cross-entropy epoch")
    return line


def _selection_line(name: str, summary: dict) -> str:
    cfg, best = summary["train_config"], summary["best"]
    seed = cfg["seed"] if cfg.get("holdout_seed") is None else cfg["holdout_seed"]
    where = (f"{cfg['holdout']} images held out of the training split (draw seed {seed})" if cfg.get("holdout")
             else f"the `{cfg['val_split']}` split")
    total = cfg["epochs"] + cfg.get("scst_epochs", 0)
    return (f"- {name}: seed {cfg['seed']}; epoch selected by `{cfg['select_by']}` of greedy captions on {where}: "
            f"epoch {best['epoch']} of {total} (held-out BLEU-4 {best['val_bleu4']:.4f}, CIDEr-D "
            f"{best['val_cider']:.3f})")


if __name__ == "__main__":
    sys.exit(main())
