"""What a training run writes for people: the model card and the run summary."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from captioner.config import POOLING_LABELS, ModelConfig
from captioner.fileio import files_sha256
from captioner.training.config import TrainConfig
from captioner.training.state import Run, TrainResult
from captioner.vocab import Vocabulary


def fmt_row(row: dict) -> str:
    return " ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items())


def architecture_lines(c: ModelConfig, encoder_state: str = "frozen") -> list[str]:
    """Model-card lines describing the encoder's output and the decoder (shared by every card).

    Args:
        c: the model configuration.
        encoder_state: how the encoder was trained, e.g. ``frozen``.
    """
    if c.attention:
        image = (f"{c.feature_locations} locations × {c.encoder_dim} channels of the final feature map (not "
                 "pooled)")
        gate = "gated" if c.attention_gate else "ungated"
        init = "the map's mean sets the initial state" if c.attention_init == "mean" else "zero initial state"
        inject = (f"soft attention (additive, width {c.attention_dim}, {gate}) over the map at every step; its "
                  f"context (projected to {c.image_proj_dim}) is concatenated to the input (`attention`); {init}")
    else:
        image = f"{c.encoder_dim}-d vector, spatial {POOLING_LABELS[c.pooling]} of the feature map"
        inject = f"image projection {c.image_proj_dim}, injection `{c.inject}`"
    decoders = f"{c.num_decoders} decoders (ensemble), each " if c.num_decoders > 1 else ""
    return [
        f"- Encoder: `{c.encoder}` ({encoder_state}, {image})",
        f"- Decoder: {decoders}{c.cell.upper()}, {c.num_layers} layer(s), hidden {c.hidden_dim}, embedding "
        f"{c.embed_dim}, {inject}, dropout {c.dropout}",
    ]


def model_card(run: Run, row: dict) -> str:
    """Model card markdown: data, command, architecture and the validation figures of this epoch."""
    c, cfg = run.model.config, run.cfg
    data = Path(cfg.data)
    data_files = [p for p in [data / "captions.txt", *sorted((data / "splits").glob("*.txt"))] if p.is_file()]
    encoder = f"{cfg.unfreeze_encoder} last blocks fine-tuned" if cfg.unfreeze_encoder else "frozen"
    lines = [
        "# captioner model",
        "",
        *architecture_lines(c, encoder),
        f"- Vocabulary: {c.vocab_size} tokens (min count {cfg.min_count})",
        *run.card_extra,
        f"- Data: `{cfg.data}` (train split `{cfg.train_split}`, validation split `{cfg.val_split}`)",
        f"- Data sha256 (captions + split files): `{files_sha256(data_files) if data_files else 'n/a'}`",
        f"- Command: `{cfg.command or 'Python API: captioner.training.loop.train'}`",
        f"- Seed: {cfg.seed}; epochs {cfg.epochs}, batch {cfg.batch_size}, lr {cfg.lr} ({cfg.schedule}), "
        f"clip-norm {cfg.clip_norm}",
        "",
        f"Selected at epoch {row['epoch']} by validation `{cfg.select_by}`: " + fmt_row(row),
        "",
    ]
    return "\n".join(lines)


def run_summary(result: TrainResult, cfg: TrainConfig, vocab: Vocabulary) -> dict:
    return {
        "model_dir": str(result.model_dir),
        "best": result.best,
        "history": result.history,
        "timings": result.timings,
        "vocab_size": len(vocab),
        "train_config": dataclasses.asdict(cfg),
    }
