"""Broken annotation files: each refused with one line naming the file and the entry (or, for overlong captions,
cut with a warning; for empty ones, left out with a warning), through ``captioner data check``, ``train`` and
``evaluate``."""

import json

import pytest
from badfiles import photo

from captioner.cli import main

IMAGES = [{"id": 1, "file_name": "a.jpg"}, {"id": 2, "file_name": "b.jpg"}]
ANNOTATIONS = [{"id": 10, "image_id": 1, "caption": "a photo of a thing"},
               {"id": 11, "image_id": 2, "caption": "another photo of a thing"}]


def _coco(images=IMAGES, annotations=ANNOTATIONS) -> str:
    return json.dumps({"images": images, "annotations": annotations})


CASES = {  # name: (file text, what the error line must say)
    "invalid_json": ('{"images": [', "not valid JSON (line 1, column 13"),
    "missing_annotations": (json.dumps({"images": IMAGES}), "COCO captions need 'images' and 'annotations'"),
    "missing_file_name": (_coco([{"id": 1}]), "images[0]: needs 'id' and 'file_name'"),
    "wrong_name_type": (_coco([{"id": 1, "file_name": 5}]), "images[0] (id 1): image name must be a non-empty string"),
    "caption_not_text": (_coco(annotations=[{"id": 10, "image_id": 1, "caption": 42}]),
                         "annotations[0] (id 10): caption must be a string, got int 42"),
    "duplicate_image_id": (_coco(IMAGES + [{"id": 1, "file_name": "b.jpg"}]), "images[2]: duplicate image id 1"),
    "escapes_images_dir": (_coco([{"id": 1, "file_name": "../secret.jpg"}], ANNOTATIONS[:1]),
                           "'../secret.jpg' must be a relative path inside the images directory"),
    "absolute_path": (_coco([{"id": 1, "file_name": "/etc/passwd"}], ANNOTATIONS[:1]),
                      "'/etc/passwd' must be a relative path inside the images directory"),
}


@pytest.fixture
def images_dir(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for name in ("a.jpg", "b.jpg"):
        photo().save(images / name)
    return images


@pytest.mark.parametrize("case", sorted(CASES))
def test_broken_annotations_are_one_line_naming_file_and_entry(case, tmp_path, images_dir, capsys):
    """``train`` and ``evaluate`` stop on one line naming the first bad entry; ``data check`` lists every problem,
    one ``error:`` line each (a second one here is a real second problem, e.g. a caption of an image not listed)."""
    text, message = CASES[case]
    path = tmp_path / f"{case}.json"
    path.write_text(text)
    for argv in (["data", "check", str(path), "--images", str(images_dir)],
                 ["train", "--data", str(path), "--images", str(images_dir), "--out", str(tmp_path / "run"),
                  "--train-split", "all", "--val-split", "none"],
                 ["evaluate", "--data", str(path), "--images", str(images_dir), "--split", "all"]):
        assert main(argv) == 1, argv
        err = capsys.readouterr().err.strip()
        lines = [line for line in err.splitlines() if argv[0] != "data" or not line.startswith("warning: ")]
        assert lines and all(line.startswith("error: ") for line in lines) and "Traceback" not in err, err
        assert argv[0] == "data" or len(lines) == 1, err
        assert str(path) in lines[0] and message in lines[0], err
    assert not (tmp_path / "run" / "model").exists()


def test_empty_captions_are_reported_and_skipped(tmp_path, images_dir, capsys, caplog):
    from captioner.data import load_dataset

    path = tmp_path / "empty.json"
    path.write_text(_coco(annotations=ANNOTATIONS + [{"id": 12, "image_id": 1, "caption": "   "}]))
    assert main(["data", "check", str(path), "--images", str(images_dir)]) == 1
    captured = capsys.readouterr()
    assert "1 error(s)" in captured.out
    assert f"error: {path}: annotations[2] (id 12): empty caption" in captured.err.splitlines()
    data = load_dataset(path, "all", images=images_dir)  # what train and evaluate read: left out, with a warning
    assert [len(item.captions) for item in data] == [1, 1]
    assert f"{path}: annotations[2] (id 12): empty caption (left out)" in caplog.text


def test_a_10000_word_caption_is_cut_with_a_warning(tmp_path, images_dir, capsys, caplog):
    path = tmp_path / "long.json"
    path.write_text(_coco(annotations=ANNOTATIONS + [{"id": 12, "image_id": 1, "caption": "word " * 10_000}]))
    assert main(["data", "check", str(path), "--images", str(images_dir), "--json"]) == 0
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    warning = f"{path}: annotations[2] (id 12): a caption of 10,000 words; cut to the first 100"
    assert report["warnings"] == [warning] and f"warning: {warning}" in captured.err
    assert report["splits"]["all"]["caption_length"]["max"] == 100
    code = main(["train", "--data", str(path), "--images", str(images_dir), "--out", str(tmp_path / "run"),
                 "--train-split", "all", "--val-split", "none", "--epochs", "1", "--embed-dim", "8",
                 "--hidden-dim", "8", "--image-proj-dim", "8", "--cache-dir", str(tmp_path / "cache")])
    assert code == 0
    assert warning in caplog.text  # training says it too
