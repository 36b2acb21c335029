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
    Problems,
    first_dir,
    image_name,
    register_format,
)
from captioner.data.folder import build_items, read_name_list
from captioner.data.textfile import text_lines

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


def read_token_file(token: Path, problems: Problems) -> dict[str, list[tuple[str, str]]]:
    """``NAME.jpg#N<TAB>caption`` lines → image name → ``(where, raw caption)`` pairs (file order); bad lines are
    recorded in ``problems``."""
    captions: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for number, line in text_lines(token, problems):
        where = f"{token}:{number}"
        if not line.strip():
            continue
        fields = line.split("\t")
        name, hash_sign, _ = fields[0].partition("#")
        if len(fields) != 2 or not hash_sign:
            found = "no tab" if len(fields) == 1 else ("no '#N' after the name" if len(fields) == 2 else
                                                        f"{len(fields)} tab-separated fields")
            problems.error(where, f"expected 'NAME.jpg#N<TAB>caption', found {found}")
            continue
        name = image_name(name, where, problems)
        if name is not None:
            captions[name].append((where, fields[1]))
    return captions


def load_flickr(path: Path, split: str, images: Path | None, problems: Problems) -> CaptionSet:
    token = _token_file(path)
    if token is None:
        raise DatasetError(f"{path}: no Flickr token file ({', '.join(TOKEN_NAMES)})")
    captions = read_token_file(token, problems)
    if split == "all":
        names = {name: entries[0][0] for name, entries in captions.items()}
    else:
        files = _split_files(token)
        alias = "val" if split == "dev" else split
        if alias not in files:
            raise DatasetError(f"{token.parent}: no *{SPLIT_SUFFIXES.get(alias, alias + 'Images.txt')} split file "
                               f"(available splits: {', '.join(flickr_splits(path))})")
        names = read_name_list(files[alias], problems)
    places = [token.parent / d for d in IMAGE_DIRS] + [token.parent.parent / d for d in IMAGE_DIRS]
    items = build_items(names, captions, images or first_dir(places, str(token)), token.name, problems)
    return CaptionSet(root=path, split=split, items=items)


register_format(DatasetFormat("flickr", is_flickr, load_flickr, flickr_splits,
                              "Flickr8k/30k official token file (NAME.jpg#N<TAB>caption) + *Images.txt splits"))
