"""What the metadata code reads and reports: our provenance, a photo's current description, the result of one
write, and the errors. No metadata library is imported here."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

NAMESPACE = "https://captioner.invalid/ns/1.0/"  # our XMP namespace: provenance of the descriptions we write
PREFIX = "captioner"
DC_DESCRIPTION = "Xmp.dc.description"  # XMP dc:description, a language alternative (x-default)
ALT_TEXT = "Xmp.iptcExt.AltTextAccessibility"  # IPTC Photo Metadata 2021.1 alt text, a language alternative
EXIF_DESCRIPTION = "Exif.Image.ImageDescription"
IIM_CAPTION = "Iptc.Application2.Caption"  # IPTC IIM 2:120 Caption-Abstract
XMP_FIELDS = (DC_DESCRIPTION, ALT_TEXT)
DESCRIPTION_FIELDS = (DC_DESCRIPTION, ALT_TEXT, EXIF_DESCRIPTION, IIM_CAPTION)
IIM_CAPTION_BYTES = 2000  # the IIM limit of Caption-Abstract
STATUSES = ("written", "updated", "skipped_person", "error")
# Cameras fill EXIF ImageDescription with these; they are not a person's description.
CAMERA_BOILERPLATE = frozenset({
    "OLYMPUS DIGITAL CAMERA", "SONY DSC", "DIGITAL CAMERA", "KONICA MINOLTA DIGITAL CAMERA",
    "MINOLTA DIGITAL CAMERA", "SAMSUNG CAMERA PICTURES", "KODAK DIGITAL STILL CAMERA", "DCF 1.0",
})


class MetadataError(Exception):
    """One photo's metadata cannot be read or written (format, permissions, damaged metadata); one line that names
    the file, and the file is unchanged. A caller reports it and goes on with the next photo."""


class MetadataUnavailable(ImportError):
    """The metadata library (python-exiv2) is not installed: no photo can be written, so stop the run."""


def now_iso() -> str:
    """The current time, ISO 8601 with the UTC offset, to the second: ``2025-01-31T12:00:00+00:00``."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@dataclass(frozen=True)
class Provenance:
    """Who wrote a description: stored beside it in the ``captioner`` XMP namespace.

    :param model: the model's name (e.g. its directory name or the default's id)
    :param version: the captioner version that wrote it
    :param weights_sha256: hex SHA-256 of the weights file
    :param confidence: the caption's confidence in [0, 1], or None when unknown (then none is stored)
    :param date: when it was written, ISO 8601 (default: now, UTC)
    """

    model: str
    version: str
    weights_sha256: str
    confidence: float | None = None
    date: str = field(default_factory=now_iso)


# Provenance field -> XMP property in our namespace; ``caption`` records the text we wrote, so that a person's
# later edit of a description we wrote is recognised as theirs.
PROVENANCE_PROPERTIES = {"model": "model", "version": "version", "weights_sha256": "weightsSHA256",
                         "confidence": "confidence", "date": "date"}
CAPTION_PROPERTY = "caption"


def truncate_utf8(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` bytes of UTF-8, never inside a character."""
    return text.encode("utf-8")[:limit].decode("utf-8", "ignore")


def same_text(key: str, text: str, caption: str) -> bool:
    """Whether field ``key`` holding ``text`` holds ``caption`` as we write it (IIM's is cut to its limit)."""
    if key.startswith(IIM_CAPTION):
        caption = truncate_utf8(caption, IIM_CAPTION_BYTES)
    return text.strip() == caption.strip()


@dataclass(frozen=True)
class Description:
    """What a photo (or an XMP sidecar) says about itself.

    :param texts: every non-empty description, field -> text; fields are :data:`DESCRIPTION_FIELDS` keys, and a
        language other than x-default is ``"Xmp.dc.description[de]"``
    :param provenance: our provenance when the file carries it, else None
    :param caption: the caption our provenance records having written, else None
    :param has_iim: whether the file has IPTC IIM data (Caption-Abstract is written only then)
    """

    texts: dict[str, str] = field(default_factory=dict)
    provenance: Provenance | None = None
    caption: str | None = None
    has_iim: bool = False

    @property
    def text(self) -> str | None:
        """The description a reader sees first (dc:description, alt text, EXIF, then IIM), or None."""
        return next(iter(self.texts.values()), None)

    @property
    def fields(self) -> tuple[str, ...]:
        return tuple(self.texts)

    @property
    def ours(self) -> bool:
        """There is a description and all of it is what we wrote (our provenance, unedited since)."""
        return (self.provenance is not None and self.caption is not None and bool(self.texts)
                and all(same_text(key, text, self.caption) for key, text in self.texts.items()))

    @property
    def by_person(self) -> bool:
        """There is a description we did not write (or one of ours that a person has edited since)."""
        return bool(self.texts) and not self.ours


@dataclass(frozen=True)
class WriteResult:
    """What :func:`write_caption` did to one photo.

    :param path: the photo, as given
    :param status: ``written`` (no description before), ``updated`` (ours replaced), ``skipped_person`` (a person's
        description is there; nothing changed) or ``error`` (nothing changed; ``message`` says why, on one line)
    :param message: one line for the user
    :param target: the file written (the photo, or its sidecar); None when nothing was written
    :param fields: the fields that now hold the caption (skipped: the fields holding the person's description)
    """

    path: Path
    status: str
    message: str
    target: Path | None = None
    fields: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return self.status in ("written", "updated")
