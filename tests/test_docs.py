"""The README and docs/ describe the project as it is: every repository path they mention exists."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")), REPO / "data" / "samples" / "README.md"]
# a path into the repository: starts with one of its top-level folders, may end with a file name or a slash
PATH = re.compile(r"(?<![\w./-])((?:captioner|scripts|tests|docs|data)/(?:[\w./*-]|\{[\w,.-]+\})*[\w*/}])")
BRACES = re.compile(r"\{([\w,.-]+)\}")
NOT_OURS = ("data/coco", "data/coco/")  # where the README's download example puts COCO (the user's own folder)


def expand(text: str) -> list[str]:
    """``a/{b,c}.png`` -> ``a/b.png``, ``a/c.png`` (shell brace expansion, as the docs write alternatives)."""
    match = BRACES.search(text)
    if not match:
        return [text]
    return [p for alt in match.group(1).split(",") for p in expand(text[: match.start()] + alt + text[match.end():])]


def mentioned_paths(path: Path) -> list[str]:
    found = {m.group(1).rstrip(".") for m in PATH.finditer(path.read_text(encoding="utf-8"))}
    return sorted(p for text in found for p in expand(text))


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_every_path_a_doc_mentions_exists(doc):
    missing = []
    for text in mentioned_paths(doc):
        if text.startswith(NOT_OURS) or text.startswith("data/coco/"):
            continue
        if "*" in text:
            if not list(REPO.glob(text)):
                missing.append(text)
        elif not (REPO / text).exists() and not (doc.parent / text).exists():
            missing.append(text)
    assert not missing, f"{doc.name} mentions paths that do not exist: {missing}"
