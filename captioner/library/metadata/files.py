"""Replacing a photo or a sidecar safely: a temporary copy in the same folder takes the new metadata, is flushed to
disk and renamed over the file (readers, and a kill at any moment, see the old file or the new one, never half of
one), with the old file's permissions; where the sidecar goes; whether a file or folder may be written."""

from __future__ import annotations

import glob
import os
import shutil
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from captioner.fileio import process_alive
from captioner.library.metadata.records import MetadataError

SIDECAR_NAMINGS = ("append", "replace")  # photo.jpg.xmp | photo.xmp
TEMP_MARK = ".captioner-"


def sidecar_path(path: str | Path, naming: str = "append") -> Path:
    """The XMP sidecar of ``path``: ``photo.jpg.xmp`` (``append``, darktable and digiKam's naming) or
    ``photo.xmp`` (``replace``, Adobe's naming). An existing ``.XMP`` of the same name is used as it is."""
    if naming not in SIDECAR_NAMINGS:
        raise ValueError(f"sidecar naming must be one of {', '.join(SIDECAR_NAMINGS)}, not {naming!r}")
    path = Path(path)
    base = path.name if naming == "append" else path.stem
    upper = path.with_name(f"{base}.XMP")
    return upper if upper.is_file() and not path.with_name(f"{base}.xmp").exists() else path.with_name(f"{base}.xmp")


def temp_path(path: Path) -> Path:
    """The temporary file beside ``path`` that this process writes: ``.NAME.captioner-PID.tmp``."""
    return path.with_name(f".{path.name}{TEMP_MARK}{os.getpid()}.tmp")



def remove_stale_temporaries(path: Path) -> list[Path]:
    """Delete the temporary copies of ``path`` that killed writes left (their process is gone); returns them."""
    removed = []
    for tmp in path.parent.glob(f".{glob.escape(path.name)}{TEMP_MARK}*.tmp"):
        pid = tmp.name[len(f".{path.name}{TEMP_MARK}"):-len(".tmp")]
        if pid.isdigit() and not process_alive(int(pid)) and tmp.is_file():
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


def no_write_bits(st: os.stat_result) -> bool:
    return not st.st_mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH)


def check_may_write(path: Path, exists: bool) -> None:
    """A :class:`MetadataError` when ``path`` is read-only or its folder is (a file or folder with no write
    permission bit at all counts as read-only for root too: someone made it so)."""
    if exists:
        if not path.is_file():
            raise MetadataError(f"{path}: not a regular file; left unchanged")
        if not os.access(path, os.W_OK) or no_write_bits(path.stat()):
            raise MetadataError(f"{path}: the file is read-only; left unchanged (use sidecar mode, or make it "
                                "writable)")
    folder = path.parent
    if not os.access(folder, os.W_OK | os.X_OK) or no_write_bits(folder.stat()):
        raise MetadataError(f"{path}: cannot write into the folder {folder} (read-only); left unchanged")


def fsync_file(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def fsync_folder(folder: Path) -> None:
    if os.name == "nt":  # folders cannot be opened for fsync there
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _keep_owner_and_mode(tmp: Path, before: os.stat_result) -> None:
    os.chmod(tmp, stat.S_IMODE(before.st_mode))
    now = tmp.stat()
    if (now.st_uid, now.st_gid) != (before.st_uid, before.st_gid) and hasattr(os, "chown"):
        try:
            os.chown(tmp, before.st_uid, before.st_gid)
        except OSError:  # not allowed to give the file away: it becomes the writer's, as any editor would
            pass


def _same_file(before: os.stat_result, path: Path) -> bool:
    now = path.stat()
    return (now.st_ino, now.st_size, now.st_mtime_ns) == (before.st_ino, before.st_size, before.st_mtime_ns)


def _finish(tmp: Path, path: Path, before: os.stat_result | None, keep_mtime: bool) -> None:
    """Flush ``tmp`` and rename it over ``path``, unless ``path`` changed (or appeared) meanwhile."""
    if before is not None:
        _keep_owner_and_mode(tmp, before)
    fsync_file(tmp)
    if before is not None and keep_mtime:
        os.utime(tmp, ns=(before.st_atime_ns, before.st_mtime_ns))
    if before is not None and not _same_file(before, path):
        raise MetadataError(f"{path}: changed by another program while the caption was written; left unchanged")
    if before is None and path.exists():
        raise MetadataError(f"{path}: appeared while it was written (another program?); left unchanged")
    os.replace(tmp, path)
    fsync_folder(path.parent)


@contextmanager
def replacing(path: Path, before: os.stat_result | None, keep_mtime: bool = False) -> Iterator[Path]:
    """A temporary path beside ``path`` to set metadata in: a copy of ``path`` when it exists (``before``: its stat
    when the caller first read it; a change since then is an error), else nothing there yet. On leaving, it is flushed and renamed over ``path`` with ``path``'s permission bits (and owner
    where allowed; with ``keep_mtime`` its access and modification times); on any failure it is removed and
    ``path`` is untouched. A kill leaves ``path`` untouched and at most a ``.NAME.captioner-PID.tmp`` beside it,
    which :func:`remove_stale_temporaries` (called by the next write of that file) deletes."""
    remove_stale_temporaries(path)
    tmp = temp_path(path)
    try:
        if before is not None:
            shutil.copyfile(path, tmp)
        yield tmp
        _finish(tmp, path, before, keep_mtime)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
