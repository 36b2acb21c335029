#!/usr/bin/env python3
"""Package a trained run as the embedded default model (captioner/pretrained/default).

Evaluates the run's best model on the validation split with the CLI's default search (beam 3), stores the weights
as float16 only if that changes no validation caption, and writes a model card with the training command, the data
sha256, the timings and the BLEU table.

Usage: python scripts/export_default.py RUN_DIR --data ../shared/data/flickr8k [--split val]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from captioner.checkpoint import files_sha256
from captioner.config import POOLING_LABELS
from captioner.data import load_dataset
from captioner.encoders import get_spec
from captioner.evaluate import evaluate
from captioner.generate import GenerationConfig
from captioner.model import DEFAULT_MODEL_DIR, Captioner


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="run directory written by 'captioner train'")
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--split", default="val")
    parser.add_argument("--dest", type=Path, default=DEFAULT_MODEL_DIR)
    parser.add_argument("--cache-dir", default=None, help="feature cache (default: the user cache directory)")
    args = parser.parse_args()

    model = Captioner.from_pretrained(args.run / "model")
    dataset = load_dataset(args.data, args.split)
    tables = {}
    for name, cfg in {"greedy": GenerationConfig(method="greedy"), "beam3": GenerationConfig(beam_size=3)}.items():
        report, preds = evaluate(model, dataset, cfg, cache_dir=args.cache_dir)
        tables[name] = (report, preds)
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(Path(tmp) / "half", half=True)
        half = Captioner.from_pretrained(Path(tmp) / "half")
        _, half_preds = evaluate(half, dataset, GenerationConfig(beam_size=3), cache_dir=args.cache_dir, progress=False)
    changed = sum(a.caption != b.caption for a, b in zip(tables["beam3"][1], half_preds))
    use_half = changed == 0
    summary = json.loads((args.run / "summary.json").read_text())
    card = _card(args, model, summary, tables, changed, use_half)
    model.save_pretrained(args.dest, card=card, half=use_half)
    print(card)
    return 0


def _card(args, model, summary, tables, changed: int, use_half: bool) -> str:
    data_files = [args.data / "captions.txt", *sorted((args.data / "splits").glob("*.txt"))]
    train_card = (args.run / "model" / "README.md").read_text().splitlines()
    command = next((line for line in train_card if line.startswith("- Command:")), "- Command: unknown")
    t = summary["timings"]
    rows = []
    for name, (report, _) in tables.items():
        m, nltk = report["metrics"], report["nltk_bleu"]
        rows.append(f"| {name} | {100 * m['bleu1']:.2f} | {100 * m['bleu2']:.2f} | {100 * m['bleu3']:.2f} | "
                    f"{100 * m['bleu4']:.2f} | {m['cider']:.3f} | {100 * m['rouge_l']:.2f} | {100 * nltk['bleu4']:.2f} "
                    f"| {report['unique_captions']} / {report['n_images']} |")
    c = model.config
    return "\n".join([
        "# captioner default model",
        "",
        "The model `captioner caption` uses when no `--model` is given.",
        "",
        f"- Encoder: `{c.encoder}` — {get_spec(c.encoder).description}; frozen, "
        f"{c.encoder_dim}-d vector (spatial {POOLING_LABELS[c.pooling]} of the feature map); preprocessing resize "
        f"{c.preprocess.resize} ({c.preprocess.interpolation}), center crop {c.preprocess.crop}, mean/std "
        f"{c.preprocess.mean}/{c.preprocess.std}",
        f"- Decoder: {c.cell.upper()} ({c.num_layers} layer, hidden {c.hidden_dim}), embedding {c.embed_dim}, image "
        f"projection {c.image_proj_dim} concatenated to the input at every step (`{c.inject}`), dropout {c.dropout}",
        f"- Vocabulary: {c.vocab_size} tokens (min count {summary['train_config']['min_count']})",
        f"- Training data: Flickr8k train split ({_train_images(args, summary)}) from the developers' data folder; "
        f"data sha256 (captions.txt + split files): `{files_sha256(data_files)}`",
        command,
        "- Reproduce from scratch: `bash scripts/train_default.sh` (the same settings written out; the feature-cache "
        "location does not change the weights)",
        _training_line(summary),
        _selection_line(summary),
        f"- Wall time on 2 CPU cores: feature extraction {t['features_s']:.0f} s, training "
        f"{sum(t['epoch_s']):.0f} s, total {t['total_s']:.0f} s",
        f"- Weights stored as {'float16' if use_half else 'float32'} ({changed} of "
        f"{tables['beam3'][0]['n_images']} validation captions change in float16)",
        "",
        f"## Validation ({args.split} split, {tables['beam3'][0]['n_images']} images, 5 references each)",
        "",
        "coco-caption BLEU-1..4 and ROUGE-L in percent, CIDEr-D on coco-caption's scale (see docs/metrics.md), and",
        "nltk's corpus BLEU-4 for comparison; free-running decoding, max length 20. Measured with",
        "`python scripts/export_default.py`.",
        "",
        "| decoding | BLEU-1 | BLEU-2 | BLEU-3 | BLEU-4 | CIDEr-D | ROUGE-L | nltk BLEU-4 | unique captions |",
        "|---|---|---|---|---|---|---|---|---|",
        *rows,
        "",
        "## Limits",
        "",
        "Trained on a few thousand Flickr8k photos (mostly people and dogs outdoors): captions of other kinds of",
        "picture are often generic or wrong. Captions are lowercase without punctuation. Self-critical training",
        "raises CIDEr-D by favouring the safest phrasing: fewer distinct captions and words than a cross-entropy",
        "model (see the unique-captions column).",
        "",
    ])


def _train_images(args, summary: dict) -> str:
    total, held = len(load_dataset(args.data, "train")), summary["train_config"].get("holdout", 0)
    return f"{total - held:,} images trained on, {held} held out for selection" if held else f"{total:,} images"


def _training_line(summary: dict) -> str:
    cfg = summary["train_config"]
    line = (f"- Training: {cfg['epochs']} cross-entropy epochs (teacher forcing, batch {cfg['batch_size']}, Adam lr "
            f"{cfg['lr']}, {cfg['schedule']} schedule, clip-norm {cfg['clip_norm']}, early stop after "
            f"{cfg['patience']} epochs without a better held-out figure)")
    if cfg.get("flip_features"):
        line += "; training images augmented with their mirror images (cached vectors of both, one drawn per step)"
    if cfg.get("scst_epochs"):
        line += (f", then {cfg['scst_epochs']} self-critical epochs (CIDEr-D reward, {cfg['scst_samples']} samples "
                 f"per image, lr {cfg['scst_lr']}) from the best cross-entropy epoch")
    return line


def _selection_line(summary: dict) -> str:
    cfg, best = summary["train_config"], summary["best"]
    where = (f"{cfg['holdout']} images held out of the training split (seed {cfg['seed']}); the validation split "
             "was not looked at for training or selection" if cfg.get("holdout") else f"the `{cfg['val_split']}` split")
    total = cfg["epochs"] + cfg.get("scst_epochs", 0)
    return (f"- Seed {cfg['seed']}; selected by `{cfg['select_by']}` of greedy captions on {where}: epoch "
            f"{best['epoch']} of {total} (held-out BLEU-4 {best['val_bleu4']:.4f}, CIDEr-D {best['val_cider']:.3f})")


if __name__ == "__main__":
    sys.exit(main())
