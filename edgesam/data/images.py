"""Decoding encoded image files into RGB arrays, with clear errors for bad files.

Readers keep the encoded bytes; :func:`decode_image` is the one place where bytes become pixels. It never
lets PIL's lenient modes hide damage: a truncated file fails (``ImageFile.LOAD_TRUNCATED_IMAGES`` is not
enabled), and every failure is an :class:`ImageDecodeError` naming the source.
"""
from __future__ import annotations

import io
import struct
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")

DEFAULT_MIN_SIDE = 8
DEFAULT_MAX_PIXELS = 50_000_000

__all__ = ["IMAGE_EXTENSIONS", "ImageDecodeError", "decode_image", "is_image_path"]


class ImageDecodeError(ValueError):
    """The bytes are not a usable image (not an image, truncated, too small or too large)."""


def is_image_path(name: str) -> bool:
    """True when the file name ends with one of :data:`IMAGE_EXTENSIONS` (case-insensitive)."""
    return name.lower().endswith(IMAGE_EXTENSIONS)


def _to_uint8_gray(arr: np.ndarray) -> np.ndarray:
    """A single-channel array of any numeric dtype -> uint8 (16-bit ranges scale by 1/257)."""
    arr = np.asarray(arr)
    if arr.dtype == np.uint8:
        return arr
    a = arr.astype(np.float64)
    finite = np.isfinite(a)
    if not finite.all():
        a = np.where(finite, a, 0.0)
    lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
    if np.issubdtype(arr.dtype, np.floating):
        if lo >= 0.0 and hi <= 1.0:
            a = a * 255.0
        elif lo < 0.0 or hi > 255.0:
            a = (a - lo) / max(hi - lo, 1e-12) * 255.0
    elif lo >= 0 and hi <= 255:
        pass
    elif lo >= 0 and hi <= 65535:
        a = a / 257.0
    else:
        a = (a - lo) / max(hi - lo, 1.0) * 255.0
    return np.clip(np.rint(a), 0, 255).astype(np.uint8)


def _to_rgb(im: Image.Image) -> np.ndarray:
    if im.mode == "RGB":
        arr = np.asarray(im)
    elif im.mode.startswith("I") or im.mode == "F":  # 16/32-bit integer or float grayscale
        g = _to_uint8_gray(np.asarray(im))
        arr = np.repeat(g[..., None], 3, axis=2)
    else:  # L, LA, P, PA, RGBA, CMYK, YCbCr, 1, ...: PIL converts (alpha is dropped)
        if im.mode == "P" and "transparency" in im.info:
            im = im.convert("RGBA")
        arr = np.asarray(im.convert("RGB"))
    arr = np.ascontiguousarray(arr, dtype=np.uint8)
    return arr if arr.flags.writeable else arr.copy()  # PIL's array views are read-only


def _oriented(im: Image.Image) -> Image.Image:
    """Apply the EXIF orientation tag (a malformed EXIF block leaves the pixels as stored)."""
    try:
        orientation = im.getexif().get(0x0112, 1)
        if orientation in (2, 3, 4, 5, 6, 7, 8):
            out = ImageOps.exif_transpose(im)
            return out if out is not None else im
    except Exception:  # noqa: BLE001 - malformed EXIF is not a reason to drop the image
        pass
    return im


def decode_image(data: bytes, source: str = "", min_side: int = DEFAULT_MIN_SIDE,
                 max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Encoded image bytes -> ``uint8`` array ``(H, W, 3)`` RGB, with the EXIF orientation applied.

    Grayscale, palette, 16-bit, LA and RGBA images become RGB (alpha is dropped; 16-bit values are scaled
    by 1/257). Raises :class:`ImageDecodeError` naming ``source`` when the bytes are not an image, the file
    is truncated or corrupt (the pixels are fully loaded, so damage anywhere is found), the shorter side is
    below ``min_side`` or the image has more than ``max_pixels`` pixels. The size limits are checked from the
    header before any pixel is decoded; PIL's own decompression-bomb guard (``Image.MAX_IMAGE_PIXELS``) is
    turned into the same error instead of a warning or an exception of its own.
    """
    where = f" [{source}]" if source else ""
    if data is None or len(data) == 0:
        raise ImageDecodeError(f"empty image file{where}")
    try:
        with warnings.catch_warnings():
            # our own max_pixels check below replaces PIL's warning; its hard error is caught below
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data if isinstance(data, bytes) else bytes(data))) as im:
                w, h = im.size
                if w * h > max_pixels:
                    raise ImageDecodeError(
                        f"image too large: {w}x{h} = {w * h} pixels > max_pixels={max_pixels}{where}")
                if min(w, h) < min_side:
                    raise ImageDecodeError(f"image too small: {w}x{h}, shorter side < min_side={min_side}{where}")
                im.load()  # full decode: a truncated PNG/JPEG fails here
                return _to_rgb(_oriented(im))
    except ImageDecodeError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageDecodeError(f"image too large (decompression-bomb guard): {exc}{where}") from exc
    except UnidentifiedImageError as exc:
        raise ImageDecodeError(f"not an image: cannot identify image file ({len(data)} bytes){where}") from exc
    # Warning: PIL's metadata warnings, when a caller runs with warnings turned into errors
    except (OSError, SyntaxError, ValueError, TypeError, EOFError, MemoryError, struct.error, Warning) as exc:
        raise ImageDecodeError(f"corrupt or truncated image: {exc}{where}") from exc

