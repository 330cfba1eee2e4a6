"""Uploaded bytes -> the RGB image ``inpctl predict`` would have read from the same file, safely.

Why not ``inp_former.data.load_rgb``: it reads paths and decodes at once. An upload is bytes, and
its pixel count must be checked from the header *before* decoding (a 50 000 x 50 000 PNG is a few
kilobytes on the wire and 7.5 GB decoded). After that check the conversion to RGB is load_rgb's own
(``to_rgb``), so scores equal predict's; tests/test_serve.py compares them on RGB, grayscale,
16-bit and RGBA files.
"""
from __future__ import annotations

import io

from PIL import Image, UnidentifiedImageError

from inp_former.data.transforms import READ_ERRORS, to_rgb


class UploadError(Exception):
    """One uploaded file refused: ``status`` 400 (not an image) or 413 (too many pixels)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def too_many_pixels(size: tuple[int, int], max_pixels: int) -> str | None:
    """Why an image of ``size`` (width, height) is refused by the pixel limit, or None: the one
    rule of ``serve`` (413) and ``predict`` (the file is skipped)."""
    width, height = size
    if width * height > max_pixels:
        return f"more than the limit of {max_pixels / 1e6:g} megapixels ({width} x {height} pixels)"
    return None


def decode_image(data: bytes, max_pixels: int) -> Image.Image:
    """The decoded 8-bit RGB image, or :class:`UploadError` saying why not."""
    if not data:
        raise UploadError("empty file")
    try:
        with Image.open(io.BytesIO(data)) as img:  # lazy: only the header is parsed here
            refused = too_many_pixels(img.size, max_pixels)
            if refused:
                raise UploadError(refused, status=413)
            img.load()
            img = img.copy()
    except Image.DecompressionBombError as exc:  # Pillow's own, larger limit, hit at open
        raise UploadError(f"image too large ({exc})", status=413) from exc
    except UnidentifiedImageError as exc:  # its message shows the BytesIO's repr: useless to a client
        raise UploadError("not a readable image (unknown format); expected a PNG/JPEG/BMP/TIFF/WebP file") from exc
    except READ_ERRORS as exc:
        reason = (str(exc).splitlines() or [exc.__class__.__name__])[0]
        raise UploadError(f"not a readable image ({reason}); expected a PNG/JPEG/BMP/TIFF/WebP file") from exc
    try:
        return to_rgb(img)   # exactly what inpctl predict does with the same file
    except ValueError as exc:
        raise UploadError(str(exc)) from exc
