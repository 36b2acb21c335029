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

VALID = ("cmyk", "png16", "rgba", "palette", "animated_gif", "exif_rotated", "one_pixel", "spaces_unicode")
INVALID = ("zero_bytes", "truncated_jpeg", "text_as_jpg", "bomb", "missing", "unreadable")
REASONS = {  # what each invalid case's one-line error says
    "zero_bytes": "empty file", "truncated_jpeg": "truncated", "text_as_jpg": "not an image",
    "bomb": "decompression-bomb", "missing": "no such file", "unreadable": "ermission denied",
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
    paths["unreadable"].write_bytes(good)
    os.chmod(paths["unreadable"], 0)
    paths["spaces_unicode"].parent.mkdir(parents=True, exist_ok=True)
    paths["spaces_unicode"].write_bytes(good)
    return paths


def can_read_unreadable(path: Path) -> bool:
    """True when permissions do not stop this process (root): the 'unreadable' case is then simulated."""
    return os.access(path, os.R_OK)
