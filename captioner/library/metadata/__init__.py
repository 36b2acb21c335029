"""Captions written into photos' metadata, never over a description a person wrote.

Needs python-exiv2 (``pip install 'captioner[metadata]'``; the PyPI package ``exiv2`` bundles libexiv2), imported
on first use: without it :class:`MetadataUnavailable` says what to install.

Two modes:

- ``embed``: the caption goes into the photo, as XMP ``dc:description`` and XMP
  ``Iptc4xmpExt:AltTextAccessibility`` (both language alternatives, x-default), EXIF ``ImageDescription``, and IPTC
  IIM ``Caption-Abstract`` only where the photo already has IIM data (UTF-8 declared when needed; at most 2,000
  bytes). JPEG, PNG, WebP and TIFF (and the other formats exiv2 writes) are rewritten atomically: a copy in the same
  folder takes the metadata, is read back, flushed and renamed over the photo with its permission bits; the
  pixels are not decoded or touched. A kill at any moment leaves the photo intact (at worst a
  ``.NAME.captioner-PID.tmp`` beside it, removed by the next write of that photo).
- ``sidecar``: the same XMP fields go into ``photo.jpg.xmp`` (``sidecar_name="append"``) or ``photo.xmp``
  (``"replace"``), for RAW files and photos that must not change; an existing sidecar keeps everything else in it.

Both record provenance in our XMP namespace (:data:`NAMESPACE`, prefix ``captioner``): ``model``, ``version``,
``weightsSHA256``, ``confidence``, ``date`` (ISO 8601) and ``caption``, the text written. A description is ours
when the file carries our provenance and every non-empty description field still holds that text; a later run
updates ours. Any other non-empty description (in any of the four fields, in any language, in the photo or in its
sidecar; camera boilerplate such as "OLYMPUS DIGITAL CAMERA" in EXIF aside) is a person's: it is never replaced
unless ``overwrite_descriptions=True``, and the photo is reported ``skipped_person``.

API::

    Provenance(model, version, weights_sha256, confidence=None, date=now)   # date: ISO 8601
    read_description(path) -> Description      # .text, .texts {field: text}, .fields, .ours, .by_person,
                                               # .provenance, .caption, .has_iim; MetadataError if unreadable
    write_caption(path, caption, provenance, mode="embed" | "sidecar", sidecar_name="append" | "replace",
                  overwrite_descriptions=False, keep_mtime=False) -> WriteResult
        # .status: "written" | "updated" | "skipped_person" | "error"; .message (one line); .target; .fields; .ok
    sidecar_path(path, naming="append") -> Path
    require_library()                          # MetadataUnavailable (what to install) before a run starts

``write_caption`` does not raise for a photo it cannot write (unsupported format, a read-only file or folder,
damaged metadata, a file changed meanwhile): the result is ``error`` with a one-line message and nothing changed,
so a caller goes on with the next photo.
"""

from captioner.library.metadata.files import remove_stale_temporaries, sidecar_path
from captioner.library.metadata.records import (
    ALT_TEXT,
    DC_DESCRIPTION,
    DESCRIPTION_FIELDS,
    EXIF_DESCRIPTION,
    IIM_CAPTION,
    NAMESPACE,
    PREFIX,
    STATUSES,
    Description,
    MetadataError,
    MetadataUnavailable,
    Provenance,
    WriteResult,
)
from captioner.library.metadata.write import read_description, require_library, write_caption

__all__ = [
    "ALT_TEXT", "DC_DESCRIPTION", "DESCRIPTION_FIELDS", "EXIF_DESCRIPTION", "IIM_CAPTION", "NAMESPACE", "PREFIX",
    "STATUSES", "Description", "MetadataError", "MetadataUnavailable", "Provenance", "WriteResult",
    "read_description", "remove_stale_temporaries", "require_library", "sidecar_path", "write_caption",
]
