import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import SAMPLES
from PIL import Image

from captioner.cli import main


@pytest.fixture
def model_dir(tiny_model, tmp_path):
    tiny_model.save_pretrained(tmp_path / "model")
    return tmp_path / "model"


@pytest.fixture
def images(tmp_path):
    root = tmp_path / "imgs"
    (root / "sub").mkdir(parents=True)
    Image.new("RGB", (80, 60), (200, 10, 10)).save(root / "red.jpg")
    Image.new("RGBA", (50, 50), (0, 0, 255, 128)).save(root / "sub" / "blue.png")
    (root / "notes.txt").write_text("not an image, ignored in directories")
    return root


def test_caption_files_and_directories(model_dir, images, capsys):
    code = main(["caption", str(images), "--model", str(model_dir), "--beam-size", "2"])
    out = capsys.readouterr().out.strip().splitlines()
    assert code == 0
    assert [line.split("\t")[0] for line in out] == [str(images / "red.jpg"), str(images / "sub" / "blue.png")]
    assert all(len(line.split("\t")) == 2 for line in out)


def test_caption_json_lines(model_dir, images, capsys):
    assert main(["caption", str(images / "red.jpg"), "--model", str(model_dir), "--json"]) == 0
    row = json.loads(capsys.readouterr().out)
    assert set(row) == {"image", "caption", "log_prob", "confidence", "needs_review"} and row["log_prob"] <= 0
    assert row["confidence"] is None and row["needs_review"] is False  # a model without a confidence model


def test_bad_images_are_reported_and_the_rest_captioned(model_dir, images, tmp_path, capsys):
    (images / "empty.jpg").write_bytes(b"")
    (images / "fake.jpg").write_text("hello")
    code = main(["caption", str(images), str(tmp_path / "missing.jpg"), "--model", str(model_dir),
                 "--batch-size", "1"])
    captured = capsys.readouterr()
    assert code == 1
    assert len(captured.out.strip().splitlines()) == 2  # red.jpg and sub/blue.png still captioned
    errors = captured.err.strip().splitlines()
    assert sorted(e.split(": ")[1] for e in errors) == sorted(
        [str(images / "empty.jpg"), str(images / "fake.jpg"), str(tmp_path / "missing.jpg")])
    assert all(e.startswith("error: ") for e in errors) and "Traceback" not in captured.err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["caption", "x.jpg", "--beam-size", "0"], "at least 1"),
        (["caption", "x.jpg", "--model", "/nonexistent/model"], "not a captioner model directory"),
        (["caption", "x.jpg", "--device", "tpu"], "invalid choice"),
        (["caption", "x.jpg", "--no-repeat-ngram", "1"], "at least 2, got 1"),
        (["evaluate", "--data", "x", "--no-repeat-ngram", "-2"], "at least 0"),
        (["evaluate", "--data", "/nonexistent"], "no such file"),
        (["evaluate", "--data", "/nonexistent", "--out", "/no/such/dir/r.json"], "does not exist"),
        (["frobnicate"], "invalid choice"),
    ],
)
def test_bad_arguments_give_one_error_line(argv, message, capsys):
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code != 0 and message in err and err.startswith("error:") and len(err.splitlines()) == 1, err


def test_corrupt_model_directory(tmp_path, model_dir, capsys):
    shutil.copytree(model_dir, tmp_path / "broken")
    (tmp_path / "broken" / "config.json").write_text("{not json")
    assert main(["caption", str(SAMPLES), "--model", str(tmp_path / "broken")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: cannot load model") and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("command", ["caption", "train", "evaluate"])
def test_help_explains_every_option(command, capsys):
    assert main([command, "--help"]) == 0
    assert "--model" in capsys.readouterr().out or command == "train"


def test_console_script_captions_samples_with_the_default_model():
    exe = Path(sys.executable).parent / "captioner"
    if not exe.exists():
        pytest.skip("console script not installed (run pip install -e .)")
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    proc = subprocess.run([str(exe), "caption", str(SAMPLES)], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    photos = sorted(p for p in SAMPLES.iterdir() if p.suffix == ".jpg")
    assert [Path(line.split("\t")[0]).name for line in lines] == [p.name for p in photos]
    assert all(line.split("\t")[1].strip() for line in lines)
    # the default model's repetition guard (its config's no_repeat_ngram): no caption repeats a pair of words
    for line in lines:
        words = line.split("\t")[1].split()
        assert len(set(zip(words, words[1:]))) == len(words) - 1, line
