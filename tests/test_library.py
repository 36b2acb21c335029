"""Captioning a photo library (issue 28): results files in every format, resume after a kill with every photo
exactly once, shards that split a library, merging them, and a full disk that never leaves a cut line."""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from captioner.cli import main
from captioner.library.results import ResultsError, coco_image_id, journal_path, read_journal

COLOURS = [(200, 30, 30), (30, 200, 30), (30, 30, 200), (200, 200, 30), (30, 200, 200), (200, 30, 200)]


def _photos(folder: Path, count: int = 7, names=None) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        name = names[i] if names else f"{i:012d}.png"
        path = folder / name
        Image.new("RGB", (48 + 4 * i, 40), COLOURS[i % len(COLOURS)]).save(path)
        paths.append(path)
    return paths


@pytest.fixture
def library(tmp_path, tiny_model):
    model = tmp_path / "model"
    tiny_model.save_pretrained(model)
    return model, _photos(tmp_path / "photos")


def _caption(model: Path, *args: str) -> int:
    return main(["caption", *args, "--model", str(model), "--backend", "torch", "--plain"])


def test_jsonl_results_have_one_object_per_photo_paths_as_given(library, tmp_path, monkeypatch, capsys):
    model, photos = library
    monkeypatch.chdir(tmp_path)
    assert _caption(model, "photos", "--out", "results.jsonl") == 0
    rows = [json.loads(line) for line in Path("results.jsonl").read_text().splitlines()]
    assert [r["image"] for r in rows] == [f"photos/{p.name}" for p in photos]  # relative stays relative
    assert all(set(r) >= {"image", "caption", "log_prob", "confidence", "needs_review"} for r in rows)
    assert "7 captioned, 0 already done, 0 failed" in capsys.readouterr().err


def test_csv_and_tsv_read_back_with_the_csv_module(library, tmp_path):
    model, _ = library
    odd = _photos(tmp_path / "odd", 2, names=['a, "quoted" name.png', "tab\there.png"])
    for fmt, dialect in (("csv", "excel"), ("tsv", "excel-tab")):
        out = tmp_path / f"results.{fmt}"
        assert _caption(model, str(odd[0].parent), "--out", str(out)) == 0
        lines = list(csv.reader(io.StringIO(out.read_text(), newline=""), dialect=dialect))
        assert lines[0] == ["image", "caption", "confidence"]
        assert sorted(line[0] for line in lines[1:]) == sorted(str(p) for p in odd)
        assert all(line[1] for line in lines[1:])


def test_coco_json_results_are_scored_by_the_projects_scorer(library, tmp_path, capsys):
    model, photos = library
    out = tmp_path / "results.json"
    assert _caption(model, str(photos[0].parent), "--out", str(out)) == 0
    results = json.loads(out.read_text())
    assert [r["image_id"] for r in results] == list(range(len(photos)))
    annotations = {"images": [{"id": i, "file_name": p.name} for i, p in enumerate(photos)],
                   "annotations": [{"id": i, "image_id": i, "caption": "a red dog runs on the grass"}
                                   for i in range(len(photos))]}
    (tmp_path / "refs.json").write_text(json.dumps(annotations))
    assert main(["score", "--predictions", str(out), "--data", str(tmp_path / "refs.json"), "--json",
                 "--images", str(photos[0].parent)]) == 0
    assert "cider" in capsys.readouterr().out


def test_coco_json_needs_a_number_in_every_name_before_any_work(library, tmp_path, capsys):
    model, _ = library
    named = _photos(tmp_path / "named", 2, names=["cat.png", "000000000007.png"])
    assert _caption(model, str(named[0].parent), "--out", str(tmp_path / "r.json")) == 1
    err = capsys.readouterr().err
    assert "cat.png" in err and "trailing number" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "r.json").exists()
    assert coco_image_id("COCO_val2014_000000000139.jpg") == 139
    with pytest.raises(ResultsError):
        coco_image_id("holiday.jpg")


def test_an_existing_results_file_is_kept_unless_resumed_or_overwritten(library, tmp_path, capsys):
    model, photos = library
    out = tmp_path / "r.jsonl"
    out.write_text("precious\n")
    assert _caption(model, str(photos[0].parent), "--out", str(out)) == 1
    assert "--resume" in capsys.readouterr().err and out.read_text() == "precious\n"


def _start(model: Path, folder: Path, out: Path) -> subprocess.Popen:
    code = "import sys\nfrom captioner.cli import main\nsys.exit(main(sys.argv[1:]))\n"
    return subprocess.Popen([sys.executable, "-c", code, "caption", str(folder), "--model", str(model), "--backend",
                             "torch", "--plain", "--out", str(out), "--resume", "--batch-size", "1"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _kill_after(model: Path, folder: Path, out: Path, rows: int, timeout: float = 120) -> None:
    proc, deadline = _start(model, folder, out), time.time() + timeout
    journal = journal_path(out)
    try:
        while time.time() < deadline and proc.poll() is None:
            if journal.exists() and journal.read_bytes().count(b"\n") >= rows:
                break
            time.sleep(0.001)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()


@pytest.mark.parametrize("kills", [[2], [1, 4], [3, 3, 6]])
def test_a_run_killed_at_any_point_and_resumed_lists_every_photo_exactly_once(library, tmp_path, kills):
    model, _ = library
    folder = tmp_path / "many"
    photos = _photos(folder, 9)
    out = tmp_path / "results.jsonl"
    out.touch()
    for rows in kills:
        _kill_after(model, folder, out, rows)
    with open(journal_path(out), "ab") as handle:  # a kill in the middle of a line: torn, repaired, not duplicated
        handle.write(b'{"image": "' + str(photos[-1]).encode())
    assert _caption(model, str(folder), "--out", str(out), "--resume") == 0
    lines = out.read_text().splitlines()
    assert sorted(json.loads(line)["image"] for line in lines) == sorted(str(p) for p in photos)
    assert len(read_journal(journal_path(out))) == len(photos)


def test_a_photo_changed_since_is_captioned_again_and_listed_once(library, tmp_path, capsys):
    model, photos = library
    out = tmp_path / "results.csv"
    assert _caption(model, str(photos[0].parent), "--out", str(out)) == 0
    capsys.readouterr()
    time.sleep(0.01)
    Image.new("RGB", (64, 64), (9, 9, 9)).save(photos[3])
    assert _caption(model, str(photos[0].parent), "--out", str(out), "--resume") == 0
    assert "1 captioned, 6 already done" in capsys.readouterr().err
    lines = list(csv.reader(io.StringIO(out.read_text(), newline="")))[1:]
    assert sorted(line[0] for line in lines) == sorted(str(p) for p in photos)


def test_shards_are_disjoint_and_complete_and_merge_back(library, tmp_path, monkeypatch, capsys):
    model, _ = library
    folder = tmp_path / "ten"
    photos = _photos(folder, 10)
    parts = []
    for k in (1, 2, 3):
        out = tmp_path / f"shard{k}.jsonl"
        assert _caption(model, str(folder), "--out", str(out), "--shard", f"{k}/3") == 0
        parts.append([json.loads(line)["image"] for line in out.read_text().splitlines()])
    assert sorted(sum(parts, [])) == sorted(str(p) for p in photos) and len(set(sum(parts, []))) == 10
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "3")  # under torchrun: the second of three
    assert _caption(model, str(folder), "--out", str(tmp_path / "rank.jsonl")) == 0
    assert [json.loads(line)["image"] for line in (tmp_path / "rank.jsonl").read_text().splitlines()] == parts[1]
    merged = tmp_path / "all.csv"
    assert main(["merge-results", *(str(tmp_path / f"shard{k}.jsonl") for k in (1, 2, 3)), "--out",
                 str(merged)]) == 0
    rows = list(csv.reader(io.StringIO(merged.read_text(), newline="")))[1:]
    assert [r[0] for r in rows] == sorted(str(p) for p in photos)
    assert main(["merge-results", str(tmp_path / "shard1.jsonl"), str(tmp_path / "shard1.jsonl"), "--out",
                 str(tmp_path / "twice.jsonl")]) == 1
    assert "in both" in capsys.readouterr().err


@pytest.mark.parametrize("shard", ["0/3", "4/3", "two/3", "3"])
def test_a_bad_shard_is_one_error(library, tmp_path, capsys, shard):
    model, photos = library
    assert _caption(model, str(photos[0]), "--shard", shard) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_a_bad_photo_is_reported_and_the_others_are_captioned(library, tmp_path, capsys):
    model, photos = library
    (photos[0].parent / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    out = tmp_path / "r.jsonl"
    assert _caption(model, str(photos[0].parent), "--out", str(out)) == 1
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == len(photos) + 1 and sum("error" in r for r in rows) == 1
    assert "broken.png" in capsys.readouterr().err


def test_a_full_disk_on_standard_output_never_leaves_a_cut_line(library, tmp_path, monkeypatch):
    """The first lines are written; the next write fails half-way (ENOSPC): the file ends with a whole line and the
    run says so in one line."""
    import errno

    import captioner.cli.caption as caption_cli

    model, photos = library
    target = tmp_path / "stdout.txt"
    real_write, calls = os.write, []

    def full_after_two(fd, data):
        calls.append(1)
        if len(calls) <= 2:
            return real_write(fd, data)
        real_write(fd, data[:5])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(caption_cli.os, "write", full_after_two)
    with open(target, "w") as handle:
        monkeypatch.setattr(sys, "stdout", handle)
        code = _caption(model, str(photos[0].parent))
    assert code == 1
    text = target.read_text()
    assert text.endswith("\n") and len(text.splitlines()) == 2
