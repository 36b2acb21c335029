"""Checksums of downloaded files: size and MD5, SHA-256 sidecars, CRC-32 of extracted members.

COCO publishes no checksums; :data:`~captioner.download.coco.COCO_FILES` holds the known sizes and MD5s. A file
without a known MD5 gets its SHA-256 recorded at the first download in ``<file>.sha256`` (the format of
``sha256sum``), and later runs compare against it. A file that fails a check is renamed to ``<file>.corrupt`` so
that the next run downloads it again instead of trusting it.
"""

from __future__ import annotations

import hashlib
import logging
import os
import zlib
from pathlib import Path

from captioner.download.errors import ChecksumError

__all__ = [
    "CHUNK_SIZE",
    "atomic_write_text",
    "check_digest",
    "crc32_of_file",
    "hash_file",
    "new_digest",
    "sidecar_path",
    "verify_file",
]

logger = logging.getLogger(__name__)

CHUNK_SIZE = 1 << 20
"""Bytes read at a time from files and HTTP responses."""


def sidecar_path(path: Path) -> Path:
    """Where the SHA-256 of ``path`` is recorded: ``<path>.sha256``."""
    return path.with_name(path.name + ".sha256")


def new_digest(use_md5: bool) -> hashlib._Hash:
    """A fresh MD5 (when checking against a published MD5) or SHA-256 hash object."""
    return hashlib.md5(usedforsecurity=False) if use_md5 else hashlib.sha256()


def hash_file(path: Path, digest: hashlib._Hash) -> int:
    """Feed the file to ``digest``; returns its size."""
    size = 0
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK_SIZE):
            digest.update(chunk)
            size += len(chunk)
    return size


def crc32_of_file(path: Path) -> int:
    """The CRC-32 of a file, as zip archives record it."""
    crc = 0
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK_SIZE):
            crc = zlib.crc32(chunk, crc)
    return crc


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename, so readers never see half of it."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _read_sidecar(sidecar: Path) -> str | None:
    """The hex digest recorded in a sidecar (lower case), or None when there is none."""
    try:
        fields = sidecar.read_text(encoding="utf-8").split()
    except FileNotFoundError:
        return None
    return fields[0].lower() if fields else None


def check_digest(
    src: Path, dest: Path, size: int, hexdigest: str, expected_size: int | None, expected_md5: str | None
) -> bool:
    """Compare a file (at ``src``, to become ``dest``) with its reference; move it aside when it differs.

    The reference is ``expected_size`` and ``expected_md5`` when given (``hexdigest`` is then an MD5), otherwise
    the SHA-256 recorded in ``dest``'s sidecar (``hexdigest`` is then a SHA-256).

    Args:
        src: the file as it is now (``dest`` itself, or ``<dest>.part``).
        dest: the file's final path; names the sidecar and the ``.corrupt`` file.
        size: the file's size in bytes.
        hexdigest: the file's MD5 or SHA-256, see above.
        expected_size: size in bytes, when known.
        expected_md5: MD5 hex digest, when known.

    Returns:
        True when no reference exists yet and the caller should record ``hexdigest`` (a SHA-256) in the sidecar.

    Raises:
        ChecksumError: size, MD5 or recorded SHA-256 differs; the file was renamed to ``<dest>.corrupt``.
    """
    sidecar = sidecar_path(dest)
    problem, hint = None, ""
    if expected_size is not None and size != expected_size:
        problem = f"its size is {size} bytes, expected {expected_size}"
    elif expected_md5 is not None:
        if hexdigest != expected_md5.lower():
            problem = f"its MD5 is {hexdigest}, expected {expected_md5}"
    else:
        recorded = _read_sidecar(sidecar)
        if recorded is None:
            return True
        if recorded != hexdigest:
            problem = f"its SHA-256 is {hexdigest} but {sidecar.name} recorded {recorded} at the first download"
            hint = f" (if the file legitimately changed upstream, delete {sidecar} too)"
    if problem is None:
        return False
    corrupt = dest.with_name(dest.name + ".corrupt")
    os.replace(src, corrupt)
    raise ChecksumError(
        f"{dest} is corrupt: {problem}; it was moved to {corrupt} - delete that and rerun to download again{hint}"
    )


def verify_file(
    path: str | os.PathLike[str], expected_size: int | None = None, expected_md5: str | None = None
) -> None:
    """Check a complete file against its size and MD5, or against its SHA-256 sidecar when no MD5 is known.

    When neither an MD5 nor a sidecar exists, the file's SHA-256 is recorded in ``<path>.sha256`` so later runs
    can detect a change.

    Args:
        path: the file.
        expected_size: size in bytes, when known.
        expected_md5: MD5 hex digest, when known.

    Raises:
        ChecksumError: the file differs from its reference; it was renamed to ``<path>.corrupt``.
    """
    path = Path(path)
    digest = new_digest(expected_md5 is not None)
    size = hash_file(path, digest)
    if check_digest(path, path, size, digest.hexdigest(), expected_size, expected_md5):
        logger.warning("%s has no published checksum; recorded its SHA-256 in %s", path, sidecar_path(path).name)
        atomic_write_text(sidecar_path(path), f"{digest.hexdigest()}  {path.name}\n")
