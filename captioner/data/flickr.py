"""Flickr8k / Flickr30k official files.

Captions: ``Flickr8k.token.txt`` (Flickr30k: ``results_20130124.token``), lines ``NAME.jpg#N<TAB>caption``. Splits:
``Flickr_8k.trainImages.txt`` → ``train``, ``Flickr_8k.devImages.txt`` → ``val``, ``Flickr_8k.testImages.txt`` →
``test`` beside the token file (any ``*trainImages.txt``/``*devImages.txt``/``*testImages.txt``), plus ``all``. The
path may be the token file or the folder holding it. Images: ``--images``, else ``Flicker8k_Dataset``,
``Flickr8k_Dataset``, ``flickr30k-images``, ``Images`` or ``images`` beside the text files or one level up.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from captioner.data.base import (
    CaptionSet,
    DatasetError,
    DatasetFormat,
    ImageItem,
    first_dir,
    register_format,
    safe_image_name,
)

TOKEN_NAMES = ("Flickr8k.token.txt", "results_20130124.token", "Flickr30k.token.txt")
SPLIT_SUFFIXES = {"train": "trainImages.txt", "val": "devImages.txt", "test": "testImages.txt"}
IMAGE_DIRS = ("Flicker8k_Dataset", "Flickr8k_Dataset", "flickr30k-images", "Images", "images")


def _token_file(path: Path) -> Path | None:
    if path.is_file():
        return path if path.name.endswith((".token.txt", ".token")) else None
    for name in TOKEN_NAMES:
        for candidate in (path / name, path / "Flickr8k_text" / name):
            if candidate.is_file():
                return candidate
    return None


def is_flickr(path: Path) -> bool:
    return _token_file(path) is not None


def _split_files(token: Path) -> dict[str, Path]:
    found = {}
    for split, suffix in SPLIT_SUFFIXES.items():
        matches = sorted(token.parent.glob(f"*{suffix}"))
        if matches:
            found[split] = matches[0]
    return found


def flickr_splits(path: Path) -> list[str]:
    token = _token_file(path)
    return ["all", *_split_files(token)] if token else []


def read_token_file(token: Path) -> dict[str, list[str]]:
    """``NAME.jpg#N<TAB>caption`` lines → image name → captions (file order)."""
    captions: dict[str, list[str]] = defaultdict(list)
    text = token.read_text(encoding="utf-8", errors="strict")
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        key, sep, caption = line.partition("\t")
        name, hash_sign, _ = key.partition("#")
        if not sep or not hash_sign:
            raise DatasetError(f"{token}:{number}: expected 'NAME.jpg#N<TAB>caption'")
        captions[safe_image_name(name, f"{token}:{number}")].append(caption.strip())
    return captions


def load_flickr(path: Path, split: str, images: Path | None = None) -> CaptionSet:
    token = _token_file(path)
    if token is None:
        raise DatasetError(f"{path}: no Flickr token file ({', '.join(TOKEN_NAMES)})")
    captions = read_token_file(token)
    if split == "all":
        names = list(captions)
    else:
        files = _split_files(token)
        alias = "val" if split == "dev" else split
        if alias not in files:
            raise DatasetError(f"{token.parent}: no *{SPLIT_SUFFIXES.get(alias, alias + 'Images.txt')} split file "
                               f"(available splits: {', '.join(flickr_splits(path))})")
        names = [safe_image_name(n, f"{files[alias]}:{i}")
                 for i, n in enumerate(files[alias].read_text(encoding="utf-8").split(), start=1)]
        missing = [n for n in names if n not in captions]
        if missing:
            raise DatasetError(f"{files[alias]}: {len(missing)} image(s) have no caption in {token.name} "
                               f"(first: {missing[0]})")
    places = [token.parent / d for d in IMAGE_DIRS] + [token.parent.parent / d for d in IMAGE_DIRS]
    root = images or first_dir(places, str(token))
    items = [ImageItem(n, (root / n).resolve(), captions[n]) for n in dict.fromkeys(names)]
    return CaptionSet(root=path, split=split, items=items)


register_format(DatasetFormat("flickr", is_flickr, load_flickr, flickr_splits,
                              "Flickr8k/30k official token file (NAME.jpg#N<TAB>caption) + *Images.txt splits"))
