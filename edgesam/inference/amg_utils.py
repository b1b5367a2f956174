"""Helpers for segment-everything: point grids, crops, prompt building, mask NMS, RLE records.

Thin wrappers over ``segment_anything.utils.amg`` (grid, crop boxes, crop-edge test), pycocotools (RLE
area, bbox, IoU) and torchvision (box NMS); only the glue lives here.

Mask NMS uses IoU between COCO RLEs (``pycocotools.mask.iou``) rather than IoU of low-res torch masks:
the records need RLEs at the original size anyway, the IoU is then exact at output resolution, it works
across crops (all masks are in the original frame), and pycocotools skips pairs whose boxes do not
overlap, so N x N stays cheap for the few hundred masks that survive the stability filter.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from pycocotools import mask as mask_utils
from segment_anything.utils.amg import build_point_grid, generate_crop_boxes, is_box_near_crop_edge

from ..models.prompt_decoder import BOX_BR, BOX_TL, PAD, POS

__all__ = ["grid_points", "crop_boxes", "box_prompts", "point_prompts", "masks_to_rles", "rle_area_bbox",
           "mask_iou_matrix", "mask_nms", "near_crop_edge", "uncrop_rle", "xyxy_to_xywh", "batches"]


def grid_points(points_per_side: int, hw: tuple[int, int]) -> np.ndarray:
    """SAM's n x n grid of cell centres over an image of ``hw`` = (h, w) -> (n*n, 2) float32 x-y pixels."""
    if points_per_side < 1:
        raise ValueError(f"points_per_side must be >= 1, got {points_per_side}")
    h, w = hw
    return (build_point_grid(points_per_side) * np.array([w, h], np.float64)).astype(np.float32)


def crop_boxes(hw: tuple[int, int], n_layers: int, overlap_ratio: float) -> tuple[list[list[int]], list[int]]:
    """SAM's crop pyramid: -> (boxes XYXY in the original frame, layer index); the first is the whole image."""
    return generate_crop_boxes(tuple(hw), n_layers, overlap_ratio)


def box_prompts(boxes: np.ndarray, with_centre_point: bool) -> tuple[np.ndarray, np.ndarray]:
    """Boxes (M,4) XYXY in the S frame -> decoder prompts: coords (M,2,2) labels (M,2) [2, 3], or with the
    box centre as a positive point: coords (M,3,2) labels (M,3) [1, 2, 3] (points before box corners, as the
    predictor orders them)."""
    b = np.asarray(boxes, np.float32).reshape(-1, 2, 2)
    labels = np.tile(np.array([[BOX_TL, BOX_BR]], np.float32), (b.shape[0], 1))
    if with_centre_point:
        centre = b.mean(axis=1, keepdims=True)
        b = np.concatenate([centre, b], axis=1)
        labels = np.concatenate([np.full((b.shape[0], 1), POS, np.float32), labels], axis=1)
    return np.ascontiguousarray(b), labels


def point_prompts(points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Points (N,2) in the S frame -> single-point prompts coords (N,2,2) labels (N,2) [1, -1]: SAM appends a
    padding point to point-only prompts."""
    p = np.asarray(points, np.float32).reshape(-1, 1, 2)
    coords = np.concatenate([p, np.zeros_like(p)], axis=1)
    labels = np.tile(np.array([[POS, PAD]], np.float32), (p.shape[0], 1))
    return coords, labels


def batches(n: int, size: int) -> list[slice]:
    """Consecutive slices of at most ``size`` covering ``range(n)``."""
    if size < 1:
        raise ValueError(f"batch size must be >= 1, got {size}")
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


def masks_to_rles(masks: np.ndarray) -> list[dict]:
    """Binary masks (N,H,W) -> COCO RLEs ``{"size": [H, W], "counts": str}`` (via ``edgesam.data.rle``)."""
    from ..data.rle import encode_masks

    masks = np.asarray(masks, dtype=bool)
    if masks.ndim != 3:
        raise ValueError(f"masks must have shape (N,H,W), got {masks.shape}")
    if masks.shape[0] == 0:
        return []
    return [_str_counts(r) for r in encode_masks(masks)]


def _str_counts(rle: dict) -> dict:
    counts = rle["counts"]
    return {"size": [int(v) for v in rle["size"]], "counts": counts.decode("ascii") if isinstance(counts, bytes) else counts}


def _for_coco(rles: Sequence[dict]) -> list[dict]:
    # pycocotools' C API wants bytes counts
    return [{"size": list(r["size"]), "counts": r["counts"].encode("ascii") if isinstance(r["counts"], str) else r["counts"]}
            for r in rles]


def rle_area_bbox(rles: Sequence[dict]) -> tuple[np.ndarray, np.ndarray]:
    """-> areas (N,) int64 pixels and bboxes (N,4) float64 XYWH (pycocotools ``area`` / ``toBbox``)."""
    if not rles:
        return np.zeros(0, np.int64), np.zeros((0, 4))
    coco = _for_coco(rles)
    return mask_utils.area(coco).astype(np.int64), mask_utils.toBbox(coco).reshape(-1, 4)


def mask_iou_matrix(a: Sequence[dict], b: Sequence[dict]) -> np.ndarray:
    """IoU between RLE lists -> (len(a), len(b)) float64 (pycocotools, non-crowd)."""
    if not a or not b:
        return np.zeros((len(a), len(b)))
    return np.asarray(mask_utils.iou(_for_coco(a), _for_coco(b), [0] * len(b)), dtype=np.float64).reshape(len(a), len(b))


def mask_nms(rles: Sequence[dict], scores: np.ndarray, iou_thresh: float, order: np.ndarray | None = None) -> np.ndarray:
    """Greedy NMS on mask IoU: visit masks best first (``order``, default scores descending), keep one unless
    its IoU with an already kept mask is > ``iou_thresh``. -> kept indices (int64), in visiting order."""
    n = len(rles)
    if n == 0:
        return np.zeros(0, np.int64)
    order = np.argsort(-np.asarray(scores, np.float64), kind="stable") if order is None else np.asarray(order)
    iou = mask_iou_matrix(rles, rles)
    suppressed = np.zeros(n, bool)
    keep = []
    for i in order:
        if suppressed[i]:
            continue
        keep.append(i)
        suppressed |= iou[i] > iou_thresh
    return np.asarray(keep, np.int64)


def near_crop_edge(boxes_xyxy: np.ndarray, crop_box: Sequence[int], orig_box: Sequence[int], atol: float = 20.0) -> np.ndarray:
    """Boxes (N,4) XYXY in the crop frame touching a crop edge that is not an image edge -> (N,) bool."""
    if len(boxes_xyxy) == 0:
        return np.zeros(0, bool)
    return is_box_near_crop_edge(torch.as_tensor(np.asarray(boxes_xyxy, np.float32)), list(crop_box),
                                 list(orig_box), atol).numpy()


def uncrop_rle(rle: dict, crop_box: Sequence[int], orig_hw: tuple[int, int]) -> dict:
    """An RLE in the frame of ``crop_box`` (XYXY) -> the same mask as an RLE of the full ``orig_hw`` image."""
    from ..data.rle import decode_rle

    x0, y0, x1, y1 = (int(v) for v in crop_box)
    full = np.zeros(orig_hw, dtype=bool)
    full[y0:y1, x0:x1] = decode_rle(rle).astype(bool)
    return masks_to_rles(full[None])[0]


def xyxy_to_xywh(box: Sequence[float]) -> list[float]:
    x0, y0, x1, y1 = (float(v) for v in box)
    return [x0, y0, x1 - x0, y1 - y0]
