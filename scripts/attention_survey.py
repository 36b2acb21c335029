"""Is a model's attention doing anything? Caption N images of a split, then measure how peaked and how mobile the
attention over the feature map is (captioner.inspection.attention): entropy per step over the uniform
distribution's, the share of steps that focus, how often the top location moves, and how much where the model
looks depends on the photo (docs/ablation.md, "Is the default's attention doing anything?").

Two controls answer the question directly: the same images are captioned again with the attention replaced by fixed
weights, the same at every step of every image (the learned gate kept): uniform weights (the context is the mean of
the map's projected locations), and the survey's own mean attention map (a fixed, centre-weighted pooling). Each
set of captions is compared with the learned attention's (identical share, coco-caption BLEU-4 and CIDEr-D against
the references).

Writes OUT/attention_survey.json (the numbers, with the settings) and OUT/attention_survey.png (entropy ratio and
focused share by step; the mean attention map; the distribution of each step's top weight).

Usage: CAPTIONER_CACHE=/work/cache python scripts/attention_survey.py [--model DIR] [--data ../shared/data/flickr8k]
       [--split val] [--images 500] [--beam-size 3] --out runs/attention_survey
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from contextlib import contextmanager
from pathlib import Path

import torch

from captioner.data import load_dataset
from captioner.evaluate import caption_vectors
from captioner.features import image_features
from captioner.generation import GenerationConfig
from captioner.generation.config import with_model_defaults
from captioner.inspection.attention import PEAK_SHARE, attention_maps, grid_side, survey
from captioner.inspection.plots import require_matplotlib
from captioner.metrics import score_captions
from captioner.models.attention import SoftAttention
from captioner.pipeline import Captioner

logger = logging.getLogger("attention_survey")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="model directory (default: the embedded default)")
    parser.add_argument("--data", default="../shared/data/flickr8k", help="dataset (default: %(default)s)")
    parser.add_argument("--split", default="val", help="split (default: %(default)s)")
    parser.add_argument("--images", type=int, default=500, help="the split's first N images (default: 500)")
    parser.add_argument("--beam-size", type=int, default=3, help="beam width (default: 3)")
    parser.add_argument("--max-length", type=int, default=GenerationConfig.max_length)
    parser.add_argument("--guided", choices=("model", "on", "off"), default="model",
                        help="tag-guided decoding: as the model sets it (default), or on or off")
    parser.add_argument("--min-captions", type=int, default=20,
                        help="report a step position reached by at least this many captions (default: 20)")
    parser.add_argument("--cache-dir", default=None, help="feature cache (default: $CAPTIONER_CACHE/features)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--out", required=True, help="directory for attention_survey.json and .png")
    return parser.parse_args(argv)


def caption_split(args: argparse.Namespace, model: Captioner) -> tuple[list[torch.Tensor], dict, dict]:
    """Each readable image's best caption's attention ``(T_i, L)``, what was captioned how, and what the controls
    need (``{"features", "items", "config"}``)."""
    dataset = load_dataset(args.data, args.split).subset(args.images)
    paths = [item.path for item in dataset.items]
    features, failed = image_features(model, paths, cache_dir=args.cache_dir, progress=False)
    keep = [i for i in range(len(paths)) if i not in failed]
    guided = {"model": None, "on": True, "off": False}[args.guided]
    config = GenerationConfig(beam_size=args.beam_size, max_length=args.max_length, guided=guided)
    start = time.perf_counter()
    maps = attention_maps(model, features[keep], config, batch_size=args.batch_size)
    filled = with_model_defaults(config, model.decoder)
    settings = {"model": args.model or "default (embedded)", "model_sha256": model.weights_sha256(),
                "data": str(args.data), "split": args.split, "images": len(paths), "unreadable": len(failed),
                "decoding": {"beam_size": filled.beam_size, "max_length": filled.max_length,
                             "no_repeat_ngram": filled.no_repeat_ngram, "guided": filled.guided},
                "peak_share": PEAK_SHARE, "surveyed": len(maps), "seconds": round(time.perf_counter() - start, 1)}
    return maps, settings, {"features": features[keep], "items": [dataset.items[i] for i in keep], "config": config}


@contextmanager
def fixed_attention(weights: torch.Tensor):
    """Within the block, every soft attention (the model's, an ensemble member's, guided decoding's extended copy)
    attends with ``weights`` ``(L,)`` at every step of every image: the context is the weighted mean of the projected
    locations ``(B, P)``, still scaled by the learned gate."""
    original = SoftAttention.forward

    def fixed(self, context, query: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        values = context.values  # (B, L, P)
        alpha = weights.to(values).expand(values.shape[0], -1)  # (B, L)
        z = torch.bmm(alpha.unsqueeze(1), values).squeeze(1)  # (B, P)
        return (torch.sigmoid(self.gate(query)) * z if self.gate is not None else z), alpha

    SoftAttention.forward = fixed
    try:
        yield
    finally:
        SoftAttention.forward = original


def controls(model: Captioner, mean_map: torch.Tensor, inputs: dict, batch_size: int) -> dict:
    """The captions with the learned attention, with uniform attention and with the mean map at every step: how
    many differ from the learned attention's, and each set's scores."""
    vocab, references = model.vocab, [item.captions for item in inputs["items"]]

    def captions() -> list[str]:
        hyps = caption_vectors(model, inputs["features"], inputs["config"], batch_size)
        return [vocab.decode(h.tokens) for h in hyps]

    runs = {"learned": captions()}
    for name, weights in (("uniform", torch.full_like(mean_map, 1 / len(mean_map))), ("mean_map", mean_map)):
        with fixed_attention(weights):
            runs[name] = captions()
    report = {}
    for name, texts in runs.items():
        scores = score_captions(texts, references)
        report[name] = {"bleu4": round(scores["bleu4"], 4), "cider": round(scores["cider"], 4),
                        "unique_captions": len(set(texts)),
                        "identical_to_learned": sum(a == b for a, b in zip(texts, runs["learned"])) / len(texts)}
    report["examples"] = [{name: runs[name][i] for name in runs} for i in range(len(runs["learned"]))
                          if runs["uniform"][i] != runs["learned"][i]][:6]
    return report


def json_ready(facts: dict, settings: dict) -> dict:
    """The survey without its tensors (the mean map as a grid of numbers, the top weights as quantiles)."""
    out = {k: v for k, v in facts.items() if not isinstance(v, torch.Tensor)}
    side = grid_side(facts["locations"])
    mean_map = [round(float(v), 5) for v in facts["mean_map"]]
    out["mean_map"] = [mean_map[r * side: (r + 1) * side] for r in range(side)] if side else mean_map
    quantiles = torch.tensor([0.1, 0.25, 0.5, 0.75, 0.9])
    out["peak_quantiles"] = dict(zip(["p10", "p25", "p50", "p75", "p90"],
                                     [round(float(v), 4) for v in facts["peaks"].quantile(quantiles)]))
    return {"settings": settings, **out}


def figure(facts: dict, title: str, path: Path) -> None:
    """Entropy ratio and focused share by step, the mean attention map, and the histogram of top weights."""
    plt = require_matplotlib()
    fig, (by_step, grid, peaks) = plt.subplots(1, 3, figsize=(15, 4.6), layout="constrained",
                                               gridspec_kw={"width_ratios": [1.3, 1, 1]})
    steps = range(1, len(facts["by_step"]["entropy_ratio"]) + 1)
    by_step.plot(steps, facts["by_step"]["entropy_ratio"], "o-", color="tab:purple", label="entropy / uniform")
    by_step.plot(steps, facts["by_step"]["focused_share"], "s--", color="tab:green",
                 label=f"share of steps with top weight > {PEAK_SHARE:g}")
    by_step.axhline(1.0, color="gray", linewidth=0.8, linestyle=":")
    by_step.set(ylim=(0, 1.05), xlabel="word position", ylabel="mean over captions",
                title="Attention by word position (1: uniform)")
    by_step.legend(loc="center right", fontsize=8)
    by_step.grid(True, alpha=0.3)
    side = grid_side(facts["locations"]) or 1
    image = grid.imshow(facts["mean_map"].view(side, -1).numpy() * facts["locations"], cmap="inferno")
    grid.set_title(f"Mean attention map ({side}x{facts['locations'] // side}), x uniform")
    grid.set_xticks([])
    grid.set_yticks([])
    fig.colorbar(image, ax=grid, label="weight / (1/L)")
    peaks.hist(facts["peaks"].numpy(), bins=40, color="tab:orange")
    peaks.axvline(1 / facts["locations"], color="gray", linestyle=":", label="uniform (1/L)")
    peaks.axvline(PEAK_SHARE, color="tab:green", linestyle="--", label=f"focus threshold {PEAK_SHARE:g}")
    peaks.set(xlabel="top location's weight at a step", ylabel="word steps", title="How peaked each step is")
    peaks.legend(fontsize=8)
    fig.suptitle(title)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = parse_args(argv)
    model = Captioner.from_pretrained(args.model, device="cpu")
    maps, settings, inputs = caption_split(args, model)
    facts = survey(maps, min_captions=args.min_captions)
    settings["controls"] = controls(model, facts["mean_map"], inputs, args.batch_size)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report = json_ready(facts, settings)
    (out / "attention_survey.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
    title = (f"{settings['model']}: {facts['captions']} {args.split} captions (beam {args.beam_size}); mean entropy "
             f"{facts['mean_entropy_ratio']:.2f} of uniform, {facts['focused_share']:.0%} of steps focus")
    figure(facts, title, out / "attention_survey.png")
    logger.info("%s", json.dumps({k: v for k, v in report.items() if k not in ("mean_map", "by_step")}, indent=1))
    logger.info("mean entropy ratio %.3f (uniform %.2f nats over %d locations), focused share %.3f, top-change "
                "share %s, image spread %.3f; wrote %s", facts["mean_entropy_ratio"], facts["uniform_entropy"],
                facts["locations"], facts["focused_share"],
                "n/a" if facts["top_change_share"] is None else f"{facts['top_change_share']:.3f}",
                facts["image_spread"], out)


if __name__ == "__main__":
    main()
