"""YOLO segmentation labels (Ultralytics ``.txt``): one line per polygon, ``class x1 y1 x2 y2 ...`` with
coordinates normalised by the image width/height to [0, 1].

A mask in several pieces gives one line per piece (each a separate instance for YOLO); holes are filled (see
:mod:`edgesam.formats.coco_polygons`). :func:`read_yolo_seg` parses a file back, for validation and tests.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .coco_polygons import mask_to_polygons

DECIMALS = 6  # 1e-6 of a side: sub-pixel for images up to 10^5 px


def polygons_to_lines(polygons: list[list[float]], width: int, height: int, class_id: int = 0) -> list[str]:
    """Pixel polygons -> YOLO lines (normalised, clipped to [0, 1])."""
    scale = np.array([width, height], np.float64)
    lines = []
    for p in polygons:
        xy = np.clip(np.asarray(p, np.float64).reshape(-1, 2) / scale, 0.0, 1.0)
        lines.append(" ".join([str(class_id)] + [f"{v:.{DECIMALS}f}" for v in xy.ravel()]))
    return lines


def mask_to_lines(mask: np.ndarray, class_id: int = 0, tolerance: float = 0.0) -> list[str]:
    h, w = mask.shape
    return polygons_to_lines(mask_to_polygons(mask, tolerance), w, h, class_id)


def read_yolo_seg(path: str | Path, width: int, height: int) -> list[tuple[int, list[float]]]:
    """A YOLO segmentation ``.txt`` -> ``[(class_id, [x1, y1, ...] in pixels), ...]``; ValueError on a bad line."""
    out = []
    for n, line in enumerate(Path(path).read_text().splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) < 7 or len(parts) % 2 == 0:
            raise ValueError(f"{path}:{n}: expected 'class x1 y1 x2 y2 x3 y3 ...', got {len(parts)} fields")
        xy = np.asarray([float(v) for v in parts[1:]], np.float64).reshape(-1, 2)
        if not np.isfinite(xy).all() or xy.min() < 0 or xy.max() > 1:
            raise ValueError(f"{path}:{n}: coordinates must be normalised to [0, 1]")
        out.append((int(parts[0]), (xy * [width, height]).ravel().tolist()))
    return out
