"""Constants and small helpers shared by the Serve app tests (imported explicitly; no fixtures here)."""
from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from tests.imaging import png_bytes as _png

if TYPE_CHECKING:
    import requests

# Covers the package fixture starting Ray + Serve (~20 s idle, over 60 s when the 2 cores are saturated).
SERVER_TIMEOUT = 400  # five deployments now (the EmbeddingStore too): ~170 s to start on 2 saturated cores
REPO = Path(__file__).resolve().parents[2]
KEY = "test-key-123"
H = {"X-API-Key": KEY}
IMG = 256
BUDGET = 64_000_000  # per-request memory budget of the test server: coffee (600x400) x 4 boxes x 4 outputs fits
LOW = IMG // 4  # side of the low-res mask logits


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def _segment(server, **body) -> requests.Response:
    import requests  # optional: the test modules import it with pytest.importorskip first

    return requests.post(server.url + "/v1/segment", json=body, headers=H, timeout=60)


def _npy_b64(arr: np.ndarray, **kw) -> str:
    buf = io.BytesIO()
    np.save(buf, arr, **kw)
    return base64.b64encode(buf.getvalue()).decode()


def _load_npy_b64(text: str) -> np.ndarray:
    return np.load(io.BytesIO(base64.b64decode(text)), allow_pickle=False)


def _big_png(h: int = 3000, w: int = 4000) -> bytes:
    """A 12 MP photo-sized PNG that compresses to a few kB (a flat colour with one square)."""
    img = np.full((h, w, 3), (90, 120, 200), np.uint8)
    img[h // 3:h // 2, w // 3:w // 2] = 240
    return _png(img)
