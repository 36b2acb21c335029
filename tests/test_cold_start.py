"""A cold ``captioner caption ONE.jpg`` does only what one image needs (issue 27): the default path, run in a fresh
process with a tiny export standing in for the default model's, imports neither PyTorch nor timm nor torchvision nor
anything else it does not use (preprocessing and the search run in numpy), and building the command line's parser
imports no numpy at all."""

import json
import subprocess
import sys

import pytest
import torch
from PIL import Image
from torch import nn

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from conftest import WORDS, tiny_config

from captioner.export.layout import default_export_dir
from captioner.export.onnx import export_onnx
from captioner.models.encoders import ImageEncoder
from captioner.pipeline import Captioner
from captioner.vocab import Vocabulary

NOT_ON_THE_CAPTION_PATH = [
    "timm", "torchvision",  # the PyTorch encoders: the export replaces them
    "onnx", "captioner.export.onnx",  # the exporter: the export is made once
    "safetensors", "captioner.features", "captioner.data.cache", "captioner.training.loop",  # PyTorch weights, training
    "nltk", "sympy", "tqdm.auto",  # metrics; torch.fx's symbolic maths (timm); the progress bar of one photo
    "torch",  # numpy preprocessing and search (captioner.models.resample, captioner.generation.array_search)
]
NOT_IN_THE_PARSER = ["torch", "numpy", "onnxruntime", "PIL", "tqdm"]


def _run_python(code: str, env: dict | None = None) -> dict:
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300,
                          check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_building_the_parser_imports_no_torch():
    code = ("import json, sys; from captioner.cli.main import build_parser; build_parser(); "
            f"print(json.dumps([m for m in {NOT_IN_THE_PARSER!r} if m in sys.modules]))")
    assert _run_python(code) == []


def _tiny_default_export(cache) -> None:
    """A tiny attention model's export, where the embedded default's export is kept in the cache ``cache``."""
    torch.manual_seed(0)
    vocab = Vocabulary(WORDS)
    config = tiny_config(len(vocab), encoder_dim=12, inject="attention", feature_locations=49, attention_dim=10)
    encoder = ImageEncoder(nn.Sequential(nn.Conv2d(3, 12, 32, stride=32), nn.ReLU()), out_dim=12, spatial=True)
    export_onnx(Captioner(config, vocab, encoder=encoder.eval()).eval(), default_export_dir())
    assert default_export_dir().parent == cache / "onnx"


def test_the_default_caption_path_imports_only_what_one_image_needs(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("CAPTIONER_CACHE", str(cache))
    _tiny_default_export(cache)
    image = tmp_path / "one.jpg"
    Image.new("RGB", (64, 48), (30, 120, 200)).save(image)
    code = (
        "import io, json, sys, contextlib\n"
        "from captioner.cli.main import main\n"
        "out = io.StringIO()\n"
        "with contextlib.redirect_stdout(out):\n"
        f"    rc = main(['caption', {str(image)!r}])\n"
        f"print(json.dumps({{'rc': rc, 'out': out.getvalue(), 'torch': 'torch' in sys.modules, "
        f"'imported': [m for m in {NOT_ON_THE_CAPTION_PATH!r} if m in sys.modules]}}))\n"
    )
    result = _run_python(code, env={**_env(), "CAPTIONER_CACHE": str(cache)})
    assert result["rc"] == 0 and result["out"].startswith(f"{image}\t")  # captioned, no export needed
    assert result["imported"] == []


def test_the_export_opens_on_a_thread_without_torch(tmp_path, monkeypatch):
    """open_export finds, checks and loads the export on a thread without importing torch."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("CAPTIONER_CACHE", str(cache))
    _tiny_default_export(cache)
    code = ("import json, sys\n"
            "from captioner.export.sessions import choose_backend, open_export\n"
            "backend, _ = choose_backend('auto', 'auto')\n"
            "directory, manifest, sessions = open_export(None).result()\n"
            "print(json.dumps({'backend': backend, 'graphs': sorted(sessions), 'exported': manifest is not None, "
            "'torch': 'torch' in sys.modules}))\n")
    result = _run_python(code, env={**_env(), "CAPTIONER_CACHE": str(cache)})
    if not torch.cuda.is_available():
        assert result["backend"] == "onnxruntime"
    assert result["exported"] and result["graphs"] == ["decoder_init", "decoder_step", "encoder"]
    assert not result["torch"] or torch.cuda.is_available()  # a GPU machine asks torch whether CUDA works


def _env() -> dict:
    import os

    return {k: v for k, v in os.environ.items() if k != "CAPTIONER_DEBUG"}


def test_the_caption_command_ends_at_once_with_its_output_and_exit_code(tmp_path, monkeypatch):
    """Run as a process (``python -m captioner``), caption skips the interpreter's teardown (cli.main.end_process)
    once everything is written: the captions, the results file, the error line and the exit code are all there."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("CAPTIONER_CACHE", str(cache))
    _tiny_default_export(cache)
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(3):
        Image.new("RGB", (64, 48), (40 * i, 120, 200)).save(photos / f"p{i}.jpg")
    (photos / "broken.jpg").write_bytes(b"not a photo")
    env = {**_env(), "CAPTIONER_CACHE": str(cache)}
    command = [sys.executable, "-m", "captioner", "caption", str(photos)]
    proc = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300, check=False)
    assert proc.returncode == 1 and "broken.jpg" in proc.stderr  # one bad photo: exit code 1, said on stderr
    assert len(proc.stdout.splitlines()) == 3 and proc.stdout.endswith("\n")
    out = tmp_path / "captions.jsonl"
    proc = subprocess.run([*command, "--out", str(out)], capture_output=True, text=True, env=env, timeout=300,
                          check=False)
    assert proc.returncode == 1 and "3 captioned" in proc.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 4 and sum(row.get("caption") is not None for row in rows) == 3


def test_the_process_is_not_ended_while_a_thread_still_works():
    import threading

    from captioner.cli.main import end_process

    done = threading.Event()
    worker = threading.Thread(target=done.wait)
    worker.start()
    try:
        end_process(0)  # returns: the interpreter must wait for the thread
    finally:
        done.set()
        worker.join()
