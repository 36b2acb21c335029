"""The columns of a training run's ``log.csv``: training writes them (``captioner.training``) and the plots read them
(``captioner.inspection``), so both take them from here. A row is either one logged optimizer step or the end of an
epoch, which alone carries the validation scores and the epoch's duration."""

from __future__ import annotations

from collections.abc import Mapping

LOG_FIELDS = ("step", "epoch", "loss", "grad_norm", "lr", "val_loss", "val_bleu4", "val_cider", "elapsed_s", "reward")
EPOCH_COLUMNS = ("val_loss", "val_bleu4", "val_cider", "elapsed_s")  # written on epoch-end rows only


def is_epoch_row(row: Mapping) -> bool:
    """Whether a row (as written, or as ``csv.DictReader`` reads it back with empty cells) is an epoch's end rather
    than a logged step: it has a validation score or the epoch's duration (logs older than ``elapsed_s`` have the
    scores only)."""
    return any(row.get(key) not in (None, "") for key in EPOCH_COLUMNS)
