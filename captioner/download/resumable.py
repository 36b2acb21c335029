"""Whole-file downloads that survive interruptions: ``<dest>.part``, HTTP Range resumption, verification.

:func:`download` streams a file to ``<dest>.part``, resumes it with an HTTP ``Range`` request after an
interruption (in the same call, after a retry, or in a later run), verifies its size and MD5 (or its SHA-256
sidecar, see :mod:`captioner.download.checksum`) and renames it into place atomically.
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import urllib.error
from collections.abc import Mapping
from pathlib import Path
from typing import BinaryIO

from tqdm import tqdm

from captioner.download.checksum import (
    CHUNK_SIZE,
    atomic_write_text,
    check_digest,
    hash_file,
    new_digest,
    sidecar_path,
    verify_file,
)
from captioner.download.errors import DownloadError, TransientError
from captioner.download.http import content_length, content_range, open_url, retrying, unsatisfied_total

__all__ = ["download"]

logger = logging.getLogger(__name__)


class _PartFile:
    """The growing ``<dest>.part`` of one download, a running digest of its bytes, and its resume validator.

    The validator (the first answer's ``ETag`` or ``Last-Modified``) is kept in ``<dest>.part.json`` and sent as
    ``If-Range`` when resuming, so a server whose file changed sends the whole new file instead of a mismatched
    rest.
    """

    def __init__(self, dest: Path, use_md5: bool) -> None:
        self.path = dest.with_name(dest.name + ".part")
        self.meta_path = dest.with_name(dest.name + ".part.json")
        self._use_md5 = use_md5
        self.digest = new_digest(use_md5)
        self.size = 0
        if self.path.exists():
            logger.info("found %s; hashing its bytes before resuming", self.path)
            self.size = hash_file(self.path, self.digest)

    def restart(self) -> None:
        """Throw the partial bytes away."""
        self.path.write_bytes(b"")
        self.size = 0
        self.digest = new_digest(self._use_md5)
        self.meta_path.unlink(missing_ok=True)

    def append(self, fh: BinaryIO, chunk: bytes) -> None:
        """Write ``chunk`` to the open part file ``fh`` and account for it."""
        fh.write(chunk)
        self.digest.update(chunk)
        self.size += len(chunk)

    def resume_headers(self) -> dict[str, str]:
        """``Range`` (and ``If-Range`` so a changed file is sent whole) for continuing; empty at byte 0."""
        if not self.size:
            return {}
        headers = {"Range": f"bytes={self.size}-"}
        try:
            meta = json.loads(self.meta_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return headers
        etag, modified = meta.get("etag"), meta.get("last_modified")
        if isinstance(etag, str) and etag and not etag.startswith("W/"):
            headers["If-Range"] = etag
        elif isinstance(modified, str) and modified:
            headers["If-Range"] = modified
        return headers

    def remember_validator(self, headers: Mapping[str, str]) -> None:
        """Keep the ``ETag`` and ``Last-Modified`` of a full answer for a later ``If-Range``."""
        meta = {"etag": headers.get("ETag"), "last_modified": headers.get("Last-Modified")}
        atomic_write_text(self.meta_path, json.dumps(meta))


def download(url: str, dest: str | os.PathLike[str], expected_size: int | None = None,
             expected_md5: str | None = None, *, timeout: float = 60.0, retries: int = 5, retry_wait: float = 2.0,
             progress: bool = True) -> Path:
    """Download ``url`` to ``dest``, resuming an earlier partial download and verifying the result.

    Bytes go to ``<dest>.part``; after an interruption the next attempt (or the next call) asks for the rest with
    ``Range: bytes=N-``. A server that answers 200 instead of 206 (no Range support, or the file changed) makes the
    download start again from zero. The complete file is checked against ``expected_size`` and ``expected_md5``;
    without an MD5 its SHA-256 is recorded in ``<dest>.sha256`` at the first download and checked afterwards. Only
    then is it renamed to ``dest`` (atomically). An existing ``dest`` is verified the same way instead of downloaded.

    Args:
        url: http(s) address.
        dest: final path of the file.
        expected_size: size in bytes, when known.
        expected_md5: MD5 hex digest, when known.
        timeout: seconds to wait for a connection or for data before the attempt fails.
        retries: further attempts after a network failure.
        retry_wait: seconds before the first retry, doubled for each further one.
        progress: show a tqdm progress bar.

    Returns:
        ``dest`` as a Path.

    Raises:
        DownloadError: the server refused or kept failing (the ``.part`` file is kept for the next run).
        ChecksumError: the file does not match its reference; it was renamed to ``<dest>.corrupt``.
    """
    dest = Path(dest)
    if dest.exists():
        verify_file(dest, expected_size, expected_md5)
        logger.info("%s is already complete and verified", dest)
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = _PartFile(dest, expected_md5 is not None)
    logger.info("downloading %s to %s", url, dest)
    retrying(lambda: _fetch_into(url, part, expected_size, timeout, progress, dest.name), f"download of {url}",
             retries, retry_wait)
    hexdigest = part.digest.hexdigest()
    record = check_digest(part.path, dest, part.size, hexdigest, expected_size, expected_md5)
    os.replace(part.path, dest)
    part.meta_path.unlink(missing_ok=True)
    if record:
        atomic_write_text(sidecar_path(dest), f"{hexdigest}  {dest.name}\n")
        logger.info("no published checksum for %s; recorded its SHA-256 in %s", dest.name, sidecar_path(dest).name)
    return dest


def _fetch_into(
    url: str, part: _PartFile, expected_size: int | None, timeout: float, progress: bool, label: str
) -> None:
    """One attempt: append the missing bytes of ``url`` to ``part`` (raises ``TransientError`` when cut short)."""
    if expected_size is not None and part.size > expected_size:
        logger.warning("%s is larger than the expected %d bytes; starting again", part.path, expected_size)
        part.restart()
    if expected_size is not None and part.size == expected_size:
        return
    try:
        response = open_url(url, part.resume_headers(), timeout)
    except urllib.error.HTTPError as err:
        if err.code != 416 or not part.size:
            raise
        total = unsatisfied_total(err.headers)
        err.close()
        if total == part.size:
            return
        logger.warning("%s: the server cannot resume at byte %d; starting again", url, part.size)
        part.restart()
        return _fetch_into(url, part, expected_size, timeout, progress, label)
    with response:
        total = _accept_response(url, response, part, expected_size)
        with open(part.path, "ab") as fh, tqdm(
            total=total, initial=part.size, unit="B", unit_scale=True, unit_divisor=1024, desc=label,
            disable=not progress,
        ) as bar:
            while chunk := response.read(CHUNK_SIZE):
                part.append(fh, chunk)
                bar.update(len(chunk))
    if total is not None and part.size < total:
        raise TransientError(f"connection closed after {part.size} of {total} bytes")


def _accept_response(
    url: str, response: http.client.HTTPResponse, part: _PartFile, expected_size: int | None
) -> int | None:
    """Check a 200/206 answer against the partial file; returns the full size of the file when the server says."""
    if response.status == 206:
        first, last, total = content_range(response.headers)
        if first != part.size:
            part.restart()
            raise TransientError(f"asked to resume at byte {part.size} but the server sent bytes from {first}")
        total = last + 1 if total is None else total  # "bytes N-M/*": the open-ended range ends with the file
        logger.info("resuming %s at byte %d", url, first)
    elif response.status == 200:
        if part.size:
            logger.warning("%s: the server sent the whole file instead of the rest; starting again from zero", url)
            part.restart()
        total = content_length(response.headers)
        part.remember_validator(response.headers)
    else:
        raise DownloadError(f"{url}: unexpected HTTP {response.status}; check the URL (or --base-url)")
    if expected_size is not None and total is not None and total != expected_size:
        raise DownloadError(
            f"{url}: the server reports {total} bytes but {expected_size} are expected; the archive changed "
            "upstream or the URL (--base-url) points at a different file"
        )
    return total
