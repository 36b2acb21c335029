"""Pseudo-captions for photos nobody captioned: a trained model (the *teacher*) captions them with tag-guided
decoding, the captions it can be trusted with are kept, and a caption folder of them joins the training data
(``captioner train --extra-data``), so that a decoder learns the everyday world's words (self-training).

A photo's pseudo-caption is kept when the encoder's most probable tag reaches ``min_tag_prob`` (the caption then
names a thing the encoder is sure of) and the caption's mean log-probability per token reaches
``min_token_log_prob`` (the decoder found a fluent sentence around it). ``pseudo_labels.jsonl`` beside the folder
lists every photo with its tags, captions and the reason it was left out, for inspection.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from captioner.fileio import atomic_write_text
from captioner.generation import GenerationConfig


@dataclass
class PseudoLabelConfig:
    """How pseudo-captions are made and chosen.

    Attributes:
        min_tag_prob: the most probable tag of a kept photo reaches this.
        min_token_log_prob: a kept caption's log-probability per token (``<end>`` included) reaches this.
        captions_per_image: keep up to this many of the n best captions (each passing the threshold).
        beam_size: the guided search's beams.
        batch_size: photos per search.
    """

    min_tag_prob: float = 0.3  # the recipe of the embedded default (docs/ablation.md, self-training)
    min_token_log_prob: float = -2.2
    captions_per_image: int = 1
    beam_size: int = 3
    batch_size: int = 64


def pseudo_label(model, paths: list[Path], cfg: PseudoLabelConfig, cache_dir: str | Path | None = None,
                 progress: bool = True) -> list[dict]:
    """Every photo's record: ``{"image", "tags", "captions": [[text, log_prob, tokens], ...], "kept": [...],
    "reason"}`` (``reason`` says why nothing was kept; None for kept photos)."""
    import torch  # here, not above: `captioner data`'s parser reads PseudoLabelConfig, and --help imports no torch
    from tqdm.auto import tqdm

    from captioner.features import image_features

    features, failed = image_features(model, paths, cache_dir=cache_dir, progress=progress, lazy=True)
    search = GenerationConfig(beam_size=cfg.beam_size, n_best=min(cfg.captions_per_image, cfg.beam_size),
                              guided=True)
    records = [{"image": str(paths[i]), "reason": f"unreadable: {reason}"} for i, reason in failed.items()]
    good = [i for i in range(len(paths)) if i not in failed]
    for start in tqdm(range(0, len(good), cfg.batch_size), desc="pseudo-captions", unit="batch",
                      disable=None if progress else True, leave=False):
        rows = good[start : start + cfg.batch_size]
        hyps = model.caption_features(features[torch.tensor(rows)].float(), search)
        records += [_record(model, paths[i], h, cfg) for i, h in zip(rows, hyps)]
    return sorted(records, key=lambda r: r["image"])


def _record(model, path: Path, hyps: list, cfg: PseudoLabelConfig) -> dict:
    tags = [[t.word, round(t.prob, 4)] for t in hyps[0].tags or []]
    captions = [[model.vocab.decode(h.tokens), round(h.log_prob, 4), len(h.tokens)] for h in hyps]
    kept = [text for text, log_prob, length in captions if log_prob / (length + 1) >= cfg.min_token_log_prob]
    reason = None
    if not tags or tags[0][1] < cfg.min_tag_prob:
        reason, kept = f"no tag of probability {cfg.min_tag_prob} or more", []
    elif not kept:
        reason = f"no caption of {cfg.min_token_log_prob} or more log-probability per token"
    return {"image": str(path), "tags": tags, "captions": captions, "kept": kept, "reason": reason}


def write_caption_folder(out: Path, images: Path, records: list[dict]) -> int:
    """Write the kept pseudo-captions as a caption folder ``out`` (``images`` a link to the photos' directory,
    ``captions.txt``, ``splits/train.txt``) plus ``pseudo_labels.jsonl``; returns the number of photos kept.

    Raises:
        ValueError: ``out`` exists and is not empty.
    """
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"{out} exists and is not empty; choose a new directory")
    (out / "splits").mkdir(parents=True, exist_ok=True)
    os.symlink(images.resolve(), out / "images", target_is_directory=True)
    root = images.resolve()
    kept = [r for r in records if r.get("kept")]
    lines = ["image\tcaption"] + [f"{Path(r['image']).resolve().relative_to(root)}\t{text}"
                                   for r in kept for text in r["kept"]]
    atomic_write_text(out / "captions.txt", "\n".join(lines) + "\n")
    names = [str(Path(r["image"]).resolve().relative_to(root)) for r in kept]
    atomic_write_text(out / "splits" / "train.txt", "\n".join(names) + ("\n" if names else ""))
    atomic_write_text(out / "pseudo_labels.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    return len(kept)
