"""Broken or hostile model directories and resume states: refused with one clear line, never unpickled; and no
code path that could unpickle."""

import ast
import json
import os
import pickle
import shutil
from pathlib import Path

import pytest
import torch
from badfiles import photo
from conftest import tiny_config

from captioner.cli import main
from captioner.pipeline import Captioner

PACKAGE = Path(__file__).resolve().parents[2] / "captioner"


class Payload:
    """Unpickling this runs a shell command: the test fails if the marker file appears."""

    marker = None

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture
def good(vocab, tmp_path):
    torch.manual_seed(0)
    Captioner(tiny_config(len(vocab)), vocab).save_pretrained(tmp_path / "good")
    photo().save(tmp_path / "p.jpg")
    return tmp_path / "good"


def _variant(good: Path, name: str) -> Path:
    target = good.parent / name
    shutil.copytree(good, target)
    return target


def _config(model: Path, **changes) -> None:
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**config, **changes}))


def _break(case: str, model: Path, marker: Path) -> str:
    """Damage ``model`` as ``case`` says; returns what the error line must contain."""
    weights = model / "model.safetensors"
    Payload.marker = marker
    if case == "missing_weights":
        weights.unlink()
        return "missing model.safetensors"
    if case == "truncated_weights":
        weights.write_bytes(weights.read_bytes()[:300])
        return "not a readable safetensors file"
    if case == "garbage_weights":
        weights.write_bytes(b"\x00\x11 not tensors " * 40)
        return "not a readable safetensors file"
    if case == "unknown_encoder":
        _config(model, encoder="vgg99")
        return "unknown encoder 'vgg99'"
    if case == "vocab_longer_than_config":
        vocab = json.loads((model / "vocab.json").read_text())
        vocab["itos"].append("zebra")
        (model / "vocab.json").write_text(json.dumps(vocab))
        return "vocabulary has"
    if case == "weights_of_another_vocab":  # config and vocab agree with each other, not with the weights
        vocab = json.loads((model / "vocab.json").read_text())
        vocab["itos"].append("zebra")
        (model / "vocab.json").write_text(json.dumps(vocab))
        _config(model, vocab_size=len(vocab["itos"]))
        return "does not fit config.json and vocab.json"
    if case == "pickle_as_weights":
        weights.write_bytes(pickle.dumps(Payload()))
        return "captioner never loads pickles"
    if case == "torch_save_as_weights":
        torch.save({"decoder.head.weight": Payload()}, weights)
        return "captioner never loads pickles"
    raise AssertionError(case)


CASES = ["missing_weights", "truncated_weights", "garbage_weights", "unknown_encoder", "vocab_longer_than_config",
         "weights_of_another_vocab", "pickle_as_weights", "torch_save_as_weights"]


@pytest.mark.parametrize("case", CASES)
def test_a_broken_model_directory_is_refused_in_one_line(case, good, tmp_path, capsys):
    model = _variant(good, case)
    marker = tmp_path / "unpickled"
    message = _break(case, model, marker)
    for argv in (["caption", str(tmp_path / "p.jpg"), "--model", str(model)],
                 ["inspect", "--model", str(model), "--no-encoder"]):
        assert main(argv) == 1
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: cannot load model") and len(err.splitlines()) == 1, err
        assert message in err, err
    assert not marker.exists(), "a pickle was unpickled"


@pytest.mark.parametrize("kind", ["pickle", "torch_save"])
def test_a_hostile_resume_state_is_refused_and_not_unpickled(kind, shapes_dataset, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train", "--data", str(shapes_dataset), "--out", str(out), "--epochs", "1", "--embed-dim", "8",
            "--hidden-dim", "8", "--image-proj-dim", "8", "--cache-dir", str(tmp_path / "cache"), "--quiet"]
    assert main(args) == 0
    Payload.marker = tmp_path / "unpickled"
    state = out / "training_state.pt"
    if kind == "pickle":
        state.write_bytes(pickle.dumps({"progress": Payload()}))
    else:
        torch.save({"progress": Payload()}, state)
    assert main([*args, "--resume"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and len(err.splitlines()) == 1 and "it was not unpickled" in err, err
    assert not Payload.marker.exists()
    assert Captioner.from_pretrained(out / "model") is not None  # the run's model is untouched


def unpickle_risks(source: str, where: str) -> list[str]:
    """Imports of pickle-like modules, torch.load without weights_only=True, and allow_pickle=True in ``source``."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] + ([node.module] if isinstance(node, ast.ImportFrom) else [])
            if any(n and n.split(".")[0] in ("pickle", "cPickle", "dill", "joblib", "shelve") for n in names):
                found.append(f"{where}:{node.lineno} imports a pickle module")
        if not isinstance(node, ast.Call):
            continue
        name = ast.unparse(node.func)
        keywords = {k.arg: ast.unparse(k.value) for k in node.keywords}
        if name.split(".")[-1] == "load" and name.startswith("torch") and keywords.get("weights_only") != "True":
            found.append(f"{where}:{node.lineno} {name} without weights_only=True")
        if keywords.get("allow_pickle") == "True":
            found.append(f"{where}:{node.lineno} {name}(allow_pickle=True)")
    return found


def test_the_scan_finds_what_it_looks_for():
    bad = ("import pickle\nimport torch\nx = torch.load(p)\ny = torch.load(p, weights_only=False)\n"
           "np.load(p, allow_pickle=True)\n")
    assert len(unpickle_risks(bad, "bad.py")) == 4
    assert unpickle_risks("import torch\nx = torch.load(p, map_location='cpu', weights_only=True)\n", "ok.py") == []


def test_no_code_path_can_unpickle():
    """Every torch.load in the package passes weights_only=True; nothing imports pickle, dill, joblib or shelve, or
    asks numpy for allow_pickle=True."""
    offenders = [risk for path in sorted(PACKAGE.rglob("*.py"))
                 for risk in unpickle_risks(path.read_text(encoding="utf-8"), str(path.relative_to(PACKAGE)))]
    assert not offenders, offenders
