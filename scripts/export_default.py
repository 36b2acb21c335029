#!/usr/bin/env python3
"""Package trained runs as the embedded default model (captioner/pretrained/default).

The runs (``captioner train`` with ``--holdout N --holdout-seed S`` and ``--keep-epochs K``) share an encoder, a
vocabulary and their held-out images. The candidates are every kept epoch of every run and each run's best model.
Each candidate, guided as the default will be, is scored with the CLI's default search (beam 3) on the held-out
training images, which no run trained on; the best CIDEr-D wins, then the repetition guard is chosen the same way.
Tag calibration (training images and the everyday-photo development sets) and caption confidence (held-out images,
COCO mini and blank images) are fitted and stored with the model. The winner is then measured, plain and guided, on
the Flickr8k validation split and on the everyday-photo development sets for the card, stored as float16 only if
that changes no held-out caption, and written with its model card.

Usage: python scripts/export_default.py RUN_DIR [RUN_DIR ...] --data ../shared/data/flickr8k
       --everyday ../shared/data/coco_mini:mini --everyday ../shared/data/coco_tiny:tiny [--dest DIR]
       [--cache-dir DIR] [--timings FILE]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from default_card import card  # noqa: E402
from everyday_eval import load_set, main_objects, measure  # noqa: E402

from captioner.data import load_dataset  # noqa: E402
from captioner.evaluate import evaluate  # noqa: E402
from captioner.generation import GenerationConfig  # noqa: E402
from captioner.models.files import DEFAULT_MODEL_DIR  # noqa: E402
from captioner.pipeline import Captioner  # noqa: E402
from captioner.training.splits import hold_out  # noqa: E402

GUIDED = GenerationConfig(beam_size=3, guided=True)
PLAIN = GenerationConfig(beam_size=3, guided=False)


def candidates(runs: list[Path]) -> dict[str, Captioner]:
    """Every kept epoch of every run (``RUN/epochs/NNN``) and each run's best model, by name; weights seen twice
    (the best model is one of the epochs) are kept once."""
    out, seen = {}, set()
    for run in runs:
        dirs = sorted((run / "epochs").glob("[0-9][0-9][0-9]")) + [run / "model"]
        for directory in dirs:
            model = Captioner.from_pretrained(directory)
            digest = model.weights_sha256()
            if digest not in seen:
                seen.add(digest)
                out[f"{run.name}/{directory.name}"] = model
    return out


def holdout_draw(summaries: list[dict]) -> tuple[int, int]:
    """The ``(--holdout, --holdout-seed)`` every run used (they must be the same)."""
    draws = {(s["train_config"]["holdout"], s["train_config"]["holdout_seed"]) for s in summaries}
    if len(draws) != 1 or not next(iter(draws))[0]:
        raise SystemExit(f"the runs must hold out the same images (--holdout N --holdout-seed S); got {draws}")
    return draws.pop()


def held_out_images(data: Path, summaries: list[dict]):
    """The images every run held out of its training split (they must be the same ones)."""
    n, seed = holdout_draw(summaries)
    return hold_out(load_dataset(data, "train"), n, seed)[1]


def calibrate(model_dir: Path, args, script: str, *extra: str) -> None:
    """Run one of the calibration scripts on a model directory (same interpreter, same cache)."""
    cmd = [sys.executable, str(HERE / script), str(model_dir), "--data", str(args.data), "--holdout",
           str(args.holdout), "--holdout-seed", str(args.holdout_seed), *extra]
    if args.cache_dir:
        cmd += ["--cache-dir", args.cache_dir]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)


def choose(models: dict[str, Captioner], held_out, cache_dir) -> tuple[str, dict]:
    """The candidate with the best held-out guided beam-3 CIDEr-D, and every candidate's report."""
    scored = {name: evaluate(model, held_out, GUIDED, cache_dir=cache_dir, progress=False)[0]
              for name, model in models.items()}
    return max(scored, key=lambda name: scored[name]["metrics"]["cider"]), scored


def choose_guard(model: Captioner, held_out, cache_dir) -> tuple[int, dict]:
    """The repetition guard (0, 2, 3) with the best held-out CIDEr-D, and each one's CIDEr-D."""
    figures = {}
    for n in (0, 2, 3):
        report, _ = evaluate(model, held_out, dataclasses.replace(GUIDED, no_repeat_ngram=n), cache_dir=cache_dir,
                             progress=False)
        figures[n] = report["metrics"]["cider"]
    return max(figures, key=figures.get), figures


def tables(model: Captioner, args) -> dict:
    """Plain and guided figures on the Flickr8k validation split and the everyday-photo development sets."""
    sets = {f"flickr8k {args.split}": load_set(f"flickr={args.data}:{args.split}")[1],
            "everyday (COCO dev)": load_set("coco=" + "+".join(args.everyday))[1]}
    out = {}
    for name, dataset in sets.items():
        objects = main_objects(dataset)
        for decoding, config in (("plain", PLAIN), ("guided", GUIDED)):
            out[f"{name}, {decoding}"] = measure(model, dataset, config, objects, use_cache=True,
                                                 cache_dir=args.cache_dir)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", type=Path, nargs="+")
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--split", default="val")
    parser.add_argument("--everyday", action="append", required=True, metavar="PATH:SPLIT")
    parser.add_argument("--dest", type=Path, default=DEFAULT_MODEL_DIR)
    parser.add_argument("--cache-dir", default=None)
    parser.add_argument("--timings", type=Path, default=None, help="JSON of the pipeline's stage times (seconds)")
    args = parser.parse_args()
    summaries = [json.loads((run / "summary.json").read_text()) for run in args.runs]
    held = held_out_images(args.data, summaries)
    args.holdout, args.holdout_seed = holdout_draw(summaries)  # the calibrations leave the same images out
    with tempfile.TemporaryDirectory() as tmp:
        probe = Path(tmp) / "probe"
        Captioner.from_pretrained(args.runs[0] / "model").save_pretrained(probe)
        calibrate(probe, args, "calibrate_tags.py", *sum((["--also", s] for s in args.everyday), []))
        tag_calibration = json.loads((probe / "tag_calibration.json").read_text())
    models = candidates(args.runs)
    for model in models.values():
        model.config = dataclasses.replace(model.config, guided=True, guided_fallback=True)
        model.tag_calibration = tag_calibration
    choice, scored = choose(models, held, args.cache_dir)
    model = models[choice]
    guard, guards = choose_guard(model, held, args.cache_dir)
    model.config = dataclasses.replace(model.config, no_repeat_ngram=guard)
    model.save_pretrained(args.dest)
    reports = args.dest.parent / f"{args.dest.name}-reports"
    reports.mkdir(parents=True, exist_ok=True)
    calibrate(args.dest, args, "calibrate_confidence.py", "--also", args.everyday[0],
              "--report", args.everyday[-1], "--report", f"{args.data}:{args.split}",
              "--plot", str(reports / "confidence_reliability.png"), "--out", str(reports / "confidence.json"))
    model = Captioner.from_pretrained(args.dest)
    figures = tables(model, args)
    (reports / "tables.json").write_text(json.dumps(figures, indent=1) + "\n")
    half = half_changes(model, held, args.cache_dir)
    timings = json.loads(args.timings.read_text()) if args.timings else {}
    text = card(args, model, summaries, scored, choice, guards, figures, half, timings,
                json.loads((reports / "confidence.json").read_text()))
    model.save_pretrained(args.dest, card=text, half=half == 0)
    print(text)
    return 0


def half_changes(model: Captioner, held_out, cache_dir) -> int:
    """How many held-out captions change when the weights are stored as float16."""
    _, full = evaluate(model, held_out, GUIDED, cache_dir=cache_dir, progress=False)
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(Path(tmp) / "half", half=True)
        _, half = evaluate(Captioner.from_pretrained(Path(tmp) / "half"), held_out, GUIDED, cache_dir=cache_dir,
                           progress=False)
    return sum(a.caption != b.caption for a, b in zip(full, half))


if __name__ == "__main__":
    sys.exit(main())
