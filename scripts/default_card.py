"""The embedded default model's card (README.md), from what scripts/export_default.py measured."""

from __future__ import annotations

import os
import shlex
from pathlib import Path

from captioner.fileio import files_sha256
from captioner.models.encoders import get_spec
from captioner.training.report import architecture_lines

IMAGE_MEAN_LINE = ("- `image_mean.safetensors`: the mean feature map of the training images (written by `captioner "
                   "train`), the 'no particular image' of `captioner visualize`'s image sensitivity; captioning never "
                   "reads it")
HEADER = ("| decoding | BLEU-4 | CIDEr-D | main object named | ungrammatical | unique captions |\n"
          "|---|---|---|---|---|---|")


def card(args, model, summaries: list[dict], scored: dict, choice: str, guards: dict, figures: dict, half: int,
         timings: dict, confidence: dict) -> str:
    c, first = model.config, summaries[0]["train_config"]
    return "\n".join([
        "# captioner default model", "",
        "The model `captioner caption` uses when no `--model` is given. It captions with tag-guided decoding by "
        "default, as a fallback: each photo is captioned plainly first, and where that caption does not name the "
        "encoder's confident ImageNet tags, the caption is searched again so that it must contain them "
        "(`--guide-always` constrains every tagged photo, `--plain` turns guiding off).", "",
        *architecture_lines(c),
        f"- Preprocessing: {get_spec(c.encoder).description}; resize {c.preprocess.resize} "
        f"({c.preprocess.interpolation}), center crop {c.preprocess.crop}, mean/std {c.preprocess.mean}/"
        f"{c.preprocess.std}",
        f"- Vocabulary: {c.vocab_size} tokens (min count {first['min_count']})",
        *_data_lines(args, first),
        *_training_lines(args, summaries),
        f"- Weights stored as {'float16' if half == 0 else 'float32'} ({half} held-out captions change in float16)",
        f"- Decoding defaults (config.json): guided {c.guided} (as a fallback: {c.guided_fallback}), tag threshold "
        f"{c.tag_threshold}, at most {c.max_tags} tags, repetition guard {c.no_repeat_ngram}",
        IMAGE_MEAN_LINE,
        "- `tag_calibration.json`: how often each tag word was named by the references of the training images and "
        "the everyday-photo development sets it fired on; words named on fewer than 30% of at least 10 are not used",
        f"- `confidence.json`: caption confidence, {confidence.get('target', 'per-image CIDEr-D >= 0.5')} "
        "(scripts/calibrate_confidence.py); " + "; ".join(
            f"{name}: expected calibration error {report['ece']}" for name, report in confidence["reliability"].items())
        + f"; blank and uniform images get at most {confidence['blank_images_max_confidence']}",
        _timing_line(timings), "",
        *_selection(scored, choice, guards, c.no_repeat_ngram), "",
        *_figures(figures), "",
        "## Limits", "",
        "Trained on a few thousand Flickr8k photos (mostly people and dogs outdoors) and on its teacher's captions of "
        "everyday COCO photos: captions of other kinds of picture are often generic, and a tag the encoder gets "
        "wrong makes the caption wrong. Captions are lowercase without punctuation. Check the captions whose "
        "confidence is low (`captioner caption --min-confidence 0.5` marks them).", "",
    ])


def _data_lines(args, first: dict) -> list[str]:
    data_files = [args.data / "captions.txt", *sorted((args.data / "splits").glob("*.txt"))]
    extra = first.get("extra_data") or []
    lines = [f"- Training data: Flickr8k train split ({first['holdout']} images held out for selection) from the "
             f"developers' data folder; data sha256 (captions.txt + split files): `{files_sha256(data_files)}`"]
    for spec in extra:
        pseudo = Path(spec.split(":")[0])
        count = sum(1 for _ in open(pseudo / "splits" / "train.txt")) if (pseudo / "splits").is_dir() else "?"
        lines.append(f"- Plus pseudo-captions of {count} unlabelled everyday COCO photos (`captioner data pseudo-label`"
                     ": the teacher's guided captions whose tag and fluency it could trust; the teacher is captioner "
                     "0.1.0's default, Flickr8k only)")
    return lines


def portable_command(command: str, runs: list[Path]) -> str:
    """The training command with the building machine's absolute paths written as scripts/train_default.sh names
    them: ``RUN/...`` under the runs' directory, ``CACHE`` for the feature cache; other words as they were."""
    parent = Path(os.path.commonpath([str(Path(r).absolute().parent) for r in runs]))
    words = shlex.split(command)
    out = []
    for before, word in zip(["", *words], words):
        if before == "--cache-dir":
            word = "CACHE"
        elif os.path.isabs(word) and Path(word).is_relative_to(parent):
            word = f"RUN/{Path(word).relative_to(parent)}"
        out.append(word)
    return shlex.join(out)


def _training_lines(args, summaries: list[dict]) -> list[str]:
    cfg = summaries[0]["train_config"]
    seeds = ", ".join(str(s["train_config"]["seed"]) for s in summaries)
    command = portable_command(cfg["command"], args.runs) if cfg.get("command") else "captioner train"
    return [f"- Command: `{command}` (runs {', '.join(r.name for r in args.runs)}: seeds {seeds}; RUN and CACHE are "
            "scripts/train_default.sh's run directory and feature cache)",
            "- Reproduce from scratch: `bash scripts/train_default.sh` (byte-identical on the same kind of machine)",
            f"- Training: {cfg['epochs']} cross-entropy epochs (teacher forcing, batch {cfg['batch_size']} whole "
            f"images, Adam lr {cfg['lr']}, {cfg['schedule']} schedule, clip-norm {cfg['clip_norm']}), the last "
            f"{cfg['keep_epochs']} epochs of each run kept as candidates"]


def _timing_line(timings: dict) -> str:
    if not timings:
        return "- Time on 2 CPU cores: see scripts/train_default.sh's output"
    parts = ", ".join(f"{name} {seconds:.0f} s" for name, seconds in timings.items())
    return f"- Time on 2 CPU cores: {parts} (scripts/train_default.sh)"


def _selection(scored: dict, choice: str, guards: dict, guard: int) -> list[str]:
    n = next(iter(scored.values()))["n_images"]
    lines = [f"## Selection ({n} held-out training images, guided beam 3; no validation or test image was looked at)",
             "", "| candidate | BLEU-4 | CIDEr-D |", "|---|---|---|"]
    lines += [f"| {name}{' (chosen)' if name == choice else ''} | {r['metrics']['bleu4']:.4f} | "
              f"{r['metrics']['cider']:.3f} |" for name, r in scored.items()]
    lines += ["", "Repetition guard (no n-gram of that size twice in a caption; 0: none), held-out CIDEr-D: "
              + ", ".join(f"{k}: {v:.3f}" for k, v in guards.items()) + f"; saved: {guard}."]
    return lines


def _figures(figures: dict) -> list[str]:
    lines = ["## Figures (beam 3; coco-caption BLEU-4 and CIDEr-D on their 0-1 and 0-10 scales)", "",
             "The everyday set is the developers' 156 COCO photos (coco_mini + coco_tiny, 5 captions each); the "
             "main object is the tag word most of an image's references name.", "", HEADER]
    for name, r in figures.items():
        lines.append(f"| {name} | {r['bleu4']:.4f} | {r['cider']:.3f} | {r['main_object_named']:.2f} | "
                     f"{r['ungrammatical']:.3f} | {r['unique_captions']} / {r['n_images']} |")
    return lines
