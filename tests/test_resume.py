"""Resume after SIGKILL: an interrupted-and-resumed run ends with the same weights as an uninterrupted one."""

import random
from pathlib import Path

import pytest
import torch
from conftest import kill_when_logged, make_caption_folder

from captioner.cli import main

TEMPLATES = ["a {c} {s}", "one {c} {s}", "a {s} that is {c}", "there is a {c} {s}", "a {c} {s} on white",
             "the {s} is {c}", "a small {c} {s}", "a big {c} {s}"]


@pytest.fixture
def wordy_shapes(shapes_dataset, tmp_path):
    """The shapes images with eight captions each, so an epoch has enough steps to be killed in the middle."""
    train = (shapes_dataset / "splits" / "train.txt").read_text().split()
    val = (shapes_dataset / "splits" / "val.txt").read_text().split()
    captions = {}
    for name in train + val:
        colour, shape = name.split("_")[:2]
        captions[name] = [t.format(c=colour, s=shape) for t in TEMPLATES]
    root = make_caption_folder(tmp_path / "wordy", captions, {"train": train, "val": val})
    for name in train + val:
        (root / "images" / name).symlink_to(shapes_dataset / "images" / name)
    return root


ATTENTION = ["--inject", "attention", "--batch-by-image", "--attention-dim", "32", "--attention-reg", "0.1",
             "--keep-epochs", "2"]


def _args(data, out, extra=()):
    return ["train", "--data", str(data), "--out", str(out), "--epochs", "3", "--batch-size", "8", "--min-count",
            "1", "--embed-dim", "32", "--hidden-dim", "256", "--image-proj-dim", "32", "--dropout", "0.3",
            "--save-every", "5", "--keep-checkpoints", "3", "--schedule", "cosine", "--warmup-steps", "10",
            "--seed", "11", "--val-max-images", "6", "--scst-epochs", "2", "--scst-batch-size", "2",
            "--scst-samples", "3", *extra]


def _weights(run: Path) -> dict:
    state = torch.load(run / "training_state.pt", weights_only=True)
    return state["decoder"]


@pytest.mark.parametrize("model", ["pooled", "attention"])
@pytest.mark.parametrize("phase", ["cross-entropy", "self-critical"])
def test_sigkill_then_resume_gives_the_same_weights(wordy_shapes, tmp_path, phase, model):
    # pooled: mirrored views are drawn per step, resumed exactly too; attention: whole-image batches, the penalty
    # and the kept epoch models
    extra = ["--flip-features"] if model == "pooled" else ATTENTION
    assert main(_args(wordy_shapes, tmp_path / "whole", extra)) == 0
    steps_total = torch.load(tmp_path / "whole" / "training_state.pt", weights_only=True)["progress"]["step"]
    history = torch.load(tmp_path / "whole" / "training_state.pt", weights_only=True)["progress"]["history"]
    xe_steps = history[2]["step"]  # the last of the 3 cross-entropy epochs
    low, high = (6, xe_steps - 10) if phase == "cross-entropy" else (xe_steps + 1, steps_total - 5)
    kill_after = random.Random().randrange(low, high)
    kill_when_logged(_args(wordy_shapes, tmp_path / "cut", extra), tmp_path / "cut" / "log.csv", kill_after)
    assert (tmp_path / "cut" / "training_state.pt").exists()
    assert main([*_args(wordy_shapes, tmp_path / "cut", extra), "--resume"]) == 0
    whole, cut = _weights(tmp_path / "whole"), _weights(tmp_path / "cut")
    assert all(torch.equal(whole[k], cut[k]) for k in whole), f"weights differ after a kill at step ~{kill_after}"
    assert (tmp_path / "whole" / "model" / "model.safetensors").read_bytes() == (
        tmp_path / "cut" / "model" / "model.safetensors").read_bytes()
    steps = [int(r.split(",")[0]) for r in (tmp_path / "cut" / "log.csv").read_text().splitlines()[1:]]
    whole_steps = [int(r.split(",")[0]) for r in (tmp_path / "whole" / "log.csv").read_text().splitlines()[1:]]
    assert steps == whole_steps, "the resumed log must neither repeat nor miss steps"
    assert len(list((tmp_path / "cut" / "checkpoints").glob("step-*.pt"))) == 3
    if model == "attention":  # the last two epochs' models, as an uninterrupted run keeps them
        kept = sorted(p.name for p in (tmp_path / "cut" / "epochs").iterdir())
        assert kept == ["004", "005"] == sorted(p.name for p in (tmp_path / "whole" / "epochs").iterdir())
        for name in kept:
            assert (tmp_path / "cut" / "epochs" / name / "model.safetensors").read_bytes() == (
                tmp_path / "whole" / "epochs" / name / "model.safetensors").read_bytes()


def test_resume_needs_a_state_and_refuses_changed_data(wordy_shapes, tmp_path, capsys):
    assert main([*_args(wordy_shapes, tmp_path / "none"), "--resume"]) == 1
    assert "no training_state.pt" in capsys.readouterr().err
    args = _args(wordy_shapes, tmp_path / "run")
    args[args.index("--epochs") + 1] = "1"
    assert main(args) == 0
    assert main(args) == 1  # an earlier run is never overwritten silently
    assert "--resume" in capsys.readouterr().err
    assert main([*args, "--resume", "--min-count", "200"]) == 1  # another vocabulary: not the same run
    assert "min_count=1 (now 200)" in capsys.readouterr().err


def test_resume_with_other_settings_names_each_and_loads_nothing(wordy_shapes, tmp_path, capsys):
    """A run started with other options (or with an older version's defaults) is not resumed with today's: the
    error names the settings, before any weight is loaded into a model of another shape."""
    args = _args(wordy_shapes, tmp_path / "run")
    args[args.index("--epochs") + 1] = "1"
    assert main(args) == 0
    capsys.readouterr()
    changed = [*args, "--resume", "--lr", "0.05", "--hidden-dim", "64"]
    assert main(changed) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]  # after the run's one-line plan
    assert err.startswith("error:") and "Traceback" not in err
    assert "lr=0.001 (now 0.05)" in err and "hidden_dim=256 (now 64)" in err and "train_config.json" in err
    assert main([*args, "--resume", "--save-every", "0", "--threads", "1"]) == 0  # where and how: may change
