"""Training curves from a run's ``log.csv``: loss, validation BLEU-4 / CIDEr-D and gradient norm, as PNG files.

``log.csv`` has one row per step (``step, epoch, loss, grad_norm, lr``; ``reward`` in self-critical epochs) and one
row per epoch end (``loss`` there is the epoch's mean training loss, with ``val_loss, val_bleu4, val_cider,
elapsed_s``), both numbered by the optimizer step. The epoch rows' training columns are read as ``epoch_loss`` and
``epoch_lr``, so the step series (``loss``, ``lr``) hold the logged steps only.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

from captioner.runlog import is_epoch_row

PLOTS = ("loss.png", "validation.png", "grad_norm.png")


class PlotError(ValueError):
    """A run directory that cannot be plotted (no log, an unreadable log, or nothing logged yet)."""


def require_matplotlib():
    """``matplotlib.pyplot`` on the file-only Agg backend, or an error that says how to install it."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise PlotError("drawing PNGs needs matplotlib: pip install 'captioner[viz]'") from None
    return plt


def read_log(run_dir: Path) -> dict[str, list[tuple[float, float]]]:
    """Each logged column of ``run_dir/log.csv`` as ``(step, value)`` pairs, empty cells left out; the epoch rows'
    ``loss`` and ``lr`` (the epoch's mean loss, the rate at its end) as ``epoch_loss`` and ``epoch_lr``.

    Raises:
        PlotError: the log is missing, unreadable, or lacks the ``step`` column.
    """
    path = Path(run_dir) / "log.csv"
    if not path.is_file():
        raise PlotError(f"{run_dir} has no log.csv: pass a directory written by `captioner train`")
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise PlotError(f"cannot read {path}: {err}") from None
    if rows and "step" not in rows[0]:
        raise PlotError(f"{path} has no 'step' column: it is not a captioner training log")
    series: dict[str, list[tuple[float, float]]] = {}
    for number, row in enumerate(rows, start=2):
        step = _number(row.get("step"))
        if step is None:
            raise PlotError(f"{path} line {number}: step {row.get('step')!r} is not a number")
        prefix = "epoch_" if is_epoch_row(row) else ""
        for key, text in row.items():
            value = _number(text)
            if key not in ("step", "epoch") and value is not None:
                name = prefix + key if key in ("loss", "lr") else key
                series.setdefault(name, []).append((step, value))
    return series


def _number(text: str | None) -> float | None:
    try:
        value = float(text) if text not in (None, "") else None
    except ValueError:
        return None
    return value if value is not None and math.isfinite(value) else None


def _clip_norm(run_dir: Path) -> float | None:
    """The run's gradient-clipping threshold from ``train_config.json`` (None when unknown or off)."""
    try:
        value = json.loads((Path(run_dir) / "train_config.json").read_text()).get("clip_norm")
    except (OSError, ValueError, AttributeError):
        return None
    return float(value) if isinstance(value, (int, float)) and value > 0 else None


def plot_run(run_dir: Path, out: Path) -> list[Path]:
    """Write ``loss.png``, ``validation.png`` and ``grad_norm.png`` for a run into ``out``.

    Returns:
        The files written (a plot whose columns were never logged is left out, e.g. validation without a
        validation split).
    """
    series = read_log(run_dir)
    if not series.get("loss") and not series.get("epoch_loss"):
        raise PlotError(f"{Path(run_dir) / 'log.csv'} has no training steps logged yet")
    plt = require_matplotlib()
    out.mkdir(parents=True, exist_ok=True)
    written = [_loss_plot(plt, series, out / "loss.png")]
    if series.get("val_bleu4") or series.get("val_cider"):
        written.append(_validation_plot(plt, series, out / "validation.png"))
    if series.get("grad_norm"):
        written.append(_grad_plot(plt, series, _clip_norm(run_dir), out / "grad_norm.png"))
    return written


def _xy(points: list[tuple[float, float]]) -> tuple[list[float], list[float]]:
    return [p[0] for p in points], [p[1] for p in points]


def _save(plt, fig, ax, title: str, ylabel: str, path: Path) -> Path:
    ax.set_title(title)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _loss_plot(plt, series: dict, path: Path) -> Path:
    """The logged steps' training loss as a line (and its moving mean), the epochs' mean training loss and the
    validation loss as markers at each epoch's last step."""
    fig, ax = plt.subplots(figsize=(8, 4.5))
    steps, loss = _xy(series.get("loss", []))
    if loss:
        ax.plot(steps, loss, color="tab:blue", alpha=0.35, linewidth=0.8, label="training loss (logged steps)")
    if len(loss) >= 20:
        width = max(len(loss) // 50, 5)
        smooth = [sum(loss[max(0, i - width + 1): i + 1]) / len(loss[max(0, i - width + 1): i + 1])
                  for i in range(len(loss))]
        ax.plot(steps, smooth, color="tab:blue", linewidth=1.6, label=f"training loss (mean of {width} logged steps)")
    if series.get("epoch_loss"):
        ax.plot(*_xy(series["epoch_loss"]), "D", color="navy", markersize=5, linestyle="none",
                label="training loss (mean over the epoch)")
    if series.get("val_loss"):
        ax.plot(*_xy(series["val_loss"]), "o-", color="tab:orange", label="validation loss (per epoch)")
    return _save(plt, fig, ax, "Cross-entropy loss", "loss (nats per token)", path)


def _validation_plot(plt, series: dict, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(8, 4.5))
    if series.get("val_bleu4"):
        ax.plot(*_xy(series["val_bleu4"]), "o-", color="tab:green", label="BLEU-4 (greedy, 0-1)")
    if series.get("val_cider"):
        ax.plot(*_xy(series["val_cider"]), "s-", color="tab:purple", label="CIDEr-D (greedy)")
    return _save(plt, fig, ax, "Validation scores at the end of each epoch", "score", path)


def _grad_plot(plt, series: dict, clip: float | None, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(8, 4.5))
    ax.plot(*_xy(series["grad_norm"]), color="tab:red", linewidth=0.8, label="gradient L2 norm before clipping")
    if clip is not None:
        ax.axhline(clip, color="black", linestyle="--", linewidth=1, label=f"clipping threshold ({clip:g})")
    return _save(plt, fig, ax, "Gradient norm per step", "L2 norm of all gradients", path)
