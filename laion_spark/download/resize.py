"""Validate, decode, resize and encode one image like img2dataset, with bounds first.

Order of work for untrusted bytes: sniff the format and read the header with Pillow (no
pixel decode) -> refuse formats we do not keep and pixel counts over `max_pixels`
(decompression bombs never reach the decoder) -> decode with OpenCV -> normalise (16-bit
to 8-bit, gray to BGR, alpha composited on white, EXIF orientation) -> resize (INTER_AREA
to shrink, LANCZOS4 to grow; img2dataset's geometry for every mode) -> encode.
"""

from __future__ import annotations

import io
import re
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image

from laion_spark.download.settings import DownloadSettings

cv2.setNumThreads(1)  # many fetch threads already run in parallel; no nested thread pools

# Pillow reports camera JPEGs with a multi-picture index as MPO: the first frame is a JPEG
_FORMAT_ALIASES = {"MPO": "JPEG"}
_ENCODE_EXT = {"jpg": ".jpg", "png": ".png", "webp": ".webp"}
_SNIFF_FORMAT = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp"}


@dataclass
class ResizeResult:
    # success | empty_body | failed_to_decode | unsupported_format | too_large | too_small |
    # failed_to_resize
    status: str
    image: bytes | None = None
    width: int | None = None
    height: int | None = None
    original_width: int | None = None
    original_height: int | None = None
    source_format: str | None = None
    format: str | None = None
    error: str | None = None


_SVG_START = re.compile(
    rb"^(?:\xef\xbb\xbf)?\s*(?:<\?xml[^>]*>\s*)?(?:<!--.*?-->\s*|<!DOCTYPE[^>]*>\s*)*<svg[\s>]",
    re.I | re.S,
)
_HTML_START = re.compile(
    rb"^(?:\xef\xbb\xbf)?\s*(?:<!--.*?-->\s*)*<(?:!DOCTYPE\s+html|html|head|body)[\s>]", re.I | re.S
)


def is_svg(data: bytes) -> bool:
    """An SVG document (XML declaration, comments and a doctype may come first)."""
    return _SVG_START.match(data[:4096]) is not None


def describe_bytes(data: bytes) -> str:
    """What bytes that are not a readable image look like, in words (for error messages:
    never an object repr)."""
    head = data[:4096]
    if _HTML_START.match(head):
        return "an HTML page, not an image"
    if head.startswith(b"\x1f\x8b"):
        return "gzip-compressed data without a Content-Encoding header"
    if head.lstrip().startswith((b"{", b"[")) and b"\x00" not in head:
        return "JSON or other text, not an image"
    preview = data[:16]
    if preview and all(32 <= c < 127 or c in (9, 10, 13) for c in preview):
        return f"text starting {preview.decode('ascii')!r}, not an image"
    return f"{len(data)} bytes of an unknown format starting {preview.hex(' ')}"


def encode_params(cfg: DownloadSettings) -> list[int]:
    if cfg.encode_format == "jpg":
        return [int(cv2.IMWRITE_JPEG_QUALITY), cfg.encode_quality]
    if cfg.encode_format == "png":
        return [int(cv2.IMWRITE_PNG_COMPRESSION), cfg.encode_quality]
    return [int(cv2.IMWRITE_WEBP_QUALITY), cfg.encode_quality]


def _header(data: bytes) -> tuple[str, int, int, str, int]:
    """(format, width, height, mode, EXIF orientation) without decoding pixels."""
    with warnings.catch_warnings():
        # Pillow warns (or raises) on huge sizes itself; we apply our own max_pixels instead
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        with Image.open(io.BytesIO(data)) as im:
            fmt = _FORMAT_ALIASES.get(im.format or "", im.format or "unknown")
            orientation = 1
            try:
                if fmt in ("JPEG", "WEBP"):
                    orientation = int(im.getexif().get(0x0112, 1) or 1)
                elif fmt == "PNG":
                    # Pillow's PNG getexif() decodes the whole image when no eXIf chunk came
                    # before the pixels: read only a chunk already seen
                    raw = im.info.get("exif")
                    if raw:
                        exif = Image.Exif()
                        exif.load(raw)
                        orientation = int(exif.get(0x0112, 1) or 1)
            except Exception:  # broken EXIF is not a broken image
                orientation = 1
            return fmt, im.width, im.height, im.mode, orientation


def _jpeg_complete(data: bytes) -> bool:
    """A JPEG whose last scan is followed by an end-of-image marker (not truncated).

    libjpeg decodes a truncated JPEG into a half-grey picture without an error; img2dataset
    stores those as successes. We look for EOI after the last start-of-scan instead.
    """
    sos = data.rfind(b"\xff\xda")
    return sos >= 0 and data.find(b"\xff\xd9", sos) >= 0


def _apply_orientation(img: np.ndarray, orientation: int) -> np.ndarray:
    # EXIF orientation 2..8 -> the transform that shows the picture upright
    if orientation == 2:
        return cv2.flip(img, 1)
    if orientation == 3:
        return cv2.rotate(img, cv2.ROTATE_180)
    if orientation == 4:
        return cv2.flip(img, 0)
    if orientation == 5:
        return cv2.flip(cv2.rotate(img, cv2.ROTATE_90_CLOCKWISE), 1)
    if orientation == 6:
        return cv2.rotate(img, cv2.ROTATE_90_CLOCKWISE)
    if orientation == 7:
        return cv2.flip(cv2.rotate(img, cv2.ROTATE_90_COUNTERCLOCKWISE), 1)
    if orientation == 8:
        return cv2.rotate(img, cv2.ROTATE_90_COUNTERCLOCKWISE)
    return img


def _decode(data: bytes, fmt: str, mode: str, factor: int) -> tuple[np.ndarray, bool]:
    """BGR uint8 image and whether it differs from the source bytes' pixels (alpha, depth);
    a JPEG is decoded DCT-reduced by `factor` (see _jpeg_reduction)."""
    buf = np.frombuffer(data, np.uint8)
    changed = False
    if fmt == "JPEG":
        flag = cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION
        if factor > 1:
            flag = _REDUCED_FLAGS[factor] | cv2.IMREAD_IGNORE_ORIENTATION
            changed = True
        if mode == "CMYK":
            # Adobe CMYK JPEGs: Pillow's converter handles the inverted-ink convention
            with Image.open(io.BytesIO(data)) as im:
                img = cv2.cvtColor(np.asarray(im.convert("RGB")), cv2.COLOR_RGB2BGR)
            return img, True
        img = cv2.imdecode(buf, flag)
    else:
        img = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    if img is None:
        raise ValueError(f"OpenCV could not decode the {fmt} data")
    if img.dtype == np.uint16:
        img = (img >> 8).astype(np.uint8)
        changed = True
    elif img.dtype != np.uint8:
        img = cv2.normalize(img, None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8)
        changed = True
    if img.ndim == 2:
        img = cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
    elif img.shape[2] == 4:
        img = _matte_on_white(img)
        changed = True
    elif img.shape[2] == 1:
        img = cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
    return img, changed


_REDUCED_FLAGS = {
    8: cv2.IMREAD_REDUCED_COLOR_8,
    4: cv2.IMREAD_REDUCED_COLOR_4,
    2: cv2.IMREAD_REDUCED_COLOR_2,
}
# rows of a float32 matte computed at once: ~1M pixels, so temporaries stay ~30 MB
_MATTE_PIXELS = 1 << 20


def _jpeg_reduction(w: int, h: int, mode: str, cfg: DownloadSettings) -> int:
    """The largest DCT reduction (8, 4, 2; 1 = none) that keeps the decoded JPEG at least
    as large as the resize needs."""
    if not (cfg.fast_jpeg_decode and cfg.resize_mode != "no" and mode != "CMYK"):
        return 1
    need = _needed_side(w, h, cfg)
    for factor in (8, 4, 2):
        if need is not None and _side_for_mode(w // factor, h // factor, cfg) >= need:
            return factor
    return 1


def _matte_on_white(img: np.ndarray) -> np.ndarray:
    """BGRA -> BGR on a white background (img2dataset's formula), a strip of rows at a
    time: done in one go, the float32 temporaries of an 81 MP image take ~2 GB."""
    h, w = img.shape[:2]
    out = np.empty((h, w, 3), np.uint8)
    step = max(1, _MATTE_PIXELS // max(1, w))
    for y in range(0, h, step):
        strip = img[y : y + step]
        alpha = strip[:, :, 3:4].astype(np.float32) / 255.0
        matte = np.rint(strip[:, :, :3] * alpha + 255.0 * (1.0 - alpha))
        out[y : y + step] = matte.clip(0, 255).astype(np.uint8)
    return out


class PixelBudget:
    """At most `limit` decoded pixels held at once by the threads of one process (a
    download task): ordinary images never wait; images near max_pixels take turns."""

    def __init__(self, limit: int):
        self.limit = limit
        self.used = 0
        self._cond = threading.Condition()

    @contextmanager
    def hold(self, pixels: int) -> Iterator[None]:
        need = min(pixels, self.limit)  # one image larger than the budget still runs, alone
        with self._cond:
            self._cond.wait_for(lambda: self.used + need <= self.limit)
            self.used += need
        try:
            yield
        finally:
            with self._cond:
                self.used -= need
                self._cond.notify_all()


_BUDGETS: dict[int, PixelBudget] = {}
_BUDGETS_LOCK = threading.Lock()


def pixel_budget(limit: int) -> PixelBudget:
    """The process's budget for this limit (shared by every thread of the task)."""
    with _BUDGETS_LOCK:
        if limit not in _BUDGETS:
            _BUDGETS[limit] = PixelBudget(limit)
        return _BUDGETS[limit]


def _side_for_mode(w: int, h: int, cfg: DownloadSettings) -> int:
    """The side the resize mode compares with image_size."""
    if cfg.resize_mode in ("keep_ratio", "center_crop"):
        return min(w, h)
    return max(w, h)


def _needed_side(w: int, h: int, cfg: DownloadSettings) -> int | None:
    """Smallest decoded side that still lets the resize only shrink (None: no reduction)."""
    side = _side_for_mode(w, h, cfg)
    if side <= cfg.image_size:
        return None
    return cfg.image_size


def _smallest_max_size(img: np.ndarray, size: int, interp: int) -> np.ndarray:
    h, w = img.shape[:2]
    scale = size / min(w, h)
    nw, nh = (size, max(1, round(h * scale))) if w <= h else (max(1, round(w * scale)), size)
    return img if (nw, nh) == (w, h) else cv2.resize(img, (nw, nh), interpolation=interp)


def _longest_max_size(img: np.ndarray, size: int, interp: int) -> np.ndarray:
    h, w = img.shape[:2]
    scale = size / max(w, h)
    nw, nh = (size, max(1, round(h * scale))) if w >= h else (max(1, round(w * scale)), size)
    return img if (nw, nh) == (w, h) else cv2.resize(img, (nw, nh), interpolation=interp)


def _center_crop(img: np.ndarray, size: int) -> np.ndarray:
    h, w = img.shape[:2]
    top, left = max(0, (h - size) // 2), max(0, (w - size) // 2)
    return img[top : top + size, left : left + size]


def _pad(img: np.ndarray, size: int) -> np.ndarray:
    h, w = img.shape[:2]
    top, left = (size - h) // 2, (size - w) // 2
    return cv2.copyMakeBorder(
        img, top, size - h - top, left, size - w - left, cv2.BORDER_CONSTANT, value=(255, 255, 255)
    )


def resize_image(
    img: np.ndarray, cfg: DownloadSettings, orig_w: int, orig_h: int
) -> tuple[np.ndarray, bool]:
    """img2dataset's geometry for each mode; (image, resized?). Down/up is judged on the
    ORIGINAL size so a fast reduced JPEG decode never changes which branch is taken."""
    size, mode = cfg.image_size, cfg.resize_mode
    if mode == "no":
        return img, False
    if mode in ("keep_ratio", "center_crop"):
        downscale = min(orig_w, orig_h) > size
    else:
        downscale = max(orig_w, orig_h) > size
    if cfg.resize_only_if_bigger and not downscale:
        return img, False
    h, w = img.shape[:2]
    cur_down = (min(w, h) if mode in ("keep_ratio", "center_crop") else max(w, h)) > size
    interp = cv2.INTER_AREA if cur_down else cv2.INTER_LANCZOS4
    if mode == "keep_ratio":
        img = _smallest_max_size(img, size, interp)
    elif mode == "keep_ratio_largest":
        img = _longest_max_size(img, size, interp)
    elif mode == "center_crop":
        img = _center_crop(_smallest_max_size(img, size, interp), size)
    elif mode == "border":
        img = _pad(_longest_max_size(img, size, interp), size)
    return img, True


def process_image(data: bytes, cfg: DownloadSettings) -> ResizeResult:
    """Bytes from the web -> a ResizeResult with the encoded image or a failure status."""
    if not data:
        return ResizeResult(
            "empty_body", error="the server answered 200 with an empty body (0 bytes)"
        )
    if is_svg(data):
        return ResizeResult(
            "unsupported_format",
            source_format="SVG",
            error="SVG (a vector drawing, image/svg+xml): only raster images are stored "
            f"(allowed_formats {sorted(f.upper() for f in cfg.allowed_formats)})",
        )
    try:
        fmt, w, h, mode, orientation = _header(data)
    except Image.DecompressionBombError as e:
        # Pillow's own guard (> 2x its limit) fired while reading the header: same verdict
        return ResizeResult("too_large", error=f"{e} (not decoded)"[:500])
    except Image.UnidentifiedImageError:
        # Pillow's message names the BytesIO object; say what the bytes are instead
        return ResizeResult("failed_to_decode", error=f"not an image: {describe_bytes(data)}")
    except Exception as e:
        return ResizeResult(
            "failed_to_decode",
            error=f"not a readable image ({describe_bytes(data)}): {type(e).__name__}: {e}"[:500],
        )
    res = ResizeResult("failed_to_decode", original_width=w, original_height=h, source_format=fmt)
    if orientation in (5, 6, 7, 8):
        res.original_width, res.original_height = h, w
    allowed = {f.upper() for f in cfg.allowed_formats}
    if fmt not in allowed:
        res.status, res.error = (
            "unsupported_format",
            f"format {fmt} is not one of {sorted(allowed)}",
        )
        return res
    if w * h > cfg.max_pixels:
        res.status, res.error = (
            "too_large",
            f"{w}x{h} = {w * h} pixels > max_pixels {cfg.max_pixels} (not decoded)",
        )
        return res
    if min(w, h) < cfg.min_image_size:
        res.status, res.error = (
            "too_small",
            f"{w}x{h}: smaller side < min_image_size {cfg.min_image_size}",
        )
        return res
    if fmt == "JPEG" and not _jpeg_complete(data):
        res.error = "truncated JPEG (no end-of-image marker after the last scan)"
        return res
    factor = _jpeg_reduction(w, h, mode, cfg) if fmt == "JPEG" else 1
    decoded = max(1, (w // factor) * (h // factor))  # what the decoder allocates: the budget
    with pixel_budget(cfg.decode_pixels_in_flight).hold(decoded):
        return _decode_and_encode(data, res, fmt, mode, factor, w, h, orientation, cfg)


def _decode_and_encode(
    data: bytes,
    res: ResizeResult,
    fmt: str,
    mode: str,
    factor: int,
    w: int,
    h: int,
    orientation: int,
    cfg: DownloadSettings,
) -> ResizeResult:
    try:
        img, changed = _decode(data, fmt, mode, factor)
        if orientation != 1:
            img = _apply_orientation(img, orientation)
            changed = True
    except Exception as e:
        res.error = f"{type(e).__name__}: {e}"[:500]
        return res
    try:
        img, resized = resize_image(img, cfg, res.original_width or w, res.original_height or h)
        same_format = _SNIFF_FORMAT.get(fmt) == cfg.encode_format
        if cfg.skip_reencode and same_format and not (resized or changed):
            out = data
        else:
            ok, enc = cv2.imencode(_ENCODE_EXT[cfg.encode_format], img, encode_params(cfg))
            if not ok:
                raise ValueError(f"OpenCV could not encode {cfg.encode_format}")
            out = enc.tobytes()
    except Exception as e:
        res.status, res.error = "failed_to_resize", f"{type(e).__name__}: {e}"[:500]
        return res
    res.status, res.image, res.format = "success", out, cfg.encode_format
    res.height, res.width = int(img.shape[0]), int(img.shape[1])
    return res
