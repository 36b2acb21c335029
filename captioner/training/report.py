"""What a training run writes for people: the model card, the run summary, and the lines it logs on
:data:`EPOCH_LOG` (its plan, then one line per epoch)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from captioner.config import POOLING_LABELS, ModelConfig
from captioner.fileio import files_sha256
from captioner.training.config import TrainConfig
from captioner.training.splits import Split
from captioner.training.state import Run, TrainResult
from captioner.training.validation import Choice
from captioner.vocab import Vocabulary

EPOCH_LOG = "captioner.training.epochs"  # the logger of the plan and epoch lines: INFO, one line each

FIGURES = (("val_loss", "val loss"), ("val_bleu4", "BLEU-4"), ("val_cider", "CIDEr-D"))  # an epoch line's figures


def fmt_row(row: dict, sep: str = " ") -> str:
    """A log row as ``key=value`` pairs (floats to 4 decimals) joined by ``sep``."""
    return sep.join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items())


def plan_line(cfg: TrainConfig, batches: int, train: Split, val: Split | None, auto: bool) -> str:
    """What the run is about to do, in one line: epochs and steps (``auto``: planned from ``cfg.steps``), images,
    validation, selection and schedule."""
    epochs = f"{min(cfg.epochs, 1)} epoch(s) (dry run)" if cfg.dry_run else f"{cfg.epochs} epoch(s)"
    budget = f" (a budget of {cfg.steps} steps, at most {cfg.max_epochs} epochs)" if auto and not cfg.dry_run else ""
    checked = f"validation on {len(set(val.image_index))} images" if val is not None else "no validation"
    scst = f", then {cfg.scst_epochs} self-critical epoch(s)" if cfg.scst_epochs else ""
    return (f"training {epochs} of {batches} steps{budget} on {len(set(train.image_index))} images "
            f"({len(train.captions)} captions){scst}; {checked}, best model by {cfg.select_by}; lr {cfg.lr:g} "
            f"{cfg.schedule}")


def epoch_line(row: dict, epochs: int, scst: bool, choice: Choice) -> str:
    """One epoch in one line: training loss, validation figures (BLEU-4 as a fraction, CIDEr-D on coco-caption's
    scale, as in ``summary.json``), time, and whether it is the best so far and by what."""
    parts = [f"epoch {row['epoch']}/{epochs}{' (self-critical)' if scst else ''}: loss {row['loss']:.4f}"]
    parts += [f"{label} {row[key]:.4f}" for key, label in FIGURES if row.get(key) is not None]
    parts.append(f"{row['elapsed_s']:.0f} s")
    if choice.by != "latest":
        parts.append(f"best so far (by {choice.by})" if choice.better else "not better")
    return ", ".join(parts)


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
        _selected(row, cfg.select_by) + fmt_row(_figures(row)),
        "",
    ]
    return "\n".join(lines)


def _selected(row: dict, select_by: str) -> str:
    """The card's selection sentence: by the asked figure, or by the loss where it was about zero or tied."""
    by = row.get("selected_by", select_by)
    if by in (select_by, "latest"):
        return f"Selected at epoch {row['epoch']} by validation `{select_by}`: "
    return f"Selected at epoch {row['epoch']} by validation `{by}` ({row.get('selection', '')}): "


def _figures(row: dict) -> dict:
    return {k: v for k, v in row.items() if k not in ("selected_by", "selection")}


def run_summary(result: TrainResult, cfg: TrainConfig, vocab: Vocabulary) -> dict:
    """``summary.json``: the best epoch's row (with ``selected_by``, the criterion that picked it, and
    ``selection``, why), how it was selected, every epoch's row, timings, vocabulary size and the settings."""
    best = result.best
    return {
        "model_dir": str(result.model_dir),
        "best": best,
        "selection": {"select_by": cfg.select_by, "selected_by": best.get("selected_by"), "epoch": best.get("epoch"),
                      "reason": best.get("selection")},
        "history": result.history,
        "timings": result.timings,
        "vocab_size": len(vocab),
        "train_config": dataclasses.asdict(cfg),
    }
