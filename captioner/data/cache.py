"""Memory-mapped cache of image vectors for frozen encoders.

Each image is encoded once. Entries are keyed by the encoder's identity (name, weights, preprocessing) and by the
SHA-256 of the image file's bytes, so renaming a file keeps its entry, editing it or changing the encoder or the
preprocessing makes a new one. Layout under the cache root::

    <root>/<sha256(encoder key)[:16]>/key.json       the full encoder key, the row shape and dtype, for humans
                                     /index.json     {file sha256: row}
                                     /checksums.json {file sha256: CRC-32 of its row}
                                     /features.f32   float32 rows of shape (D,) (np.memmap)
                                     /features.f16   or float16 rows, e.g. feature maps of shape (L, D)

Pooled vectors are stored as float32; feature maps (81 times larger for a 9x9 map) as float16.

Rows are checked against their CRC-32 before a split uses them (:meth:`FeatureCache.verify`): a row that was
damaged or cut short is encoded again, never silently used. Rows written before checksums existed get theirs on
first check.
"""

from __future__ import annotations

import errno
import fcntl
import functools
import hashlib
import json
import logging
import os
import zlib
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from captioner.fileio import SaveError, atomic_write_text, cache_root, file_sha256, save_error

logger = logging.getLogger(__name__)


def default_cache_dir() -> Path:
    """The feature cache: :func:`cache_root` plus ``/features``."""
    return cache_root() / "features"


_DENIED = (errno.EACCES, errno.EPERM, errno.EROFS)


def cache_access_error(root: Path, err: OSError) -> SaveError:
    """The one-line error for a feature cache this user may not read or write: the cache, the file, and what to
    do (a :class:`SaveError`, so every command prints it as one ``error:`` line)."""
    where = f" ({err.filename})" if err.filename else ""
    return SaveError(err.errno, f"cannot use the feature cache {root}: {os.strerror(err.errno).lower()}{where}; fix "
                                "its permissions, or pass --cache-dir DIR (or set CAPTIONER_CACHE) to use a directory "
                                "this user can write", err.filename)


def _advising(method: Callable) -> Callable:
    """A :class:`FeatureCache` method whose permission errors become :func:`cache_access_error`."""
    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except OSError as err:
            if err.errno not in _DENIED:
                raise
            raise cache_access_error(self.root, err) from None
    return wrapper


class FeatureCache:
    """Image features of one encoder configuration, memory-mapped.

    Args:
        root: cache root directory (shared by all encoders).
        key: identifies the encoder, its weights and its preprocessing.
        dim: width of the vectors, or the shape of one image's features, e.g. ``(L, D)`` for a feature map.
        dtype: ``float32`` or ``float16`` (stored and returned).
    """

    @_advising
    def __init__(self, root: str | Path, key: str, dim: int | tuple[int, ...], dtype: str = "float32") -> None:
        self.root = Path(root)
        if dtype not in _SUFFIX:
            raise ValueError(f"feature cache dtype must be one of {sorted(_SUFFIX)}, got {dtype!r}")
        self.key, self.dtype = key, np.dtype(dtype)
        self.shape = (dim,) if isinstance(dim, int) else tuple(dim)
        self.dim = int(np.prod(self.shape))  # values per row
        self.dir = Path(root) / hashlib.sha256(key.encode()).hexdigest()[:16]
        self.dir.mkdir(parents=True, exist_ok=True)
        key_file = self.dir / "key.json"
        if not key_file.exists():
            about = {"key": key, "dim": self.dim}
            if len(self.shape) > 1 or dtype != "float32":  # pooled float32 caches keep their original key file
                about.update(shape=list(self.shape), dtype=dtype)
            atomic_write_text(key_file, json.dumps(about, indent=2))
        self._data = self.dir / f"features.{_SUFFIX[dtype]}"
        self._index_file = self.dir / "index.json"
        self._crc_file = self.dir / "checksums.json"
        self.index: dict[str, int] = self._read_index()

    def _read_checksums(self) -> dict[str, int]:
        try:
            return {str(k): int(v) for k, v in json.loads(self._crc_file.read_text()).items()}
        except (OSError, ValueError, AttributeError):
            return {}

    def _read_index(self) -> dict[str, int]:
        if not self._index_file.exists():
            return {}
        try:
            return {str(k): int(v) for k, v in json.loads(self._index_file.read_text()).items()}
        except (ValueError, AttributeError):
            logger.warning("feature cache index %s is corrupt; starting it again", self._index_file)
            return {}

    @contextmanager
    def _locked(self):
        with open(self.dir / ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    @_advising
    def add(self, hashes: Sequence[str], features: np.ndarray) -> None:
        """Append features ``(N, *shape)`` for the given file hashes (appends, then publishes the index
        atomically)."""
        features = np.ascontiguousarray(features, dtype=self.dtype)
        if features.shape != (len(hashes), *self.shape):
            raise ValueError(f"expected features of shape {(len(hashes), *self.shape)}, got {features.shape}")
        with self._locked():
            self.index = self._read_index()
            try:
                with open(self._data, "ab") as handle:
                    row_bytes = self.dtype.itemsize * self.dim
                    first = handle.tell() // row_bytes
                    if handle.tell() % row_bytes:  # a row cut short by a killed writer: overwrite it
                        handle.truncate(first * row_bytes)
                    handle.write(features.tobytes())
                    handle.flush()
                    os.fsync(handle.fileno())
            except OSError as err:  # disk full: the index still lists only complete rows
                raise save_error(self._data, err) from None
            self.index.update({h: first + i for i, h in enumerate(hashes)})
            checksums = self._read_checksums()
            checksums.update({h: zlib.crc32(row.tobytes()) for h, row in zip(hashes, features)})
            atomic_write_text(self._crc_file, json.dumps(checksums))
            atomic_write_text(self._index_file, json.dumps(self.index))

    @_advising
    def get(self, hashes: Sequence[str], out: np.ndarray | None = None,
            at: Sequence[int] | None = None) -> np.ndarray:
        """Features ``(N, *shape)`` for hashes that are all in the cache (a copy in memory).

        Args:
            hashes: the images' file hashes.
            out: an array to write the rows into (default: a new ``(N, *shape)`` one), so that a caller assembling a
                larger array holds one copy, not two.
            at: the row of ``out`` for each hash (default: ``0 .. N-1``).

        Read with plain file reads into one array rather than through a memory map: the pages a map touches count
        in the process's resident memory next to the copy, which doubled the peak memory of loading a training
        split's feature maps (2 x 1.1 GB for Flickr8k's); read, the page cache is the kernel's, not ours.
        """
        rows = [self.index[h] for h in hashes]
        if out is None:
            out = np.empty((len(rows), *self.shape), dtype=self.dtype)  # (N, *shape)
        at = range(len(rows)) if at is None else at
        row_bytes = self.dtype.itemsize * self.dim
        with open(self._data, "rb") as handle:
            for i in sorted(range(len(rows)), key=rows.__getitem__):  # in file order
                handle.seek(rows[i] * row_bytes)
                if handle.readinto(memoryview(out[at[i]]).cast("B")) != row_bytes:
                    raise OSError(f"feature cache {self._data} is shorter than its index says (row {rows[i]}); "
                                  f"delete {self.dir} and run again to rebuild it")
        return out

    @_advising
    def verify(self, hashes: Sequence[str]) -> list[str]:
        """Check the rows of ``hashes`` (all in the cache) against their checksums; returns the hashes whose rows
        are damaged or cut short, after dropping them from the index so that they are encoded again. Rows without a
        checksum (written by an older version) get one now."""
        if not hashes:
            return []
        row_bytes = self.dtype.itemsize * self.dim
        buffer = bytearray(row_bytes)
        with self._locked():
            checksums, bad, new = self._read_checksums(), [], {}
            with open(self._data, "rb") as handle:
                for digest in sorted(set(hashes), key=self.index.__getitem__):  # in file order
                    handle.seek(self.index[digest] * row_bytes)
                    size = handle.readinto(buffer)
                    crc = zlib.crc32(buffer) if size == row_bytes else None
                    if crc is None or checksums.get(digest, crc) != crc:
                        bad.append(digest)
                    elif digest not in checksums:
                        new[digest] = crc
            if bad or new:
                self.index = self._read_index()  # with what other processes added meanwhile
                for digest in bad:
                    self.index.pop(digest, None)
                    checksums.pop(digest, None)
                atomic_write_text(self._crc_file, json.dumps({**checksums, **new}))
                atomic_write_text(self._index_file, json.dumps(self.index))
        return bad

    def __contains__(self, digest: str) -> bool:
        return digest in self.index


_SUFFIX = {"float32": "f32", "float16": "f16"}


def cached_features(
    paths: Sequence[Path],
    cache: FeatureCache | None,
    encode_files: Callable[[Sequence[Path]], tuple[np.ndarray, dict[int, str]]],
    progress: bool = False,
) -> tuple[np.ndarray, dict[int, str]]:
    """Vectors for image files, encoding only those the cache lacks (in chunks, see :func:`cache_missing`).

    Args:
        paths: image files.
        cache: the cache (None: encode everything, store nothing).
        encode_files: ``encode_files(paths) -> (features (M, *shape), {index: reason} for images that failed to
            load)``.

    Returns:
        ``(features (N, *shape), failures)``: rows of unreadable images (keys of ``failures``) are zeros.
    """
    if cache is None:
        return encode_files(paths)
    hashes, failures = cache_missing(paths, cache, encode_files, progress=progress)
    out = np.zeros((len(paths), *cache.shape), dtype=cache.dtype)
    good = [i for i in range(len(paths)) if i not in failures]
    cache.get([hashes[i] for i in good], out=out, at=good)  # straight into out: one copy of the split in memory
    return out, failures


ENCODE_CHUNK = 256  # images encoded and appended to the cache at a time: memory flat in the number of images


def cache_missing(
    paths: Sequence[Path],
    cache: FeatureCache,
    encode_files: Callable[[Sequence[Path]], tuple[np.ndarray, dict[int, str]]],
    chunk: int = ENCODE_CHUNK,
    progress: bool = False,
) -> tuple[list[str | None], dict[int, str]]:
    """Encode the image files the cache lacks and append them to it ``chunk`` images at a time, so that a cold
    cache costs the memory of one chunk's features, not the split's.

    Args:
        progress: a tqdm bar over the images encoded (none when stderr is not a terminal).

    Returns:
        ``(hashes, failures)``: each file's SHA-256 (None when it cannot be read) and ``{index: reason}`` for the
        images that could not be read or decoded (in index order).
    """
    hashes = [_hash_or_none(p) for p in paths]
    failures = {i: "cannot read file" for i, h in enumerate(hashes) if h is None}
    damaged = cache.verify([h for h in hashes if h is not None and h in cache])
    if damaged:
        logger.warning("feature cache %s: %d row(s) failed their checksum or were cut short; encoding those images "
                       "again", cache.dir, len(damaged))
    todo = [i for i, h in enumerate(hashes) if h is not None and h not in cache]
    if todo:
        logger.info("encoding %d of %d images (the others are cached)", len(todo), len(paths))
    with tqdm(total=len(todo), desc="encoding images", unit="image", leave=False,
              disable=None if progress and todo else True) as bar:
        for start in range(0, len(todo), chunk):
            part = todo[start : start + chunk]
            new, failed = encode_files([paths[i] for i in part])  # (len(part), *shape)
            ok = [j for j in range(len(part)) if j not in failed and hashes[part[j]] not in cache]
            cache.add([hashes[part[j]] for j in ok], new[ok])
            failures.update({part[j]: reason for j, reason in failed.items()})
            bar.update(len(part))
    return hashes, dict(sorted(failures.items()))


def _hash_or_none(path: Path) -> str | None:
    try:
        return file_sha256(path)
    except OSError:
        return None
