"""Saving and restoring a training run's exact state (``training_state.pt``), and the log's matching rows."""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
from pathlib import Path

from captioner.training.checkpoints import rng_state, save_training_state, set_rng_state
from captioner.training.state import Run

logger = logging.getLogger(__name__)

STATE_FORMAT = 1

# settings a resumed run may change: where things are, how it reports, what it runs on; every other setting (the
# schedule, the data's use, the architecture) must be the one the run was started with
MAY_CHANGE = frozenset({"out", "data", "images", "cache_dir", "num_threads", "device", "log_every", "save_every",
                        "keep_checkpoints", "tensorboard", "progress", "command", "on_bad_image",
                        "max_nonfinite_steps", "dry_run"})


def save_state(run: Run) -> None:
    """Write the resume state (atomic) and keep the last few (rank 0 of a distributed job only)."""
    if not run.dist.is_main:
        return
    model = run.model
    state = {
        "format": STATE_FORMAT,
        "progress": dataclasses.asdict(run.progress),
        "vocab": list(model.vocab.itos),
        "decoder": model.decoder.state_dict(),
        "encoder": model.encoder.state_dict() if run.trainable_encoder else None,
        "optimizer": run.optimizer.state_dict(),
        "scheduler": run.scheduler.state_dict(),
        "scaler": run.scaler.state_dict(),
        "rng": rng_state(),
    }
    save_training_state(run.out, state, run.progress.step, run.cfg.keep_checkpoints)


def check_same_settings(out: Path, cfg, model_config) -> None:
    """Refuse to resume a run with settings other than those it was started with (``train_config.json`` and
    ``model_config.json`` in ``out``), naming each one that differs; a default that changed between versions is
    caught here rather than as a shape error deep in the weights.

    Raises:
        ValueError: a setting differs.
    """
    differ = []
    for name, now in (("train_config.json", cfg), ("model_config.json", model_config)):
        path = out / name
        if not path.exists():
            continue
        saved = json.loads(path.read_text(encoding="utf-8"))
        current = json.loads(json.dumps(dataclasses.asdict(now)))
        differ += [f"{key}={saved[key]!r} (now {current[key]!r})" for key in sorted(saved)
                   if key in current and key not in MAY_CHANGE and saved[key] != current[key]]
    if differ:
        raise ValueError(f"{out}: the run was started with other settings: {', '.join(differ[:6])}; resume with the "
                         f"options it was started with (they are in {out}/train_config.json and model_config.json), "
                         "or start a new --out")


def restore(run: Run, state: dict) -> None:
    """Load a state written by :func:`_save_state` into a run built the same way."""
    if state.get("format") != STATE_FORMAT:
        raise ValueError(f"{run.out}/training_state.pt was written by another captioner version; start a new run")
    if state["vocab"] != run.model.vocab.itos:
        raise ValueError(f"{run.out}: the data or settings changed since the interrupted run (the vocabulary "
                         "differs); resume with the same command, or start a new --out")
    run.model.decoder.load_state_dict(state["decoder"])
    if state["encoder"] is not None:
        run.model.encoder.load_state_dict(state["encoder"])
    run.optimizer.load_state_dict(state["optimizer"])
    run.scheduler.load_state_dict(state["scheduler"])
    run.scaler.load_state_dict(state["scaler"])
    run.progress = type(run.progress)(**state["progress"])
    set_rng_state(state["rng"])
    if run.dist.is_main:
        truncate_log(run.out / "log.csv", run.progress.step, run.log_fields)
    logger.info("resuming at epoch %d, batch %d (step %d)", run.progress.epoch, run.progress.batch,
                run.progress.step)


def truncate_log(path: Path, step: int, fields: list[str]) -> None:
    """Drop log rows written after the saved state (those steps are run again)."""
    if not path.exists():
        return
    with open(path, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    kept = [r for r in rows if r.get("step") and int(r["step"]) <= step]
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows({k: r.get(k, "") for k in fields} for r in kept)
