"""Caching stages 1-2 (pure, no Ray): reader records -> raw rows -> decoded, resized rows with GT prompts."""
from __future__ import annotations

import json
import zlib
from typing import Any, Iterable, Iterator

import numpy as np
import pyarrow as pa
import torch

from .cache_schema import PRE_SCHEMA, Preprocessing, encode_jpeg
from .transforms import ResizeLongestSide


def stable_seed(image_id: str, seed: int) -> int:
    return (zlib.crc32(image_id.encode()) + seed * 1_000_003) % (2**32)


def raw_rows(records: Iterable[Any], done_ids: frozenset[str] | set[str] = frozenset()) -> Iterator[dict]:
    """RawRecord / Skipped items -> rows of RAW_SCHEMA; records whose id is in ``done_ids`` are dropped."""
    from .records import RawRecord

    for rec in records:
        if isinstance(rec, RawRecord):
            if rec.image_id in done_ids:
                continue
            yield {"image_id": rec.image_id, "source": rec.source, "image_bytes": rec.image_bytes,
                   "annotations_json": json.dumps(rec.annotations), "skip_reason": ""}
        else:
            yield {"image_id": "", "source": rec.source, "image_bytes": b"", "annotations_json": "[]",
                   "skip_reason": rec.reason}


def _gt_prompts(annotations: list[dict], orig_hw: tuple[int, int], tf: ResizeLongestSide) -> tuple[np.ndarray, np.ndarray, list[str]]:
    boxes, points, rles = [], [], []
    for ann in annotations:
        x, y, w, h = (float(v) for v in ann["bbox"])
        pts = ann.get("point_coords") or [[x + w / 2, y + h / 2]]
        boxes.append([x, y, x + w, y + h])
        points.append([float(pts[0][0]), float(pts[0][1])])
        seg = ann.get("segmentation") or {}
        counts = seg.get("counts", "")
        rles.append(counts.decode() if isinstance(counts, bytes) else str(counts))
    if not boxes:
        return np.zeros((0, 4), np.float32), np.zeros((0, 2), np.float32), []
    return (tf.apply_boxes(np.array(boxes, np.float32), orig_hw), tf.apply_coords(np.array(points, np.float32), orig_hw), rles)


def sample_prompt_index(image_id: str, num_annotations: int, pre: Preprocessing) -> np.ndarray:
    """The fixed, seeded prompt set: up to ``num_prompts`` distinct annotation indices, sorted."""
    k = min(pre.num_prompts, num_annotations)
    rng = np.random.default_rng(stable_seed(image_id, pre.prompt_seed))
    return np.sort(rng.choice(num_annotations, size=k, replace=False)).astype(np.int32) if k else np.zeros(0, np.int32)


def preprocess_row(row: dict, pre: Preprocessing) -> dict:
    """A RAW_SCHEMA row -> a PRE_SCHEMA row; failures become ``skip_reason`` (never raise)."""
    from .images import decode_image

    out = {f.name: None for f in PRE_SCHEMA}
    out.update(image_id=row["image_id"], source=row["source"], skip_reason=row["skip_reason"])
    if row["skip_reason"]:
        return out
    try:
        image = decode_image(row["image_bytes"], row["source"], min_side=pre.min_side, max_pixels=pre.max_pixels)
        annotations = json.loads(row["annotations_json"])
        tf = ResizeLongestSide(pre.img_size)
        resized = tf.apply_image(image).round().clamp(0, 255).to(torch.uint8)[0].permute(1, 2, 0).numpy()
        orig_hw = image.shape[:2]
        boxes, points, rles = _gt_prompts(annotations, orig_hw, tf)
        out.update(orig_height=orig_hw[0], orig_width=orig_hw[1], input_height=resized.shape[0],
                   input_width=resized.shape[1], image_jpeg=encode_jpeg(resized, pre.jpeg_quality),
                   gt_boxes=boxes.reshape(-1).tolist(), gt_points=points.reshape(-1).tolist(), gt_rles=rles,
                   prompt_index=sample_prompt_index(row["image_id"], len(boxes), pre).tolist())
    except Exception as exc:  # noqa: BLE001 - a bad record is reported and skipped, never fatal
        out["skip_reason"] = f"{type(exc).__name__}: {exc}"
    return out


def preprocess_table(batch: pa.Table, pre: Preprocessing) -> pa.Table:
    rows = [preprocess_row(r, pre) for r in batch.to_pylist()]
    return pa.Table.from_pylist(rows, schema=PRE_SCHEMA)
