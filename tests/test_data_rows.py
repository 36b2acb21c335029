"""Every row of every format is used or reported (issue 25, "Data is dropped without a word").

Loaders (what ``train`` and ``evaluate`` read) refuse a malformed entry with one line naming ``file:line`` (or the
JSON entry), and warn about what they leave out; ``captioner data check`` lists every problem with its place and
exits 1 on any error.
"""

import json

import pytest

from captioner.cli import main
from captioner.data import DatasetError, list_splits, load_dataset

NAMES = ("a.jpg", "b.jpg", "c.jpg")


def _images(root):
    (root / "images").mkdir(parents=True, exist_ok=True)
    for name in NAMES:
        (root / "images" / name).write_bytes(b"x")
    return root / "images"


def _table(tmp_path, text, suffix=".csv"):
    _images(tmp_path)
    path = tmp_path / f"caps{suffix}"
    path.write_text(text, encoding="utf-8")
    return path


def _folder(tmp_path, captions, splits):
    root = tmp_path / "ds"
    _images(root)
    (root / "splits").mkdir()
    (root / "captions.txt").write_text(captions, encoding="utf-8")
    for name, text in splits.items():
        (root / "splits" / f"{name}.txt").write_text(text, encoding="utf-8")
    return root


def _check(path, capsys, *extra):
    """``data check`` (files only): exit code, report, stderr lines."""
    code = main(["data", "check", str(path), "--no-verify-images", "--json", *extra])
    captured = capsys.readouterr()
    return code, json.loads(captured.out), captured.err.splitlines()


def test_csv_row_with_an_empty_split_is_an_error(tmp_path, capsys):
    path = _table(tmp_path, "image,caption,split\nimages/a.jpg,a dog runs,train\nimages/b.jpg,a man walks,\n"
                            "images/c.jpg,a cat sleeps,train\n")
    with pytest.raises(DatasetError, match=r"caps.csv:3: empty split \(''\); write the split's name"):
        load_dataset(path, "train")
    code, report, err = _check(path, capsys)
    assert code == 1 and report["error_count"] == 1
    assert any(line.startswith("error: ") and "caps.csv:3: empty split" in line for line in err)


def test_csv_unterminated_quote_is_reported_with_its_line(tmp_path, capsys):
    path = _table(tmp_path, 'image,caption,split\nimages/a.jpg,a dog runs,train\nimages/b.jpg,"a man walks,train\n'
                            "images/c.jpg,a cat sleeps,train\n")
    with pytest.raises(DatasetError, match=r"caps.csv:3: not valid CSV: unexpected end of data \(a quote opened "
                                           r"here is never closed\)"):
        load_dataset(path, "train")
    path.write_text('image,caption,split\nimages/a.jpg,"a dog\nimages/b.jpg,a man walks",train\n')
    with pytest.raises(DatasetError, match=r"caps.csv:2: a quoted field runs from line 2 to line 3"):
        load_dataset(path, "train")
    path.write_text('image,caption\nimages/a.jpg,"a dog" runs\n')
    with pytest.raises(DatasetError, match=r"caps.csv:2: not valid CSV"):
        load_dataset(path, "all")


def test_csv_row_with_an_extra_or_a_missing_column_is_an_error(tmp_path, capsys):
    path = _table(tmp_path, "image,caption,split\nimages/a.jpg,a dog, running,train\nimages/b.jpg,a cat\n"
                            "images/c.jpg,a bird,train\n")
    with pytest.raises(DatasetError, match=r"caps.csv:2: expected 3 fields \(image, caption, split\), found 4 \(a "
                                           r"comma inside the caption\? quote the caption\) \(and 1 more error"):
        load_dataset(path, "train")
    code, report, _ = _check(path, capsys)
    assert code == 1 and [e.split("caps.csv:")[1][:1] for e in report["errors"]] == ["2", "3"]
    assert "found 2" in report["errors"][1]


def test_jsonl_rows_that_cannot_be_used_are_errors_with_their_line(tmp_path, capsys):
    path = _table(tmp_path, '{"image": "images/a.jpg", "caption": "a dog"}\n[1, 2]\n{"image": "images/b.jpg"}\n'
                            '{"image": "images/c.jpg", "caption": "a cat", "split": ""}\n{"image": \n', ".jsonl")
    code, report, _ = _check(path, capsys)
    assert code == 1
    assert [e.split("caps.jsonl:")[1] for e in report["errors"]] == [
        "2: expected an object {\"image\": ..., \"caption\": ...}, got [1, 2]",
        "3: needs 'image' and 'caption' (missing: caption)",
        "4: empty split (''); write the split's name (train, val ...) or leave the split column out of the whole table",
        "5: not valid JSON (Expecting value at column 11)"]
    with pytest.raises(DatasetError, match=r"caps.jsonl:2: expected an object .* \(and 3 more error"):
        load_dataset(path, "all")


def test_unused_columns_and_keys_are_warned_about(tmp_path, capsys):
    path = _table(tmp_path, "image,caption,source\nimages/a.jpg,a dog,web\n")
    assert [i.captions for i in load_dataset(path, "all")] == [["a dog"]]
    code, report, err = _check(path, capsys)
    assert code == 0 and report["warnings"] == [f"{path}:2: column 'source' is not used (known: image, caption, "
                                                "split)"]
    assert f"warning: {path}:2: column 'source' is not used (known: image, caption, split)" in err


def test_split_names_differing_only_in_case_are_an_error_naming_both(tmp_path, capsys):
    path = _table(tmp_path, "image,caption,split\nimages/a.jpg,a dog,train\nimages/b.jpg,a cat,Train\n")
    assert list_splits(path) == ["Train", "train"]
    for split in ("train", "Train"):
        with pytest.raises(DatasetError, match=rf"caps.csv:3: split 'Train' differs from split 'train' \(first at "
                                               rf"{path}:2\) only in case"):
            load_dataset(path, split)
    code, report, _ = _check(path, capsys)
    assert code == 1 and report["error_count"] == 1
    root = _folder(tmp_path, "image\tcaption\na.jpg\ta dog\n", {"train": "a.jpg\n", "Train": "a.jpg\n"})
    with pytest.raises(DatasetError, match="split file 'train' differs from split file 'Train'"):
        load_dataset(root, "train")
    assert len(load_dataset(path.parent / "caps.csv", "all")) == 2  # `all` takes every row, whatever its split


def test_coco_file_with_no_images_is_an_error(tmp_path, capsys):
    path = tmp_path / "captions_x.json"
    _images(tmp_path)
    path.write_text(json.dumps({"images": [], "annotations": []}))
    with pytest.raises(DatasetError, match="'images' is empty: the file lists no image to caption"):
        load_dataset(path, "all", fmt="coco")
    code, report, err = _check(path, capsys, "--format", "coco")
    assert code == 1 and err == [f"error: {path}: 'images' is empty: the file lists no image to caption"]


def test_coco_images_without_captions_are_left_out_with_a_warning(tmp_path, capsys, caplog):
    path = tmp_path / "captions_x.json"
    _images(tmp_path)
    path.write_text(json.dumps({"images": [{"id": 1, "file_name": "a.jpg"}, {"id": 2, "file_name": "b.jpg"}],
                                "annotations": [{"id": 9, "image_id": 1, "caption": "a dog"}]}))
    assert [i.name for i in load_dataset(path, "all")] == ["a.jpg"]
    assert "images[1] (id 2): image 'b.jpg' has no usable caption (no annotation names it); left out" in caplog.text


CAPTIONS = "image\tcaption\na.jpg\ta dog runs\na.jpg no tab here\nb.jpg\t \n../x.jpg\ta cat\nc.jpg\ta\tb\n"


def test_data_check_lists_every_problem_with_its_line_and_loaders_name_the_first(tmp_path, capsys):
    root = _folder(tmp_path, CAPTIONS + "b.jpg\ta cat sleeps\n", {"train": "a.jpg\nb.jpg\nnope.jpg\na.jpg\n"})
    cap, split = root / "captions.txt", root / "splits" / "train.txt"
    code, report, err = _check(root, capsys)
    assert code == 1
    assert report["errors"] == [
        f"{cap}:3: expected 'image<TAB>caption', found no tab",
        f"{cap}:5: image name '../x.jpg' must be a relative path inside the images directory",
        f"{cap}:6: expected 'image<TAB>caption', found 3 tab-separated fields (a tab inside the caption? replace it "
        "with a space)",
        f"{cap}:4: empty caption",
        f"{split}:3: image 'nope.jpg' has no caption in captions.txt; add its captions or remove it from the split",
    ]  # in the order found
    assert report["warnings"] == [f"{split}:4: image 'a.jpg' is listed again (first at {split}:1); used once"]
    assert err == [f"warning: {w}" for w in report["warnings"]] + [f"error: {e}" for e in report["errors"]]
    assert report["splits"]["train"]["empty_captions"] == 1
    with pytest.raises(DatasetError) as info:
        load_dataset(root, "train")
    assert str(info.value) == (f"{cap}:3: expected 'image<TAB>caption', found no tab (and 3 more error(s): "
                               f"`captioner data check {root}` lists them all)")


def test_data_check_caps_the_list_and_counts_the_rest(tmp_path, capsys):
    lines = "".join(f"img{i}.jpg has no tab\n" for i in range(60))
    root = _folder(tmp_path, "image\tcaption\na.jpg\ta dog\n" + lines, {"train": "a.jpg\n"})
    code, report, err = _check(root, capsys)
    assert code == 1 and report["error_count"] == 60 and len(report["errors"]) == 51
    assert report["errors"][-1] == "... and 10 more error(s) (--max-problems 0 lists them all)"
    assert err[-1] == "error: ... and 10 more error(s) (--max-problems 0 lists them all)"
    code, report, _ = _check(root, capsys, "--max-problems", "0")
    assert len(report["errors"]) == 60
    assert main(["data", "check", str(root), "--no-verify-images"]) == 1
    assert capsys.readouterr().out.splitlines()[-1] == "60 error(s), 0 warning(s)"


def test_empty_captions_in_a_text_file_are_errors_for_check_and_left_out_by_loaders(tmp_path, capsys, caplog):
    root = _folder(tmp_path, "image\tcaption\na.jpg\ta dog\na.jpg\t\nb.jpg\t...\n", {"train": "a.jpg\nb.jpg\n"})
    code, report, _ = _check(root, capsys)
    assert code == 1 and report["splits"]["train"]["empty_captions"] == 2
    assert report["errors"] == [f"{root / 'captions.txt'}:3: empty caption",
                                f"{root / 'captions.txt'}:4: empty caption (no words in '...')"]
    data = load_dataset(root, "train")
    assert [(i.name, i.captions) for i in data] == [("a.jpg", ["a dog"])]
    assert f"{root / 'captions.txt'}:3: empty caption (left out)" in caplog.text
    assert f"{root / 'splits' / 'train.txt'}:2: image 'b.jpg': none of its captions is usable; left out" in caplog.text


def test_captions_of_images_in_no_split_are_warned_about(tmp_path, capsys):
    root = _folder(tmp_path, "image\tcaption\na.jpg\ta dog\nb.jpg\ta cat\nb.jpg\ta black cat\n", {"train": "a.jpg\n"})
    code, report, _ = _check(root, capsys)
    assert code == 0 and report["warnings"] == [
        f"{root / 'captions.txt'}:3: image 'b.jpg' is in no split file (splits/*.txt); its 2 caption(s) are not used"]


def test_flickr_token_and_split_files_report_their_bad_lines(tmp_path, capsys):
    text = tmp_path / "Flickr8k_text"
    text.mkdir()
    (text / "Flickr8k.token.txt").write_text("a.jpg#0\ta dog\na.jpg\tno hash\nb.jpg#0\ta cat\nb.jpg#1\t\n")
    (text / "Flickr_8k.trainImages.txt").write_text("a.jpg\nb.jpg\nc.jpg\n")
    (tmp_path / "Flicker8k_Dataset").mkdir()
    for name in NAMES:
        (tmp_path / "Flicker8k_Dataset" / name).write_bytes(b"x")
    token, train = text / "Flickr8k.token.txt", text / "Flickr_8k.trainImages.txt"
    code, report, _ = _check(tmp_path, capsys)
    assert code == 1 and report["errors"] == [
        f"{token}:2: expected 'NAME.jpg#N<TAB>caption', found no '#N' after the name",
        f"{token}:4: empty caption",
        f"{train}:3: image 'c.jpg' has no caption in Flickr8k.token.txt; add its captions or remove it from the split"]
    with pytest.raises(DatasetError, match=r"Flickr8k.token.txt:2: expected"):
        load_dataset(tmp_path, "train")


def test_karpathy_reports_bad_sentences_and_images_in_no_split(tmp_path, capsys):
    entries = [{"filename": "a.jpg", "split": "train", "sentences": [{"raw": "A dog."}, {"raw": ""}]},
               {"filename": "b.jpg", "sentences": [{"raw": "A cat."}]},
               {"filename": "c.jpg", "split": "train", "sentences": [{"text": "A bird."}]}]
    path = tmp_path / "dataset_x.json"
    path.write_text(json.dumps({"images": entries}))
    _images(tmp_path)
    code, report, _ = _check(path, capsys)
    assert code == 1 and report["errors"] == [f"{path}: images[0].sentences[1]: empty caption",
                                              f"{path}: images[2].sentences[0]: needs 'raw' text or a 'tokens' list"]
    assert report["warnings"] == [f"{path}: images[1]: no 'split' (None): in no split, never used; give it one "
                                  "(train, val, test, restval)"]


def test_an_image_in_two_joined_splits_is_used_once_with_a_warning(tmp_path, caplog):
    entries = [{"filename": "a.jpg", "split": "train", "sentences": [{"raw": "A dog."}]},
               {"filename": "a.jpg", "split": "restval", "sentences": [{"raw": "A brown dog."}]}]
    path = tmp_path / "dataset_x.json"
    path.write_text(json.dumps({"images": entries}))
    data = load_dataset(path, "train+restval")
    assert [i.captions for i in data] == [["A dog."]]
    assert "image 'a.jpg' is in split 'restval' too" in caplog.text


@pytest.mark.parametrize("fmt", ["coco", "karpathy"])
def test_json_split_fields_differing_only_in_case_are_an_error(tmp_path, fmt):
    path = tmp_path / "captions_x.json"
    _images(tmp_path)
    if fmt == "coco":
        images = [{"id": 1, "file_name": "a.jpg", "split": "train"}, {"id": 2, "file_name": "b.jpg", "split": "Train"}]
        path.write_text(json.dumps({"images": images, "annotations": [
            {"id": 5, "image_id": 1, "caption": "a dog"}, {"id": 6, "image_id": 2, "caption": "a cat"}]}))
    else:
        path.write_text(json.dumps({"images": [
            {"filename": "a.jpg", "split": "train", "sentences": [{"raw": "a dog"}]},
            {"filename": "b.jpg", "split": "Train", "sentences": [{"raw": "a cat"}]}]}))
    with pytest.raises(DatasetError, match=rf"{path}: images\[1\]: split 'Train' differs from split 'train' \(first "
                                           rf"at {path}: images\[0\]\) only in case"):
        load_dataset(path, "train")


def test_train_and_evaluate_stop_on_one_line_naming_the_row(tmp_path, capsys):
    path = _table(tmp_path, "image,caption,split\nimages/a.jpg,a dog,train\nimages/b.jpg,a cat,train,x\n")
    for argv in (["train", "--data", str(path), "--out", str(tmp_path / "run"), "--train-split", "train",
                  "--val-split", "none"],
                 ["evaluate", "--data", str(path), "--split", "train"]):
        assert main(argv) == 1
        err = capsys.readouterr().err.splitlines()
        assert err == [f"error: {path}:3: expected 3 fields (image, caption, split), found 4 (a comma inside the "
                       "caption? quote the caption)"], err
    assert not (tmp_path / "run" / "model").exists()
