"""Image queries decoded within bounds: pixel cap from the header, reduced decoding.

    img = decode_query_image(data, cfg.serve)   # PIL RGB image, longest side ~query_image_side

The header is read first (`Image.open` parses it without decoding pixels): more than
serve.max_query_pixels is refused before any pixel is decoded, so an 8000x8000 PNG of a
few kilobytes never becomes 190 MB of RGB. JPEGs are decoded by libjpeg at 1/2..1/8
scale (`draft`), so even a large one costs a fraction of its full size; other formats are
decoded whole (hence the cap) and reduced at once. Only common web formats are accepted.
CLIP looks at 224 pixels, so a reduced decode loses nothing the model sees.
"""

from __future__ import annotations

import io

from laion_spark.serve.settings import ServeSettings

FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP")


class ImageRejected(ValueError):
    """An image query that is not decodable, or too large: `status` is the HTTP code."""

    def __init__(self, message: str, status: int = 422):
        super().__init__(message)
        self.status = status


def decode_query_image(data: bytes, serve: ServeSettings):
    from PIL import Image, UnidentifiedImageError

    if not data:
        raise ImageRejected("empty image")
    try:
        im = Image.open(io.BytesIO(data), formats=FORMATS)
    except UnidentifiedImageError:
        raise ImageRejected(f"not an image in a supported format ({', '.join(FORMATS)})") from None
    except Image.DecompressionBombError:
        raise ImageRejected("image has too many pixels", status=413) from None
    except Exception as e:  # PIL raises many types on corrupt headers
        raise ImageRejected(f"cannot read image header: {type(e).__name__}") from None
    with im:
        w, h = im.size
        if w <= 0 or h <= 0:
            raise ImageRejected("image has no pixels")
        if w * h > serve.max_query_pixels:
            raise ImageRejected(
                f"image is {w}x{h} pixels; queries may have at most {serve.max_query_pixels}",
                status=413,
            )
        side = serve.query_image_side
        try:
            im.draft("RGB", (side, side))  # JPEG: decode at the smallest scale >= side
            im.thumbnail((side, side))  # loads, then reduces whatever is still larger
            return im.convert("RGB")
        except Exception as e:
            raise ImageRejected(f"cannot decode image: {type(e).__name__}") from None
