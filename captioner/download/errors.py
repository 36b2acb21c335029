"""The exceptions of :mod:`captioner.download`.

Every failure meant for users is a :class:`DownloadError` (or a subclass) whose message is one line saying what
went wrong and what to do next. :class:`TransientError` is internal: it marks a failure worth retrying and never
leaves the package (after the last retry it becomes a :class:`DownloadError`).
"""

from __future__ import annotations

__all__ = ["ChecksumError", "DownloadError", "RemoteZipError", "TransientError", "UnsafePathError"]


class DownloadError(Exception):
    """A download or extraction failed; ``str(err)`` is one line saying what to do next."""


class ChecksumError(DownloadError):
    """A file's size, MD5, SHA-256 or CRC-32 does not match what it should be."""


class UnsafePathError(DownloadError):
    """A member name would be written outside the output folder (``..`` or an absolute path)."""


class RemoteZipError(DownloadError):
    """A remote archive cannot be read with Range requests (not a zip, unsupported feature, no Range support)."""


class TransientError(Exception):
    """A failure worth retrying: a truncated body, a connection closed early (internal to the package)."""
