"""Bad (and awkward but valid) image files, generated on the fly: no binary junk is committed.

``make_image_zoo(root)`` writes every case of issue 16's list into ``root`` and returns ``{case: path}``; ``VALID``
are the cases every command must caption (or train on), ``INVALID`` those it must refuse with one clear line.
"""

from __future__ import annotations

import io
import os
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

VALID = ("cmyk", "png16", "rgba", "palette", "animated_gif", "exif_rotated", "one_pixel", "spaces_unicode",
         "corrupt_exif")
INVALID = ("zero_bytes", "truncated_jpeg", "text_as_jpg", "bomb", "missing", "unreadable", "text_chunk_bomb",
           "broken_chunk", "bad_dimensions", "unknown_variant")
REASONS = {  # what each invalid case's one-line error says
    "zero_bytes": "empty file", "truncated_jpeg": "truncated", "text_as_jpg": "not an image",
    "bomb": "decompression-bomb", "missing": "no such file", "unreadable": "ermission denied",
    # issue 26: what Pillow raises besides OSError (ValueError, SyntaxError, NotImplementedError)
    "text_chunk_bomb": "Decompressed data too large", "broken_chunk": "broken PNG file",
    "bad_dimensions": "Invalid dimensions", "unknown_variant": "Unknown pixel format",
}


def photo(width: int = 96, height: int = 64) -> Image.Image:
    """A small photo-like RGB image: a gradient with a red block in the top-left corner (so orientation shows)."""
    x = np.linspace(0, 255, width, dtype=np.float32)[None, :, None]
    y = np.linspace(0, 255, height, dtype=np.float32)[:, None, None]
    pixels = np.concatenate([np.broadcast_to(x, (height, width, 1)), np.broadcast_to(y, (height, width, 1)),
                             np.full((height, width, 1), 128, np.float32)], axis=2).astype(np.uint8)
    pixels[: height // 4, : width // 4] = (255, 0, 0)
    return Image.fromarray(pixels)


def bomb_png(width: int = 30000, height: int = 30000) -> bytes:
    """A PNG whose header claims ``width x height`` pixels (far above Pillow's limit) in a few dozen bytes."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
    return b"\x89PNG\r\n\x1a\n" + header + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


def huge_png(width: int = 9000, height: int = 9000) -> bytes:
    """An RGB PNG of ``width x height`` pixels in a few hundred KB (9000 x 9000: 260 KB; 243 MB of pixels), written
    row by row without holding the image: a coloured first row, every other row repeating it (filter Up)."""
    first = ((np.arange(width)[:, None] * 7 + np.arange(3) * 60) % 256).astype(np.uint8).tobytes()
    deflate = zlib.compressobj(9)
    parts = [deflate.compress(b"\0" + first)]
    block = (b"\2" + bytes(3 * width)) * 256
    for done in range(0, height - 1, 256):
        parts.append(deflate.compress(block[: min(256, height - 1 - done) * (3 * width + 1)]))
    data = b"".join(parts) + deflate.flush()
    header = _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
    idat = b"".join(_chunk(b"IDAT", data[i : i + 65536]) for i in range(0, len(data), 65536))
    return b"\x89PNG\r\n\x1a\n" + header + idat + _chunk(b"IEND", b"")


def text_chunk_bomb_png(zipped_chunk: str = "zTXt") -> bytes:
    """A 2 KB PNG whose compressed text chunk (zTXt or iTXt) inflates to 2 MB: Pillow's ValueError "Decompressed data
    too large"."""
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    if zipped_chunk == "zTXt":
        info.add_text("Comment", "a" * 2_000_000, zip=True)
    else:
        info.add_itxt("Comment", "a" * 2_000_000, zip=True)
    return _encode(photo(16, 8), "PNG", pnginfo=info)


def truncated_ihdr_png() -> bytes:
    """A PNG whose header chunk holds 9 of its 13 bytes (a valid checksum): Pillow's ValueError."""
    ihdr = struct.pack(">IIB", 5, 5, 8)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(b"\0" * 16))


def broken_chunk_png() -> bytes:
    """A PNG whose second IDAT chunk has a damaged name: Pillow raises SyntaxError("broken PNG file") while loading."""
    noise = np.random.default_rng(0).integers(0, 256, (160, 160, 3), dtype=np.uint8)
    data = bytearray(_encode(Image.fromarray(noise), "PNG"))  # 77 KB of pixels: IDAT chunks of 64 KB
    second = data.index(b"IDAT", data.index(b"IDAT") + 4)
    data[second + 1] = 0
    return bytes(data)


def bad_dimensions_tiff() -> bytes:
    """A TIFF whose width tag is text: Pillow's ValueError("Invalid dimensions") at open."""
    data = bytearray(_encode(photo(8, 6), "TIFF"))
    endian = "<" if data[:2] == b"II" else ">"
    (ifd,) = struct.unpack(endian + "I", data[4:8])
    (count,) = struct.unpack(endian + "H", data[ifd : ifd + 2])
    for entry in range(ifd + 2, ifd + 2 + 12 * count, 12):
        if struct.unpack(endian + "H", data[entry : entry + 2])[0] == 256:  # ImageWidth
            data[entry : entry + 12] = struct.pack(endian + "HHI4s", 256, 2, 2, b"8\0\0\0")  # type 2: ASCII "8"
    return bytes(data)


def unknown_variant_dds() -> bytes:
    """A DDS file with unknown pixel-format flags: Pillow's NotImplementedError at open."""
    data = bytearray(_encode(photo(8, 8), "DDS"))
    data[80:84] = struct.pack("<I", 0x8000)
    return bytes(data)


def corrupt_exif_jpeg(orientation: int = 6) -> bytes:
    """A JPEG whose EXIF block claims a 32 KB description in a 200-byte segment (Pillow warns, and still reads the
    orientation); the image is stored sideways, so it is 64 x 96 as stored and 96 x 64 upright."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    exif[0x010E] = "x" * 100  # ImageDescription
    data = bytearray(_jpeg_bytes(photo().transpose(Image.Transpose.ROTATE_90), exif=exif.tobytes()))
    entry = data.index(struct.pack(">HHI", 0x010E, 2, 101))  # big-endian, as Pillow writes EXIF
    data[entry + 4 : entry + 8] = struct.pack(">I", 0x7FFF)
    return bytes(data)


def _jpeg_bytes(image: Image.Image, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=95, **kwargs)
    return buffer.getvalue()


def make_image_zoo(root: Path) -> dict[str, Path]:
    """Write every case into ``root`` (created); ``missing`` is a path that does not exist."""
    root.mkdir(parents=True, exist_ok=True)
    base = photo()
    paths = {name: root / f"{name}.jpg" for name in ("zero_bytes", "truncated_jpeg", "text_as_jpg", "cmyk",
                                                        "exif_rotated", "unreadable", "missing")}
    paths.update({name: root / f"{name}.png" for name in ("png16", "rgba", "palette", "one_pixel", "bomb")})
    paths.update({name: root / f"{name}.png" for name in ("text_chunk_bomb", "broken_chunk", "unknown_variant")})
    paths["bad_dimensions"] = root / "bad_dimensions.tif"
    paths["corrupt_exif"] = root / "corrupt_exif.jpg"
    paths["animated_gif"] = root / "animated_gif.gif"
    paths["spaces_unicode"] = root / "dossier été" / "photo de Zoë 写真.jpg"
    paths["zero_bytes"].write_bytes(b"")
    good = _jpeg_bytes(base)
    paths["truncated_jpeg"].write_bytes(good[: len(good) // 3])
    paths["text_as_jpg"].write_text("this is a text file, not a photo\n")
    base.convert("CMYK").save(paths["cmyk"], "JPEG")
    Image.fromarray((np.asarray(base.convert("L"), np.uint16) * 257)).save(paths["png16"])
    rgba = base.convert("RGBA")
    rgba.putalpha(128)
    rgba.save(paths["rgba"])
    base.convert("P", palette=Image.Palette.ADAPTIVE, colors=16).save(paths["palette"])
    frames = [base, base.transpose(Image.Transpose.FLIP_LEFT_RIGHT)]
    frames[0].save(paths["animated_gif"], save_all=True, append_images=frames[1:], duration=100, loop=0)
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: viewers rotate it 90° clockwise
    paths["exif_rotated"].write_bytes(_jpeg_bytes(base.transpose(Image.Transpose.ROTATE_90), exif=exif.tobytes()))
    Image.new("RGB", (1, 1), (120, 30, 200)).save(paths["one_pixel"])
    paths["bomb"].write_bytes(bomb_png())
    paths["text_chunk_bomb"].write_bytes(text_chunk_bomb_png())
    paths["broken_chunk"].write_bytes(broken_chunk_png())
    paths["bad_dimensions"].write_bytes(bad_dimensions_tiff())
    paths["unknown_variant"].write_bytes(unknown_variant_dds())  # a DDS file named .png: Pillow goes by content
    paths["corrupt_exif"].write_bytes(corrupt_exif_jpeg())
    paths["unreadable"].write_bytes(good)
    os.chmod(paths["unreadable"], 0)
    paths["spaces_unicode"].parent.mkdir(parents=True, exist_ok=True)
    paths["spaces_unicode"].write_bytes(good)
    return paths


def can_read_unreadable(path: Path) -> bool:
    """True when permissions do not stop this process (root): the 'unreadable' case is then simulated."""
    return os.access(path, os.R_OK)
