"""X-AnyLabeling's remote-server protocol: ``GET /xanylabeling/health``, ``GET /xanylabeling/v1/models``,
``POST /xanylabeling/v1/predict`` (X-AnyLabeling: model "Remote-Server", ``server_url:
http://<host>:8000/xanylabeling``, ``api_key`` = this server's key, sent as the ``Token`` header).

``/v1/predict`` takes ``{"model": "edgesam", "image": data URI or base64, "params": {"marks": [...],
"epsilon_factor": 0.001, ...}}``. Marks are ``{"type": "point", "data": [x, y], "label": 1|0}`` and
``{"type": "rectangle", "data": [x0, y0, x1, y1]}`` in pixels; all points form one prompt and each rectangle
one prompt with the points. The answer is ``{"success": true, "data": {"shapes": [...], "description": "",
"replace": false}}`` with one closed ``polygon`` shape per mask piece, simplified by ``epsilon_factor`` x its
perimeter (``cv2.approxPolyDP``, as X-AnyLabeling's own SAM server does), plus a ``rectangle`` shape when
``params.show_boxes`` is true. Errors are 4xx ``{"error": ...}`` (the client raises on any non-2xx).
"""
from __future__ import annotations

import asyncio
import time
from typing import Any

import numpy as np
from fastapi import APIRouter, Depends
from pydantic import BaseModel, ConfigDict, Field

from edgesam.data.rle import mask_to_bbox
from edgesam.formats.coco_polygons import mask_to_polygons

from ..codec import RequestError, decode_b64_image
from .common import current_ingress, require_key, decode_masks, embedding

router = APIRouter(prefix="/xanylabeling", tags=["x-anylabeling"])
MODEL_ID = "edgesam"
LABEL = "AUTOLABEL_OBJECT"
WIDGETS = ["button_add_point", "button_remove_point", "button_add_rect", "button_clear", "button_finish_object",
           "mask_fineness_slider", "mask_fineness_value_label", "toggle_preserve_existing_annotations"]
MAX_MARKS = 256


class PredictRequest(BaseModel):
    model_config = ConfigDict(extra="allow")
    model: str = Field(..., max_length=200)
    image: str
    params: dict[str, Any] = Field(default_factory=dict)


def _marks(params: dict[str, Any]) -> tuple[list, list, list]:
    marks = params.get("marks") or []
    if not isinstance(marks, list) or len(marks) > MAX_MARKS:
        raise RequestError(f"params.marks must be a list of at most {MAX_MARKS} marks", 422)
    points, labels, boxes = [], [], []
    for i, m in enumerate(marks):
        data = m.get("data") if isinstance(m, dict) else None
        kind = m.get("type") if isinstance(m, dict) else None
        if kind not in ("point", "rectangle") or not isinstance(data, list) \
                or len(data) != (2 if kind == "point" else 4) \
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in data):
            raise RequestError(f"params.marks[{i}] must be {{'type': 'point', 'data': [x, y], 'label': 0|1}} or "
                               "{'type': 'rectangle', 'data': [x0, y0, x1, y1]}", 422)
        if kind == "point":
            label = m.get("label", 1)
            if label not in (0, 1) or isinstance(label, bool):
                raise RequestError(f"params.marks[{i}].label must be 1 (positive) or 0 (negative)", 422)
            points.append([float(v) for v in data])
            labels.append(int(label))
        else:
            x0, y0, x1, y1 = (float(v) for v in data)
            boxes.append([min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)])  # drawn in any direction
    return points, labels, boxes


def _shape(kind: str, points: list[list[float]], score: float) -> dict[str, Any]:
    return {"label": LABEL, "shape_type": kind, "points": points, "score": round(min(max(score, 0.0), 1.0), 6),
            "attributes": {}, "description": None, "difficult": False, "direction": 0, "flags": None,
            "group_id": None, "kie_linking": []}


def mask_shapes(mask: np.ndarray, score: float, epsilon_factor: float, show_boxes: bool) -> list[dict[str, Any]]:
    """bool (H, W) -> X-AnyLabeling shapes: closed polygons (pixel corners), optionally the bounding box."""
    import cv2

    shapes = []
    for poly in mask_to_polygons(mask):
        pts = np.asarray(poly, np.float32).reshape(-1, 1, 2)
        if epsilon_factor > 0:
            pts = cv2.approxPolyDP(pts, epsilon_factor * cv2.arcLength(pts, True), True)
        xy = pts.reshape(-1, 2).tolist()
        if len(xy) >= 3:
            shapes.append(_shape("polygon", xy + [xy[0]], score))
    if show_boxes and mask.any():
        x, y, w, h = mask_to_bbox(mask)
        shapes.append(_shape("rectangle", [[x, y], [x + w, y], [x + w, y + h], [x, y + h]], score))
    return shapes


@router.get("/health")
async def health() -> dict[str, Any]:
    return {"status": "healthy", "models_loaded": 1,
            "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())}


@router.get("/v1/models", dependencies=[Depends(require_key)])
async def models(ingress: Any = Depends(current_ingress)) -> dict[str, Any]:
    info = await ingress.encoder.info.remote()
    return {"success": True, "data": {MODEL_ID: {
        "display_name": "EdgeSAM (Ray Serve)", "widgets": [{"name": w, "value": None} for w in WIDGETS],
        "capabilities": {}, "params": {"model": info["identity"], "weights": info["weights"],
                                       "img_size": info["img_size"]},
        "batch_processing_mode": "default"}}}


@router.post("/v1/predict", dependencies=[Depends(require_key)])
async def predict(req: PredictRequest, ingress: Any = Depends(current_ingress)) -> dict[str, Any]:
    if req.model != MODEL_ID:
        raise RequestError(f"model {req.model[:80]!r} is not served here; GET /xanylabeling/v1/models lists "
                           f"{MODEL_ID!r}", 404)
    points, labels, boxes = _marks(req.params)
    if not points and not boxes:
        return {"success": True, "data": {"shapes": [], "description": "", "replace": False}}
    eps = req.params.get("epsilon_factor", 0.001)
    if not isinstance(eps, (int, float)) or isinstance(eps, bool) or not 0 <= eps <= 1:
        raise RequestError("params.epsilon_factor must be a number in [0, 1]", 422)
    show_boxes = req.params.get("show_boxes", False) is True
    data = decode_b64_image(req.image, ingress.limits.max_image_bytes, field="image")
    key, entry = await embedding(ingress, data)
    masks = await decode_masks(ingress, key, entry, points, labels, boxes)
    shapes = await asyncio.to_thread(lambda: [s for m, sc in masks for s in mask_shapes(m, sc, float(eps), show_boxes)])
    return {"success": True, "data": {"shapes": shapes, "description": "", "replace": False}}
