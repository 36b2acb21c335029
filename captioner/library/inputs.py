"""The photos a run captions: files and directories (searched recursively) in one sorted order, every argument that
names nothing usable reported, and one shard of the list when several processes split it."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

from captioner.images import is_image_file


def collect_images(paths: list[str]) -> Iterator[tuple[Path, str | None]]:
    """Yield ``(path, None)`` for each file to caption and ``(path, reason)`` for each argument that fails.

    A directory gives its image files (by extension, searched recursively), sorted; a named file is taken whatever
    its extension. Paths keep the form they were given in (relative stays relative).
    """
    for text in paths:
        path = Path(text)
        try:
            if path.is_dir():
                found = sorted(p for p in path.rglob("*") if is_image_file(p) and p.is_file())
                if not found:
                    yield path, "directory holds no image files"
                yield from ((p, None) for p in found)
            elif path.exists():
                yield path, None
            else:
                yield path, "no such file or directory"
        except OSError as err:  # a name the file system refuses (too long), a directory it cannot list
            yield path, err.strerror or str(err)


def parse_shard(text: str) -> tuple[int, int]:
    """``"K/N"`` -> ``(K, N)`` with 1 <= K <= N (shard K of N; ``1/4`` is the first of four).

    Raises:
        ValueError: not of that form.
    """
    index, _, count = text.partition("/")
    try:
        k, n = int(index), int(count)
    except ValueError:
        raise ValueError(f"a shard is K/N with whole numbers (e.g. 2/4 for the second of four), got {text!r}") from None
    if not 1 <= k <= n:
        raise ValueError(f"shard {text}: K must be between 1 and N")
    return k, n


def shard_from_env() -> tuple[int, int] | None:
    """Under torchrun (``RANK`` and ``WORLD_SIZE`` set): this process's shard ``(RANK + 1, WORLD_SIZE)``."""
    rank, world = os.environ.get("RANK"), os.environ.get("WORLD_SIZE")
    if rank is None or world is None or int(world) < 2:
        return None
    return int(rank) + 1, int(world)


def in_shard(position: int, shard: tuple[int, int] | None) -> bool:
    """Whether the ``position``-th photo of the sorted list (0-based) belongs to ``shard`` (every N-th photo)."""
    return shard is None or position % shard[1] == shard[0] - 1
