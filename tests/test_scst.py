"""Self-critical training: the REINFORCE sign, the zero-mean baseline, the phase switch and its options."""

from __future__ import annotations

import csv
from types import SimpleNamespace

import pytest
import torch

from captioner.cli import main
from captioner.generation import GenerationConfig, generate
from captioner.training.config import TrainConfig
from captioner.training.scst import scst_loss
from captioner.training.splits import Split


class WordReward:
    """Pays 1 for every sampled caption that contains ``word``, 0 otherwise."""

    def __init__(self, word_id: int) -> None:
        self.word_id = word_id

    def __call__(self, images, captions):
        return torch.tensor([float(self.word_id in c) for c in captions])


def _run(model, features, **cfg):
    return SimpleNamespace(cfg=TrainConfig(**cfg), model=model, train=Split(data=None, features=features),
                           device=torch.device("cpu"))


def _word_rate(model, features, word_id):
    hyps = generate(model.decoder.eval(), features.repeat_interleave(20, 0), model.vocab,
                    GenerationConfig(method="sample", max_length=8, seed=123))
    return sum(word_id in h[0].tokens for h in hyps) / len(hyps)


def test_scst_steps_make_rewarded_captions_more_likely(tiny_model):
    torch.manual_seed(0)
    features = torch.randn(6, tiny_model.config.encoder_dim)
    dog = tiny_model.vocab.stoi["dog"]
    run = _run(tiny_model, features, scst_samples=4, val_max_length=8)
    before = _word_rate(tiny_model, features, dog)
    optimizer = torch.optim.Adam(tiny_model.decoder.parameters(), lr=3e-2)
    for step in range(25):
        loss, _ = scst_loss(run, list(range(6)), WordReward(dog), seed=step)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = _word_rate(tiny_model, features, dog)
    assert after > before + 0.3, (before, after)


def test_equal_rewards_give_no_gradient(tiny_model):
    features = torch.randn(3, tiny_model.config.encoder_dim)
    run = _run(tiny_model, features, scst_samples=3, val_max_length=6)
    loss, mean = scst_loss(run, [0, 1, 2], lambda images, caps: torch.full((len(caps),), 0.5), seed=0)
    loss.backward()
    assert mean == 0.5 and float(loss.detach()) == 0.0
    assert all(p.grad is None or not p.grad.abs().any() for p in tiny_model.decoder.parameters())


def test_train_then_scst_dry_run(shapes_dataset, tmp_path, capsys):
    out = tmp_path / "r"
    code = main(["train", "--data", str(shapes_dataset), "--out", str(out), "--dry-run", "--min-count", "1",
                 "--scst-epochs", "3", "--scst-lr", "2e-5", "--scst-batch-size", "4", "--select-by", "cider"])
    assert code == 0, capsys.readouterr().err
    rows = list(csv.DictReader((out / "log.csv").open()))
    scst_rows = [r for r in rows if r["epoch"] == "2"]
    assert scst_rows and all(float(r["lr"]) == 2e-5 for r in scst_rows)
    assert any(r["reward"] != "" for r in scst_rows) and all(r["reward"] == "" for r in rows if r["epoch"] == "1")
    assert rows[-1]["val_cider"] != ""
    assert (out / "model_xe" / "model.safetensors").is_file()  # the best cross-entropy model is kept


@pytest.mark.parametrize("argv, message", [
    (["--scst-samples", "1"], "at least 2"),
    (["--scst-epochs", "2", "--unfreeze-encoder", "1"], "frozen encoder"),
])
def test_bad_scst_arguments_give_one_error_line(shapes_dataset, tmp_path, capsys, argv, message):
    code = main(["train", "--data", str(shapes_dataset), "--out", str(tmp_path / "o"), "--dry-run", *argv])
    err = capsys.readouterr().err.strip()
    assert code != 0 and message in err and err.startswith("error:") and len(err.splitlines()) == 1, err


def test_finetune_with_self_critical_epochs_only(tiny_model, shapes_dataset, tmp_path, capsys):
    tiny_model.save_pretrained(tmp_path / "base")
    out = tmp_path / "ft"
    code = main(["finetune", "--from", str(tmp_path / "base"), "--data", str(shapes_dataset), "--out", str(out),
                 "--epochs", "0", "--scst-epochs", "1", "--scst-batch-size", "4", "--dry-run"])
    assert code == 0, capsys.readouterr().err
    rows = list(csv.DictReader((out / "log.csv").open()))
    assert rows and {r["epoch"] for r in rows} == {"1"} and any(r["reward"] for r in rows)
    assert float(rows[0]["lr"]) == TrainConfig().scst_lr  # the first epoch is already self-critical
