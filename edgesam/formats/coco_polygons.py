"""Masks -> polygons (COCO ``segmentation`` lists, also the source of YOLO and Label Studio polygons).

:func:`mask_to_polygons` traces the pixel-corner outline of every connected piece of a mask, so for a mask
without holes the polygons rasterise back (pycocotools) to exactly the same pixels. It traces a 2x nearest
upsampled copy with OpenCV (outer contours only) and maps each upsampled boundary pixel ``u`` to the pixel
corner ``(u + 1) // 2``: the left/top sub-pixel of a pixel lands on its left/top corner, the right/bottom one
on its right/bottom corner. Holes cannot be written as COCO polygons (pycocotools merges the pieces by
union), so they are filled; ``tolerance`` > 0 simplifies each outline with ``cv2.approxPolyDP`` (pixels).
"""
from __future__ import annotations

import numpy as np

from edgesam.data.rle import decode_rle, decode_segmentation


def mask_to_polygons(mask: np.ndarray, tolerance: float = 0.0) -> list[list[float]]:
    """bool (H, W) -> ``[[x1, y1, x2, y2, ...], ...]`` in pixel-corner coordinates, one per piece (>= 3 vertices)."""
    import cv2

    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask must be (H, W), got shape {mask.shape}")
    if not mask.any():
        return []
    up = np.kron((mask != 0).astype(np.uint8), np.ones((2, 2), np.uint8))
    contours, _ = cv2.findContours(up, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    out = []
    for c in contours:
        pts = (c.reshape(-1, 2) + 1) // 2
        pts = pts[np.any(pts != np.roll(pts, 1, axis=0), axis=1)]  # corners hit twice in a row
        if tolerance > 0 and len(pts) > 3:
            pts = cv2.approxPolyDP(pts.reshape(-1, 1, 2).astype(np.int32), tolerance, True).reshape(-1, 2)
        if len(pts) >= 3:
            out.append([float(v) for v in pts.ravel()])
    return out


def polygons_area(polygons: list[list[float]], height: int, width: int) -> int:
    """Pixels covered by the union of ``polygons`` when pycocotools rasterises them."""
    return int(decode_segmentation(polygons, height, width).sum()) if polygons else 0


def polygon_annotation(ann: dict, height: int, width: int, tolerance: float = 0.0) -> dict | None:
    """A COCO annotation with an RLE segmentation -> the same with polygons (``area`` becomes their pixel count;
    ids, bbox and scores kept), or None when the mask has no outline (empty)."""
    polys = mask_to_polygons(decode_rle(ann["segmentation"]), tolerance)
    if not polys:
        return None
    return {**ann, "segmentation": polys, "area": polygons_area(polys, height, width)}
