"""Mask <-> COCO run-length encoding, all through ``pycocotools.mask``.

Conventions used across the project:
* masks are ``bool`` arrays ``(H, W)`` (or ``(N, H, W)`` stacks);
* an RLE written anywhere (JSON, Parquet, API answers) is the *compressed* form
  ``{"size": [H, W], "counts": str}`` with ``str`` counts, so it is JSON-safe;
* readers also accept ``bytes`` counts and the uncompressed form (``counts`` a list of run lengths,
  column-major, starting with a run of zeros), and COCO polygons.
"""
from __future__ import annotations

import warnings
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

__all__ = ["encode_mask", "encode_masks", "decode_rle", "decode_rles", "decode_segmentation", "mask_to_bbox",
           "rle_area", "to_uncompressed_rle"]


def encode_masks(masks: np.ndarray) -> list[dict]:
    """``(N, H, W)`` bool/uint8 -> N compressed RLE dicts with ``str`` counts (a single pycocotools call)."""
    masks = np.asarray(masks)
    if masks.ndim != 3:
        raise ValueError(f"encode_masks expects (N, H, W), got shape {masks.shape}")
    if masks.shape[0] == 0:
        return []
    stack = np.asfortranarray(np.moveaxis(masks != 0, 0, -1).astype(np.uint8))
    rles = mask_utils.encode(stack)
    out = []
    for r in rles:
        counts = r["counts"]
        out.append({"size": [int(r["size"][0]), int(r["size"][1])],
                    "counts": counts.decode("ascii") if isinstance(counts, bytes) else counts})
    return out


def encode_mask(mask: np.ndarray) -> dict:
    """``(H, W)`` bool/uint8 -> compressed RLE dict ``{"size": [H, W], "counts": str}``."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"encode_mask expects (H, W), got shape {mask.shape}")
    return encode_masks(mask[None])[0]


def _decode(rles: list[dict]) -> np.ndarray:
    """pycocotools' decode -> (H, W, N) uint8, without its NumPy-2 ``copy=False`` DeprecationWarning."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return mask_utils.decode(rles)


def _compressed(rle: dict) -> dict:
    """Any RLE dict -> the form pycocotools' C functions take (bytes counts)."""
    if not isinstance(rle, dict) or "size" not in rle or "counts" not in rle:
        raise ValueError("an RLE must be a dict with 'size' and 'counts'")
    h, w = (int(v) for v in rle["size"])
    counts = rle["counts"]
    if isinstance(counts, (list, tuple, np.ndarray)):
        counts = [int(c) for c in counts]
        if sum(counts) != h * w:
            raise ValueError(f"uncompressed RLE counts sum to {sum(counts)}, expected {h}*{w}={h * w}")
        return mask_utils.frPyObjects({"size": [h, w], "counts": counts}, h, w)
    if isinstance(counts, str):
        counts = counts.encode("ascii")
    if not isinstance(counts, bytes):
        raise ValueError(f"unsupported RLE counts type {type(counts).__name__}")
    return {"size": [h, w], "counts": counts}


def decode_rle(rle: dict) -> np.ndarray:
    """Compressed (str or bytes counts) or uncompressed (list counts) RLE -> ``(H, W)`` bool."""
    return _decode([_compressed(rle)])[..., 0].astype(bool)


def decode_rles(rles: list[dict]) -> np.ndarray:
    """Several RLEs of one size -> ``(N, H, W)`` bool (one pycocotools call)."""
    if not rles:
        return np.zeros((0, 0, 0), bool)
    stack = _decode([_compressed(r) for r in rles])
    return np.moveaxis(stack, -1, 0).astype(bool)


def _polygons(seg: list) -> list[list[float]]:
    # COCO stores a list of polygons [[x1, y1, x2, y2, ...], ...]; a bare flat list is one polygon
    polys = [seg] if seg and not isinstance(seg[0], (list, tuple, np.ndarray)) else seg
    out = []
    for p in polys:
        p = [float(v) for v in p]
        if len(p) % 2:
            raise ValueError(f"polygon with an odd number of coordinates ({len(p)})")
        if not all(np.isfinite(p)):
            raise ValueError("polygon with non-finite coordinates")
        if len(p) >= 6:  # fewer than 3 points has no area (and pycocotools would read 4 numbers as a box)
            out.append(p)
    return out


def decode_segmentation(seg: Any, height: int, width: int) -> np.ndarray:
    """A COCO ``segmentation`` in any of its three forms -> ``(H, W)`` bool.

    * polygon list ``[[x1, y1, ...], ...]`` in pixel-corner coordinates (all polygons are merged);
    * uncompressed RLE ``{"size": [H, W], "counts": [ints]}``;
    * compressed RLE ``{"size": [H, W], "counts": str | bytes}``.

    Raises ``ValueError`` for anything else, or when an RLE's size disagrees with ``(height, width)``.
    """
    height, width = int(height), int(width)
    if isinstance(seg, dict):
        size = [int(v) for v in seg.get("size", ())]
        if height > 0 and width > 0 and size != [height, width]:
            raise ValueError(f"RLE size {size} does not match the image size {[height, width]}")
        return decode_rle(seg)
    if isinstance(seg, (list, tuple)):
        if height <= 0 or width <= 0:
            raise ValueError("polygon segmentation needs the image height and width")
        polys = _polygons(list(seg))
        if not polys:
            raise ValueError("polygon segmentation without any polygon of 3 or more points")
        rles = mask_utils.frPyObjects(polys, height, width)
        return _decode([mask_utils.merge(rles)])[..., 0].astype(bool)
    raise ValueError(f"unsupported segmentation type {type(seg).__name__}")


def mask_to_bbox(mask: np.ndarray) -> list[float]:
    """``(H, W)`` mask -> tight XYWH box in pixel-corner coordinates (``[0, 0, 0, 0]`` when empty).

    A mask covering columns ``x0..x1`` and rows ``y0..y1`` gives ``[x0, y0, x1 - x0 + 1, y1 - y0 + 1]``,
    which is what ``pycocotools.mask.toBbox`` returns for its RLE.
    """
    mask = np.asarray(mask)
    cols = np.flatnonzero(mask.any(axis=0))
    if cols.size == 0:
        return [0.0, 0.0, 0.0, 0.0]
    rows = np.flatnonzero(mask.any(axis=1))
    return [float(cols[0]), float(rows[0]), float(cols[-1] - cols[0] + 1), float(rows[-1] - rows[0] + 1)]


def rle_area(rle: dict) -> int:
    """Number of foreground pixels of an RLE (any accepted form)."""
    return int(mask_utils.area(_compressed(rle)))


def to_uncompressed_rle(mask: np.ndarray) -> dict:
    """``(H, W)`` mask -> COCO uncompressed RLE ``{"size": [H, W], "counts": [ints]}`` (column-major runs,
    the first run counting zeros). Used to write COCO test data; pycocotools reads it back."""
    flat = np.asarray(mask, dtype=bool).ravel(order="F")
    h, w = np.asarray(mask).shape
    if flat.size == 0:
        return {"size": [int(h), int(w)], "counts": [0]}
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    runs = np.diff(bounds).tolist()
    if flat[0]:
        runs = [0] + runs
    return {"size": [int(h), int(w)], "counts": [int(r) for r in runs]}
