"""Training that talks, with the shipped recipe's defaults (issue 25, item 5): a progress bar per epoch on a terminal
and one line per epoch on stderr (``--quiet`` turns both off), ``captioner train``'s defaults are the recipe of the
shipped default model, model selection falls back to the validation loss where the figure says nothing, and
fine-tuning's default schedule is a budget in optimiser steps."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from captioner.cli import main

REPO = Path(__file__).resolve().parents[1]
EPOCH = re.compile(r"^epoch (\d+)/(\d+): loss \d+\.\d{4}, val loss \d+\.\d{4}, BLEU-4 \d+\.\d{4}, "
                   r"CIDEr-D \d+\.\d{4}, \d+ s, (best so far \(by \w+\)|not better)$")
# a tiny pooled model on the shapes pictures: seconds per run
TINY = ["--encoder", "efficientnet_lite0", "--inject", "every_step", "--embed-dim", "8", "--hidden-dim", "8",
        "--image-proj-dim", "8", "--batch-size", "8", "--min-count", "1", "--seed", "3"]


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    """One feature cache for the module's runs (the shapes pictures are encoded once)."""
    return tmp_path_factory.mktemp("cache")


def _train(data: Path, out: Path, cache: Path, *extra: str) -> list[str]:
    return ["train", "--data", str(data), "--out", str(out), "--cache-dir", str(cache), *TINY, *extra]


def test_train_prints_one_line_per_epoch_and_quiet_prints_none(shapes_dataset, tmp_path, cache, capsys):
    assert main(_train(shapes_dataset, tmp_path / "talks", cache, "--epochs", "3")) == 0
    err = capsys.readouterr().err.splitlines()
    epochs = [line for line in err if line.startswith("epoch ")]
    assert [EPOCH.match(line).group(1, 2) for line in epochs] == [("1", "3"), ("2", "3"), ("3", "3")], err
    assert err[0].startswith("training 3 epoch(s) of ") and "validation on 18 images" in err[0], err
    assert "\r" not in "\n".join(err)  # not a terminal: no progress bar
    assert main(_train(shapes_dataset, tmp_path / "quiet", cache, "--epochs", "3", "--quiet")) == 0
    captured = capsys.readouterr()
    assert captured.err == "" and captured.out.startswith("best model:")
    summary = json.loads((tmp_path / "quiet" / "summary.json").read_text())
    assert len(summary["history"]) == 3 and summary["train_config"]["progress"] is False


def test_epoch_lines_are_not_doubled_by_verbose(shapes_dataset, tmp_path, cache, capsys):
    assert main(["-v", *_train(shapes_dataset, tmp_path / "v", cache, "--epochs", "2")]) == 0
    err = capsys.readouterr().err.splitlines()
    assert len([line for line in err if EPOCH.match(line)]) == 2
    assert not any(line.startswith("INFO: epoch 1/") for line in err)  # the plain line only, not a second copy


def _on_a_terminal(argv: list[str], cwd: Path) -> str:
    """Run ``captioner ARGV`` with stderr on a pseudo-terminal; returns what it wrote there."""
    import fcntl
    import pty
    import struct
    import termios

    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))  # a new pty is 0 columns wide
    proc = subprocess.Popen([sys.executable, "-m", "captioner", *argv], cwd=cwd, stdout=subprocess.DEVNULL,
                            stderr=follower)
    os.close(follower)
    chunks = []
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # the other end closed
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(leader)
    assert proc.wait(timeout=600) == 0, b"".join(chunks).decode(errors="replace")[-2000:]
    return b"".join(chunks).decode(errors="replace")


@pytest.mark.skipif(sys.platform == "win32", reason="needs a pseudo-terminal")
def test_a_terminal_gets_a_progress_bar_unless_quiet(shapes_dataset, tmp_path, cache):
    shown = _on_a_terminal(_train(shapes_dataset, tmp_path / "tty", cache, "--epochs", "2"), REPO)
    assert re.search(r"\repoch 1: +\d+%\|.*\| \d+/\d+ \[", shown), shown  # tqdm's bar, redrawn in place
    assert len(re.findall(r"^epoch \d/2: loss", shown.replace("\r", "\n"), re.M)) == 2
    quiet = _on_a_terminal(_train(shapes_dataset, tmp_path / "tty_quiet", cache, "--epochs", "2", "--quiet"), REPO)
    assert "batch" not in quiet and "epoch" not in quiet, quiet


def test_a_subprocess_with_piped_stderr_gets_lines_but_no_bar(shapes_dataset, tmp_path, cache):
    proc = subprocess.run([sys.executable, "-m", "captioner",
                           *_train(shapes_dataset, tmp_path / "pipe", cache, "--epochs", "2")],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "\r" not in proc.stderr and "batch/s" not in proc.stderr
    assert len([line for line in proc.stderr.splitlines() if EPOCH.match(line)]) == 2, proc.stderr


def _recipe_command() -> list[str]:
    """The `captioner train` arguments of one member in scripts/train_default.sh (the shipped default's recipe)."""
    text = (REPO / "scripts" / "train_default.sh").read_text().replace("\\\n", " ")
    line = next(line for line in text.splitlines() if "captioner -v train" in line)
    words = shlex.split(line.split("captioner -v train", 1)[1].split(">")[0])
    return ["0" if "$" in word else word for word in words]  # shell variables: paths and seeds of its own


def test_train_defaults_are_the_recipe_of_the_shipped_default():
    from captioner.cli.main import build_parser
    from captioner.cli.options import fields_of
    from captioner.cli.train import train_config
    from captioner.config import ModelConfig
    from captioner.models.files import resolve_model_dir

    parser = build_parser()
    plain = parser.parse_args(["train", "--data", "d", "--out", "o"])
    recipe = parser.parse_args(["train", *_recipe_command()])
    # what the recipe types for its data, run directory, held-out images, seeds and machine is its own business
    own = {"data", "out", "extra_data", "holdout", "holdout_seed", "keep_epochs", "seed", "num_threads", "overwrite",
           "cache_dir", "command"}
    differing = {k for k in vars(recipe) if k not in own and getattr(recipe, k) != getattr(plain, k)}
    assert not differing, {k: (getattr(plain, k), getattr(recipe, k)) for k in differing}
    cfg, model = train_config(plain), ModelConfig(**fields_of(ModelConfig, plain))
    assert (cfg.lr, cfg.schedule, cfg.select_by, cfg.clip_norm, cfg.batch_by_image) == (1e-3, "cosine", "cider", 5.0,
                                                                                       True)
    shipped = json.loads((resolve_model_dir("default") / "config.json").read_text())
    for name in ("encoder", "inject", "attention_dim", "attention_init", "embed_dim", "hidden_dim", "image_proj_dim",
                 "dropout", "cell", "num_layers", "pooling"):
        assert getattr(model, name) == shipped[name], name
    # ModelConfig's own defaults are what an old config.json lacking a key is read with: unchanged
    assert (ModelConfig().encoder, ModelConfig().inject) == ("efficientnet_lite0", "every_step")
    assert parser.parse_args(["train", "--data", "d", "--out", "o", "--no-batch-by-image"]).batch_by_image is False


def _row(epoch: int, loss: float, bleu4: float, cider: float) -> dict:
    return {"epoch": epoch, "val_loss": loss, "val_bleu4": bleu4, "val_cider": cider}


def _select(rows: list[dict], select_by: str):
    from captioner.training.validation import compare

    best, choices = {}, []
    for row in rows:
        choice = compare(row, best, select_by, True)
        choices.append(choice)
        if choice.better:
            best = {**row, "selected_by": choice.by}
    return best, choices


def test_selection_falls_back_to_the_loss_when_the_figure_is_about_zero_or_tied():
    # the 4-epoch run: BLEU-4 1.62e-13 at epoch 2 "beat" 1.56e-13 while the loss fell from 4.70 to 3.51
    rows = [_row(1, 4.70, 1.0e-13, 0.001), _row(2, 4.20, 1.62e-13, 0.002), _row(3, 3.80, 1.56e-13, 0.003),
            _row(4, 3.51, 1.50e-13, 0.002)]
    best, choices = _select(rows, "bleu4")
    assert best["epoch"] == 4 and best["selected_by"] == "loss"
    assert "BLEU-4 is about zero" in choices[3].reason
    tied = [_row(1, 3.0, 0.2, 0.30), _row(2, 2.5, 0.2, 0.50), _row(3, 2.4, 0.2, 0.50004), _row(4, 2.6, 0.2, 0.5)]
    best, choices = _select(tied, "cider")
    assert best["epoch"] == 3 and best["selected_by"] == "loss" and "CIDEr-D is tied" in choices[2].reason
    clear = [_row(1, 2.0, 0.1, 0.1), _row(2, 2.5, 0.1, 0.3), _row(3, 1.5, 0.1, 0.2)]
    best, _ = _select(clear, "cider")  # a real difference in the figure still decides, whatever the loss says
    assert best["epoch"] == 2 and best["selected_by"] == "cider"


def test_a_run_records_which_criterion_picked_its_epoch(shapes_dataset, tmp_path, monkeypatch):
    from conftest import tiny_config

    from captioner.training import loop
    from captioner.training.config import TrainConfig

    figures = iter([(4.70, 1.0e-13), (4.20, 1.62e-13), (3.80, 1.56e-13), (3.51, 1.50e-13)])

    def scripted(run):
        loss, bleu4 = next(figures)
        return {"val_loss": loss, "val_bleu4": bleu4, "val_cider": 0.0}

    monkeypatch.setattr(loop, "validate", scripted)
    cfg = TrainConfig(data=str(shapes_dataset), out=str(tmp_path / "r"), epochs=4, batch_size=8, min_count=1,
                      select_by="bleu4", patience=0, progress=False)
    result = loop.train(cfg, tiny_config(4, encoder="efficientnet_lite0"))
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert result.best["epoch"] == 4 and summary["best"]["epoch"] == 4
    assert summary["selection"]["selected_by"] == "loss" and summary["selection"]["select_by"] == "bleu4"
    assert "about zero" in summary["selection"]["reason"]
    card = (tmp_path / "r" / "model" / "README.md").read_text()
    assert "Selected at epoch 4 by validation `loss` (BLEU-4 is about zero" in card


def test_finetune_defaults_are_a_budget_of_steps():
    from captioner.training.config import TrainConfig, finetune_defaults, planned_epochs

    ft = finetune_defaults()
    assert ft.epochs is None and ft.schedule == "cosine" and ft.warmup_steps > 0 and ft.patience > 0
    assert ft.select_by == "cider"
    per_epoch = 3  # 62 images with 5 captions each, batches of 128 captions
    assert planned_epochs(ft, per_epoch) * per_epoch >= min(ft.steps, ft.max_epochs * per_epoch)
    assert planned_epochs(ft, per_epoch) * per_epoch > 35  # the old default: 5 epochs, whatever the data size
    assert planned_epochs(ft, 10_000) == 1  # a large data set: one pass is already the budget
    assert planned_epochs(ft, 1) == ft.max_epochs  # a tiny one: capped
    assert planned_epochs(TrainConfig(epochs=2), 3) == 2  # typed epochs are kept


def test_finetune_plans_its_epochs_from_the_step_budget(tiny_model, shapes_dataset, tmp_path, capsys):
    tiny_model.save_pretrained(tmp_path / "base")
    base = ["finetune", "--from", str(tmp_path / "base"), "--data", str(shapes_dataset), "--batch-size", "16",
            "--min-count", "1", "--eval-max-images", "2", "--val-max-images", "2", "--cache-dir",
            str(tmp_path / "cache")]
    assert main([*base, "--out", str(tmp_path / "auto"), "--steps", "7", "--max-epochs", "9"]) == 0
    err = capsys.readouterr().err
    saved = json.loads((tmp_path / "auto" / "train_config.json").read_text())
    per_epoch = int(re.search(r"^training \d+ epoch\(s\) of (\d+) steps \(a budget of 7 steps, at most 9 epochs\)",
                              err, re.M).group(1))
    assert saved["epochs"] == -(-7 // per_epoch) and saved["steps"] == 7 and saved["schedule"] == "cosine"
    assert len(json.loads((tmp_path / "auto" / "summary.json").read_text())["history"]) <= saved["epochs"]
    assert main([*base, "--out", str(tmp_path / "typed"), "--epochs", "1", "--quiet"]) == 0
    assert json.loads((tmp_path / "typed" / "train_config.json").read_text())["epochs"] == 1
    assert capsys.readouterr().err == ""
