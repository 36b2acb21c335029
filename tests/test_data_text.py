"""Hostile and damaged text in dataset files (issue 26, items 9 and 7): byte-order marks, Unicode line separators
inside captions, NUL bytes, over-long captions and lines, huge values in messages, JSON nested too deeply."""

import json
import tracemalloc

import pytest

from captioner.cli import main
from captioner.data import DatasetError, load_dataset

BOM = "\ufeff"


def _folder(tmp_path, captions, splits, encoding="utf-8"):
    root = tmp_path / "ds"
    (root / "images").mkdir(parents=True)
    (root / "splits").mkdir()
    for name in ("a.jpg", "b.jpg"):
        (root / "images" / name).write_bytes(b"x")
    (root / "captions.txt").write_text(captions, encoding=encoding, newline="")
    for name, text in splits.items():
        (root / "splits" / f"{name}.txt").write_text(text, encoding=encoding, newline="")
    return root


def _check(path, capsys, *extra):
    code = main(["data", "check", str(path), "--no-verify-images", "--json", *extra])
    captured = capsys.readouterr()
    return code, json.loads(captured.out), captured.err.splitlines()


def test_captions_txt_and_split_files_with_a_byte_order_mark_load(tmp_path, capsys):
    root = _folder(tmp_path, f"{BOM}image\tcaption\na.jpg\ta dog\nb.jpg\ta cat\n", {"train": f"{BOM}a.jpg\nb.jpg\n"})
    data = load_dataset(root, "train")
    assert [(i.name, i.captions) for i in data] == [("a.jpg", ["a dog"]), ("b.jpg", ["a cat"])]
    code, report, err = _check(root, capsys)
    assert code == 0 and err == [] and report["splits"]["train"]["images"] == 2


def test_a_byte_order_mark_inside_a_file_is_visible_in_the_error(tmp_path):
    root = _folder(tmp_path, "image\tcaption\na.jpg\ta dog\n", {"train": f"a.jpg\n{BOM}b.jpg\n"})
    with pytest.raises(DatasetError, match=r"train.txt:2: image '\\ufeffb.jpg' has no caption"):
        load_dataset(root, "train")


@pytest.mark.parametrize("separator", ["\u2028", "\u2029", "\x85", "\x0b", "\x0c", "\x1c"])
def test_unicode_line_separators_inside_a_caption_are_not_line_breaks(tmp_path, separator):
    root = _folder(tmp_path, f"image\tcaption\na.jpg\ta dog{separator}runs\nb.jpg\ta cat\nb.jpg no tab\n",
                   {"train": "a.jpg\nb.jpg\n"})
    with pytest.raises(DatasetError, match=r"captions.txt:4: expected 'image<TAB>caption', found no tab"):
        load_dataset(root, "train")  # the right line, and the only error
    (root / "captions.txt").write_text(f"image\tcaption\na.jpg\ta dog{separator}runs\nb.jpg\ta cat\n", newline="")
    assert load_dataset(root, "train").items[0].captions == [f"a dog{separator}runs"]


def test_windows_and_old_mac_line_ends_still_end_lines(tmp_path):
    root = _folder(tmp_path, "image\tcaption\r\na.jpg\ta dog\r\nb.jpg\ta cat\rb.jpg\ta black cat\n",
                   {"train": "a.jpg\r\nb.jpg\r\n"})
    assert [i.captions for i in load_dataset(root, "train")] == [["a dog"], ["a cat", "a black cat"]]


def test_nul_bytes_are_reported_with_their_line(tmp_path, capsys):
    root = _folder(tmp_path, "image\tcaption\na.jpg\ta dog\nb.jpg\ta c\0at\n", {"train": "a.jpg\nb.jpg\n"})
    with pytest.raises(DatasetError, match=r"captions.txt:3: NUL byte at column 10 \(a binary or UTF-16 file\?\)"):
        load_dataset(root, "train")
    code, report, _ = _check(root, capsys)
    assert code == 1 and report["errors"][0].endswith("captions.txt:3: NUL byte at column 10 (a binary or UTF-16 "
                                                      "file?); save the file as UTF-8 text without NUL characters")
    path = tmp_path / "caps.jsonl"
    path.write_text('{"image": "a.jpg", "caption": "a d\\u0000og"}\n')
    with pytest.raises(DatasetError, match=r"caps.jsonl:1: caption 'a d\\x00og' contains a NUL byte"):
        load_dataset(path, "all")


def test_bytes_that_are_not_utf8_are_reported_with_their_line_and_the_rest_is_checked(tmp_path, capsys):
    root = _folder(tmp_path, "image\tcaption\na.jpg\ta dog\n", {"train": "a.jpg\nb.jpg\n"})
    (root / "captions.txt").write_bytes(b"image\tcaption\na.jpg\ta dog\nb.jpg\ta caf\xe9\nc.jpg\n")
    code, report, _ = _check(root, capsys)
    assert code == 1 and report["errors"] == [
        f"{root / 'captions.txt'}:3: not UTF-8 text (byte 0xe9 at column 12); save the file as UTF-8",
        f"{root / 'captions.txt'}:4: expected 'image<TAB>caption', found no tab",
        f"{root / 'splits' / 'train.txt'}:2: image 'b.jpg' has no caption in captions.txt; add its captions or remove "
        "it from the split"]  # (its one line could not be read)


def test_over_long_captions_are_reported_with_their_line(tmp_path, capsys, caplog):
    words = " ".join(["word"] * 150)
    root = _folder(tmp_path, f"image\tcaption\na.jpg\t{words}\nb.jpg\ta cat\n", {"train": "a.jpg\nb.jpg\n"})
    code, report, err = _check(root, capsys)
    warning = f"{root / 'captions.txt'}:2: a caption of 150 words; cut to the first 100"
    assert code == 0 and report["warnings"] == [warning] and err == [f"warning: {warning}"]
    assert load_dataset(root, "train").items[0].captions == [" ".join(["word"] * 100)] and warning in caplog.text


def test_a_huge_caption_line_is_an_error_read_in_bounded_memory(tmp_path, capsys):
    huge = "word " * 4_000_000  # 20 MB on one line
    root = _folder(tmp_path, f"image\tcaption\na.jpg\t{huge}\nb.jpg\ta cat\n", {"train": "a.jpg\nb.jpg\n"})
    tracemalloc.start()
    try:
        with pytest.raises(DatasetError) as info:
            load_dataset(root, "train")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4_000_000, f"peak {peak:,} bytes: the line was held whole"
    message = (f"{root / 'captions.txt'}:2: a line of 20,000,006 characters, over the limit of 65,536: not a "
               "caption line (a binary file, or missing line breaks?); fix or remove the line")
    assert str(info.value).startswith(message + " (and 1 more error(s)")
    code, report, err = _check(root, capsys)
    assert code == 1 and err[0] == f"error: {message}" and len(err) == 2  # the second: a.jpg has no (readable) caption


def test_a_huge_caption_in_json_is_an_error_without_splitting_it(tmp_path):
    path = tmp_path / "captions_x.json"
    (tmp_path / "images").mkdir()
    path.write_text(json.dumps({"images": [{"id": 1, "file_name": "a.jpg"}],
                                "annotations": [{"id": 5, "image_id": 1, "caption": "word " * 100_000}]}))
    with pytest.raises(DatasetError, match=r"annotations\[0\] \(id 5\): a caption of 500,000 characters, over the "
                                           r"limit of 65,536"):
        load_dataset(path, "all")


def test_a_huge_file_name_gives_a_short_error_line(tmp_path, capsys):
    path = tmp_path / "captions_x.json"
    (tmp_path / "images").mkdir()
    name = "x" * 1_000_000 + ".jpg"
    path.write_text(json.dumps({"images": [{"id": 1, "file_name": name}, {"id": 2, "file_name": "/" + name}],
                                "annotations": [{"id": 5, "image_id": 1, "caption": "a dog"}]}))
    code, report, err = _check(path, capsys)
    assert code == 1 and len(err) == 2 and all(len(line) < 400 for line in err), [len(line) for line in err]
    assert err[0] == (f"error: {path}: images[0] (id 1): image name '{'x' * 80}'… (1,000,004 characters) is longer "
                      "than any file system allows (4,096 characters); a broken entry?")
    with pytest.raises(DatasetError) as info:
        load_dataset(path, "all")
    assert len(str(info.value)) < 500


def test_a_file_name_the_file_system_refuses_is_reported_per_image(tmp_path, capsys):
    long_name = "y" * 300 + ".jpg"
    root = _folder(tmp_path, f"image\tcaption\na.jpg\ta dog\n{long_name}\ta cat\n", {"train": f"a.jpg\n{long_name}\n"})
    code = main(["data", "check", str(root)])
    err = capsys.readouterr().err.splitlines()
    assert code == 1 and len(err) == 2 and "Traceback" not in "".join(err)
    assert err[0].startswith("error: split train: a.jpg: ")  # the other images are still checked
    assert err[1].startswith(f"error: split train: {'y' * 80}… (304 characters): cannot read the file: File name "
                             "too long")


@pytest.mark.parametrize("suffix, depth", [(".json", 1_000_000), (".jsonl", 30_000)])
def test_json_nested_a_million_levels_is_one_error_naming_the_file(tmp_path, capsys, suffix, depth):
    path = tmp_path / f"captions{suffix}"
    path.write_text("[" * depth + "]" * depth + "\n")
    where = f"{path}:1" if suffix == ".jsonl" else str(path)
    for argv in (["data", "check", str(path)], ["evaluate", "--data", str(path), "--split", "all"]):
        assert main(argv) == 1
        err = capsys.readouterr().err.splitlines()
        assert len(err) == 1 and err[0].startswith(f"error: {where}: ") and "nested too deeply" in err[0], err
