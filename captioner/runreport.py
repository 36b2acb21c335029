"""What a training run writes for people: the model card and the run summary."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING

from captioner.checkpoint import files_sha256
from captioner.config import POOLING_LABELS, TrainConfig
from captioner.vocab import Vocabulary

if TYPE_CHECKING:
    from captioner.train import Run, TrainResult



def fmt_row(row: dict) -> str:
    return " ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items())


def model_card(run: Run, row: dict) -> str:
    """Model card markdown: data, command, architecture and the validation figures of this epoch."""
    c, cfg = run.model.config, run.cfg
    data = Path(cfg.data)
    data_files = [p for p in [data / "captions.txt", *sorted((data / "splits").glob("*.txt"))] if p.is_file()]
    encoder = f"{cfg.unfreeze_encoder} last blocks fine-tuned" if cfg.unfreeze_encoder else "frozen"
    lines = [
        "# captioner model",
        "",
        f"- Encoder: `{c.encoder}` ({encoder}, {c.encoder_dim}-d vector, spatial {POOLING_LABELS[c.pooling]})",
        f"- Decoder: {c.cell.upper()}, {c.num_layers} layer(s), hidden {c.hidden_dim}, embedding {c.embed_dim}, "
        f"image projection {c.image_proj_dim}, injection `{c.inject}`, dropout {c.dropout}",
        f"- Vocabulary: {c.vocab_size} tokens (min count {cfg.min_count})",
        *run.card_extra,
        f"- Data: `{cfg.data}` (train split `{cfg.train_split}`, validation split `{cfg.val_split}`)",
        f"- Data sha256 (captions + split files): `{files_sha256(data_files) if data_files else 'n/a'}`",
        f"- Command: `{cfg.command or 'Python API: captioner.train'}`",
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
