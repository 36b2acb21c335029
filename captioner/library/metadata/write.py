"""Reading a photo's description, and writing a caption into the photo (``embed``) or its XMP sidecar
(``sidecar``) without ever replacing a description a person wrote."""

from __future__ import annotations

import os
from pathlib import Path

from captioner.library.metadata.fields import (
    LOCK,
    check_writable_format,
    description_of,
    exiv2_module,
    exiv2_reason,
    new_sidecar,
    open_file,
    set_caption,
)
from captioner.library.metadata.files import SIDECAR_NAMINGS, check_may_write, replacing, sidecar_path
from captioner.library.metadata.records import (
    Description,
    MetadataError,
    Provenance,
    WriteResult,
    same_text,
)

MODES = ("embed", "sidecar")
SHORT_NAMES = {"Xmp.dc.description": "XMP dc:description", "Xmp.iptcExt.AltTextAccessibility": "XMP alt text",
               "Exif.Image.ImageDescription": "EXIF ImageDescription",
               "Iptc.Application2.Caption": "IPTC Caption-Abstract"}


def require_library() -> None:
    """Raise :class:`MetadataUnavailable` (what to install) unless python-exiv2 is there: call it before a run."""
    exiv2_module()


def read_description(path: str | Path) -> Description:
    """The description a photo (or an XMP sidecar) carries now: its texts, which fields hold them, and whether
    they are ours (see :class:`Description`). Raises :class:`MetadataError` when the file cannot be read."""
    exiv2_module()
    with LOCK:
        return description_of(open_file(Path(path), strict=False))


def write_caption(path: str | Path, caption: str, provenance: Provenance, mode: str = "embed",
                  sidecar_name: str = "append", overwrite_descriptions: bool = False,
                  keep_mtime: bool = False) -> WriteResult:
    """Write ``caption`` into the photo at ``path`` (``mode="embed"``) or into its XMP sidecar (``"sidecar"``,
    named by ``sidecar_name``, see :func:`sidecar_path`), with ``provenance``. A description a person wrote (in
    the photo, or in the sidecar) is kept and the photo reported ``skipped_person``, unless
    ``overwrite_descriptions``. ``keep_mtime`` keeps the photo's access and modification times (embed).

    Never raises for a photo's problem: those are ``status="error"`` with a one-line ``message`` and the files
    unchanged. Raises :class:`MetadataUnavailable` without python-exiv2 and ValueError for a wrong argument."""
    if mode not in MODES:
        raise ValueError(f"metadata mode must be one of {', '.join(MODES)}, not {mode!r}")
    if sidecar_name not in SIDECAR_NAMINGS:
        raise ValueError(f"sidecar naming must be one of {', '.join(SIDECAR_NAMINGS)}, not {sidecar_name!r}")
    caption = caption.strip()
    if not caption:
        raise ValueError("an empty caption is not written into a photo")
    if any((ord(c) < 32 and c not in "\t\n") or c == "\x7f" for c in caption):
        raise ValueError(f"the caption {caption!r} has control characters, which XMP cannot hold")
    exiv2 = exiv2_module()
    path = Path(path)
    try:
        with LOCK:
            if mode == "embed":
                return _embed(path, caption, provenance, overwrite_descriptions, keep_mtime)
            return _sidecar(path, sidecar_path(path, sidecar_name), caption, provenance, overwrite_descriptions)
    except MetadataError as err:
        return _error(path, str(err))
    except exiv2.Exiv2Error as err:
        return _error(path, f"{path}: {exiv2_reason(err, path)}; left unchanged")
    except OSError as err:
        return _error(path, f"{path}: {err.strerror or err}; left unchanged")


def _error(path: Path, message: str) -> WriteResult:
    return WriteResult(path, "error", _one_line(message))


def _photo(path: Path) -> Path:
    """The file behind ``path`` (a symbolic link's target is the one rewritten); an error unless it is a file."""
    if not path.exists():
        raise MetadataError(f"{path}: no such file")
    target = Path(os.path.realpath(path))
    if not target.is_file():
        raise MetadataError(f"{path}: not a regular file")
    return target


def _embed(path: Path, caption: str, provenance: Provenance, overwrite: bool, keep_mtime: bool) -> WriteResult:
    target = _photo(path)
    check_may_write(target, exists=True)
    before = target.stat()
    current = open_file(target, strict=True, shown=path)
    check_writable_format(current, path, sidecar=False)
    found = description_of(current)
    if found.by_person and not overwrite:
        return _skipped(path, found, "in the photo")
    with replacing(target, before, keep_mtime) as tmp:
        fields, note = set_caption(open_file(tmp, strict=True, shown=path), path, caption, provenance, embed=True)
        _verify(tmp, path, caption, fields)
    return _done(path, target, found, fields, note)


def _sidecar(path: Path, side: Path, caption: str, provenance: Provenance, overwrite: bool) -> WriteResult:
    photo = _photo(path)
    if not overwrite:
        own = _photo_description(photo, path)
        if own.by_person:
            return _skipped(path, own, "in the photo")
    target = Path(os.path.realpath(side))
    before = target.stat() if target.exists() else None
    check_may_write(target, exists=before is not None)
    found = Description()
    if before is not None:
        current = open_file(target, strict=True, shown=side)
        check_writable_format(current, side, sidecar=True)
        found = description_of(current)
        if found.by_person and not overwrite:
            return _skipped(path, found, f"in its sidecar {side.name}")
    with replacing(target, before) as tmp:
        image = open_file(tmp, strict=True, shown=side) if before is not None else new_sidecar(tmp)
        fields, note = set_caption(image, side, caption, provenance, embed=False)
        _verify(tmp, side, caption, fields)
    return _done(path, side, found, fields, note)


def _photo_description(photo: Path, path: Path) -> Description:
    """The photo's own description, read to decide whether a sidecar may be written for it."""
    try:
        return description_of(open_file(photo, strict=False, shown=path))
    except MetadataError as err:
        reason = str(err).removeprefix(f"{path}:").removesuffix("; left unchanged").strip()
        raise MetadataError(f"{path}: cannot read the photo's own metadata to check it for a person's description "
                            f"({reason}); no sidecar written (overwrite_descriptions writes it anyway)") from None


def _verify(tmp: Path, path: Path, caption: str, fields: tuple[str, ...]) -> None:
    """Read the written copy back before it replaces anything."""
    written = description_of(open_file(tmp, strict=True, shown=path))
    if written.caption != caption or not all(same_text(k, written.texts.get(k, ""), caption) for k in fields):
        raise MetadataError(f"{path}: the caption did not read back from the written copy; left unchanged")


def _names(fields: tuple[str, ...]) -> str:
    return ", ".join(SHORT_NAMES.get(f.split("[")[0], f) + (f" ({f.split('[')[1][:-1]})" if "[" in f else "")
                     for f in fields)


def _skipped(path: Path, found: Description, where: str) -> WriteResult:
    text = found.text or ""
    shown = text if len(text) <= 60 else text[:57] + "..."
    return WriteResult(path, "skipped_person",
                       _one_line(f"{path}: kept the description a person wrote {where} ({_names(found.fields)}: "
                                 f"{shown!r}); overwrite_descriptions replaces it"), fields=found.fields)


def _done(path: Path, target: Path, found: Description, fields: tuple[str, ...], note: str | None) -> WriteResult:
    status = "updated" if found.ours else "written"
    message = f"{path}: caption {status} in {target.name} ({_names(fields)})"
    if found.by_person:
        message += f"; replaced a person's description ({_names(found.fields)})"
    if note:
        message += f"; {note}"
    return WriteResult(path, status, _one_line(message), target=target, fields=fields)


def _one_line(text: str) -> str:
    return " ".join(text.split())
