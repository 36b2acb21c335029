"""The description fields through python-exiv2 (imported here, lazily): opening a file with its metadata, reading
the descriptions and our provenance, and setting the caption's fields. Callers hold :data:`LOCK` around a whole
read or write: exiv2's namespace registry and log are global."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from captioner.library.metadata.records import (
    CAMERA_BOILERPLATE,
    CAPTION_PROPERTY,
    EXIF_DESCRIPTION,
    IIM_CAPTION,
    IIM_CAPTION_BYTES,
    NAMESPACE,
    PREFIX,
    PROVENANCE_PROPERTIES,
    XMP_FIELDS,
    Description,
    MetadataError,
    MetadataUnavailable,
    Provenance,
    truncate_utf8,
)

LOCK = threading.RLock()
IIM_CHARSET = "Iptc.Envelope.CharacterSet"
IIM_UTF8 = "\x1b%G"  # ISO 2022 escape for UTF-8 in IIM 1:90 CodedCharacterSet
XMP_SIDECAR_MIME = "application/rdf+xml"
_registered = False


def exiv2_module():
    """The ``exiv2`` module with our namespace registered; :class:`MetadataUnavailable` when it is not installed."""
    global _registered
    try:
        import exiv2
    except ImportError as err:
        raise MetadataUnavailable("writing captions into photo metadata needs python-exiv2: "
                                  "pip install 'captioner[metadata]'") from err
    with LOCK:
        if not _registered:
            exiv2.XmpProperties.registerNs(NAMESPACE, PREFIX)
            if exiv2.LogMsg.level() > exiv2.LogMsg.Level.warn:  # damaged metadata is reported as warnings
                exiv2.LogMsg.setLevel(exiv2.LogMsg.Level.warn)
            _registered = True
    return exiv2


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@contextmanager
def exiv2_messages() -> Iterator[list[str]]:
    """The warnings and errors exiv2 logs meanwhile (it logs, rather than raises, e.g. an XMP packet it cannot
    parse), kept from the caller's log: the caller turns them into one error line."""
    logger = logging.getLogger("exiv2")
    handler, propagate = _Collect(), logger.propagate
    logger.addHandler(handler)
    logger.propagate = False
    try:
        yield handler.messages
    finally:
        logger.removeHandler(handler)
        logger.propagate = propagate


def exiv2_reason(err: Exception, path: Path) -> str:
    """exiv2's error as a short reason without the path it sometimes starts with."""
    text = str(err.args[1] if len(err.args) > 1 else err).strip()
    return text.removeprefix(f"{path}:").strip().rstrip(".") or type(err).__name__


def open_file(path: Path, strict: bool, shown: Path | None = None):
    """``path`` opened by exiv2 with its metadata read (errors name it as ``shown``, default ``path``).
    ``strict`` (a file about to be rewritten): any problem exiv2 reports while reading is an error, as rewriting
    would drop what it could not read; otherwise only an XMP packet it cannot decode is (a person's description
    could hide in it)."""
    exiv2 = exiv2_module()
    shown = path if shown is None else shown
    with exiv2_messages() as messages:
        try:
            image = exiv2.ImageFactory.open(str(path))
            image.readMetadata()
        except exiv2.Exiv2Error as err:
            if err.code == exiv2.ErrorCode.kerFileContainsUnknownImageType:
                raise MetadataError(f"{shown}: not a format the metadata library knows; left unchanged") from None
            raise MetadataError(f"{shown}: cannot read its metadata ({exiv2_reason(err, path)}); left unchanged"
                                ) from None
    damaged = [m for m in messages if strict or "XMP" in m]
    if damaged:
        raise MetadataError(f"{shown}: damaged metadata ({damaged[0].strip().rstrip('.')}); left unchanged")
    return image


def new_sidecar(path: Path):
    """An empty XMP sidecar at ``path``, opened by exiv2."""
    exiv2 = exiv2_module()
    return exiv2.ImageFactory.create(exiv2.ImageType.xmp, str(path))


def check_writable_format(image, path: Path, sidecar: bool) -> None:
    """A :class:`MetadataError` unless ``image``'s format can take the fields we write."""
    exiv2 = exiv2_module()
    if sidecar and image.mimeType() != XMP_SIDECAR_MIME:
        raise MetadataError(f"{path}: exists and is not an XMP sidecar ({image.mimeType()}); left unchanged")
    needed = [exiv2.MetadataId.mdXmp] + ([] if sidecar else [exiv2.MetadataId.mdExif])
    if not all(int(image.checkMode(kind)) & int(exiv2.AccessMode.amWrite) for kind in needed):
        raise MetadataError(f"{path}: the metadata library cannot write metadata into this format "
                            f"({image.mimeType()}); use sidecar mode")


def readable(text: str) -> str:
    """exiv2's text (undecodable bytes come as surrogates) as UTF-8, or Latin-1 as exiftool reads it."""
    raw = text.encode("utf-8", "surrogateescape")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def find(data, key_type, key: str):
    """The datum at ``key`` in exiv2 metadata ``data``, or None."""
    position = data.findKey(key_type(key))
    return None if position == data.end() else position


def xmp_texts(xmp, key: str) -> dict[str, str]:
    """The non-empty texts of one XMP property: ``{key: x-default text, key[lang]: other languages}``."""
    exiv2 = exiv2_module()
    datum = find(xmp, exiv2.XmpKey, key)
    if datum is None:
        return {}
    value = datum.value()
    if isinstance(value, exiv2.LangAltValue):
        pairs = [(key if lang == "x-default" else f"{key}[{lang}]", text) for lang, text in value.items()]
    else:  # a plain text (or array) where the standard says lang-alt: still a description
        pairs = [(key, datum.toString())]
    return {name: readable(text).strip() for name, text in pairs if readable(text).strip()}


def embedded_texts(image) -> dict[str, str]:
    """EXIF ImageDescription (unless camera boilerplate) and IIM Caption-Abstract, when non-empty."""
    exiv2 = exiv2_module()
    out = {}
    exif = find(image.exifData(), exiv2.ExifKey, EXIF_DESCRIPTION)
    if exif is not None:
        text = readable(exif.toString()).strip("\x00").strip()
        if text and text.upper() not in CAMERA_BOILERPLATE:
            out[EXIF_DESCRIPTION] = text
    iim = find(image.iptcData(), exiv2.IptcKey, IIM_CAPTION)
    if iim is not None and readable(iim.toString()).strip():
        out[IIM_CAPTION] = readable(iim.toString()).strip()
    return out


def read_provenance(xmp) -> tuple[Provenance | None, str | None]:
    """Our provenance and the caption it records, from the ``captioner`` namespace; (None, None) without it."""
    exiv2 = exiv2_module()

    def text(prop: str) -> str | None:
        datum = find(xmp, exiv2.XmpKey, f"Xmp.{PREFIX}.{prop}")
        return None if datum is None else readable(datum.toString())

    values = {name: text(prop) for name, prop in PROVENANCE_PROPERTIES.items()}
    caption = text(CAPTION_PROPERTY)
    if caption is None and all(v is None for v in values.values()):
        return None, None
    try:
        confidence = float(values["confidence"]) if values["confidence"] else None
    except ValueError:
        confidence = None
    provenance = Provenance(model=values["model"] or "", version=values["version"] or "",
                            weights_sha256=values["weights_sha256"] or "", confidence=confidence,
                            date=values["date"] or "")
    return provenance, caption


def description_of(image) -> Description:
    """What an opened file says about itself (see :class:`Description`). A sidecar's EXIF and IIM are exiv2's
    copies of its XMP, so only its XMP counts."""
    xmp, sidecar = image.xmpData(), image.mimeType() == XMP_SIDECAR_MIME
    texts = {}
    for key in XMP_FIELDS:
        texts.update(xmp_texts(xmp, key))
    if not sidecar:
        texts.update(embedded_texts(image))
    provenance, caption = read_provenance(xmp)
    return Description(texts=texts, provenance=provenance, caption=caption,
                       has_iim=not sidecar and not image.iptcData().empty())


def erase(data, key_type, key: str) -> None:
    datum = find(data, key_type, key)
    if datum is not None:
        data.erase(datum)


def set_xmp(xmp, caption: str, provenance: Provenance) -> None:
    """dc:description and the alt text as x-default only, and our provenance, in exiv2 XMP data."""
    exiv2 = exiv2_module()
    for key in XMP_FIELDS:
        erase(xmp, exiv2.XmpKey, key)
        xmp.add(exiv2.XmpKey(key), exiv2.LangAltValue({"x-default": caption}))
    for name, prop in PROVENANCE_PROPERTIES.items():
        key, value = f"Xmp.{PREFIX}.{prop}", getattr(provenance, name)
        erase(xmp, exiv2.XmpKey, key)
        if value is not None:
            xmp[key] = f"{value:.4f}" if name == "confidence" else str(value)
    erase(xmp, exiv2.XmpKey, f"Xmp.{PREFIX}.{CAPTION_PROPERTY}")
    xmp[f"Xmp.{PREFIX}.{CAPTION_PROPERTY}"] = caption


def set_iim(iptc, caption: str) -> str | None:
    """Caption-Abstract in existing IIM data, UTF-8 declared when the caption needs it. Where the IIM holds other
    text in another character set, redeclaring it would garble that text: then the old Caption-Abstract is removed
    instead, and the returned note says so."""
    exiv2 = exiv2_module()
    charset = find(iptc, exiv2.IptcKey, IIM_CHARSET)
    declared = None if charset is None else charset.toString()
    if not caption.isascii() and declared != IIM_UTF8:
        if declared is not None or iptc.detectCharset() not in ("ASCII", "UTF-8"):
            erase(iptc, exiv2.IptcKey, IIM_CAPTION)
            return "IPTC IIM Caption-Abstract removed, not written: the IIM uses another character set"
        iptc[IIM_CHARSET] = IIM_UTF8
    erase(iptc, exiv2.IptcKey, IIM_CAPTION)
    iptc[IIM_CAPTION] = truncate_utf8(caption, IIM_CAPTION_BYTES)
    return None


def set_caption(image, path: Path, caption: str, provenance: Provenance,
                embed: bool) -> tuple[tuple[str, ...], str | None]:
    """Set the caption's fields in ``image`` (opened from ``path``) and write them to it: the XMP ones always; for ``embed`` EXIF
    ImageDescription, and Caption-Abstract where IIM exists. Returns the fields now holding it, and a note."""
    exiv2 = exiv2_module()
    set_xmp(image.xmpData(), caption, provenance)
    written, note = [*XMP_FIELDS], None
    if not embed:  # a sidecar: exiv2 mirrors its XMP as EXIF and IIM on reading, and back on writing; drop them
        image.clearExifData()
        image.clearIptcData()
    else:
        image.exifData()[EXIF_DESCRIPTION] = caption
        written.append(EXIF_DESCRIPTION)
        if not image.iptcData().empty():
            if not int(image.checkMode(exiv2.MetadataId.mdIptc)) & int(exiv2.AccessMode.amWrite):
                note = "IPTC IIM left as it was: the metadata library cannot write it in this format"
            else:
                note = set_iim(image.iptcData(), caption)
                written += [] if note else [IIM_CAPTION]
    with exiv2_messages() as messages:
        image.writeMetadata()
    if messages:
        raise MetadataError(f"{path}: cannot write the metadata ({messages[0].strip().rstrip('.')})")
    return tuple(written), note
