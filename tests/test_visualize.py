import csv
import json
from pathlib import Path

import pytest
import torch
from conftest import tiny_config, write_log
from PIL import Image

from captioner.cli.main import main
from captioner.generation import GenerationConfig
from captioner.inspection.visualize import image_sensitivity, pick_cells, trace
from captioner.models.factory import complete_config
from captioner.pipeline import Captioner

SAMPLE = Path(__file__).resolve().parents[1] / "data" / "samples" / "coffee.jpg"
pytest.importorskip("matplotlib")


def _model(vocab, **overrides):
    torch.manual_seed(0)
    config = complete_config(tiny_config(len(vocab), **overrides), len(vocab))
    return Captioner(config, vocab).eval()


@pytest.mark.parametrize("inject", ["every_step", "init_only", "attention"])
def test_trace_follows_the_greedy_search_exactly(vocab, inject):
    model = _model(vocab, inject=inject, attention_dim=8)
    features = torch.randn(1, *model.config.feature_shape())
    best = model.caption_features(features, GenerationConfig(method="greedy", max_length=8, no_repeat_ngram=0))[0][0]
    inputs = [vocab.start_id] + best.tokens
    outputs = best.tokens + ([vocab.end_id] if best.finished else [])
    got = trace(model, features, inputs[: len(outputs)])
    assert got.log_probs.argmax(dim=1).tolist() == outputs  # each step's argmax is the token greedy chose
    assert got.hidden.shape == (len(outputs), model.config.hidden_dim)
    assert (got.attention is not None) == (inject == "attention")
    if got.attention is not None:
        assert torch.allclose(got.attention.sum(dim=1), torch.ones(len(outputs)), atol=1e-5)


def test_sensitivity_is_zero_against_the_same_image_and_cells_are_picked_by_kind(vocab):
    model = _model(vocab)
    features = torch.randn(1, *model.config.feature_shape())
    inputs = [vocab.start_id, 5, 6, 7]
    same, other = trace(model, features, inputs), trace(model, torch.zeros_like(features), inputs)
    assert image_sensitivity(same, same)["tv"].abs().max() < 1e-6
    tv = image_sensitivity(same, other)["tv"]
    assert tv.shape == (4,) and ((tv > 0) & (tv <= 1)).all()
    cells = pick_cells(same, other, count=5)
    assert [c["why"] for c in cells] == ["active"] * 5 + ["image"] * 5
    assert len({c["cell"] for c in cells}) == 10
    assert [c["why"] for c in pick_cells(same, None, count=5)] == ["active"] * 5


@pytest.mark.parametrize("inject", ["every_step", "attention"])
def test_cli_writes_the_page_figures_and_numbers(vocab, tmp_path, capsys, inject):
    model = _model(vocab, inject=inject, attention_dim=8)
    model.image_mean = torch.zeros(model.config.feature_shape())
    model.save_pretrained(tmp_path / "m")
    out = tmp_path / "viz"
    assert main(["visualize", str(SAMPLE), "--model", str(tmp_path / "m"), "--out", str(out), "--cells", "4",
                 "--beam-size", "2", "--max-length", "6", "--json"]) == 0
    facts = json.loads(capsys.readouterr().out)
    words = [s["word"] for s in facts["steps"]]
    assert 1 <= len(words) <= 6 and len(facts["cells"]) == 8
    assert all(len(c["hidden"]) == len(words) for c in facts["cells"])
    assert all(len(s["top5"]) == 5 and 0 <= s["sensitivity_tv"] <= 1 for s in facts["steps"])
    expected = {"index.html", "visualization.json", "photo.png", "cells.png", "sensitivity.png"}
    if inject == "attention":
        expected.add("attention.png")
        assert all(len(s["attention"]) == model.config.feature_locations for s in facts["steps"])
    assert {p.name for p in out.iterdir()} == expected
    for name in expected - {"index.html", "visualization.json"}:
        with Image.open(out / name) as image:
            assert image.width > 100 and image.height > 100
    page = (out / "index.html").read_text()
    assert facts["caption"].split()[0] in page and page.count('<tr><th>cell') == 8


def test_cli_without_an_image_mean_still_draws_the_rest(tiny_model, tmp_path, capsys):
    tiny_model.save_pretrained(tmp_path / "m")
    out = tmp_path / "viz"
    assert main(["visualize", str(SAMPLE), "--model", str(tmp_path / "m"), "--out", str(out),
                 "--max-length", "4"]) == 0
    assert not (out / "sensitivity.png").exists() and (out / "cells.png").is_file()
    assert "--reference" in (out / "index.html").read_text()
    reference = tmp_path / "ref"
    reference.mkdir()
    (reference / "a.jpg").write_bytes(SAMPLE.read_bytes())
    assert main(["visualize", str(SAMPLE), "--model", str(tmp_path / "m"), "--out", str(out), "--overwrite",
                 "--reference", str(reference), "--max-length", "4"]) == 0
    assert (out / "sensitivity.png").is_file()  # the reference's mean is the photo itself here: zero sensitivity
    assert max(s["sensitivity_tv"] for s in json.loads((out / "visualization.json").read_text())["steps"]) < 1e-5


def test_cli_bad_inputs_are_one_error_line(tiny_model, tmp_path, capsys):
    tiny_model.save_pretrained(tmp_path / "m")
    (tmp_path / "bad.jpg").write_text("not an image")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("keep me")
    cases = [["visualize", str(tmp_path / "bad.jpg"), "--model", str(tmp_path / "m"), "--out", str(tmp_path / "o")],
             ["visualize", str(SAMPLE), "--model", str(tmp_path / "m"), "--out", str(tmp_path / "busy")],
             ["visualize", str(SAMPLE), "--model", str(tmp_path / "none"), "--out", str(tmp_path / "o2")],
             ["visualize", str(SAMPLE), "--model", str(tmp_path / "m"), "--out", str(tmp_path / "o3"),
              "--reference", str(tmp_path / "busy")]]
    for argv in cases:
        assert main(argv) == 1
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1, err
    assert (tmp_path / "busy" / "notes.txt").read_text() == "keep me"


def test_image_mean_is_saved_loaded_and_a_wrong_one_ignored(tiny_model, tmp_path, caplog):
    from safetensors.torch import save_file

    tiny_model.image_mean = torch.arange(tiny_model.config.encoder_dim, dtype=torch.float32)
    tiny_model.save_pretrained(tmp_path / "m")
    assert torch.equal(Captioner.from_pretrained(tmp_path / "m").image_mean, tiny_model.image_mean)
    save_file({"mean": torch.zeros(3)}, str(tmp_path / "m" / "image_mean.safetensors"))
    assert Captioner.from_pretrained(tmp_path / "m").image_mean is None
    assert "ignoring" in caplog.text
    assert Captioner.from_pretrained("default").image_mean.shape == (81, 1280)


def _write_log(run: Path, rows: list[dict]) -> None:
    write_log(run, rows)
    (run / "train_config.json").write_text(json.dumps({"clip_norm": 5.0}))


def test_plot_writes_three_pngs_from_a_log(tmp_path, capsys):
    rows = [{"step": s, "epoch": 1 + s // 100, "loss": 5 - s / 100, "grad_norm": 1 + s / 300, "lr": 1e-3}
            for s in range(10, 300, 10)]
    rows += [{"step": s, "epoch": s // 100, "val_loss": 4 - s / 200, "val_bleu4": s / 1000, "val_cider": s / 500}
             for s in (100, 200, 300)]
    _write_log(tmp_path / "run", rows)
    assert main(["plot", str(tmp_path / "run"), "--json"]) == 0
    written = [Path(p) for p in json.loads(capsys.readouterr().out)]
    assert [p.name for p in written] == ["loss.png", "validation.png", "grad_norm.png"]
    for path in written:
        with Image.open(path) as image:
            assert image.size == (960, 540)


def test_plot_refuses_runs_it_cannot_read(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    _write_log(tmp_path / "fresh", [])
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "log.csv").write_text("a,b\n1,2\n")
    for run in ("missing", "empty", "fresh", "junk"):
        assert main(["plot", str(tmp_path / run)]) == 1
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1, err


def test_train_tensorboard_logs_the_csv_rows(shapes_dataset, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    assert main(["train", "--data", str(shapes_dataset), "--out", str(out), "--epochs", "2", "--batch-size", "8",
                 "--embed-dim", "8", "--hidden-dim", "8", "--image-proj-dim", "8", "--log-every", "1",
                 "--tensorboard", "--cache-dir", str(tmp_path / "cache")]) == 0
    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/loss", "train/epoch_mean_loss", "train/grad_norm_before_clipping", "val/loss",
            "val/cider_d_greedy"} <= tags
    with open(out / "log.csv") as handle:
        logged = [r for r in csv.DictReader(handle) if r["loss"]]
    steps = [r for r in logged if not r["elapsed_s"]]  # the per-step line holds steps only, no epoch means
    assert [e.step for e in events.Scalars("train/loss")] == [int(r["step"]) for r in steps]
    epochs = [r for r in logged if r["elapsed_s"]]
    assert [e.value for e in events.Scalars("train/epoch_mean_loss")] == pytest.approx(
        [float(r["loss"]) for r in epochs], abs=1e-4)  # the CSV keeps 6 digits
    assert (out / "model" / "image_mean.safetensors").is_file()
