"""Test images for the download tests: every good format and every kind of bad one."""

from __future__ import annotations

import io
import struct
import zlib

import cv2
import numpy as np
from PIL import Image


def rgb(w: int, h: int, color=(200, 30, 30)) -> Image.Image:
    return Image.new("RGB", (w, h), color)


def encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def jpeg(w: int = 120, h: int = 80, color=(200, 30, 30)) -> bytes:
    return encode(rgb(w, h, color), "JPEG", quality=90)


def png(w: int = 120, h: int = 80) -> bytes:
    return encode(rgb(w, h, (30, 160, 60)), "PNG")


def webp(w: int = 120, h: int = 80) -> bytes:
    return encode(rgb(w, h, (30, 60, 200)), "WEBP", quality=90)


def gif(w: int = 40, h: int = 40) -> bytes:
    return encode(rgb(w, h), "GIF")


def cmyk_jpeg(w: int = 64, h: int = 48) -> bytes:
    return encode(rgb(w, h, (30, 60, 200)).convert("CMYK"), "JPEG", quality=90)


def png16(w: int = 50, h: int = 30) -> bytes:
    arr = np.full((h, w, 3), 40000, np.uint16)
    ok, enc = cv2.imencode(".png", arr)
    assert ok
    return enc.tobytes()


def rgba_transparent_png(w: int = 32, h: int = 32) -> bytes:
    return encode(Image.new("RGBA", (w, h), (255, 0, 0, 0)), "PNG")


def exif_rotated_jpeg() -> bytes:
    """Stored 80 wide x 40 tall, left half red, right half blue; EXIF orientation 6 says
    'rotate 90 degrees clockwise to show', so upright it is 40 x 80 with red on TOP."""
    img = Image.new("RGB", (80, 40), (0, 0, 255))
    img.paste((255, 0, 0), (0, 0, 40, 40))
    exif = Image.Exif()
    exif[0x0112] = 6
    return encode(img, "JPEG", quality=95, exif=exif.tobytes())


def truncated_jpeg() -> bytes:
    data = jpeg(200, 200)
    return data[: len(data) // 2]


def pixel_bomb_png(w: int = 30000, h: int = 30000) -> bytes:
    """A tiny file whose header claims w x h pixels (IHDR patched, CRC fixed)."""
    data = bytearray(png(8, 8))
    ihdr = 8  # signature length; chunk = length(4) type(4) data(13) crc(4)
    body = bytearray(data[ihdr + 8 : ihdr + 8 + 13])
    body[0:8] = struct.pack(">II", w, h)
    crc = zlib.crc32(b"IHDR" + bytes(body)) & 0xFFFFFFFF
    data[ihdr + 8 : ihdr + 8 + 13] = body
    data[ihdr + 21 : ihdr + 25] = struct.pack(">I", crc)
    return bytes(data)
