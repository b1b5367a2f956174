"""Bytes in, bytes out at the HTTP boundary: image decoding under limits, base64, PNG masks, and base64
``.npy`` arrays (mask logits), parsed without pickle.

Images arrive only as bytes (upload / raw body) or base64; this server never fetches a URL.
Every failure is a :class:`RequestError` (a ``ValueError``) carrying the HTTP status to answer with.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import io
import re
import struct
import warnings

import numpy as np
from PIL import Image, UnidentifiedImageError

from edgesam.data.images import ImageDecodeError, decode_image as decode_image_bytes

ALLOWED_FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "TIFF", "GIF")
_URL_RE = re.compile(r"^\s*(?:[a-zA-Z][a-zA-Z0-9+.\-]*://|www\.|file:|s3:|gs:)")
_DATA_URI_RE = re.compile(r"^data:image/[a-zA-Z0-9.+\-]+;base64,", re.IGNORECASE)
NPY_MAGIC = b"\x93NUMPY"


class RequestError(ValueError):
    """A client error: ``status`` is the HTTP status code (4xx) to answer with."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def content_hash(data: bytes) -> str:
    """sha256 hex of the image bytes: the embedding id."""
    return hashlib.sha256(data).hexdigest()


def decode_b64_image(text: object, max_bytes: int, field: str = "image_b64") -> bytes:
    """Base64 (optionally a ``data:image/...;base64,`` URI) -> bytes. URLs are refused, never fetched."""
    if not isinstance(text, str):
        raise RequestError(f"{field} must be a base64 string, got {type(text).__name__}", 422)
    if _URL_RE.match(text):
        raise RequestError(f"{field} looks like a URL; this server never fetches URLs: send the image bytes "
                           "base64-encoded or upload the file", 400)
    data = _b64_bytes(_DATA_URI_RE.sub("", text, count=1), field, max_bytes)
    check_image_bytes(data, max_bytes)
    return data


def _b64_bytes(text: str, field: str, max_bytes: int) -> bytes:
    """Strict base64 -> bytes, refusing an empty field (422) or more than ``max_bytes`` (413, before decoding)."""
    text = text.strip()
    if not text:
        raise RequestError(f"{field} is empty", 422)
    if len(text) * 3 // 4 > max_bytes + 3:
        raise RequestError(f"{field} decodes to more than the limit of {max_bytes} bytes", 413)
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as e:
        raise RequestError(f"{field} is not valid base64: {e}", 400) from None


def check_image_bytes(data: bytes, max_bytes: int) -> None:
    if len(data) == 0:
        raise RequestError("image is empty (0 bytes)", 400)
    if len(data) > max_bytes:
        raise RequestError(f"image is {len(data)} bytes, over the limit of {max_bytes}", 413)


def probe_image(data: bytes, max_bytes: int, max_pixels: int) -> tuple[int, int, str]:
    """Read only the header: -> (width, height, format). Size, format and pixel limits are enforced here,
    before any pixel is decoded, so a decompression bomb costs nothing."""
    check_image_bytes(data, max_bytes)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:
                fmt, (w, h) = im.format, im.size
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise RequestError(f"image too large: {e}", 413) from None
    except UnidentifiedImageError:
        raise RequestError("bytes are not a decodable image (PNG, JPEG, WebP, BMP, TIFF or GIF expected)", 400) from None
    except (OSError, SyntaxError, ValueError, EOFError, struct.error) as e:
        raise RequestError(f"image header could not be read (truncated or corrupt): {e}", 400) from None
    if fmt not in ALLOWED_FORMATS:
        raise RequestError(f"unsupported image format {fmt}; use one of {', '.join(ALLOWED_FORMATS)}", 415)
    if w < 1 or h < 1:
        raise RequestError(f"image has no pixels ({w}x{h})", 400)
    if w * h > max_pixels:
        raise RequestError(f"image is {w}x{h} = {w * h} pixels, over the limit of {max_pixels}", 413)
    return w, h, fmt


def decode_image(data: bytes, max_bytes: int, max_pixels: int) -> np.ndarray:
    """Encoded image -> uint8 (H,W,3) RGB with EXIF orientation applied (``edgesam.data.images``), after
    :func:`probe_image` has enforced the limits."""
    probe_image(data, max_bytes, max_pixels)
    try:
        return decode_image_bytes(data, source="request", min_side=1, max_pixels=max_pixels)
    except ImageDecodeError as e:
        raise RequestError(f"image could not be decoded: {e}", 400) from None


def encode_png(image: np.ndarray) -> bytes:
    """uint8 (H,W) or (H,W,3) -> PNG bytes (fast compression: these travel once over loopback/LAN)."""
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def mask_to_png_b64(mask: np.ndarray) -> str:
    """bool (H,W) -> base64 of a grayscale PNG (255 inside, 0 outside)."""
    return base64.b64encode(encode_png(mask.astype(np.uint8) * 255)).decode("ascii")


def png_b64_to_mask(text: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(text))).convert("L")) > 127


def decode_npy_b64(text: object, field: str, max_bytes: int, shapes: tuple[tuple[int, ...], ...],
                   dtypes: tuple[str, ...] = ("float16", "float32")) -> np.ndarray:
    """Base64 of a ``.npy`` file (format 1.0 or 2.0, as ``np.save`` writes) -> a finite float32 array.

    The header is parsed first (never with pickle); its dtype (any byte order) must be one of ``dtypes`` and
    its shape one of ``shapes`` before any data is read, and the data must fill the file exactly.
    Errors: 413 over ``max_bytes``; 400 not base64 / not a .npy / corrupt or truncated; 422 wrong dtype,
    wrong shape or NaN/inf values.
    """
    if not isinstance(text, str):
        raise RequestError(f"{field} must be a base64 string, got {type(text).__name__}", 422)
    data = _b64_bytes(text, field, max_bytes)
    if len(data) > max_bytes:
        raise RequestError(f"{field} is {len(data)} bytes, over the limit of {max_bytes}", 413)
    if not data.startswith(NPY_MAGIC):
        raise RequestError(f"{field} is not a .npy file (no \\x93NUMPY magic): send base64 of np.save output", 400)
    fp = io.BytesIO(data)
    try:
        version = np.lib.format.read_magic(fp)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(fp, max_header_size=4096)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(fp, max_header_size=4096)
        else:
            raise ValueError(f"unsupported .npy format version {version[0]}.{version[1]}")
    except Exception as e:  # header parsing: ValueError, SyntaxError, TypeError, EOFError, ...
        raise RequestError(f"{field}: unreadable .npy header: {type(e).__name__}: {str(e)[:200]}", 400) from None
    if dtype.fields is not None or dtype.subdtype is not None or dtype.kind != "f" \
            or dtype.newbyteorder("=").name not in dtypes:
        raise RequestError(f"{field} has dtype {dtype.str!r}; expected {' or '.join(dtypes)}", 422)
    if tuple(shape) not in shapes:
        want = " or ".join(str(s_) for s_ in shapes)
        raise RequestError(f"{field} has shape {tuple(shape)}; expected {want}", 422)
    payload = data[fp.tell():]
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(payload) != expected:
        raise RequestError(f"{field}: .npy data is {len(payload)} bytes, but shape {tuple(shape)} of {dtype.name} "
                           f"needs {expected} (truncated or trailing bytes)", 400)
    arr = np.frombuffer(payload, dtype=dtype).reshape(shape, order="F" if fortran else "C").astype(np.float32)
    if not np.isfinite(arr).all():
        raise RequestError(f"{field} contains NaN or infinite values", 422)
    return arr


def encode_npy_b64(array: np.ndarray) -> str:
    """An array -> base64 of its ``.npy`` file (``np.save``, no pickle)."""
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
    return base64.b64encode(buf.getvalue()).decode("ascii")
