"""Fine-tuning a trained model on new data without losing what it knew.

Starting from a model directory (or the embedded default), optionally extend the vocabulary with the new data's
words, train with the shared loop (:func:`captioner.training.loop.fit`: resume, schedule, early stopping, freezing,
encoder unfreezing), and measure the model on the new data and on the old data (``also_eval``) before and after — the
forgetting report.
"""

from __future__ import annotations

import json
import logging
import math
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch

from captioner.data import CaptionSet, load_dataset
from captioner.evaluate import evaluate
from captioner.fileio import atomic_write_text
from captioner.generation import GenerationConfig
from captioner.models.vocab_rows import append_rows
from captioner.pipeline import Captioner
from captioner.training.config import FinetuneConfig, TrainConfig
from captioner.training.loop import check_trainable, fit
from captioner.training.splits import load_splits
from captioner.training.state import TrainResult, seed_everything
from captioner.vocab import tokenize

logger = logging.getLogger(__name__)

NOISE = 0.01  # std of the noise added to new rows, relative to the std of the existing rows


@dataclass
class FinetuneResult:
    """What a fine-tuning run produced."""

    train: TrainResult
    added_words: list[str]
    unknown_tokens: int
    report: dict


def extend_vocabulary(model: Captioner, captions: Iterable[str], min_count: int, seed: int = 0) -> list[str]:
    """Append the words of ``captions`` seen at least ``min_count`` times that the vocabulary lacks.

    Existing token ids and their embedding and output rows stay bit-identical. A new word's embedding and output
    weights start at the mean of the existing rows plus small noise; its output bias starts where an existing word
    of the same frequency would sit (mean existing bias + log of its count relative to the mean log count of the
    existing words in the new data), so a new word is neither ignored nor over-predicted at first.

    Returns:
        The added words, most frequent first.
    """
    counts = Counter(w for caption in captions for w in tokenize(caption))
    vocab = model.vocab
    new = sorted((w for w, c in counts.items() if c >= min_count and w not in vocab), key=lambda w: (-counts[w], w))
    if not new:
        return []
    generator = torch.Generator().manual_seed(seed)
    decoder = model.decoder
    known = [counts[w] for w in vocab.itos[4:] if counts[w] > 0]
    mean_log = sum(math.log(c) for c in known) / len(known) if known else 0.0
    bias_new = decoder.head.bias.detach()[4:].mean() + torch.tensor([math.log(counts[w]) - mean_log for w in new])
    embed_rows = _new_rows(decoder.embed.weight.detach(), len(new), generator)  # (n, E)
    head_rows = _new_rows(decoder.head.weight.detach(), len(new), generator)  # (n, H)
    append_rows(decoder, embed_rows, head_rows, bias_new)
    for word in new:
        vocab.add(word)
        vocab.counts[word] = counts[word]
    model.config.vocab_size = len(vocab)
    return new


def _new_rows(weight: torch.Tensor, n: int, generator: torch.Generator) -> torch.Tensor:
    rows = weight[4:]  # the special tokens are not words
    noise = torch.randn(n, weight.shape[1], generator=generator) * (NOISE * float(rows.std()))
    return rows.mean(dim=0, keepdim=True) + noise  # (n, E)


def count_unknown(model: Captioner, captions: Iterable[str]) -> tuple[int, int]:
    """``(unknown tokens, all tokens)`` of captions under the model's vocabulary."""
    tokens = [w for caption in captions for w in tokenize(caption)]
    return sum(w not in model.vocab for w in tokens), len(tokens)


def finetune(cfg: TrainConfig, ft: FinetuneConfig, resume: bool = False) -> FinetuneResult:
    """Fine-tune ``ft.base`` on ``cfg.data``; writes the run directory of :func:`captioner.training.loop.fit` plus
    ``finetune_report.json`` (before/after figures, added words)."""
    seed_everything(cfg.seed)
    if cfg.image_size:
        raise ValueError("--image-size does not apply to fine-tuning: the model keeps its base model's preprocessing "
                         "(its features would change under it); leave it out")
    model = Captioner.from_pretrained(ft.base)
    check_trainable(model, cfg)  # before the (slow) measurements
    train_set, val_set = load_splits(cfg)
    eval_sets = _eval_sets(cfg, ft, val_set)
    before = _measure(model, eval_sets, cfg)
    added = extend_vocabulary(model, train_set.captions(), cfg.min_count, cfg.seed) if ft.extend_vocab else []
    unknown, total = count_unknown(model, train_set.captions())
    if unknown:
        logger.warning("%d of %d training tokens are not in the vocabulary and map to <unk>%s", unknown, total,
                       "" if ft.extend_vocab else " (use --extend-vocab to add frequent new words)")
    if cfg.unfreeze_encoder:
        model.config.encoder_weights_in_file = True  # the fine-tuned encoder must travel with the model
    extra = [f"- Fine-tuned from: `{ft.base}`",
             f"- Words added to the vocabulary ({len(added)}): {', '.join(added) if added else 'none'}",
             f"- Training tokens still unknown (<unk>): {unknown} of {total}"]
    result = fit(model, cfg, train_set, val_set, resume=resume, card_extra=extra)
    after = _measure(Captioner.from_pretrained(result.model_dir), eval_sets, cfg)
    report = {"base": ft.base, "added_words": added, "unknown_tokens": unknown, "tokens": total,
              "before": before, "after": after}
    atomic_write_text(Path(cfg.out) / "finetune_report.json", json.dumps(report, indent=2, sort_keys=True) + "\n")
    return FinetuneResult(result, added, unknown, report)


def _eval_sets(cfg: TrainConfig, ft: FinetuneConfig, val_set: CaptionSet | None) -> dict[str, CaptionSet]:
    """The sets measured before and after: the new data's validation split and the old data (``also_eval``)."""
    sets = {}
    if ft.eval_split:
        sets["new data"] = load_dataset(cfg.data, ft.eval_split, cfg.data_format, cfg.images)
    elif val_set is not None:
        sets["new data"] = val_set
    if ft.also_eval:
        sets["original data"] = load_dataset(ft.also_eval, ft.also_eval_split, ft.also_eval_format)
    limit = 8 if cfg.dry_run else ft.eval_max_images
    return {name: data.subset(limit) if limit else data for name, data in sets.items()}


def _measure(model: Captioner, sets: dict[str, CaptionSet], cfg: TrainConfig) -> dict[str, dict]:
    """coco-caption figures of beam-3 captions on each set."""
    out = {}
    for name, data in sets.items():
        report, _ = evaluate(model, data, GenerationConfig(beam_size=3), cache_dir=cfg.cache_dir, progress=False)
        out[name] = {"n_images": report["n_images"], **report["metrics"],
                     "identical_caption_rate": report["identical_caption_rate"]}
    return out


def format_report(report: dict) -> str:
    """Before/after table of BLEU-4 and CIDEr-D (beam 3) on each evaluated set, on ``finetune_report.json``'s scale:
    BLEU-4 as a fraction (0-1), CIDEr-D on coco-caption's scale (0-10); four decimals."""
    lines = ["scores as in finetune_report.json (beam 3): BLEU-4 is a fraction (0-1), CIDEr-D is on coco-caption's "
             "scale (0-10)",
             f"{'set':<16}{'images':>7}{'BLEU-4 before':>15}{'after':>8}{'CIDEr-D before':>16}{'after':>8}"]
    for name, before in report["before"].items():
        after = report["after"][name]
        lines.append(f"{name:<16}{before['n_images']:>7}{before['bleu4']:>15.4f}{after['bleu4']:>8.4f}"
                     f"{before['cider']:>16.4f}{after['cider']:>8.4f}")
    added = report["added_words"]
    lines.append(f"words added: {len(added)}" + (f" ({', '.join(added[:20])}{' ...' if len(added) > 20 else ''})"
                                                 if added else ""))
    return "\n".join(lines)
