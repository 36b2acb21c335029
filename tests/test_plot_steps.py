"""``captioner plot`` (issue 25, item 6): the training-loss line holds the logged steps only; the per-epoch mean rows
of log.csv are markers, so the line no longer jumps at every epoch's end."""

from __future__ import annotations

from pathlib import Path

import pytest

matplotlib = pytest.importorskip("matplotlib")
matplotlib.use("Agg")
import matplotlib.pyplot as plt
from conftest import write_log

from captioner.inspection.plots import plot_run


def _loss_lines(monkeypatch, run: Path, out: Path) -> dict[str, tuple[list, list, str]]:
    kept = []
    monkeypatch.setattr(plt, "close", lambda fig=None: kept.append(fig))  # keep the figure to look at its lines
    assert plot_run(run, out)[0].name == "loss.png"
    ax = kept[0].axes[0]
    return {line.get_label(): (list(line.get_xdata()), list(line.get_ydata()), line.get_linestyle())
            for line in ax.get_lines()}


@pytest.mark.parametrize("steps_logged", [6, 30])
def test_plot_step_line_leaves_out_the_epoch_means(tmp_path, monkeypatch, steps_logged):
    rows, step_rows = [], []
    for epoch in (1, 2, 3):
        for i in range(1, steps_logged + 1):
            step = (epoch - 1) * steps_logged + i
            step_rows.append({"step": step, "epoch": epoch, "loss": 2.0 - 0.01 * step, "grad_norm": 1.0, "lr": 1e-3})
        rows += step_rows[-steps_logged:]
        rows.append({"step": epoch * steps_logged, "epoch": epoch, "loss": 9.0 + epoch, "lr": 1e-3,
                     "val_loss": 3.0, "val_bleu4": 0.1, "val_cider": 0.2, "elapsed_s": 10.0})
    write_log(tmp_path / "run", rows)
    lines = _loss_lines(monkeypatch, tmp_path / "run", tmp_path / "plots")
    drawn = [(label, x, y) for label, (x, y, style) in lines.items() if style not in ("None", "none", "")]
    step_lines = [(label, x, y) for label, x, y in drawn if label.startswith("training loss")]
    assert step_lines
    for label, x, y in step_lines:
        assert x == [r["step"] for r in step_rows], label  # no second point at an epoch's last step
        assert max(y) < 9, label  # and no jump to the epoch mean
    means = [(x, y) for label, (x, y, _) in lines.items() if "mean over the epoch" in label]
    assert means == [([s * steps_logged for s in (1, 2, 3)], [10.0, 11.0, 12.0])]


def test_plot_a_log_with_epoch_rows_only(tmp_path, monkeypatch):
    rows = [{"step": 50 * e, "epoch": e, "loss": 4.0 - e / 10, "lr": 1e-3, "elapsed_s": 10.0} for e in (1, 2)]
    write_log(tmp_path / "run", rows)
    lines = _loss_lines(monkeypatch, tmp_path / "run", tmp_path / "plots")
    assert list(lines) == ["training loss (mean over the epoch)"]
