import csv
import json

import pytest
from PIL import Image

from captioner.cli import main
from captioner.pipeline import Captioner


def test_train_dry_run_on_20_flickr8k_images(flickr_mini, tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["train", "--data", str(flickr_mini), "--out", str(out), "--dry-run", "--min-count", "1"])
    assert code == 0, capsys.readouterr().err
    assert "best model:" in capsys.readouterr().out
    for name in ["train_config.json", "model_config.json", "log.csv", "summary.json", "model/model.safetensors"]:
        assert (out / name).is_file(), name
    rows = list(csv.DictReader((out / "log.csv").open()))
    assert rows[0]["loss"] and rows[-1]["val_bleu4"] != "" and rows[-1]["val_loss"] != ""
    model = Captioner.from_pretrained(out / "model")
    assert model.config.vocab_size == len(model.vocab) > 4
    card = (out / "model" / "README.md").read_text()
    assert "captioner train --data" in card or "train" in card


def test_same_seed_same_weights(shapes_dataset, tmp_path):
    from conftest import tiny_config

    from captioner.training.config import TrainConfig
    from captioner.training.loop import train

    blobs = []
    for run in ("a", "b"):
        cfg = TrainConfig(data=str(shapes_dataset), out=str(tmp_path / run), epochs=2, batch_size=8, min_count=1,
                          seed=7)
        result = train(cfg, tiny_config(4, dropout=0.3))
        blobs.append((result.model_dir / "model.safetensors").read_bytes())
        history = result.history
    assert blobs[0] == blobs[1]
    assert len(history) == 2 and history[-1]["val_loss"] > 0


def test_gradient_clipping_is_applied(shapes_dataset, tmp_path):
    from conftest import tiny_config

    from captioner.training.config import TrainConfig
    from captioner.training.loop import train

    cfg = TrainConfig(data=str(shapes_dataset), out=str(tmp_path / "r"), epochs=1, batch_size=8, min_count=1,
                      clip_norm=1e-3, lr=1.0, val_split=None)
    result = train(cfg, tiny_config(4))
    rows = list(csv.DictReader((tmp_path / "r" / "log.csv").open()))
    assert result.history and all(r["loss"] for r in rows)
    # lr 1.0 with the update bounded by a clipped gradient keeps the loss finite (no blow-up)
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert summary["best"]["loss"] < 10


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--data", "{missing}", "--out", "{out}"], "no such file or directory"),
        (["--data", "{data}", "--out", "{file}"], "is not a directory"),
        (["--data", "{data}", "--out", "{out}", "--val-split", "test"], "no such split"),
        (["--data", "{data}", "--out", "{out}", "--encoder", "resnet5O"], "did you mean resnet50"),
        (["--data", "{data}", "--out", "{out}", "--epochs", "0"], "nothing to train"),
        (["--data", "{data}", "--out", "{out}", "--epochs", "-1"], "at least 0"),
        (["--data", "{data}", "--out", "{out}", "--pooling", "max"], "invalid choice: 'max'"),
        (["--data", "{data}", "--out", "{earlier}"], "already holds an earlier run"),
        (["--data", "{data}", "--out", "{out}", "--precision", "fp16"], "on the CPU use --precision bf16"),
        (["--data", "{data}", "--out", "{out}", "--precision", "fp8"], "invalid choice: 'fp8'"),
    ],
)
def test_bad_train_arguments_give_one_error_line(shapes_dataset, tmp_path, capsys, argv, message):
    (tmp_path / "afile").write_text("x")
    (tmp_path / "earlier" / "model").mkdir(parents=True)
    (tmp_path / "earlier" / "model" / "config.json").write_text("{}")
    values = {"missing": tmp_path / "nope", "out": tmp_path / "o", "data": shapes_dataset, "file": tmp_path / "afile",
              "earlier": tmp_path / "earlier"}
    code = main(["train", *[a.format(**values) for a in argv], "--dry-run"])
    err = capsys.readouterr().err.strip()
    assert code != 0 and message in err and err.startswith("error:") and "Traceback" not in err
    assert len(err.splitlines()) == 1, err
    assert (tmp_path / "earlier" / "model" / "config.json").read_text() == "{}"  # nothing of an earlier run lost


def test_unreadable_training_images_are_skipped_or_stop_the_run(shapes_dataset, tmp_path, capsys, caplog):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(shapes_dataset, data)
    bad = data / "images" / (data / "splits" / "train.txt").read_text().split()[0]
    bad.write_bytes(b"\xff\xd8 truncated")
    base = ["train", "--data", str(data), "--dry-run", "--min-count", "1"]
    assert main([*base, "--out", str(tmp_path / "stop"), "--on-bad-image", "error"]) == 1
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]  # the rest is tqdm progress
    assert len(errors) == 1 and "1 of 16 image(s) unreadable" in errors[0] and bad.name in errors[0]
    assert "Traceback" not in err
    assert main([*base, "--out", str(tmp_path / "skip")]) == 0
    assert "1 of 16 image(s) unreadable" in caplog.text and "skipped" in caplog.text


def test_holdout_validates_on_training_images_only(shapes_dataset, tmp_path):
    from captioner.data import load_dataset
    from captioner.training.splits import hold_out

    data = load_dataset(shapes_dataset, "train")
    rest, held = hold_out(data, 10, seed=3)
    assert len(held) == 10 and len(rest) == len(data) - 10
    assert not {i.name for i in held} & {i.name for i in rest}
    assert [i.name for i in hold_out(data, 10, seed=3)[1]] == [i.name for i in held]
    with pytest.raises(ValueError, match="hold out fewer"):
        hold_out(data, len(data), seed=0)
    assert main(["train", "--data", str(shapes_dataset), "--out", str(tmp_path / "r"), "--holdout", "6",
                 "--dry-run", "--min-count", "1", "--label-smoothing", "0.1"]) == 0
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert summary["train_config"]["holdout"] == 6 and summary["history"][0]["val_loss"] > 0


def test_holdout_needs_no_validation_split(shapes_dataset, tmp_path, capsys):
    """A data set with a training split only trains with --holdout (its validation images come from training)."""
    import shutil

    data = tmp_path / "train_only"
    shutil.copytree(shapes_dataset, data)
    (data / "splits" / "val.txt").unlink()
    args = ["train", "--data", str(data), "--dry-run", "--min-count", "1"]
    assert main([*args, "--out", str(tmp_path / "none")]) != 0  # no validation split and nothing held out
    assert "--holdout N" in capsys.readouterr().err  # the error says what to do
    assert main([*args, "--out", str(tmp_path / "held"), "--holdout", "6"]) == 0
    summary = json.loads((tmp_path / "held" / "summary.json").read_text())
    assert summary["history"][0]["val_loss"] > 0


def test_image_batches_hold_whole_images_and_every_caption_once():
    import torch

    from captioner.data.batching import image_batches

    image_index = [i // 5 for i in range(5 * 40)] + [40, 41, 41]  # 40 images with 5 captions, two with fewer
    batches = image_batches(image_index, 12, torch.Generator().manual_seed(0))
    flat = [c for b in batches for c in b]
    assert sorted(flat) == list(range(len(image_index)))  # every caption exactly once
    for batch in batches[:-1]:
        images = {image_index[c] for c in batch}
        assert len(batch) >= 12 and all(sum(image_index[c] == i for c in batch) == image_index.count(i) for i in images)
    again = image_batches(image_index, 12, torch.Generator().manual_seed(0))
    other = image_batches(image_index, 12, torch.Generator().manual_seed(1))
    assert again == batches and other != batches


def test_attention_training_dry_run_keeps_the_last_epochs(flickr_mini, tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["train", "--data", str(flickr_mini), "--out", str(out), "--dry-run", "--min-count", "1",
                 "--encoder", "efficientnet_lite0", "--inject", "attention", "--batch-by-image", "--attention-reg",
                 "0.5", "--keep-epochs", "1", "--scst-epochs", "1", "--hidden-dim", "32", "--attention-dim", "16"])
    assert code == 0, capsys.readouterr().err
    model = Captioner.from_pretrained(out / "model")
    assert model.config.inject == "attention" and model.config.feature_locations == 49  # lite0: 7x7 at 224 px
    assert sorted(p.name for p in (out / "epochs").iterdir()) == ["002"]  # the last epoch only
    kept = Captioner.from_pretrained(out / "epochs" / "002")
    assert kept.config == model.config


def test_attention_options_need_an_attention_model(flickr_mini, tmp_path, capsys):
    code = main(["train", "--data", str(flickr_mini), "--out", str(tmp_path / "r"), "--dry-run", "--inject",
                 "every_step", "--attention-reg", "1"])
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1 and "--inject attention" in err


def test_image_size_sees_the_whole_image_and_is_recorded(shapes_dataset, tmp_path, capsys):
    from captioner.features import encoder_cache_key
    from captioner.models.encoders import get_spec

    out = tmp_path / "run"
    assert main(["train", "--data", str(shapes_dataset), "--out", str(out), "--dry-run", "--min-count", "1",
                 "--inject", "attention", "--image-size", "160"]) == 0
    config = json.loads((out / "model" / "config.json").read_text())
    assert config["preprocess"]["resize"] == config["preprocess"]["crop"] == 160
    assert config["feature_locations"] == 25  # 160 / 32 = 5: a 5 x 5 map
    model = Captioner.from_pretrained(out / "model")
    assert model.transform(Image.new("RGB", (300, 200))).shape == (3, 160, 160)  # captioning preprocesses alike
    default = Captioner.from_pretrained(out / "model")
    default.config.preprocess = get_spec(model.config.encoder).preprocess  # what train gives without --image-size
    assert encoder_cache_key(model) != encoder_cache_key(default)  # its features are cached apart
    capsys.readouterr()  # the training run's plan and epoch lines
    code = main(["finetune", "--from", str(out / "model"), "--data", str(shapes_dataset), "--out", str(tmp_path / "f"),
                 "--image-size", "200"])
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1 and "--image-size does not apply to fine-tuning" in err
