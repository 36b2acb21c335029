"""captioner data check / convert."""

import json
import os

from conftest import make_caption_folder
from PIL import Image

from captioner.cli import main
from captioner.data import load_dataset


def _dataset(tmp_path):
    root = make_caption_folder(
        tmp_path / "ds",
        {"a.jpg": ["A dog runs", "a dog runs."], "b.jpg": ["A cat"], "c.jpg": ["...", "A fish"], "d.jpg": ["A bird"]},
        {"train": ["a.jpg", "b.jpg", "c.jpg"], "val": ["d.jpg"]},
    )
    Image.new("RGB", (8, 8)).save(root / "images" / "a.jpg")
    Image.new("RGB", (8, 8)).save(root / "images" / "b.jpg")
    (root / "images" / "c.jpg").write_text("not an image")
    return root  # d.jpg is missing


def test_check_reports_counts_and_errors(tmp_path, capsys):
    code = main(["data", "check", str(_dataset(tmp_path)), "--min-count", "1", "--json"])
    report = json.loads(capsys.readouterr().out)
    assert code == 1
    train = report["splits"]["train"]
    assert (train["images"], train["captions"], train["bad_images"], train["empty_captions"],
            train["duplicate_captions"]) == (3, 4, 1, 1, 1)
    assert report["splits"]["val"]["bad_images"] == 1 and report["splits"]["val"]["vocab_coverage"] == 0.5
    errors = " ".join(report["errors"])
    assert "c.jpg: not an image" in errors and "d.jpg: missing file" in errors
    assert f"{tmp_path / 'ds' / 'captions.txt'}:5: empty caption (no words in '...')" in report["errors"]


def test_check_clean_dataset_exits_zero(shared_data, capsys):
    assert main(["data", "check", str(shared_data / "coco_mini")]) == 0
    out = capsys.readouterr().out
    assert "coco format" in out and "0 error(s)" in out


def test_convert_coco_to_folder_links_images(shared_data, tmp_path, capsys):
    src = shared_data / "coco_mini" / "annotations" / "captions_mini.json"
    out = tmp_path / "converted"
    assert main(["data", "convert", str(src), "--to", "folder", str(out), "--copy"]) == 0
    again = load_dataset(out, "all")
    original = load_dataset(src, "all")
    assert [(i.name, i.captions) for i in again] == [(i.name, i.captions) for i in original]
    assert (out / "images" / original.items[0].name).read_bytes() == original.items[0].path.read_bytes()
    assert main(["data", "convert", str(src), str(out)]) == 1  # never overwrites
    assert "already exists" in capsys.readouterr().err


def test_convert_hard_links_and_never_moves(tmp_path):
    root = _dataset(tmp_path)
    (root / "images" / "c.jpg").unlink()
    Image.new("RGB", (8, 8)).save(root / "images" / "c.jpg")
    Image.new("RGB", (8, 8)).save(root / "images" / "d.jpg")
    assert main(["data", "convert", str(root), str(tmp_path / "out")]) == 0
    assert os.stat(tmp_path / "out" / "images" / "a.jpg").st_ino == os.stat(root / "images" / "a.jpg").st_ino
    assert (root / "images" / "a.jpg").exists()
    assert (tmp_path / "out" / "splits" / "val.txt").read_text() == "d.jpg\n"


def test_convert_with_missing_images_writes_nothing(tmp_path, capsys):
    root = _dataset(tmp_path)
    assert main(["data", "convert", str(root), str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert "missing" in err and "nothing was written" in err and not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


def test_features_fills_the_cache_that_training_reads(flickr_mini, tmp_path, capsys, monkeypatch):
    import captioner.features

    cache = tmp_path / "cache"
    args = ["data", "features", str(flickr_mini), "--map", "--cache-dir", str(cache), "--json"]
    assert main(args) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["images"] == 20 and summary["new"] == 20 and not summary["unreadable"]
    assert "map=float16" in summary["key"]
    assert main(args) == 0 and json.loads(capsys.readouterr().out)["new"] == 0  # nothing is encoded twice

    def no_encoding(*_, **__):
        raise AssertionError("training encoded an image the cache should have held")

    monkeypatch.setattr(captioner.features, "encode_files", no_encoding)
    assert main(["train", "--data", str(flickr_mini), "--out", str(tmp_path / "run"), "--dry-run", "--min-count", "1",
                 "--inject", "attention", "--cache-dir", str(cache)]) == 0
    with_vectors = ["train", "--data", str(flickr_mini), "--out", str(tmp_path / "run2"), "--dry-run", "--min-count",
                    "1", "--inject", "every_step", "--cache-dir", str(cache)]
    capsys.readouterr()
    assert main(with_vectors) != 0  # pooled vectors have another cache key: nothing was cached for them
    assert "should have held" in capsys.readouterr().err


def test_features_reports_unreadable_images_and_bad_arguments(tmp_path, capsys):
    root = _dataset(tmp_path)
    Image.new("RGB", (8, 8), "red").save(root / "images" / "b.jpg")  # two distinct readable images
    assert main(["data", "features", str(root), "--splits", "train", "--cache-dir", str(tmp_path / "c")]) == 0
    captured = capsys.readouterr()
    assert "3 images of train: 2 encoded now, 1 unreadable" in captured.out
    assert "c.jpg" in captured.err and "warning:" in captured.err
    assert main(["data", "features", str(root), "--encoder", "no_such_net"]) == 1
    assert capsys.readouterr().err.startswith("error: unknown encoder 'no_such_net'")
    assert main(["data", "features", str(root), "--splits", "nope"]) == 1
    assert "error:" in capsys.readouterr().err
