"""Dense, SA-1B-like synthetic scenes: ~1500x2250 JPEGs with >= 100 exact instance masks each, packed into tars.

    python -m edgesam.data.synthetic --dense --out data/dense --num-images 16 --images-per-shard 16

SA-1B images are about 1500x2250 with about 100 masks each; the default synthetic scenes
(:mod:`edgesam.data.synthetic`) are ~256 px with <= 8 objects, which hides everything that scales with
the number of objects (RPN targets, JSON size, reader memory). Here many small shapes (ellipses, rotated
rectangles, polygons, rings; radius 1-6 % of the short side) are drawn back to front over a gradient /
noise / photo background, and shapes are added until at least ``min_masks`` instances keep
``MIN_VISIBLE_AREA`` visible pixels. Masks are the visible parts (exact, non-overlapping); the JSON is
the SA-1B format with compressed-RLE segmentations, as :func:`edgesam.data.synthetic.sa1b_record` writes.

Shapes are drawn in their own small windows, and each mask is encoded on its own, so generating an image
never holds more than a few full-size arrays.
"""
from __future__ import annotations

import io
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from .rle import encode_masks
from .sa1b_tar import write_shards
from .scene_paint import JPEG_QUALITY, MIN_VISIBLE_AREA, _paint, _pick_colour, _synthetic_background, photo_background

__all__ = ["DENSE_SIZE", "make_dense_scene", "dense_sa1b_record", "write_dense_shards"]

DENSE_SIZE = (1500, 2250)  # (height, width), SA-1B's typical landscape size
Instance = tuple[int, int, np.ndarray]  # (y0, x0, visible bool mask of its window)


def _local_shape(rng: np.random.Generator, r: float) -> np.ndarray:
    """A shape of radius ~``r`` pixels on its own (2R+1)^2 canvas, centred (bool)."""
    size = int(np.ceil(r)) * 2 + 3
    m = np.zeros((size, size), np.uint8)
    c = size / 2.0
    angle = float(rng.uniform(0, 180))
    kind = int(rng.integers(4))
    if kind == 0:
        cv2.ellipse(m, (int(c), int(c)), (int(round(r)), max(2, int(round(r * rng.uniform(0.35, 1.0))))), angle, 0, 360, 1, -1)
    elif kind == 1:
        box = cv2.boxPoints(((c, c), (2 * r, 2 * r * float(rng.uniform(0.3, 1.0))), angle))
        cv2.fillPoly(m, [np.round(box).astype(np.int32)], 1)
    elif kind == 2:
        n = int(rng.integers(3, 8))
        ang = np.deg2rad(angle) + np.sort(rng.uniform(0, 2 * np.pi, n))
        rad = r * rng.uniform(0.55, 1.0, n)
        cv2.fillPoly(m, [np.round(np.stack([c + rad * np.cos(ang), c + rad * np.sin(ang)], 1)).astype(np.int32)], 1)
    else:
        ry = r * float(rng.uniform(0.6, 1.0))
        cv2.ellipse(m, (int(c), int(c)), (int(round(r)), int(round(ry))), angle, 0, 360, 1, -1)
        k = float(rng.uniform(0.35, 0.65))
        cv2.ellipse(m, (int(c), int(c)), (max(1, int(round(r * k))), max(1, int(round(ry * k)))), angle, 0, 360, 0, -1)
    return m.astype(bool)


def make_dense_scene(rng: np.random.Generator, height: int = DENSE_SIZE[0], width: int = DENSE_SIZE[1],
                     min_masks: int = 100, radius_range: tuple[float, float] = (0.01, 0.06),
                     background: np.ndarray | None = None, max_shapes: int = 2000) -> tuple[np.ndarray, list[Instance]]:
    """-> (uint8 (H, W, 3) RGB image, instances ``(y0, x0, mask)``: the visible part of each shape inside
    its window ``[y0:y0+h, x0:x0+w]``). At least ``min_masks`` instances with >= ``MIN_VISIBLE_AREA``
    visible pixels (unless ``max_shapes`` shapes could not reach it); masks never overlap.
    ``radius_range``: shape radius as a fraction of the short side."""
    if background is None:
        img = _synthetic_background(rng, height, width).astype(np.float32)
    else:
        img = np.asarray(background)[:height, :width, :3].astype(np.float32)
    owner = np.full((height, width), -1, np.int32)
    windows: list[tuple[int, int, int, int]] = []  # y0, x0, y1, x1 (clipped)
    used: list[np.ndarray] = []
    short = min(height, width)

    def visible_count() -> int:
        areas = np.bincount(owner.ravel() + 1, minlength=len(windows) + 1)[1:]
        return int((areas >= MIN_VISIBLE_AREA).sum())

    while len(windows) < max_shapes:
        for _ in range(max(8, min_masks // 4)):
            r = float(rng.uniform(*radius_range)) * short + 3
            shape = _local_shape(rng, r)
            s = shape.shape[0]
            cy, cx = int(rng.integers(0, height)), int(rng.integers(0, width))
            y0, x0 = cy - s // 2, cx - s // 2
            ya, xa, yb, xb = max(0, y0), max(0, x0), min(height, y0 + s), min(width, x0 + s)
            local = shape[ya - y0:yb - y0, xa - x0:xb - x0]
            k = len(windows)
            windows.append((ya, xa, yb, xb))
            if not local.any():
                continue
            patch = img[ya:yb, xa:xb]
            colour = _pick_colour(rng, used[-24:] + [patch[local].mean(axis=0)])
            used.append(colour)
            _paint(rng, patch, local, colour)
            owner[ya:yb, xa:xb][local] = k
        if visible_count() >= min_masks:
            break
    instances: list[Instance] = []
    for k, (ya, xa, yb, xb) in enumerate(windows):
        vis = owner[ya:yb, xa:xb] == k
        if int(vis.sum()) >= MIN_VISIBLE_AREA:
            instances.append((ya, xa, vis))
    return np.clip(np.rint(img), 0, 255).astype(np.uint8), instances


def dense_sa1b_record(seed: int, index: int, size: tuple[int, int] = DENSE_SIZE, min_masks: int = 100,
                      photo_backgrounds: bool = True) -> tuple[bytes, dict]:
    """Image ``index`` of the dense set with this seed as SA-1B files: (JPEG bytes, ``sa_<index>.json`` doc)."""
    rng = np.random.default_rng([int(seed), int(index), 7])
    h, w = (size if index % 2 == 0 else size[::-1]) if size[0] != size[1] else size
    bg = photo_background(rng, h, w) if photo_backgrounds and rng.random() < 0.5 else None
    image, instances = make_dense_scene(rng, h, w, min_masks, background=bg)
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=JPEG_QUALITY)
    full = np.zeros((h, w), bool)
    anns = []
    for i, (y0, x0, m) in enumerate(instances):
        mh, mw = m.shape
        full[y0:y0 + mh, x0:x0 + mw] = m
        [rle] = encode_masks(full[None])
        full[y0:y0 + mh, x0:x0 + mw] = False
        ys, xs = np.nonzero(m)
        j = int(rng.integers(xs.size))
        anns.append({"bbox": [float(x0 + xs.min()), float(y0 + ys.min()), float(xs.max() - xs.min() + 1),
                              float(ys.max() - ys.min() + 1)],
                     "area": int(xs.size), "segmentation": rle, "predicted_iou": 1.0,
                     "point_coords": [[float(x0 + xs[j]), float(y0 + ys[j])]], "crop_box": [0, 0, w, h],
                     "id": int(index) * 1000 + i, "stability_score": 1.0})
    doc = {"image": {"image_id": int(index), "width": int(w), "height": int(h), "file_name": f"sa_{index}.jpg"},
           "annotations": anns}
    return buf.getvalue(), doc


def write_dense_shards(out_dir: str | Path, num_images: int, images_per_shard: int = 16, seed: int = 0,
                       size: tuple[int, int] = DENSE_SIZE, min_masks: int = 100, photo_backgrounds: bool = True,
                       unique_images: int | None = None) -> list[Path]:
    """Write ``sa_000000.tar``, ... of dense images (``sa_<k>.jpg`` + ``sa_<k>.json``, adjacent as in SA-1B).

    ``unique_images``: image ``k`` carries the content of image ``k % unique_images`` (under its own id
    ``sa_<k>``), so tars of 1x and 4x the size have the same per-image content without 4x the generation
    time. Returns the shard paths in order."""
    memo: dict[int, tuple[bytes, dict]] = {}

    def record(k: int) -> tuple[bytes, dict]:
        if not unique_images:
            return dense_sa1b_record(seed, k, size, min_masks, photo_backgrounds)
        base = k % unique_images
        if base not in memo:
            memo[base] = dense_sa1b_record(seed, base, size, min_masks, photo_backgrounds)
        jpg, doc = memo[base]
        return jpg, {"image": {**doc["image"], "image_id": k, "file_name": f"sa_{k}.jpg"},
                     "annotations": [{**a, "id": k * 1000 + i} for i, a in enumerate(doc["annotations"])]}

    return write_shards(out_dir, num_images, images_per_shard, record)
