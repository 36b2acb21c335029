"""HTTP plumbing shared by whole-file downloads and remote zip reads: requests, retries, Range headers.

Only the standard library's :mod:`urllib` is used. Network failures worth retrying (timeouts, closed
connections, HTTP 408/429/5xx, truncated bodies) are retried with exponential back-off by :func:`retrying`;
anything else becomes a one-line :class:`~captioner.download.errors.DownloadError`.
"""

from __future__ import annotations

import http.client
import logging
import re
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from typing import TypeVar

from captioner.download.errors import DownloadError, TransientError

__all__ = [
    "USER_AGENT",
    "content_length",
    "content_range",
    "describe_error",
    "is_transient",
    "open_url",
    "retrying",
    "unsatisfied_total",
]

logger = logging.getLogger(__name__)

T = TypeVar("T")

USER_AGENT = "captioner-download/1 (+python urllib)"

_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)")
_UNSATISFIED_RANGE = re.compile(r"bytes\s+\*/(\d+)")
_TRANSIENT_HTTP_CODES = (408, 429, 500, 502, 503, 504)


def open_url(url: str, headers: Mapping[str, str], timeout: float) -> http.client.HTTPResponse:
    """Send a GET request with our User-Agent and ``headers``.

    Args:
        url: http(s) address.
        headers: extra request headers, e.g. ``{"Range": "bytes=100-"}``.
        timeout: seconds to wait for a connection or for data.

    Returns:
        The open response (a context manager).

    Raises:
        urllib.error.HTTPError: the server answered with an error status (416 included).
        urllib.error.URLError: the server could not be reached.
    """
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT, **headers})
    return urllib.request.urlopen(request, timeout=timeout)  # noqa: S310 - http(s) URLs chosen by the user


def describe_error(err: BaseException) -> str:
    """A short one-line description of a network failure, e.g. ``HTTP 404 Not Found``."""
    if isinstance(err, urllib.error.HTTPError):
        return f"HTTP {err.code} {err.reason}"
    if isinstance(err, urllib.error.URLError):
        return str(err.reason)
    text = str(err) or type(err).__name__
    return " ".join(text.split())


def is_transient(err: BaseException) -> bool:
    """True for failures worth retrying: timeouts, dropped connections, HTTP 408, 429 and 5xx, short bodies."""
    if isinstance(err, urllib.error.HTTPError):
        return err.code in _TRANSIENT_HTTP_CODES
    transient = (TransientError, urllib.error.URLError, ConnectionError, TimeoutError, http.client.HTTPException)
    return isinstance(err, transient)


def retrying(action: Callable[[], T], what: str, retries: int, retry_wait: float) -> T:
    """Run ``action``, retrying network failures ``retries`` times with exponential back-off.

    Args:
        action: one attempt; it should resume where an earlier attempt stopped.
        what: what is being done, for messages, e.g. ``"download of <url>"``.
        retries: further attempts after the first one fails.
        retry_wait: seconds before the first retry, doubled for each further one.

    Returns:
        What ``action`` returned.

    Raises:
        DownloadError: a permanent HTTP error (e.g. 404), or transient failures on every attempt.
    """
    for attempt in range(retries + 1):
        try:
            return action()
        except Exception as err:
            if isinstance(err, urllib.error.HTTPError) and not is_transient(err):
                raise DownloadError(f"{what}: {describe_error(err)}; check the URL (or --base-url)") from err
            if not is_transient(err):
                raise
            if attempt == retries:
                raise DownloadError(
                    f"{what} failed after {retries + 1} attempt(s): {describe_error(err)}; check the network and "
                    "the URL, then rerun (work already done is kept and resumed)"
                ) from err
            delay = retry_wait * 2**attempt
            logger.warning("%s: %s; retry %d/%d in %.0fs", what, describe_error(err), attempt + 1, retries, delay)
            time.sleep(delay)
    raise AssertionError("unreachable")


def content_range(headers: Mapping[str, str]) -> tuple[int, int, int | None]:
    """``(first, last, total)`` of a 206 answer's Content-Range (``total`` None when the server says ``*``).

    Raises:
        TransientError: the header is missing or malformed.
    """
    match = _CONTENT_RANGE.fullmatch((headers.get("Content-Range") or "").strip())
    if not match:
        raise TransientError(f"partial answer without a valid Content-Range ({headers.get('Content-Range')!r})")
    total = None if match[3] == "*" else int(match[3])
    return int(match[1]), int(match[2]), total


def unsatisfied_total(headers: Mapping[str, str]) -> int | None:
    """The size a 416 answer reports in ``Content-Range: bytes */<size>`` (None when it does not)."""
    match = _UNSATISFIED_RANGE.fullmatch((headers.get("Content-Range") or "").strip())
    return int(match[1]) if match else None


def content_length(headers: Mapping[str, str]) -> int | None:
    """The Content-Length header as a number (None when absent or not a number)."""
    value = headers.get("Content-Length")
    return int(value) if value and value.strip().isdigit() else None
