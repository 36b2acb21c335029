"""Reading a dataset's text files line by line: bounded memory, exact line numbers, every bad line reported.

Only ``\\n``, ``\\r\\n`` and ``\\r`` end a line: U+2028, U+2029, U+0085 and the other characters that
:meth:`str.splitlines` also splits on are ordinary characters inside a caption. A UTF-8 byte-order mark at the start
is skipped. A line is read at most :data:`MAX_LINE_CHARS` characters at a time, so a 200 MB "caption" costs no more
memory than a normal one: it is reported (``file:line``) and skipped.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

from captioner.data.problems import DatasetError, Problems

MAX_LINE_CHARS = 65_536  # ~10,000 words: no caption line is this long; longer lines are reported, never held whole
_ESCAPED = re.compile("[\udc80-\udcff]")  # bytes that are not UTF-8, as decoded with errors="surrogateescape"


def text_lines(path: Path, problems: Problems) -> Iterator[tuple[int, str]]:
    """``(line number, text)`` of every line of a UTF-8 text file, line breaks removed.

    Lines that cannot be text are recorded in ``problems`` as errors (``path:line``) and not yielded: bytes that are
    not UTF-8, NUL bytes, lines over :data:`MAX_LINE_CHARS` characters.

    Args:
        path: the file.
        problems: where bad lines are recorded.

    Raises:
        DatasetError: the file cannot be opened.
    """
    try:
        handle = open(path, encoding="utf-8-sig", errors="surrogateescape")  # noqa: SIM115 (closed below)
    except OSError as err:
        raise DatasetError(f"cannot read {path}: {err.strerror or err}") from None
    with handle:
        number = 0
        while line := handle.readline(MAX_LINE_CHARS + 1):
            number += 1
            if len(line) > MAX_LINE_CHARS and not line.endswith("\n"):
                length = len(line) + _skip_rest_of_line(handle)
                problems.error(f"{path}:{number}", f"a line of {length:,} characters, over the limit of "
                               f"{MAX_LINE_CHARS:,}: not a caption line (a binary file, or missing line breaks?); "
                               "fix or remove the line")
                continue
            text = line.removesuffix("\n")
            problem = line_problem(text)
            if problem:
                problems.error(f"{path}:{number}", problem)
                continue
            yield number, text


def line_problem(text: str) -> str | None:
    """Why a line of text read from a dataset file cannot be used, or None."""
    bad = _ESCAPED.search(text)
    if bad:
        return (f"not UTF-8 text (byte 0x{ord(bad.group()) - 0xDC00:02x} at column {bad.start() + 1}); save the "
                "file as UTF-8")
    if "\0" in text:
        return (f"NUL byte at column {text.index(chr(0)) + 1} (a binary or UTF-16 file?); save the file as UTF-8 "
                "text without NUL characters")
    return None


def _skip_rest_of_line(handle) -> int:
    """Read past the rest of an over-long line, a bounded piece at a time; returns how many characters it had."""
    skipped = 0
    while piece := handle.readline(MAX_LINE_CHARS):
        if piece.endswith("\n"):
            return skipped + len(piece) - 1
        skipped += len(piece)
    return skipped
