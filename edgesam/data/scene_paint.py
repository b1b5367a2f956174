"""Painting pieces of the synthetic scenes: photo and synthetic backgrounds, shapes, colours, texture.

Shared by the default generator (``synthetic``) and the dense SA-1B-like one (``synthetic_dense``).
"""
from __future__ import annotations

import functools
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

MIN_VISIBLE_AREA = 64
JPEG_QUALITY = 95
# photos shipped inside the scikit-image wheel (no download needed)
PHOTO_FILES = ("astronaut.png", "coffee.png", "chelsea.png", "rocket.jpg", "motorcycle_left.png",
               "hubble_deep_field.jpg", "ihc.png", "retina.jpg")
SHAPES = ("ellipse", "rectangle", "polygon", "ring")


# ---------------------------------------------------------------------------------------------------
# backgrounds
@functools.lru_cache(maxsize=None)
def _photo_dir() -> Path | None:
    try:
        import skimage.data
    except ImportError:
        return None
    return Path(skimage.data.__file__).resolve().parent


def available_photos() -> tuple[str, ...]:
    """The bundled scikit-image photos found in the installed package (file names)."""
    root = _photo_dir()
    if root is None:
        return ()
    return tuple(name for name in PHOTO_FILES if (root / name).is_file())


@functools.lru_cache(maxsize=len(PHOTO_FILES))
def _load_photo(name: str) -> np.ndarray | None:
    root = _photo_dir()
    try:
        with Image.open(root / name) as im:  # type: ignore[operator]
            arr = np.asarray(im.convert("RGB"))
    except Exception:  # noqa: BLE001 - a damaged or missing file only removes one background choice
        return None
    arr.setflags(write=False)
    return arr


def _fit(img: np.ndarray, rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A random crop of ``img`` of size (height, width), after upscaling when it is too small."""
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    img = img[..., :3]
    h0, w0 = img.shape[:2]
    # random zoom so crops of the same photo differ in scale too
    scale = max(height / h0, width / w0) * float(rng.uniform(1.0, 1.6))
    nh, nw = max(height, int(np.ceil(h0 * scale))), max(width, int(np.ceil(w0 * scale)))
    if (nh, nw) != (h0, w0):
        img = cv2.resize(np.ascontiguousarray(img), (nw, nh), interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    y = int(rng.integers(0, nh - height + 1))
    x = int(rng.integers(0, nw - width + 1))
    return np.ascontiguousarray(img[y:y + height, x:x + width]).astype(np.uint8)


def photo_background(rng: np.random.Generator, height: int, width: int) -> np.ndarray | None:
    """A (height, width, 3) uint8 crop of a random bundled photo, or None when none is available."""
    names = available_photos()
    if not names:
        return None
    photo = _load_photo(names[int(rng.integers(len(names)))])
    return None if photo is None else _fit(photo, rng, height, width)


def _synthetic_background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    if rng.random() < 0.5:  # linear gradient between two colours in a random direction
        a, b = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
        theta = rng.uniform(0, 2 * np.pi)
        yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
        t = xx * np.cos(theta) + yy * np.sin(theta)
        t = (t - t.min()) / max(float(t.max() - t.min()), 1.0)
        img = a[None, None] * (1 - t[..., None]) + b[None, None] * t[..., None]
    else:  # smooth colour noise: a coarse random grid upsampled
        gh, gw = int(rng.integers(2, 6)), int(rng.integers(2, 6))
        coarse = rng.uniform(0, 255, (gh, gw, 3)).astype(np.float32)
        img = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)
    img = img + rng.normal(0, 4, (height, width, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


# ---------------------------------------------------------------------------------------------------
# shapes
def _shape_mask(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    m = np.zeros((height, width), np.uint8)
    short = min(height, width)
    r = float(rng.uniform(0.07, 0.3)) * short + 4
    cx = float(rng.uniform(-0.1, 1.1)) * width
    cy = float(rng.uniform(-0.1, 1.1)) * height
    angle = float(rng.uniform(0, 180))
    kind = SHAPES[int(rng.integers(len(SHAPES)))]
    centre = (int(round(cx)), int(round(cy)))
    if kind == "ellipse":
        axes = (int(round(r)), int(round(r * rng.uniform(0.35, 1.0))))
        cv2.ellipse(m, centre, axes, angle, 0, 360, 1, -1)
    elif kind == "rectangle":
        box = cv2.boxPoints(((cx, cy), (2 * r, 2 * r * float(rng.uniform(0.3, 1.0))), angle))
        cv2.fillPoly(m, [np.round(box).astype(np.int32)], 1)
    elif kind == "polygon":  # a triangle or a star-ish polygon, rotated
        n = int(rng.integers(3, 8))
        ang = np.deg2rad(angle) + np.sort(rng.uniform(0, 2 * np.pi, n)) if n > 3 else \
            np.deg2rad(angle) + np.array([0.0, 2.1, 4.2]) + rng.uniform(-0.3, 0.3, 3)
        rad = r * rng.uniform(0.55, 1.0, n)
        pts = np.stack([cx + rad * np.cos(ang), cy + rad * np.sin(ang)], 1)
        cv2.fillPoly(m, [np.round(pts).astype(np.int32)], 1)
    else:  # ring: an elliptical annulus
        ry = r * float(rng.uniform(0.6, 1.0))
        cv2.ellipse(m, centre, (int(round(r)), int(round(ry))), angle, 0, 360, 1, -1)
        k = float(rng.uniform(0.35, 0.65))
        cv2.ellipse(m, centre, (max(1, int(round(r * k))), max(1, int(round(ry * k)))), angle, 0, 360, 0, -1)
    return m.astype(bool)


def _pick_colour(rng: np.random.Generator, avoid: list[np.ndarray]) -> np.ndarray:
    cands = rng.uniform(0, 255, (24, 3))
    if not avoid:
        return cands[0]
    dist = np.linalg.norm(cands[:, None, :] - np.stack(avoid)[None], axis=2).min(axis=1)
    return cands[int(np.argmax(dist))]


def _paint(rng: np.random.Generator, img: np.ndarray, mask: np.ndarray, colour: np.ndarray) -> None:
    ys, xs = np.nonzero(mask)
    if xs.size == 0:
        return
    vals = np.repeat(colour[None].astype(np.float32), xs.size, axis=0)
    style = int(rng.integers(3))
    if style == 1:  # stripes
        period = float(rng.uniform(5, 16))
        theta = float(rng.uniform(0, np.pi))
        phase = (xs * np.cos(theta) + ys * np.sin(theta)) * (2 * np.pi / period)
        vals += (10.0 * np.sin(phase))[:, None]
    elif style == 2:  # shading across the object
        t = (xs - xs.min()) / max(1, xs.max() - xs.min()) - 0.5
        vals += (24.0 * t)[:, None]
    vals += rng.normal(0, 5, vals.shape)
    img[ys, xs] = np.clip(vals, 0, 255)
