"""Writing zip members to disk safely: path checks, atomic CRC-checked writes, and extraction from a local zip.

:func:`extract_members` takes only the listed members out of a local zip. The helpers here are shared with
:mod:`captioner.download.zipfile_remote`, which writes members fetched over HTTP the same way: every name is
checked before anything is written (:func:`safe_member_path`), every member goes through ``<name>.part`` and is
renamed only after its size and CRC-32 match (:func:`write_member`), and members already present and valid are
skipped (:func:`is_complete`), so an interrupted run continues where it stopped.
"""

from __future__ import annotations

import logging
import os
import re
import zipfile
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from captioner.download.checksum import CHUNK_SIZE, crc32_of_file
from captioner.download.errors import ChecksumError, DownloadError, UnsafePathError

__all__ = ["TransferReport", "extract_members", "is_complete", "safe_member_path", "select_members", "write_member"]

logger = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class TransferReport:
    """What an extraction or a remote fetch did.

    Attributes:
        written: members written (fetched or extracted).
        skipped: members already present with the right size and CRC-32.
        bytes_transferred: bytes received over HTTP (0 for a local zip).
        archive_size: size of the archive in bytes.
    """

    written: int
    skipped: int
    bytes_transferred: int
    archive_size: int


def safe_member_path(out_dir: str | os.PathLike[str], name: str) -> Path:
    """Where a zip member named ``name`` goes under ``out_dir``, refusing names that would escape it.

    Args:
        out_dir: extraction folder.
        name: member name as stored in the archive (``/`` separated).

    Returns:
        ``out_dir / name``.

    Raises:
        UnsafePathError: absolute name, drive letter, ``..`` component, or a name resolving outside ``out_dir``.
    """
    norm = name.replace("\\", "/")
    parts = norm.split("/")
    if not norm.strip("/") or norm.startswith("/") or re.match(r"^[A-Za-z]:", norm) or ".." in parts or "\0" in norm:
        raise UnsafePathError(f"refusing zip member {name!r}: it would be written outside {out_dir}")
    root = Path(out_dir).resolve()
    target = (root / norm).resolve()
    if target == root or not target.is_relative_to(root):
        raise UnsafePathError(f"refusing zip member {name!r}: it resolves outside {out_dir}")
    return Path(out_dir) / norm


def select_members(available: Mapping[str, T], names: Iterable[str], source: object) -> list[T]:
    """The entries for ``names`` (deduplicated, in order), or an error naming the missing ones.

    Args:
        available: the archive's entries by member name.
        names: the member names asked for.
        source: the archive (path or URL), for the message.

    Raises:
        DownloadError: some names are not in ``available``.
    """
    wanted = list(dict.fromkeys(names))
    missing = [name for name in wanted if name not in available]
    if missing:
        raise DownloadError(
            f"{len(missing)} of {len(wanted)} requested members are not in {source} (first: "
            f"{', '.join(missing[:3])}); check the file names and the member prefix"
        )
    return [available[name] for name in wanted]


def is_complete(path: Path, size: int, crc: int) -> bool:
    """True when ``path`` already holds a member of this size and CRC-32."""
    return path.is_file() and path.stat().st_size == size and crc32_of_file(path) == crc


def write_member(pieces: Iterable[bytes], target: Path, size: int, crc: int, label: str) -> None:
    """Write decompressed ``pieces`` to ``target`` atomically, checking size and CRC-32 before the rename.

    Args:
        pieces: the member's decompressed data.
        target: where it goes; ``<target>.part`` is used meanwhile and removed on any failure.
        size: the size the zip directory declares.
        crc: the CRC-32 the zip directory declares.
        label: ``<archive>:<member>``, for messages.

    Raises:
        ChecksumError: the data does not match ``size`` or ``crc``.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".part")
    try:
        written, running = 0, 0
        with open(tmp, "wb") as fh:
            for piece in pieces:
                written += len(piece)
                if written > size:
                    raise ChecksumError(f"{label}: more data than the {size} bytes the zip directory declares")
                running = zlib.crc32(piece, running)
                fh.write(piece)
        if written != size or running != crc:
            raise ChecksumError(
                f"{label}: got {written} bytes with CRC-32 {running:08x}, the zip directory says {size} bytes with "
                f"{crc:08x}; the archive is damaged - download it again"
            )
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def extract_members(
    zip_path: str | os.PathLike[str], names: Iterable[str] | None, out_dir: str | os.PathLike[str]
) -> TransferReport:
    """Extract only the listed members of a local zip, each atomically; members already present are skipped.

    Args:
        zip_path: the archive.
        names: member names (e.g. ``val2017/000000000139.jpg``); None extracts every member.
        out_dir: members go to ``out_dir / name``.

    Returns:
        A report (``bytes_transferred`` is 0).

    Raises:
        DownloadError: missing or damaged archive, names not in it.
        UnsafePathError: a member would be written outside ``out_dir`` (checked before anything is written).
        ChecksumError: a member's data does not match its size or CRC-32.
    """
    try:
        with zipfile.ZipFile(zip_path) as archive:
            infos = {info.filename: info for info in archive.infolist()}
            chosen = select_members(infos, list(infos) if names is None else names, zip_path)
            targets = [(info, safe_member_path(out_dir, info.filename)) for info in chosen]
            written = skipped = 0
            for info, target in targets:
                if info.is_dir():
                    target.mkdir(parents=True, exist_ok=True)
                elif is_complete(target, info.file_size, info.CRC):
                    skipped += 1
                else:
                    with archive.open(info) as src:
                        pieces = iter(lambda: src.read(CHUNK_SIZE), b"")
                        write_member(pieces, target, info.file_size, info.CRC, f"{zip_path}:{info.filename}")
                    written += 1
    except FileNotFoundError:
        raise DownloadError(f"{zip_path} not found; download it first") from None
    except zipfile.BadZipFile as err:
        raise DownloadError(f"{zip_path} is damaged ({err}); delete it and download it again") from None
    logger.info("extracted %d members of %s (%d already present)", written, zip_path, skipped)
    return TransferReport(written, skipped, 0, os.path.getsize(zip_path))
