"""A training run's logs: ``log.csv`` (a row per logged step and per epoch, flushed as written) and, with
``captioner train --tensorboard``, the same rows as TensorBoard scalars under ``RUN/tensorboard``
(``tensorboard --logdir RUN/tensorboard``)."""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from pathlib import Path

from captioner.fileio import save_error
from captioner.runlog import is_epoch_row

TAGS = {"loss": "train/loss", "grad_norm": "train/grad_norm_before_clipping", "lr": "train/learning_rate",
        "reward": "train/scst_reward", "val_loss": "val/loss", "val_bleu4": "val/bleu4_greedy",
        "val_cider": "val/cider_d_greedy", "elapsed_s": "time/epoch_seconds"}
EPOCH_LOSS = "train/epoch_mean_loss"  # the epoch rows' loss, kept off the per-step train/loss line


def require_tensorboard():
    """``torch.utils.tensorboard.SummaryWriter``, or an error that says how to install TensorBoard."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ValueError("--tensorboard needs the tensorboard package: pip install 'captioner[tensorboard]'") from None
    return SummaryWriter


class TensorBoardLog:
    """Writes each logged row's numbers as TensorBoard scalars at the row's ``step``.

    Args:
        logdir: the event-file directory (created; a resumed run appends a new event file).
    """

    def __init__(self, logdir: str | Path) -> None:
        self._writer = require_tensorboard()(log_dir=str(logdir))

    def write(self, **row) -> None:
        step = int(row["step"])
        epoch_row = is_epoch_row(row)  # an epoch's end: its loss is the epoch's mean, not one step's
        for key, value in row.items():
            if key in TAGS and isinstance(value, (int, float)) and math.isfinite(value):
                tag = EPOCH_LOSS if epoch_row and key == "loss" else TAGS[key]
                self._writer.add_scalar(tag, value, step)
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()


class Logs:
    """Several logs written as one (``log.csv`` and TensorBoard)."""

    def __init__(self, *logs) -> None:
        self.logs = logs

    def write(self, **row) -> None:
        for log in self.logs:
            log.write(**row)

    def close(self) -> None:
        for log in self.logs:
            log.close()


class CsvLog:
    """Appends rows to a CSV file with a fixed header, flushing each row (a killed run keeps its log).

    Args:
        path: the CSV file (created with its header if absent).
        fields: column names; missing values are written empty.
    """

    def __init__(self, path: str | Path, fields: Sequence[str]) -> None:
        self.path, self.fields = Path(path), fields
        new = not self.path.exists()
        self._handle = open(self.path, "a", newline="", encoding="utf-8")
        self._writer = csv.DictWriter(self._handle, fieldnames=fields)
        if new:
            self._writer.writeheader()
            self._handle.flush()

    def write(self, **row) -> None:
        try:
            self._writer.writerow({k: _fmt(v) for k, v in row.items()})
            self._handle.flush()
        except OSError as err:
            raise save_error(self.path, err) from None

    def close(self) -> None:
        self._handle.close()


def _fmt(value):
    return f"{value:.6g}" if isinstance(value, float) else value


class NoLog:
    """The log of a distributed job's ranks other than 0 (rank 0 writes ``log.csv``)."""

    def write(self, **row) -> None:
        pass

    def close(self) -> None:
        pass
