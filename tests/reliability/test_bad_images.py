"""Every user-facing command over the image zoo (badfiles.py): valid images captioned or trained on, invalid ones
one clear ``error:`` line each (or a skip count in training), documented exit codes, never a traceback."""

import builtins
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from badfiles import INVALID, REASONS, VALID, make_image_zoo, photo
from conftest import make_caption_folder, tiny_config

from captioner.cli import main
from captioner.images import load_image


@pytest.fixture
def deny_unreadable(monkeypatch):
    """Make the zoo's 'unreadable' files unreadable even for root (permissions do not stop root)."""
    denied: set[str] = set()
    real_open = builtins.open

    def guarded(file, *args, **kwargs):
        if isinstance(file, (str, os.PathLike)) and os.path.realpath(file) in denied:
            raise PermissionError(13, "Permission denied", str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", guarded)
    return lambda path: denied.add(os.path.realpath(path))


@pytest.fixture
def zoo(tmp_path, deny_unreadable):
    paths = make_image_zoo(tmp_path / "zoo")
    deny_unreadable(paths["unreadable"])
    return paths


@pytest.fixture
def model_dir(vocab, tmp_path):
    from captioner.pipeline import Captioner

    torch.manual_seed(0)
    Captioner(tiny_config(len(vocab)), vocab).save_pretrained(tmp_path / "model")
    return tmp_path / "model"


@pytest.fixture
def zoo_dataset(tmp_path, deny_unreadable):
    """A caption folder whose train and val splits list every zoo case (the missing one included)."""
    root = tmp_path / "zoo_data"
    paths = make_image_zoo(root / "images")
    deny_unreadable(paths["unreadable"])
    names = {str(p.relative_to(root / "images")): [f"a photo of a {case.replace('_', ' ')}"]
             for case, p in paths.items()}
    make_caption_folder(root, names, {"train": list(names), "val": list(names)})
    return root, paths


def _one_line_errors(err: str) -> list[str]:
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert "Traceback" not in err
    return lines


def test_exif_rotated_images_are_read_upright(zoo):
    upright = np.asarray(photo(), dtype=np.int16)
    loaded = np.asarray(load_image(zoo["exif_rotated"]), dtype=np.int16)
    assert loaded.shape == upright.shape  # (64, 96, 3): landscape again, not the stored portrait
    assert np.abs(loaded - upright).mean() < 4  # JPEG noise only; the red corner is top-left again


def test_caption_captions_the_valid_and_names_each_invalid(zoo, model_dir, capsys):
    code = main(["caption", str(zoo["zero_bytes"].parent), str(zoo["missing"]), "--model", str(model_dir)])
    out, err = capsys.readouterr()
    assert code == 1  # documented: 1 when any image could not be captioned, the others still are
    captioned = {line.split("\t")[0] for line in out.splitlines()}
    assert captioned == {str(zoo[case]) for case in VALID}
    errors = _one_line_errors(err)
    assert len(errors) == len(INVALID)
    for case in INVALID:
        line = next(e for e in errors if f" {zoo[case]}: " in e)
        assert REASONS[case] in line, line


def test_caption_a_folder_without_images_and_a_missing_path(tmp_path, model_dir, capsys):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no photos here")
    assert main(["caption", str(tmp_path / "empty"), "--model", str(model_dir)]) == 1
    err = capsys.readouterr().err
    assert _one_line_errors(err) and "no image" in err.lower()
    assert main(["caption", str(tmp_path / "nowhere"), "--model", str(model_dir)]) == 1
    assert "no such file" in capsys.readouterr().err


def test_train_skips_and_counts_the_invalid(zoo_dataset, tmp_path, capsys, caplog):
    root, _ = zoo_dataset
    code = main(["train", "--data", str(root), "--out", str(tmp_path / "run"), "--epochs", "1", "--embed-dim", "8",
                 "--hidden-dim", "8", "--image-proj-dim", "8", "--cache-dir", str(tmp_path / "cache")])
    assert code == 0 and (tmp_path / "run" / "model" / "model.safetensors").is_file()
    assert f"split train: {len(INVALID)} of {len(INVALID) + len(VALID)} image(s) unreadable" in caplog.text
    assert "Traceback" not in capsys.readouterr().err
    code = main(["train", "--data", str(root), "--out", str(tmp_path / "strict"), "--epochs", "1",
                 "--on-bad-image", "error", "--cache-dir", str(tmp_path / "cache")])
    errors = _one_line_errors(capsys.readouterr().err)
    assert code == 1 and len(errors) == 1 and "unreadable" in errors[0]


def test_evaluate_skips_and_counts_the_invalid(zoo_dataset, model_dir, tmp_path, capsys, caplog):
    root, _ = zoo_dataset
    code = main(["evaluate", "--data", str(root), "--model", str(model_dir), "--split", "val", "--json",
                 "--cache-dir", str(tmp_path / "cache")])
    out, err = capsys.readouterr()
    assert code == 0 and "Traceback" not in err
    assert f"{len(INVALID)} of {len(INVALID) + len(VALID)} image(s) unreadable" in caplog.text
    assert json.loads(out)["n_images"] == len(VALID)  # scored on the readable images only


def test_data_check_names_every_invalid_image(zoo_dataset, capsys):
    root, paths = zoo_dataset
    assert main(["data", "check", str(root)]) == 1  # documented: 1 when the report has errors
    out, err = capsys.readouterr()
    errors = _one_line_errors(out + err)  # the report (stdout) lists each bad image on an error: line
    for case in INVALID:
        name = str(paths[case].relative_to(root / "images"))
        assert any(f"split train: {name}: " in e for e in errors), case
    assert not any(str(paths[case].relative_to(root / "images")) in " ".join(errors) for case in VALID)


def test_server_captions_the_valid_uploads_and_names_the_invalid(zoo, vocab):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from captioner.pipeline import Captioner
    from captioner.serving.server import create_app

    torch.manual_seed(0)
    model = Captioner(tiny_config(len(vocab)), vocab).eval()
    uploadable = [c for c in VALID + INVALID if c not in ("missing", "unreadable")]  # a client sends bytes
    files = [("files", (Path(zoo[c]).name, Path(zoo[c]).read_bytes(), "application/octet-stream"))
             for c in uploadable]
    with TestClient(create_app(model)) as client:
        response = client.post("/api/caption", files=files, data={"max_length": "5"})
    assert response.status_code == 400
    body = response.json()
    assert {r["filename"] for r in body["results"]} == {Path(zoo[c]).name for c in VALID}
    errors = {e["filename"]: e["error"] for e in body["errors"]}
    assert set(errors) == {Path(zoo[c]).name for c in uploadable if c in INVALID}
    for case in ("zero_bytes", "truncated_jpeg", "text_as_jpg", "bomb"):
        assert REASONS[case] in errors[Path(zoo[case]).name]
