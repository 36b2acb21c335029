"""Partial reads of remote zip archives with HTTP Range requests, ZIP64 included.

:func:`fetch_remote_members` reads a remote zip's directory and the listed members with ``Range`` requests, so a
few hundred images of the 18 GB ``train2017.zip`` cost a few megabytes. :class:`RemoteZip` does the work:

1. the last kilobyte (or, for archives with a long comment, up to the largest possible end area) holds the
   end-of-central-directory record and, for ZIP64 archives, the ZIP64 locator and end record;
2. one request reads the central directory, parsed into :class:`ZipMember` entries (64-bit sizes and offsets
   from the ZIP64 extra field applied);
3. one request per member reads its local header and data, up to where the next member starts (so a data
   descriptor, if any, comes along); the data is inflated, checked against the size and CRC-32 of the directory,
   and written atomically (:func:`captioner.download.extract.write_member`).

Stored and deflated members are supported; encrypted members, other compression methods and multi-part
(spanned) archives are refused with a :class:`~captioner.download.errors.RemoteZipError`.
"""

from __future__ import annotations

import http.client
import logging
import os
import struct
import zipfile
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from tqdm import tqdm

from captioner.download.checksum import CHUNK_SIZE
from captioner.download.errors import ChecksumError, RemoteZipError, TransientError
from captioner.download.extract import TransferReport, is_complete, safe_member_path, select_members, write_member
from captioner.download.http import content_range, open_url, retrying

__all__ = ["RemoteZip", "ZipMember", "fetch_remote_members"]

logger = logging.getLogger(__name__)

# Record layouts of the zip format (PKWARE APPNOTE 4.3): end of central directory, ZIP64 locator and end record,
# central directory entry, local file header; each without its variable-length name, extra field and comment.
_EOCD = struct.Struct("<4sHHHHIIH")
_ZIP64_LOCATOR = struct.Struct("<4sIQI")
_ZIP64_EOCD = struct.Struct("<4sQHHIIQQQQ")
_CENTRAL = struct.Struct("<4sHHHHHHIIIHHHHHII")
_LOCAL = struct.Struct("<4sHHHHHIIIHH")
_EOCD_SIG, _ZIP64_LOCATOR_SIG, _ZIP64_EOCD_SIG = b"PK\x05\x06", b"PK\x06\x07", b"PK\x06\x06"
_CENTRAL_SIG, _LOCAL_SIG = b"PK\x01\x02", b"PK\x03\x04"
_TAIL_GUESS = 1024  # bytes read first from the end: enough unless the archive has a long comment
_TAIL_MAX = _EOCD.size + 0xFFFF + _ZIP64_LOCATOR.size + _ZIP64_EOCD.size


@dataclass(frozen=True)
class ZipMember:
    """One entry of a zip's central directory (ZIP64 fields already applied).

    Attributes:
        name: the member name, decoded (UTF-8 when flag bit 11 is set, else CP437).
        raw_name: the name's bytes, to compare with the local header.
        header_offset: where the member's local header starts.
        compressed_size: bytes of (compressed) data after the local header.
        file_size: bytes once decompressed.
        crc: CRC-32 of the decompressed data.
        method: compression method (0 stored, 8 deflate).
        flags: general purpose bit flags (bit 0 encrypted, bit 3 data descriptor follows).
    """

    name: str
    raw_name: bytes
    header_offset: int
    compressed_size: int
    file_size: int
    crc: int
    method: int
    flags: int


def _find_eocd(tail: bytes) -> int | None:
    """Offset in ``tail`` of the end-of-central-directory record, searching backwards."""
    pos = tail.rfind(_EOCD_SIG)
    while pos >= 0:
        if pos + _EOCD.size <= len(tail):
            comment_length = struct.unpack_from("<H", tail, pos + 20)[0]
            if pos + _EOCD.size + comment_length <= len(tail):
                return pos
        pos = tail.rfind(_EOCD_SIG, 0, pos)
    return None


def _apply_zip64_extra(extra: bytes, file_size: int, compressed: int, offset: int) -> tuple[int, int, int]:
    """Replace saturated 32-bit fields by the 64-bit values of the ZIP64 extra field (tag 1), in spec order."""
    pos = 0
    while pos + 4 <= len(extra):
        tag, length = struct.unpack_from("<HH", extra, pos)
        body = extra[pos + 4 : pos + 4 + length]
        pos += 4 + length
        if tag != 1:
            continue
        values = [v for (v,) in struct.iter_unpack("<Q", body[: len(body) // 8 * 8])]
        fields = [file_size, compressed, offset]
        for index, current in enumerate(fields):
            if current == 0xFFFFFFFF:
                if not values:
                    raise RemoteZipError("a ZIP64 extra field is shorter than its entry needs; the zip is damaged")
                fields[index] = values.pop(0)
        return fields[0], fields[1], fields[2]
    return file_size, compressed, offset


def _parse_central_directory(data: bytes) -> list[ZipMember]:
    """Entries of a central directory held in memory.

    Raises:
        RemoteZipError: the directory does not end where its last entry does.
    """
    members, pos = [], 0
    while pos + _CENTRAL.size <= len(data) and data[pos : pos + 4] == _CENTRAL_SIG:
        fields = _CENTRAL.unpack_from(data, pos)
        flags, method, crc, compressed, file_size = fields[3], fields[4], fields[7], fields[8], fields[9]
        name_length, extra_length, comment_length, offset = fields[10], fields[11], fields[12], fields[16]
        start = pos + _CENTRAL.size
        raw_name = data[start : start + name_length]
        extra = data[start + name_length : start + name_length + extra_length]
        file_size, compressed, offset = _apply_zip64_extra(extra, file_size, compressed, offset)
        name = raw_name.decode("utf-8" if flags & 0x800 else "cp437")
        members.append(ZipMember(name, raw_name, offset, compressed, file_size, crc, method, flags))
        pos = start + name_length + extra_length + comment_length
    if pos != len(data):
        raise RemoteZipError(f"the central directory is damaged at byte {pos} of {len(data)}")
    return members


def _inflate(chunks: Iterable[bytes], method: int, label: str) -> Iterator[bytes]:
    """Decompress a member's data (stored or deflate), in pieces of at most CHUNK_SIZE bytes."""
    if method == zipfile.ZIP_STORED:
        yield from chunks
        return
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    try:
        for chunk in chunks:
            yield inflater.decompress(chunk, CHUNK_SIZE)
            while inflater.unconsumed_tail:
                yield inflater.decompress(inflater.unconsumed_tail, CHUNK_SIZE)
        yield inflater.flush()
    except zlib.error as err:
        raise ChecksumError(f"{label}: corrupt deflate data ({err}); the archive is damaged") from None
    if not inflater.eof:
        raise ChecksumError(f"{label}: the deflate stream ends early; the archive is damaged")


class RemoteZip:
    """A zip archive on an HTTP server, read with Range requests only.

    Construction reads the end-of-central-directory record (and the ZIP64 locator and record when present) from
    the end of the file, then the central directory. :meth:`fetch` then reads one member's local header and data.

    Attributes:
        url: the archive's address.
        size: the archive's size in bytes.
        members: central-directory entries by name.
        bytes_transferred: response-body bytes received so far.
    """

    def __init__(self, url: str, *, timeout: float = 60.0, retries: int = 5, retry_wait: float = 2.0) -> None:
        """Read the archive's directory.

        Args:
            url: the archive's address; the server must honour Range requests.
            timeout: seconds to wait for a connection or for data before an attempt fails.
            retries: further attempts per request after a network failure.
            retry_wait: seconds before the first retry, doubled for each further one.

        Raises:
            RemoteZipError: no Range support, not a zip, spanned or damaged archive.
            DownloadError: network failures after all retries.
        """
        self.url = url
        self.timeout, self.retries, self.retry_wait = timeout, retries, retry_wait
        self.bytes_transferred = 0
        self.size = 0
        cd_offset, cd_size, count = self._locate_central_directory()
        if cd_offset + cd_size > self.size:
            raise RemoteZipError(f"{url}: the central directory lies outside the file; the archive is truncated")
        data = self._get(f"{cd_offset}-{cd_offset + cd_size - 1}")[0] if cd_size else b""
        entries = _parse_central_directory(data)
        if len(entries) != count:
            raise RemoteZipError(f"{url}: the directory lists {len(entries)} entries, its end record says {count}")
        self.members = {entry.name: entry for entry in entries}
        self._ends = self._member_ends(entries, cd_offset)
        logger.info("%s: %d members, directory of %d bytes read", url, len(entries), cd_size)

    # ---- HTTP
    def _get(self, byte_range: str) -> tuple[bytes, int, int]:
        """Body, first offset and total size of ``Range: bytes=<byte_range>`` (retried)."""

        def attempt() -> tuple[bytes, int, int]:
            with open_url(self.url, {"Range": f"bytes={byte_range}"}, self.timeout) as response:
                first, last, total = self._check_partial(response)
                if not byte_range.startswith("-") and f"{first}-{last}" != byte_range:
                    raise TransientError(f"asked for bytes {byte_range}, got {first}-{last}")
                body = b"".join(self._read(response, last - first + 1))
            return body, first, total

        return retrying(attempt, f"range request {byte_range} of {self.url}", self.retries, self.retry_wait)

    def _check_partial(self, response: http.client.HTTPResponse) -> tuple[int, int, int]:
        """``(first, last, total)`` of a 206 answer; any other answer means the server cannot serve ranges."""
        if response.status != 206:
            raise RemoteZipError(
                f"{self.url}: the server ignored the Range request (HTTP {response.status}); remote partial fetch "
                "needs Range support - download the whole archive instead (omit --remote)"
            )
        first, last, total = content_range(response.headers)
        if total is None:
            raise RemoteZipError(f"{self.url}: the server does not tell the archive size; omit --remote")
        return first, last, total

    def _read(self, response: http.client.HTTPResponse, count: int) -> Iterator[bytes]:
        """Exactly ``count`` body bytes in chunks, counted in ``bytes_transferred``."""
        left = count
        while left:
            chunk = response.read(min(left, CHUNK_SIZE))
            if not chunk:
                raise TransientError(f"connection closed with {left} of {count} bytes missing")
            self.bytes_transferred += len(chunk)
            left -= len(chunk)
            yield chunk

    # ---- directory
    def _locate_central_directory(self) -> tuple[int, int, int]:
        """``(offset, size, entry count)`` of the central directory."""
        tail, tail_start, self.size = self._get(f"-{_TAIL_GUESS}")
        pos = _find_eocd(tail)
        if (pos is None or pos < _ZIP64_LOCATOR.size) and tail_start > 0:  # long comment: look further back
            tail, tail_start, self.size = self._get(f"-{min(self.size, _TAIL_MAX)}")
            pos = _find_eocd(tail)
        if pos is None:
            raise RemoteZipError(f"{self.url} is not a zip archive (no end-of-central-directory record)")
        _sig, disk, cd_disk, _on_disk, count, cd_size, cd_offset, _comment = _EOCD.unpack_from(tail, pos)
        locator = pos - _ZIP64_LOCATOR.size
        if locator >= 0 and tail[locator : locator + 4] == _ZIP64_LOCATOR_SIG:
            return self._zip64_directory(tail, tail_start, locator)
        if disk or cd_disk:
            raise RemoteZipError(f"{self.url} is a multi-part (spanned) zip; these are not supported")
        if 0xFFFFFFFF in (cd_size, cd_offset):
            raise RemoteZipError(f"{self.url}: ZIP64 values without a ZIP64 locator; the archive is damaged")
        return cd_offset, cd_size, count

    def _zip64_directory(self, tail: bytes, tail_start: int, locator: int) -> tuple[int, int, int]:
        """``(offset, size, entry count)`` of the central directory from the ZIP64 end record the locator names."""
        _sig, _disk, record_offset, disks = _ZIP64_LOCATOR.unpack_from(tail, locator)
        if disks > 1:
            raise RemoteZipError(f"{self.url} is a multi-part (spanned) zip; these are not supported")
        relative = record_offset - tail_start
        if 0 <= relative <= len(tail) - _ZIP64_EOCD.size:
            record = tail[relative : relative + _ZIP64_EOCD.size]
        else:
            record = self._get(f"{record_offset}-{record_offset + _ZIP64_EOCD.size - 1}")[0]
        fields = _ZIP64_EOCD.unpack(record)
        if fields[0] != _ZIP64_EOCD_SIG:
            raise RemoteZipError(f"{self.url}: no ZIP64 end record where the locator points; the archive is damaged")
        count, cd_size, cd_offset = fields[7], fields[8], fields[9]
        return cd_offset, cd_size, count

    @staticmethod
    def _member_ends(entries: list[ZipMember], cd_offset: int) -> dict[str, int]:
        """For each member, the offset where the next member (or the central directory) starts."""
        starts = sorted({entry.header_offset for entry in entries} | {cd_offset})
        following = {start: end for start, end in zip(starts, starts[1:])}
        return {entry.name: following.get(entry.header_offset, cd_offset) for entry in entries}

    # ---- members
    def fetch(self, member: ZipMember, out_dir: str | os.PathLike[str]) -> bool:
        """Write one member to ``out_dir / member.name`` unless it is already there with the right size and CRC.

        Returns:
            True when the member was fetched, False when it was already complete (or is a folder).

        Raises:
            RemoteZipError: encrypted member, unsupported compression, damaged or unusual layout.
            ChecksumError: the data does not match the directory's size or CRC-32.
            DownloadError: network failures after all retries.
        """
        target = safe_member_path(out_dir, member.name)
        if member.name.endswith("/"):
            target.mkdir(parents=True, exist_ok=True)
            return False
        if is_complete(target, member.file_size, member.crc):
            return False
        if member.flags & 0x1:
            raise RemoteZipError(f"{member.name} is encrypted; encrypted members are not supported")
        if member.method not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            raise RemoteZipError(f"{member.name} uses compression method {member.method}; only stored and deflate")
        retrying(lambda: self._fetch_once(member, target), f"fetch of {member.name}", self.retries, self.retry_wait)
        return True

    def _fetch_once(self, member: ZipMember, target: Path) -> None:
        """One attempt: read the member's local header and data with one Range request and write it."""
        start, end = member.header_offset, self._ends[member.name]
        if end - start < _LOCAL.size + len(member.raw_name) + member.compressed_size:
            raise RemoteZipError(f"{member.name}: overlapping entries in {self.url}; this layout is not supported")
        with open_url(self.url, {"Range": f"bytes={start}-{end - 1}"}, self.timeout) as response:
            first, last, _total = self._check_partial(response)
            if (first, last) != (start, end - 1):
                raise TransientError(f"asked for bytes {start}-{end - 1}, got {first}-{last}")
            header_length = self._skip_local_header(response, member)
            if header_length + member.compressed_size > end - start:
                raise RemoteZipError(f"{member.name}: its local header is longer than the space before the next entry")
            label = f"{self.url}:{member.name}"
            method = member.method if member.compressed_size else zipfile.ZIP_STORED  # empty member, no stream
            pieces = _inflate(self._read(response, member.compressed_size), method, label)
            write_member(pieces, target, member.file_size, member.crc, label)
            for _ in self._read(response, end - start - header_length - member.compressed_size):
                pass  # the data descriptor, if any: drained so the byte count is what the server sent

    def _skip_local_header(self, response: http.client.HTTPResponse, member: ZipMember) -> int:
        """Read and check the member's local header; returns its length."""
        header = b"".join(self._read(response, _LOCAL.size))
        fields = _LOCAL.unpack(header)
        if fields[0] != _LOCAL_SIG:
            raise RemoteZipError(f"{member.name}: no local header at offset {member.header_offset}; damaged archive")
        name_length, extra_length = fields[9], fields[10]
        raw = b"".join(self._read(response, name_length + extra_length))
        if raw[:name_length] != member.raw_name:
            raise RemoteZipError(f"{member.name}: the local header names {raw[:name_length]!r}; damaged archive")
        return _LOCAL.size + name_length + extra_length


def fetch_remote_members(
    url: str,
    names: Iterable[str],
    out_dir: str | os.PathLike[str],
    *,
    timeout: float = 60.0,
    retries: int = 5,
    retry_wait: float = 2.0,
    progress: bool = True,
) -> TransferReport:
    """Fetch only the listed members of a remote zip with HTTP Range requests.

    Each member is decompressed, checked (size and CRC-32) and written atomically to ``out_dir / name``; members
    already present and valid are skipped, so an interrupted run continues where it stopped.

    Args:
        url: the archive's address; the server must honour Range requests.
        names: member names, e.g. ``val2017/000000000139.jpg``.
        out_dir: extraction folder.
        timeout: seconds to wait for a connection or for data before the attempt fails.
        retries: further attempts per request after a network failure.
        retry_wait: seconds before the first retry, doubled for each further one.
        progress: show a tqdm progress bar over the members.

    Returns:
        A report with the bytes received and the archive size.

    Raises:
        DownloadError: names not in the archive, network failures after all retries.
        RemoteZipError: no Range support, not a zip, unsupported zip feature.
        UnsafePathError: a member would be written outside ``out_dir`` (checked before anything is written).
        ChecksumError: a member's data does not match its size or CRC-32.
    """
    archive = RemoteZip(url, timeout=timeout, retries=retries, retry_wait=retry_wait)
    chosen = select_members(archive.members, names, url)
    for member in chosen:
        safe_member_path(out_dir, member.name)
    written = skipped = 0
    for member in tqdm(chosen, unit="file", desc=Path(urlsplit(url).path).name, disable=not progress):
        if archive.fetch(member, out_dir):
            written += 1
        else:
            skipped += 1
    logger.info(
        "%s: fetched %d members (%d already present), %d bytes", url, written, skipped, archive.bytes_transferred
    )
    return TransferReport(written, skipped, archive.bytes_transferred, archive.size)
