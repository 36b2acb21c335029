"""The official COCO archives: their addresses, sizes and MD5s, and subset manifests naming images to fetch.

:func:`download_coco` downloads one archive of :data:`COCO_FILES` with :func:`captioner.download.download` and
verifies it against the table. :func:`load_manifest` reads the images a subset manifest lists (the
``manifest.json`` of ``captioner data subset``, or any COCO captions file) and :func:`member_names` turns them
into member names of an image zip, for :func:`~captioner.download.extract_members` or
:func:`~captioner.download.fetch_remote_members`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from captioner.download.errors import DownloadError
from captioner.download.resumable import download

__all__ = ["COCO_BASE_URL", "COCO_FILES", "CocoFile", "coco_url", "download_coco", "load_manifest", "member_names"]

COCO_BASE_URL = "http://images.cocodataset.org"


@dataclass(frozen=True)
class CocoFile:
    """One official COCO archive.

    Attributes:
        url: the official download address.
        size: size in bytes, or None when not known for certain.
        md5: MD5 hex digest, or None when not known for certain (a SHA-256 sidecar is then recorded instead).
    """

    url: str
    size: int | None
    md5: str | None

    @property
    def filename(self) -> str:
        """The archive's file name, e.g. ``val2017.zip``."""
        return self.url.rsplit("/", 1)[-1]


# COCO's site publishes no checksums. The sizes are the Content-Length the official bucket serves; the MD5s are the
# values established downloaders verify against (the bucket's ETag equals the MD5 for single-part uploads). Left None
# where public references disagree (train2014) or are too thin to be sure (test2014): those get a SHA-256 sidecar.
COCO_FILES: dict[str, CocoFile] = {
    "annotations_trainval2014": CocoFile(
        f"{COCO_BASE_URL}/annotations/annotations_trainval2014.zip", 252_872_794, "0a379cfc70b0e71301e0f377548639bd"
    ),
    "annotations_trainval2017": CocoFile(
        f"{COCO_BASE_URL}/annotations/annotations_trainval2017.zip", 252_907_541, "f4bbac642086de4f52a3fdda2de5fa2c"
    ),
    "train2014": CocoFile(f"{COCO_BASE_URL}/zips/train2014.zip", 13_510_573_713, None),
    "val2014": CocoFile(f"{COCO_BASE_URL}/zips/val2014.zip", 6_645_013_297, "a3d79f5ed8d289b7a7554ce06a5782b3"),
    "test2014": CocoFile(f"{COCO_BASE_URL}/zips/test2014.zip", 6_660_437_059, None),
    "train2017": CocoFile(f"{COCO_BASE_URL}/zips/train2017.zip", 19_336_861_798, "cced6f7f71b7629ddf16f17bbcfab6b2"),
    "val2017": CocoFile(f"{COCO_BASE_URL}/zips/val2017.zip", 815_585_330, "442b8da7639aecaf257c1dceb8ba8c80"),
    "test2017": CocoFile(f"{COCO_BASE_URL}/zips/test2017.zip", 6_646_970_404, "77ad2c53ac5d0aea611d422c0938fb35"),
}


def coco_url(key: str, base_url: str | None = None) -> str:
    """The download address of one COCO archive.

    Args:
        key: a key of :data:`COCO_FILES`, e.g. ``"val2017"`` or ``"annotations_trainval2017"``.
        base_url: replaces ``http://images.cocodataset.org`` (a mirror, or a local test server); its path, if any,
            is kept as a prefix.

    Returns:
        The URL.

    Raises:
        DownloadError: unknown key.
    """
    if key not in COCO_FILES:
        raise DownloadError(f"unknown COCO archive {key!r}; choose one of {', '.join(COCO_FILES)}")
    url = COCO_FILES[key].url
    if base_url is None:
        return url
    return base_url.rstrip("/") + urlsplit(url).path


def download_coco(
    key: str,
    out_dir: str | os.PathLike[str],
    *,
    base_url: str | None = None,
    timeout: float = 60.0,
    retries: int = 5,
    retry_wait: float = 2.0,
    progress: bool = True,
) -> Path:
    """Download one COCO archive into ``out_dir`` and verify it against the table.

    Args:
        key: a key of :data:`COCO_FILES`.
        out_dir: folder for the archive (created when missing).
        base_url: host override, see :func:`coco_url`.
        timeout: seconds to wait for a connection or for data before the attempt fails.
        retries: further attempts after a network failure (each resumes where the last stopped).
        retry_wait: seconds before the first retry, doubled for each further one.
        progress: show a tqdm progress bar.

    Returns:
        The path of the verified archive.

    Raises:
        DownloadError: unknown key, or the download failed (see :func:`captioner.download.download`).
        ChecksumError: the archive does not match the table; it was renamed to ``<archive>.corrupt``.
    """
    url = coco_url(key, base_url)
    entry = COCO_FILES[key]
    dest = Path(out_dir) / entry.filename
    return download(
        url, dest, entry.size, entry.md5, timeout=timeout, retries=retries, retry_wait=retry_wait, progress=progress
    )


def member_names(file_names: Iterable[str], prefix: str) -> list[str]:
    """Member names inside an image zip: ``prefix`` + file name (``prefix`` gets a trailing ``/`` if non-empty).

    Args:
        file_names: image file names, e.g. from :func:`load_manifest`.
        prefix: the images' folder inside the zip, e.g. ``val2017``; ``""`` for none.

    Returns:
        The member names, e.g. ``["val2017/000000000139.jpg", ...]``.
    """
    if prefix and not prefix.endswith("/"):
        prefix += "/"
    return [prefix + name for name in file_names]


def load_manifest(path: str | os.PathLike[str]) -> list[str]:
    """Image file names of a subset manifest: a JSON object whose ``"images"`` list holds ``{"file_name": ...}``.

    The ``manifest.json`` written by ``captioner data subset`` and any COCO captions file are valid manifests.
    Duplicates are dropped, order is kept.

    Args:
        path: the JSON file.

    Returns:
        The file names, e.g. ``["000000000139.jpg", ...]``.

    Raises:
        DownloadError: missing file, invalid JSON or unexpected structure.
    """
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DownloadError(f"manifest {path} not found; pass an existing JSON file") from None
    except (ValueError, UnicodeDecodeError) as err:
        raise DownloadError(f"manifest {path} is not valid JSON ({err})") from None
    images = data.get("images") if isinstance(data, dict) else None
    if not isinstance(images, list):
        raise DownloadError(f'manifest {path} must be a JSON object with an "images" list (like a COCO captions file)')
    names = []
    for index, entry in enumerate(images):
        name = entry.get("file_name") if isinstance(entry, dict) else None
        if not isinstance(name, str) or not name:
            raise DownloadError(f'manifest {path}: images[{index}] has no "file_name" string')
        names.append(name)
    return list(dict.fromkeys(names))
