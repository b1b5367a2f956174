"""Evaluation of segment-everything output against GT instances.

* Mask recall: the fraction of GT instances whose best-matching predicted mask has IoU >= 0.5 / 0.75
  (pycocotools RLE IoU, every prediction may match several GTs: it measures coverage, not detection).
* RPN box recall: the fraction of GT boxes with a proposal at box IoU >= 0.5 (``torchvision.ops.box_iou``).
* COCO segm AP: ``COCOeval(iouType="segm")`` on in-memory COCO datasets, one class-agnostic category;
  predictions are scored by their ``score`` (the stability score for :class:`EverythingGenerator` output).

Per-image input (``EvalImage``): ``{"id": int, "height": int, "width": int, "gt": [SA-1B/COCO annotations
with "segmentation" (RLE str/bytes counts, uncompressed RLE or polygons) and "bbox" XYWH],
"pred": [records with "segmentation" RLE and "score"], "proposals": (M,4) XYXY array or None}``, all
in original-image pixels.
"""
from __future__ import annotations

import contextlib
import io
from typing import Any, Sequence

import numpy as np
import torch
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from torchvision.ops import box_iou

CATEGORY = {"id": 1, "name": "object", "supercategory": "object"}


def to_rle(segmentation: Any, height: int, width: int) -> dict:
    """Any COCO segmentation (compressed RLE with str/bytes counts, uncompressed RLE, polygons) -> compressed
    RLE with bytes counts, as pycocotools' C functions take it."""
    if isinstance(segmentation, dict):
        counts = segmentation["counts"]
        if isinstance(counts, list):  # uncompressed
            return mask_utils.frPyObjects(segmentation, height, width)
        return {"size": list(segmentation["size"]), "counts": counts.encode("ascii") if isinstance(counts, str) else counts}
    if isinstance(segmentation, list):  # polygons
        return mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
    raise ValueError(f"unsupported segmentation of type {type(segmentation).__name__}")


def best_iou_per_gt(pred_rles: Sequence[dict], gt_rles: Sequence[dict]) -> np.ndarray:
    """-> (G,) the best mask IoU of each GT over all predictions (0 where there are none)."""
    if not gt_rles:
        return np.zeros(0)
    if not pred_rles:
        return np.zeros(len(gt_rles))
    iou = np.asarray(mask_utils.iou(list(pred_rles), list(gt_rles), [0] * len(gt_rles))).reshape(len(pred_rles), len(gt_rles))
    return iou.max(axis=0)


def box_recall_hits(proposals_xyxy: np.ndarray, gt_xyxy: np.ndarray, iou_thresh: float = 0.5) -> int:
    """Number of GT boxes (K,4) covered by at least one proposal (M,4) at box IoU >= ``iou_thresh`` (XYXY)."""
    gt = torch.as_tensor(np.asarray(gt_xyxy, np.float32).reshape(-1, 4))
    props = torch.as_tensor(np.asarray(proposals_xyxy, np.float32).reshape(-1, 4))
    if gt.shape[0] == 0 or props.shape[0] == 0:
        return 0
    return int((box_iou(gt, props).max(dim=1).values >= iou_thresh).sum())


def xywh_to_xyxy(boxes: np.ndarray) -> np.ndarray:
    b = np.asarray(boxes, np.float64).reshape(-1, 4).copy()
    b[:, 2:] += b[:, :2]
    return b


def coco_segm_ap(images: Sequence[dict], max_dets: int = 1000) -> dict[str, float]:
    """COCOeval segm over ``images`` (``EvalImage`` dicts) -> {"AP", "AP50", "AP75", "AR"} in [0, 1]
    (AR at ``max_dets``). Images without predictions count as misses; no predictions at all -> zeros."""
    gt_anns, dets = [], []
    for im in images:
        h, w = int(im["height"]), int(im["width"])
        for a in im["gt"]:
            rle = to_rle(a["segmentation"], h, w)
            gt_anns.append({"id": len(gt_anns) + 1, "image_id": int(im["id"]), "category_id": 1, "segmentation": rle,
                            "area": float(mask_utils.area(rle)), "bbox": [float(v) for v in mask_utils.toBbox(rle)],
                            "iscrowd": 0})
        for p in im["pred"]:
            dets.append({"image_id": int(im["id"]), "category_id": 1, "segmentation": to_rle(p["segmentation"], h, w),
                         "score": float(p["score"])})
    if not dets or not gt_anns:
        return {"AP": 0.0, "AP50": 0.0, "AP75": 0.0, "AR": 0.0}
    gt = COCO()
    gt.dataset = {"images": [{"id": int(im["id"]), "height": int(im["height"]), "width": int(im["width"])} for im in images],
                  "annotations": gt_anns, "categories": [CATEGORY]}
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
        gt.createIndex()
        dt = gt.loadRes(dets)
        ev = COCOeval(gt, dt, iouType="segm")
        ev.params.maxDets = [int(max_dets)]
        ev.evaluate()
        ev.accumulate()
    # summarize() hard-codes maxDets=100 for AP; read the accumulated arrays at area "all", our maxDets instead
    precision = ev.eval["precision"][:, :, 0, 0, 0]  # (T iou thresholds, R recall points)
    recall = ev.eval["recall"][:, 0, 0, 0]  # (T,)
    thr = ev.params.iouThrs

    def mean(a: np.ndarray) -> float:
        a = a[a > -1]  # -1: no GT
        return float(a.mean()) if a.size else 0.0

    return {"AP": mean(precision), "AP50": mean(precision[np.isclose(thr, 0.5)]),
            "AP75": mean(precision[np.isclose(thr, 0.75)]), "AR": mean(recall)}


def evaluate_everything(images: Sequence[dict], thresholds: Sequence[float] = (0.5, 0.75),
                        box_iou_thresh: float = 0.5, max_dets: int = 1000) -> dict[str, float | int | None]:
    """Recall at each mask-IoU threshold, RPN box recall (None when no image has ``proposals``) and COCO segm AP,
    pooled over ``images``."""
    hits = np.zeros(len(thresholds))
    num_gt = num_pred = box_hits = box_gt = 0
    has_props = False
    for im in images:
        h, w = int(im["height"]), int(im["width"])
        gts = [to_rle(a["segmentation"], h, w) for a in im["gt"]]
        preds = [to_rle(p["segmentation"], h, w) for p in im["pred"]]
        best = best_iou_per_gt(preds, gts)
        hits += np.array([(best >= t).sum() for t in thresholds])
        num_gt += len(gts)
        num_pred += len(preds)
        if im.get("proposals") is not None:
            has_props = True
            gt_boxes = xywh_to_xyxy([a["bbox"] for a in im["gt"]]) if im["gt"] else np.zeros((0, 4))
            box_hits += box_recall_hits(np.asarray(im["proposals"])[:, :4] if len(im["proposals"]) else np.zeros((0, 4)),
                                        gt_boxes, box_iou_thresh)
            box_gt += len(gt_boxes)
    out: dict[str, float | int | None] = {"images": len(images), "num_gt": num_gt, "num_pred": num_pred}
    for t, k in zip(thresholds, hits):
        out[f"recall@{t:g}"] = float(k / num_gt) if num_gt else 0.0
    out[f"box_recall@{box_iou_thresh:g}"] = (float(box_hits / box_gt) if box_gt else 0.0) if has_props else None
    out.update(coco_segm_ap(images, max_dets))
    return out
