"""Fetch the COCO archives: resumable, verified downloads and partial extraction, from a local zip or over HTTP.

Three ways to get images, from most to least data moved:

- :func:`download` streams a whole archive to ``<dest>.part``, resumes it with an HTTP ``Range`` request after an
  interruption, verifies its size and MD5 (or, when no checksum is published, a SHA-256 recorded at the first
  download in ``<dest>.sha256``) and renames it into place atomically.
- :func:`extract_members` takes only the listed members out of a local zip.
- :func:`fetch_remote_members` reads a remote zip's directory and the listed members with ``Range`` requests, so a
  few hundred images of the 18 GB ``train2017.zip`` cost a few megabytes (ZIP64 archives included).

Every failure meant for users is a :class:`DownloadError` (or a subclass) whose message is one line saying what
went wrong and what to do next. Work already done (a ``.part`` file, fetched members) is kept for the next run.

Modules, one concept each (the public names are re-exported here):

- :mod:`~captioner.download.errors`: the exceptions.
- :mod:`~captioner.download.http`: requests, retries with back-off, ``Range`` header parsing.
- :mod:`~captioner.download.checksum`: size, MD5, SHA-256 sidecars, CRC-32; :func:`verify_file`.
- :mod:`~captioner.download.resumable`: :func:`download`.
- :mod:`~captioner.download.extract`: safe member paths, atomic checked writes; :func:`extract_members`.
- :mod:`~captioner.download.zipfile_remote`: central directory parsing; :class:`RemoteZip`,
  :func:`fetch_remote_members`.
- :mod:`~captioner.download.coco`: the archive table, :func:`download_coco`, subset manifests.

The command line is ``captioner data download`` (:mod:`captioner.cli.download`).
"""

from __future__ import annotations

from captioner.download.checksum import verify_file
from captioner.download.coco import (
    COCO_BASE_URL,
    COCO_FILES,
    CocoFile,
    coco_url,
    download_coco,
    load_manifest,
    member_names,
)
from captioner.download.errors import ChecksumError, DownloadError, RemoteZipError, UnsafePathError
from captioner.download.extract import TransferReport, extract_members, safe_member_path
from captioner.download.resumable import download
from captioner.download.zipfile_remote import RemoteZip, ZipMember, fetch_remote_members

__all__ = [
    "COCO_BASE_URL",
    "COCO_FILES",
    "ChecksumError",
    "CocoFile",
    "DownloadError",
    "RemoteZip",
    "RemoteZipError",
    "TransferReport",
    "UnsafePathError",
    "ZipMember",
    "coco_url",
    "download",
    "download_coco",
    "extract_members",
    "fetch_remote_members",
    "load_manifest",
    "member_names",
    "safe_member_path",
    "verify_file",
]
