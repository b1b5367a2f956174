"""Reading and checking request payloads: image bytes from JSON/multipart/raw bodies, segment prompts, and
the ``mask_input`` of refinement requests.

Every failure is a :class:`~serve.codec.RequestError` carrying its 4xx status.
"""
from __future__ import annotations

import json
from typing import Any

import numpy as np
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request

from .codec import RequestError, check_image_bytes, decode_b64_image, decode_npy_b64
from .config import LimitsSection
from .schemas import MAX_ABS_MASK_LOGIT, EverythingRequest, ImageRequest, SegmentRequest

NPY_HEADER_SLACK = 1024  # room for the .npy header beyond the float32 data (np.save writes 128 bytes)


def summarise_errors(errors: list[dict]) -> str:
    """Pydantic errors -> one short line each, without echoing (possibly huge) inputs."""
    parts = []
    for e in errors[:5]:
        loc = ".".join(str(x) for x in e.get("loc", ()) if x != "body") or "body"
        parts.append(f"{loc}: {e.get('msg', 'invalid')}")
    more = f" (+{len(errors) - 5} more)" if len(errors) > 5 else ""
    return "invalid request: " + "; ".join(parts) + more


def image_body_openapi(json_model: type) -> dict:
    """OpenAPI requestBody for endpoints taking an image as JSON base64, multipart upload or raw bytes."""
    return {"requestBody": {"required": True, "content": {
        "application/json": {"schema": json_model.model_json_schema()},
        "multipart/form-data": {"schema": {"type": "object", "properties": {
            "file": {"type": "string", "format": "binary"}}, "required": ["file"]}},
        "image/*": {"schema": {"type": "string", "format": "binary"}},
    }}}


async def body_json(request: Request) -> Any:
    try:
        return json.loads(await request.body())
    except (ValueError, RecursionError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise RequestError(f"body is not valid JSON: {type(e).__name__}", 400) from None


async def read_image_payloads(request: Request, limits: LimitsSection, many: bool) -> list[bytes]:
    """The image bytes of a request: JSON base64, multipart upload(s) or a raw ``image/*`` body."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    max_count = limits.max_images if many else 1
    if ctype == "application/json":
        data = await body_json(request)
        try:
            req = (EverythingRequest if many else ImageRequest).model_validate(data)
        except ValidationError as e:
            raise RequestError(summarise_errors(e.errors()), 422) from None
        texts = ([req.image_b64] if req.image_b64 is not None else []) + list(getattr(req, "images_b64", None) or [])
        if not texts:
            raise RequestError("give image_b64 (or images_b64: a list)", 422)
        if len(texts) > max_count:
            raise RequestError(f"{len(texts)} images exceed the limit of {max_count} per request", 413)
        return [decode_b64_image(t, limits.max_image_bytes) for t in texts]
    if ctype == "multipart/form-data":
        try:
            form = await request.form(max_files=max_count, max_fields=16)
        except StarletteHTTPException:
            raise
        except Exception as e:  # malformed multipart framing
            raise RequestError(f"malformed multipart body: {type(e).__name__}", 400) from None
        files = [v for k, v in form.multi_items() if k in ("file", "files", "image") and hasattr(v, "read")]
        if not files:
            raise RequestError("multipart body needs a file field named 'file'", 422)
        if len(files) > max_count:
            raise RequestError(f"{len(files)} images exceed the limit of {max_count} per request", 413)
        out = [await f.read() for f in files]
        for data in out:
            check_image_bytes(data, limits.max_image_bytes)
        return out
    if ctype.startswith("image/") or ctype == "application/octet-stream":
        data = await request.body()
        check_image_bytes(data, limits.max_image_bytes)
        return [data]
    raise RequestError(f"unsupported content type {ctype or '(none)'!r}: send application/json "
                       "({\"image_b64\": ...}), multipart/form-data (file) or image/* bytes", 415)


def validate_prompts(req: SegmentRequest, height: int, width: int,
                     lim: LimitsSection) -> dict[str, np.ndarray | None]:
    """Prompt checks against the image size and configured limits -> ``DecodeRequest`` prompt arrays.

    points (P,2) float32, labels (P,) int64, boxes (N,4) float32 XYXY, each None when absent.
    Coordinates may lie on the border (0..width, 0..height), as SAM's predictor accepts."""
    points = req.points or None
    labels = req.labels or None
    boxes = req.boxes or None
    if (points is None) != (labels is None):
        raise RequestError("points and labels must be given together (one label per point)", 422)
    if points is not None and len(points) != len(labels):
        raise RequestError(f"{len(points)} points but {len(labels)} labels: give one label per point", 422)
    if points is None and boxes is None:
        raise RequestError("no prompt: give points+labels and/or boxes", 422)
    if points is not None and len(points) > lim.max_points:
        raise RequestError(f"{len(points)} points exceed the limit of {lim.max_points}", 413)
    if boxes is not None and len(boxes) > lim.max_boxes:
        raise RequestError(f"{len(boxes)} boxes exceed the limit of {lim.max_boxes}", 413)
    pts = None if points is None else np.asarray(points, np.float32).reshape(-1, 2)
    bxs = None if boxes is None else np.asarray(boxes, np.float32).reshape(-1, 4)
    for name, xy in (("points", pts), ("boxes", None if bxs is None else bxs.reshape(-1, 2))):
        if xy is None:
            continue
        bad = (xy[:, 0] < 0) | (xy[:, 0] > width) | (xy[:, 1] < 0) | (xy[:, 1] > height)
        if bad.any():
            i = int(np.argmax(bad))
            raise RequestError(f"{name}: coordinate {xy[i].tolist()} is outside the image "
                               f"(x in [0, {width}], y in [0, {height}])", 422)
    if bxs is not None and ((bxs[:, 2] < bxs[:, 0]) | (bxs[:, 3] < bxs[:, 1])).any():
        raise RequestError("boxes must be [x0, y0, x1, y1] with x1 >= x0 and y1 >= y0", 422)
    return {"points": pts, "labels": None if labels is None else np.asarray(labels, np.int64), "boxes": bxs}


def mask_input_side(img_size: int) -> int:
    """Side of the low-res mask logits: img_size / 4 (256 at img_size 1024)."""
    return img_size // 4


def validate_mask_input(text: object, img_size: int) -> np.ndarray:
    """``mask_input`` (base64 .npy, float16/float32, (L,L) or (1,L,L) with L = img_size/4) -> (1,1,L,L) float32.

    4xx on anything else: 413 more bytes than a float32 (L,L) array needs, 400 not base64 / not a .npy /
    corrupt, 422 wrong dtype or shape, NaN/inf, or a value beyond +-MAX_ABS_MASK_LOGIT."""
    side = mask_input_side(img_size)
    arr = decode_npy_b64(text, "mask_input", 4 * side * side + NPY_HEADER_SLACK,
                         shapes=((side, side), (1, side, side)))
    peak = float(np.abs(arr).max())
    if peak > MAX_ABS_MASK_LOGIT:
        raise RequestError(f"mask_input values must be logits within +-{MAX_ABS_MASK_LOGIT:g}, got {peak:g}", 422)
    return arr.reshape(1, 1, side, side)
