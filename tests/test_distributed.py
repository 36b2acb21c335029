"""Distributed data-parallel training: torchrun with 2 CPU processes (gloo) follows the 1-process run."""

import csv
import os
import subprocess
import sys

import pytest
from safetensors.torch import load_file

from captioner.cli import main

TINY = ["--embed-dim", "16", "--image-proj-dim", "12", "--hidden-dim", "24", "--dropout", "0", "--min-count", "1",
        "--epochs", "2", "--batch-size", "8", "--log-every", "1", "--seed", "5", "--lr", "3e-3"]


def _log(out):
    with open(out / "log.csv", newline="") as handle:
        return list(csv.DictReader(handle))


NEW_SPELLING = ["-m", "captioner", "train"]  # torchrun ... -m captioner train
OLD_SPELLING = ["-m", "captioner.train"]  # the earlier spelling, kept working by a shim


def _torchrun(args, tmp_path, nproc=2, module=NEW_SPELLING):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
           *module, *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)


@pytest.mark.slow
@pytest.mark.parametrize("inject, data", [("every_step", "shapes_dataset"), ("attention", "flickr_mini")])
def test_two_gloo_processes_follow_the_one_process_loss_curve(request, tmp_path, capsys, inject, data):
    """The processes' shares of a batch hold different numbers of words (Flickr8k captions), so this also checks
    that each share's loss is weighted by its words, not averaged per process."""
    cache = tmp_path / "cache"  # empty: the 2-process job builds it (rank 0 first), the 1-process run reuses it
    data = request.getfixturevalue(data)
    common = ["--data", str(data), "--cache-dir", str(cache), "--inject", inject, "--threads", "1", *TINY]
    done = _torchrun([*common, "--out", str(tmp_path / "ddp")], tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("best model:") == 1  # rank 0 speaks for the job
    assert main(["train", *common, "--out", str(tmp_path / "one")]) == 0, capsys.readouterr().err

    one, ddp = _log(tmp_path / "one"), _log(tmp_path / "ddp")
    assert len(one) == len(ddp) > 10  # rank 0 alone wrote the log: no duplicated rows
    steps = [(float(a["loss"]), float(b["loss"])) for a, b in zip(one, ddp) if a["grad_norm"]]
    assert len(steps) >= 10 and all(abs(a - b) < 1e-3 * max(a, 1.0) for a, b in steps), steps
    vals = [(float(a["val_loss"]), float(b["val_loss"])) for a, b in zip(one, ddp) if a["val_loss"]]
    assert len(vals) == 2 and all(abs(a - b) < 1e-3 for a, b in vals), vals
    w1 = load_file(str(tmp_path / "one" / "model" / "model.safetensors"))
    w2 = load_file(str(tmp_path / "ddp" / "model" / "model.safetensors"))
    assert w1.keys() == w2.keys() and all((w1[k] - w2[k]).abs().max() < 1e-3 for k in w1)


@pytest.mark.parametrize("module", [NEW_SPELLING, OLD_SPELLING], ids=["captioner-train", "captioner.train"])
def test_distributed_self_critical_training_is_refused(shapes_dataset, tmp_path, module):
    done = _torchrun(["--data", str(shapes_dataset), "--out", str(tmp_path / "r"), "--scst-epochs", "1",
                      "--cache-dir", str(tmp_path / "cache"), *TINY], tmp_path, module=module)
    assert done.returncode != 0
    # each process says it in one line, but torchrun stops the other rank once the first has exited, so on a busy
    # machine only one line may come; the traceback torchrun prints afterwards is the launcher's own, not ours
    assert done.stderr.count("error: distributed training (torchrun) covers") in (1, 2)
    assert "captioner/train.py" not in done.stderr and "captioner/cli" not in done.stderr
