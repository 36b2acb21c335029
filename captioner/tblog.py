"""TensorBoard logging of a training run (``captioner train --tensorboard``): the rows ``log.csv`` gets, as scalars
under ``RUN/tensorboard`` (``tensorboard --logdir RUN/tensorboard``)."""

from __future__ import annotations

import math
from pathlib import Path

TAGS = {"loss": "train/loss", "grad_norm": "train/grad_norm_before_clipping", "lr": "train/learning_rate",
        "reward": "train/scst_reward", "val_loss": "val/loss", "val_bleu4": "val/bleu4_greedy",
        "val_cider": "val/cider_d_greedy", "elapsed_s": "time/epoch_seconds"}


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
        for key, value in row.items():
            if key in TAGS and isinstance(value, (int, float)) and math.isfinite(value):
                self._writer.add_scalar(TAGS[key], value, step)
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
