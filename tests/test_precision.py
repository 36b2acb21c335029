"""Mixed-precision training: bf16 autocast on the CPU trains like fp32; the precision/device rules."""

import csv

import pytest
import torch
from conftest import tiny_config

from captioner.training.config import TrainConfig
from captioner.training.loop import train
from captioner.training.state import autocast_dtype, grad_scaler


def _losses(out) -> list[float]:
    with open(out / "log.csv", newline="") as handle:
        return [float(r["loss"]) for r in csv.DictReader(handle) if r["grad_norm"]]


@pytest.mark.parametrize("inject", ["every_step", "attention"])
def test_bf16_on_the_cpu_follows_the_fp32_loss_curve(shapes_dataset, tmp_path, inject):
    curves = {}
    for precision in ("fp32", "bf16"):
        cfg = TrainConfig(data=str(shapes_dataset), out=str(tmp_path / precision), epochs=2, batch_size=8,
                          min_count=1, seed=3, log_every=1, val_split=None, precision=precision)
        train(cfg, tiny_config(4, inject=inject))
        curves[precision] = torch.tensor(_losses(tmp_path / precision))
    fp32, bf16 = curves["fp32"], curves["bf16"]
    assert len(fp32) == len(bf16) > 4 and torch.isfinite(bf16).all()
    assert not torch.equal(fp32, bf16)  # the forward really ran in bf16
    assert (fp32 - bf16).abs().max() < 0.05 * fp32.max()  # bf16's 8-bit mantissa: close, not equal
    assert bf16[-1] < bf16[0]  # and it learns


def test_precision_rules():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert autocast_dtype("auto", cpu) is None and autocast_dtype("fp32", cuda) is None
    assert autocast_dtype("auto", cuda) == torch.float16 and autocast_dtype("bf16", cpu) == torch.bfloat16
    with pytest.raises(ValueError, match="use --precision bf16"):
        autocast_dtype("fp16", cpu)
    assert not grad_scaler(torch.bfloat16, cpu).is_enabled()
    with pytest.raises(ValueError, match="precision must be one of"):
        TrainConfig(precision="half")
    with pytest.raises(ValueError, match="device must be one of"):
        TrainConfig(device="tpu")
