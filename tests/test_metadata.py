"""Captions written into photo metadata (captioner.library.metadata): every format read back with the library and
with exiftool, a person's description never replaced, our own updated, pixels untouched, atomic replacement (a
failure or a SIGKILL mid-write leaves the photo intact), permissions, read-only files and folders, damaged files."""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from captioner.library import metadata
from captioner.library.metadata import (
    ALT_TEXT,
    DC_DESCRIPTION,
    EXIF_DESCRIPTION,
    IIM_CAPTION,
    MetadataUnavailable,
    Provenance,
    read_description,
    sidecar_path,
    write_caption,
)

exiv2 = pytest.importorskip("exiv2", reason="python-exiv2 not installed: pip install 'captioner[metadata]'")

REPO = Path(__file__).resolve().parents[1]
FORMATS = ["jpg", "png", "webp", "tif"]
UNICODE = "Un été à Kyōto: 漢字 and a dog 🐕 on the grass"
PERSON = "Grandma's garden, summer 1987"
PROV = Provenance(model="lite0-test", version="0.1.0", weights_sha256="ab" * 32, confidence=0.8125,
                  date="2025-01-31T12:00:00+00:00")
NS = {"rdf": "http://www.w3.org/1999/02/22-rdf-syntax-ns#", "dc": "http://purl.org/dc/elements/1.1/",
      "iptcExt": "http://iptc.org/std/Iptc4xmpExt/2008-02-29/", "captioner": metadata.NAMESPACE}
XML_LANG = "{http://www.w3.org/XML/1998/namespace}lang"


def make_photo(path: Path, iim: bool = False) -> Path:
    """A small noisy RGB photo (lossless formats keep every pixel); ``iim``: with IPTC IIM data (a by-line)."""
    pixels = np.random.default_rng(len(path.name)).integers(0, 256, (24, 40, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, **({"lossless": True} if path.suffix == ".webp" else {}))
    if iim:
        edit(path, lambda img: img.iptcData().__setitem__("Iptc.Application2.Byline", "A. Photographer"))
    return path


def edit(path: Path, change) -> None:
    """Change a file's metadata with exiv2 directly, as other photo software would."""
    img = exiv2.ImageFactory.open(str(path))
    img.readMetadata()
    change(img)
    img.writeMetadata()


def set_field(path: Path, key: str, text: str, lang: str = "x-default") -> None:
    def change(img):
        if key.startswith("Xmp."):
            img.xmpData()[key] = exiv2.LangAltValue({lang: text})
        elif key.startswith("Exif."):
            img.exifData()[key] = text
        else:
            img.iptcData()[key] = text
    edit(path, change)


def pixels(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB")).copy()


def temporaries(folder: Path) -> list[Path]:
    return sorted(folder.glob(".*.captioner-*.tmp"))


@pytest.fixture
def exiftool():
    """``exiftool(path) -> {"Group:Tag": value}``; skipped without exiftool unless CAPTIONER_REQUIRE_EXIFTOOL=1."""
    found = shutil.which("exiftool")
    if found is None:
        if os.environ.get("CAPTIONER_REQUIRE_EXIFTOOL") == "1":
            pytest.fail("exiftool is missing and CAPTIONER_REQUIRE_EXIFTOOL=1: apt-get install libimage-exiftool-perl")
        pytest.skip("exiftool not installed (Debian: apt-get install libimage-exiftool-perl)")

    def read(path: Path) -> dict:
        out = subprocess.run([found, "-j", "-G1", "-a", str(path)], capture_output=True, check=True)
        return json.loads(out.stdout)[0]

    read.packet = lambda path: subprocess.run([found, "-b", "-XMP", str(path)], capture_output=True,
                                              check=True).stdout
    return read


def parse_packet(packet: bytes) -> ET.Element:
    return ET.fromstring(packet.decode("utf-8").split("?>", 1)[1].rsplit("<?xpacket", 1)[0])


def lang_alt(packet: bytes, prop: str) -> dict[str, str]:
    """{language: text} of a language-alternative property in a raw XMP packet."""
    return {li.get(XML_LANG): li.text for li in parse_packet(packet).findall(f".//{prop}/rdf:Alt/rdf:li", NS)}


def xmp_property(packet: bytes, prop: str) -> str | None:
    """A simple property of a raw XMP packet (exiv2 writes them as attributes of rdf:Description)."""
    prefix, name = prop.split(":")
    qualified = f"{{{NS[prefix]}}}{name}"
    for description in parse_packet(packet).iter(f"{{{NS['rdf']}}}Description"):
        if qualified in description.attrib:
            return description.attrib[qualified]
    return None


@pytest.mark.parametrize("ext", FORMATS)
def test_each_format_reads_back_with_the_library(tmp_path, ext):
    photo = make_photo(tmp_path / f"photo é.{ext}")
    result = write_caption(photo, UNICODE, PROV)
    assert (result.status, result.ok, result.target) == ("written", True, photo.resolve())
    assert result.fields == (DC_DESCRIPTION, ALT_TEXT, EXIF_DESCRIPTION)
    found = read_description(photo)
    assert found.texts == {DC_DESCRIPTION: UNICODE, ALT_TEXT: UNICODE, EXIF_DESCRIPTION: UNICODE}
    assert (found.text, found.ours, found.by_person, found.caption, found.has_iim) == (UNICODE, True, False,
                                                                                       UNICODE, False)
    assert found.provenance == PROV


@pytest.mark.parametrize("ext", FORMATS)
def test_exiftool_reads_every_field_and_the_provenance(tmp_path, ext, exiftool):
    photo = make_photo(tmp_path / f"photo.{ext}")
    assert write_caption(photo, UNICODE, PROV).status == "written"
    tags = exiftool(photo)
    assert tags["XMP-dc:Description"] == UNICODE
    assert tags["XMP-iptcExt:AltTextAccessibility"] == UNICODE
    assert tags["IFD0:ImageDescription"] == UNICODE
    assert not any(k.startswith("IPTC:") for k in tags), "no IIM is added where there was none"
    assert (tags["XMP-captioner:Model"], tags["XMP-captioner:Version"]) == ("lite0-test", "0.1.0")
    assert tags["XMP-captioner:WeightsSHA256"] == "ab" * 32
    assert float(tags["XMP-captioner:Confidence"]) == 0.8125
    assert tags["XMP-captioner:Caption"] == UNICODE
    packet = exiftool.packet(photo)  # both descriptions are language alternatives with an x-default
    assert xmp_property(packet, "captioner:date") == PROV.date  # exiftool shows dates its own way: read the packet
    assert lang_alt(packet, "dc:description") == {"x-default": UNICODE}
    assert lang_alt(packet, "iptcExt:AltTextAccessibility") == {"x-default": UNICODE}


@pytest.mark.parametrize("ext", ["jpg", "tif"])
def test_iim_caption_is_written_only_where_iim_exists(tmp_path, ext, exiftool):
    photo = make_photo(tmp_path / f"photo.{ext}", iim=True)
    result = write_caption(photo, UNICODE, PROV)
    assert result.fields[-1] == IIM_CAPTION
    tags = exiftool(photo)
    assert tags["IPTC:Caption-Abstract"] == UNICODE  # readable because UTF-8 is declared
    assert tags["IPTC:CodedCharacterSet"] == "UTF8"
    assert tags["IPTC:By-line"] == "A. Photographer"
    assert read_description(photo).texts[IIM_CAPTION] == UNICODE


def test_iim_in_another_character_set_is_not_garbled(tmp_path):
    photo = make_photo(tmp_path / "photo.jpg", iim=True)
    edit(photo, lambda img: img.iptcData().__setitem__("Iptc.Envelope.CharacterSet", "\x1b.A"))  # Latin-1
    ascii_result = write_caption(photo, "a dog on the grass", PROV)
    assert IIM_CAPTION in ascii_result.fields
    result = write_caption(photo, UNICODE, PROV)
    assert result.status == "updated" and IIM_CAPTION not in result.fields and "IIM" in result.message
    found = read_description(photo)
    assert IIM_CAPTION not in found.texts and found.ours  # our old IIM caption went rather than stay stale


@pytest.mark.parametrize("ext", FORMATS)
def test_pixels_are_untouched(tmp_path, ext):
    photo = make_photo(tmp_path / f"photo.{ext}", iim=ext in ("jpg", "tif"))
    before = pixels(photo)
    assert write_caption(photo, UNICODE, PROV).ok
    assert write_caption(photo, "a second caption", PROV).status == "updated"
    after = pixels(photo)
    assert before.shape == after.shape and np.array_equal(before, after)


def rich_photo(path: Path) -> Path:
    """A photo carrying what a person's photos carry: EXIF (camera, date, GPS), an ICC profile, XMP keywords and a
    rating, and IIM keywords where the format has IIM."""
    from PIL import ImageCms

    exif = Image.Exif()
    exif[0x010F], exif[0x0110] = "Canon", "EOS R5"
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    make_photo(path)
    Image.open(path).save(path, exif=exif, icc_profile=icc, **({"lossless": True} if path.suffix == ".webp" else {}))

    def change(img):
        img.xmpData()["Xmp.dc.subject"] = "dog"
        img.xmpData()["Xmp.xmp.Rating"] = "4"
        img.exifData()["Exif.Photo.DateTimeOriginal"] = "2020:01:01 10:00:00"
        img.exifData()["Exif.GPSInfo.GPSLatitude"] = "48/1 51/1 0/1"
        img.exifData()["Exif.GPSInfo.GPSLatitudeRef"] = "N"
        if path.suffix in (".jpg", ".tif"):
            img.iptcData()["Iptc.Application2.Keywords"] = "dog"
    edit(path, change)
    return path


def other_tags(tags: dict) -> dict:
    """exiftool's tags but the file's own, exiftool's, and where a rewritten TIFF's strips now start."""
    return {k: v for k, v in tags.items() if k.split(":")[0] not in ("SourceFile", "System", "File", "ExifTool",
                                                                     "Composite") and k != "IFD0:StripOffsets"}


@pytest.mark.parametrize("ext", FORMATS)
def test_everything_else_in_the_photo_is_kept(tmp_path, ext, exiftool):
    photo = rich_photo(tmp_path / f"photo.{ext}")
    before = other_tags(exiftool(photo))
    assert write_caption(photo, UNICODE, PROV).ok and write_caption(photo, "a dog", PROV).status == "updated"
    after = other_tags(exiftool(photo))
    assert {k: v for k, v in after.items() if k in before} == before
    ours = {"IFD0:ImageDescription", "XMP-dc:Description", "XMP-iptcExt:AltTextAccessibility",
            "IPTC:Caption-Abstract", "IPTC:CodedCharacterSet"} | {f"XMP-captioner:{k}" for k in ("Model", "Version", "WeightsSHA256",
                                                                         "Confidence", "Date", "Caption")}
    assert set(after) - set(before) <= ours and "ICC-header:ProfileVersion" in after


PERSON_FIELDS = [(DC_DESCRIPTION, "x-default"), (DC_DESCRIPTION, "de"), (ALT_TEXT, "x-default"),
                 (EXIF_DESCRIPTION, None), (IIM_CAPTION, None)]


@pytest.mark.parametrize("key,lang", PERSON_FIELDS, ids=lambda v: str(v))
def test_a_persons_description_is_never_overwritten(tmp_path, key, lang):
    photo = make_photo(tmp_path / "photo.jpg", iim=key == IIM_CAPTION)
    set_field(photo, key, PERSON, lang or "x-default")
    original = photo.read_bytes()
    result = write_caption(photo, UNICODE, PROV)
    assert result.status == "skipped_person" and not result.ok and result.target is None
    assert PERSON in result.message and "\n" not in result.message
    assert photo.read_bytes() == original
    found = read_description(photo)
    assert found.by_person and not found.ours and found.provenance is None
    forced = write_caption(photo, UNICODE, PROV, overwrite_descriptions=True)
    assert forced.status == "written" and "replaced a person's description" in forced.message
    assert set(read_description(photo).texts.values()) == {UNICODE}


def test_a_person_editing_our_description_makes_it_theirs(tmp_path):
    photo = make_photo(tmp_path / "photo.jpg")
    write_caption(photo, "a dog on the grass", PROV)
    set_field(photo, DC_DESCRIPTION, PERSON)  # our provenance stays; the text is no longer ours
    assert read_description(photo).by_person
    before = photo.read_bytes()
    assert write_caption(photo, UNICODE, PROV).status == "skipped_person"
    assert photo.read_bytes() == before


def test_camera_boilerplate_is_not_a_persons_description(tmp_path):
    photo = make_photo(tmp_path / "photo.jpg")
    set_field(photo, EXIF_DESCRIPTION, "OLYMPUS DIGITAL CAMERA         ")
    assert read_description(photo).texts == {}
    assert write_caption(photo, "a dog", PROV).status == "written"


def test_a_later_run_updates_its_own_description(tmp_path):
    photo = make_photo(tmp_path / "photo.jpg", iim=True)
    assert write_caption(photo, "a dog on the grass", PROV).status == "written"
    newer = Provenance(model="lite1", version="0.2.0", weights_sha256="cd" * 32, confidence=None,
                       date="2025-02-01T08:00:00+00:00")
    result = write_caption(photo, UNICODE, newer)
    assert result.status == "updated"
    found = read_description(photo)
    assert found.ours and set(found.texts.values()) == {UNICODE} and len(found.texts) == 4
    assert found.provenance == newer  # confidence None: the old one is removed, not left behind


def test_the_file_is_replaced_with_its_permissions_and_no_temporary_left(tmp_path):
    photo = make_photo(tmp_path / "photo.jpg")
    os.chmod(photo, 0o640)
    inode = photo.stat().st_ino
    assert write_caption(photo, "a dog", PROV).ok
    assert stat.S_IMODE(photo.stat().st_mode) == 0o640
    assert photo.stat().st_ino != inode, "a new file renamed into place, not the old one rewritten"
    assert temporaries(tmp_path) == []


def test_keep_mtime(tmp_path):
    photo = make_photo(tmp_path / "photo.jpg")
    then = 1_000_000_000_123_456_789
    os.utime(photo, ns=(then, then))
    assert write_caption(photo, "a dog", PROV, keep_mtime=True).ok
    assert (photo.stat().st_atime_ns, photo.stat().st_mtime_ns) == (then, then)
    assert write_caption(photo, "a cat", PROV).ok
    assert photo.stat().st_mtime_ns != then


def test_a_failure_before_the_rename_leaves_the_photo_intact(tmp_path, monkeypatch):
    from captioner.library.metadata import files

    photo = make_photo(tmp_path / "photo.jpg")
    original = photo.read_bytes()

    def fail(src, dst):
        assert Path(src).read_bytes() != original  # the temporary copy holds the new metadata by now
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(files.os, "replace", fail)
    result = write_caption(photo, "a dog", PROV)
    assert result.status == "error" and "No space left on device" in result.message
    assert photo.read_bytes() == original and temporaries(tmp_path) == []


def test_a_failure_while_setting_metadata_leaves_the_photo_intact(tmp_path, monkeypatch):
    from captioner.library.metadata import write

    photo = make_photo(tmp_path / "photo.jpg")
    original = photo.read_bytes()
    monkeypatch.setattr(write, "set_caption", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        write_caption(photo, "a dog", PROV)
    assert photo.read_bytes() == original and temporaries(tmp_path) == []


def test_a_photo_changed_by_another_program_meanwhile_is_not_replaced(tmp_path, monkeypatch):
    from captioner.library.metadata import write

    photo = make_photo(tmp_path / "photo.jpg")
    set_caption = write.set_caption

    def meanwhile(*args, **kwargs):
        out = set_caption(*args, **kwargs)
        photo.write_bytes(photo.read_bytes() + b"\0")  # another program saves the photo
        return out

    monkeypatch.setattr(write, "set_caption", meanwhile)
    result = write_caption(photo, "a dog", PROV)
    assert result.status == "error" and "changed by another program" in result.message
    assert read_description(photo).texts == {} and temporaries(tmp_path) == []


KILLED_CHILD = """
import os, sys, time
from pathlib import Path
def hang(src, dst):  # the moment between a written, flushed temporary copy and the rename
    Path(sys.argv[2]).write_text(str(src))
    time.sleep(120)
os.replace = hang
from captioner.library.metadata import Provenance, write_caption
write_caption(sys.argv[1], "killed mid-write", Provenance("m", "v", "0" * 64))
"""


def test_sigkill_mid_write_leaves_the_photo_intact(tmp_path):
    photo = make_photo(tmp_path / "photo.jpg")
    original, marker = photo.read_bytes(), tmp_path / "ready"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    child = subprocess.Popen([sys.executable, "-c", KILLED_CHILD, str(photo), str(marker)], env=env)
    deadline = time.monotonic() + 120
    while not marker.exists() and child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert marker.exists(), "the child never reached the rename"
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    assert photo.read_bytes() == original
    assert temporaries(tmp_path) == [Path(marker.read_text())]
    assert write_caption(photo, "a dog", PROV).status == "written"  # the next write clears what the kill left
    assert temporaries(tmp_path) == []


def test_a_read_only_photo_is_one_error_and_its_sidecar_can_be_written(tmp_path):
    photo = make_photo(tmp_path / "photo.jpg")
    os.chmod(photo, 0o444)
    original = photo.read_bytes()
    result = write_caption(photo, "a dog", PROV)
    assert result.status == "error" and "read-only" in result.message and "\n" not in result.message
    assert photo.read_bytes() == original
    side = write_caption(photo, "a dog", PROV, mode="sidecar")
    assert side.status == "written" and side.target == tmp_path / "photo.jpg.xmp"
    assert read_description(side.target).texts == {DC_DESCRIPTION: "a dog", ALT_TEXT: "a dog"}


def test_a_read_only_folder_is_one_error_for_embed_and_sidecar(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    photo = make_photo(folder / "photo.png")
    original = photo.read_bytes()
    os.chmod(folder, 0o555)
    try:
        for mode in ("embed", "sidecar"):
            result = write_caption(photo, "a dog", PROV, mode=mode)
            assert result.status == "error" and "read-only" in result.message and "\n" not in result.message
        assert sorted(p.name for p in folder.iterdir()) == ["photo.png"] and photo.read_bytes() == original
    finally:
        os.chmod(folder, 0o755)


def broken_xmp(path: Path) -> None:
    make_photo(path)
    data = path.read_bytes()
    payload = b"http://ns.adobe.com/xap/1.0/\x00<x:xmpmeta xmlns:x='adobe:ns:meta/'><rdf:RDF><broken"
    path.write_bytes(data[:2] + b"\xff\xe1" + (len(payload) + 2).to_bytes(2, "big") + payload + data[2:])


DAMAGED = {
    "text named jpg": lambda p: p.write_text("not a photo at all, just some text"),
    "truncated jpeg": lambda p: (make_photo(p), p.write_bytes(p.read_bytes()[:40])),
    "damaged XMP": broken_xmp,
    "bmp (read-only format)": lambda p: Image.new("RGB", (8, 8)).save(p, format="BMP"),
    "gif": lambda p: Image.new("P", (8, 8)).save(p, format="GIF"),
}


@pytest.mark.parametrize("case", list(DAMAGED))
def test_a_damaged_or_unsupported_file_is_one_error_and_the_next_photo_goes_on(tmp_path, case):
    bad = tmp_path / "bad.jpg"
    DAMAGED[case](bad)
    original = bad.read_bytes()
    good = make_photo(tmp_path / "good.jpg")
    results = [write_caption(p, "a dog", PROV) for p in (bad, good)]
    assert [r.status for r in results] == ["error", "written"]
    assert "\n" not in results[0].message and str(bad) in results[0].message
    assert bad.read_bytes() == original and temporaries(tmp_path) == []
    side = write_caption(bad, "a dog", PROV, mode="sidecar")  # only a photo whose metadata could be read
    assert side.status == ("written" if case.startswith("bmp") else "error")
    assert sidecar_path(bad).exists() == side.ok and bad.read_bytes() == original


def test_sidecar_naming_both_ways(tmp_path, exiftool):
    photo = make_photo(tmp_path / "photo.jpg")
    assert sidecar_path(photo) == tmp_path / "photo.jpg.xmp"
    assert sidecar_path(photo, "replace") == tmp_path / "photo.xmp"
    with pytest.raises(ValueError):
        sidecar_path(photo, "beside")
    original = photo.read_bytes()
    for naming, name in (("append", "photo.jpg.xmp"), ("replace", "photo.xmp")):
        result = write_caption(photo, UNICODE, PROV, mode="sidecar", sidecar_name=naming)
        assert (result.status, result.target, result.fields) == ("written", tmp_path / name,
                                                                 (DC_DESCRIPTION, ALT_TEXT))
        tags = exiftool(tmp_path / name)
        assert tags["XMP-dc:Description"] == UNICODE and tags["XMP-captioner:Model"] == "lite0-test"
        assert lang_alt(exiftool.packet(tmp_path / name), "iptcExt:AltTextAccessibility") == {"x-default": UNICODE}
    assert photo.read_bytes() == original


def person_sidecar(path: Path, text: str) -> None:
    img = exiv2.ImageFactory.create(exiv2.ImageType.xmp, str(path))
    img.xmpData()["Xmp.dc.description"] = exiv2.LangAltValue({"x-default": text})
    img.xmpData()["Xmp.xmp.Rating"] = "5"
    img.writeMetadata()


def test_a_persons_sidecar_is_kept_and_ours_is_updated_keeping_the_rest(tmp_path):
    photo = make_photo(tmp_path / "photo.jpg")
    side = tmp_path / "photo.xmp"
    person_sidecar(side, PERSON)
    kept = side.read_bytes()
    result = write_caption(photo, "a dog", PROV, mode="sidecar", sidecar_name="replace")
    assert result.status == "skipped_person" and PERSON in result.message and side.read_bytes() == kept
    side.unlink()
    person_sidecar(side, "")  # a person's rating, no description
    assert write_caption(photo, "a dog", PROV, mode="sidecar", sidecar_name="replace").status == "written"
    assert write_caption(photo, UNICODE, PROV, mode="sidecar", sidecar_name="replace").status == "updated"
    found = read_description(side)
    assert found.ours and found.texts == {DC_DESCRIPTION: UNICODE, ALT_TEXT: UNICODE}
    img = exiv2.ImageFactory.open(str(side))
    img.readMetadata()
    assert img.xmpData()["Xmp.xmp.Rating"].toString() == "5"


def test_everything_else_in_a_sidecar_is_kept(tmp_path, exiftool):
    photo = make_photo(tmp_path / "photo.jpg")
    side = exiv2.ImageFactory.create(exiv2.ImageType.xmp, str(sidecar_path(photo)))
    for key, value in {"Xmp.dc.subject": "dog", "Xmp.xmp.Rating": "4", "Xmp.exif.DateTimeOriginal": "2020-01-01T10:00",
                       "Xmp.tiff.Make": "Canon", "Xmp.photoshop.City": "Paris", "Xmp.dc.creator": "Me",
                       "Xmp.dc.title": exiv2.LangAltValue({"x-default": "Title"})}.items():
        side.xmpData()[key] = value
    side.writeMetadata()
    before = other_tags(exiftool(sidecar_path(photo)))
    for caption in (UNICODE, "a dog"):
        assert write_caption(photo, caption, PROV, mode="sidecar").ok
    after = other_tags(exiftool(sidecar_path(photo)))
    assert {k: v for k, v in after.items() if k in before} == before
    assert after["XMP-dc:Description"] == "a dog" and not any(k.startswith(("IFD0:", "IPTC:")) for k in after)


def test_a_persons_description_in_the_photo_blocks_its_sidecar(tmp_path):
    photo = make_photo(tmp_path / "photo.jpg")
    set_field(photo, EXIF_DESCRIPTION, PERSON)
    result = write_caption(photo, "a dog", PROV, mode="sidecar")
    assert result.status == "skipped_person" and not sidecar_path(photo).exists()
    assert write_caption(photo, "a dog", PROV, mode="sidecar", overwrite_descriptions=True).status == "written"


def test_a_symbolic_link_rewrites_its_target_and_stays_a_link(tmp_path):
    photo = make_photo(tmp_path / "photo.png")
    link = tmp_path / "link.png"
    link.symlink_to(photo.name)
    assert write_caption(link, "a dog", PROV).ok
    assert link.is_symlink() and read_description(photo).text == "a dog"


def test_wrong_arguments_raise(tmp_path):
    photo = make_photo(tmp_path / "photo.jpg")
    for kwargs in ({"mode": "inline"}, {"sidecar_name": "x"}):
        with pytest.raises(ValueError):
            write_caption(photo, "a dog", PROV, **kwargs)
    for caption in ("   ", "nul\x00in it"):
        with pytest.raises(ValueError):
            write_caption(photo, caption, PROV)


def test_without_the_library_the_error_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "exiv2", None)
    with pytest.raises(MetadataUnavailable, match=r"pip install 'captioner\[metadata\]'"):
        write_caption(tmp_path / "photo.jpg", "a dog", PROV)
    with pytest.raises(MetadataUnavailable):
        metadata.require_library()
