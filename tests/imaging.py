"""Small encoding helpers shared by the HTTP tests."""
from __future__ import annotations

import base64
import io

import numpy as np
from PIL import Image


def png_bytes(arr: np.ndarray) -> bytes:
    """uint8 (H,W[,C]) array -> PNG file bytes."""
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()
