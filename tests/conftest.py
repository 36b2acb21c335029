"""Shared fixtures: tiny random models (seconds) and the developers' data beside the repository."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from captioner.config import ModelConfig
from captioner.vocab import Vocabulary

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("CAPTIONER_SHARED_DATA", REPO.parent / "shared" / "data"))
SAMPLES = REPO / "data" / "samples"
WORDS = ["a", "dog", "cat", "runs", "on", "the", "grass", "red", "blue", "ball"]


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Never touch the user's feature cache from tests."""
    monkeypatch.setenv("CAPTIONER_CACHE", str(tmp_path_factory.getbasetemp() / "captioner-cache"))


@pytest.fixture(autouse=True)
def _restore_torch_threads():
    """``train --threads N`` run in-process sets torch's thread count for the whole process; put it back, so that a
    later test comparing an in-process run with a subprocess (default threads) compares like with like."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def shared_data() -> Path:
    if not SHARED.is_dir():
        pytest.skip(f"developers' data not found at {SHARED} (set CAPTIONER_SHARED_DATA)")
    return SHARED


@pytest.fixture
def vocab() -> Vocabulary:
    return Vocabulary(WORDS)


def tiny_config(vocab_size: int, **overrides) -> ModelConfig:
    """A model config small enough to train in seconds (encoder fields match the default encoder)."""
    fields = dict(vocab_size=vocab_size, embed_dim=16, image_proj_dim=12, hidden_dim=24, dropout=0.0)
    fields.update(overrides)
    return ModelConfig(**fields)


@pytest.fixture
def tiny_model(vocab):
    from captioner.pipeline import Captioner

    torch.manual_seed(0)
    return Captioner(tiny_config(len(vocab)), vocab).eval()


def make_caption_folder(root: Path, images: dict[str, list[str]], splits: dict[str, list[str]]) -> Path:
    """Write a caption folder; ``images`` maps a name to its captions, image files must be put in place by caller."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "splits").mkdir(exist_ok=True)
    lines = ["image\tcaption"] + [f"{name}\t{c}" for name, caps in images.items() for c in caps]
    (root / "captions.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    for split, names in splits.items():
        (root / "splits" / f"{split}.txt").write_text("\n".join(names) + "\n", encoding="utf-8")
    return root


@pytest.fixture
def flickr_mini(shared_data, tmp_path) -> Path:
    """A 20-image caption folder (12 train, 8 val) linking to ../shared/data/flickr8k images."""
    src = shared_data / "flickr8k"
    train = (src / "splits" / "train.txt").read_text().split()[:12]
    val = (src / "splits" / "val.txt").read_text().split()[:8]
    wanted = set(train + val)
    captions: dict[str, list[str]] = {}
    for line in (src / "captions.txt").read_text(encoding="utf-8").splitlines()[1:]:
        name, _, cap = line.partition("\t")
        if name in wanted:
            captions.setdefault(name, []).append(cap)
    root = make_caption_folder(tmp_path / "flickr_mini", captions, {"train": train, "val": val})
    for name in wanted:
        (root / "images" / name).symlink_to(src / "images" / name)
    return root


COLOURS = {"red": (220, 30, 30), "green": (30, 170, 40), "blue": (30, 60, 220)}
SHAPES = ("circle", "square", "triangle")


def draw_shape(colour: str, shape: str, rng):
    """A 96×96 picture of one coloured shape at a random place and size on a light background."""
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (96, 96), tuple(int(v) for v in rng.integers(225, 256, 3)))
    draw = ImageDraw.Draw(img)
    size = int(rng.integers(40, 64))
    x, y = (int(v) for v in rng.integers(4, 96 - size - 4, 2))
    box = (x, y, x + size, y + size)
    fill = COLOURS[colour]
    if shape == "circle":
        draw.ellipse(box, fill=fill)
    elif shape == "square":
        draw.rectangle(box, fill=fill)
    else:
        draw.polygon([(x, y + size), (x + size, y + size), (x + size // 2, y)], fill=fill)
    return img


def make_shapes_dataset(root: Path, per_class_train: int = 6, per_class_val: int = 2, seed: int = 0) -> Path:
    """A caption folder whose caption is fully determined by the image: 'a <colour> <shape>'."""
    import numpy as np

    rng = np.random.default_rng(seed)
    captions, splits = {}, {"train": [], "val": []}
    (root / "images").mkdir(parents=True, exist_ok=True)
    for colour in COLOURS:
        for shape in SHAPES:
            for k in range(per_class_train + per_class_val):
                name = f"{colour}_{shape}_{k}.png"
                draw_shape(colour, shape, rng).save(root / "images" / name)
                captions[name] = [f"a {colour} {shape}"]
                splits["train" if k < per_class_train else "val"].append(name)
    return make_caption_folder(root, captions, splits)


@pytest.fixture(scope="session")
def shapes_dataset(tmp_path_factory) -> Path:
    return make_shapes_dataset(tmp_path_factory.mktemp("shapes") / "shapes")


def start_cli(argv: list[str], code: str = ""):
    """``captioner ARGV`` in a subprocess (``code`` runs first, e.g. to patch something); returns the Popen."""
    import subprocess
    import sys

    program = code + "import sys\nfrom captioner.cli import main\nsys.exit(main(sys.argv[1:]))\n"
    return subprocess.Popen([sys.executable, "-c", program, *argv], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)


def kill_when_logged(argv: list[str], log: Path, step: int, timeout: float = 240) -> None:
    """Run ``captioner train`` (``argv``) in a subprocess and SIGKILL it once its ``log.csv`` reaches ``step``."""
    import signal
    import time

    proc, deadline = start_cli(argv), time.time() + timeout
    try:
        while time.time() < deadline and proc.poll() is None:
            lines = log.read_text().splitlines()[1:] if log.exists() else []
            if lines and max(int(line.split(",")[0]) for line in lines) >= step:
                break
            time.sleep(0.002)
        assert proc.poll() is None, "the run ended before it could be killed; make it longer"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()


def write_log(run: Path, rows: list[dict]) -> None:
    """A run directory holding ``log.csv`` with ``rows`` (as ``captioner train`` writes it)."""
    import csv

    from captioner.runlog import LOG_FIELDS

    run.mkdir(parents=True, exist_ok=True)
    with open(run / "log.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=LOG_FIELDS)
        writer.writeheader()
        writer.writerows(rows)
