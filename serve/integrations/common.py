"""What the labelling-tool routes share: the ingress instance, the API key, embeddings and decoding.

Routes are plain functions in APIRouters; Serve runs them inside the ingress replica, whose instance
``serve.get_replica_context().servable_object`` is (the same lookup Serve's class-based routes use). Decoding
goes through the ingress's embedding cache (``_embedding_for``) and the ``MaskDecoder`` handle with the
existing :class:`~serve.messages.DecodeRequest`, so these routes batch and cache with ``/v1/segment``.
"""
from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
from typing import Any

import numpy as np
from fastapi import Depends, Request
from starlette.exceptions import HTTPException as StarletteHTTPException

from edgesam.data.rle import decode_rle

from ..budget import check_segment
from ..codec import RequestError
from ..payloads import validate_prompts
from ..schemas import SegmentRequest


def current_ingress() -> Any:
    """FastAPI dependency: the ``EdgeSamIngress`` instance of this replica."""
    from ray import serve

    return serve.get_replica_context().servable_object


def _presented_keys(request: Request) -> list[str]:
    """Keys a client may present: ``X-API-Key`` (our API), ``Token`` (X-AnyLabeling), ``Authorization:
    Token|Bearer <key>`` or HTTP Basic with the key as password (Label Studio's ML backend auth)."""
    h = request.headers
    keys = [v for v in (h.get("x-api-key"), h.get("token")) if v]
    auth = h.get("authorization", "")
    scheme, _, value = auth.partition(" ")
    if scheme.lower() in ("token", "bearer") and value:
        keys.append(value.strip())
    elif scheme.lower() == "basic" and value:
        try:
            keys.append(base64.b64decode(value.strip(), validate=True).decode("utf-8").partition(":")[2])
        except (binascii.Error, UnicodeDecodeError, ValueError):
            pass
    return keys


def check_key(request: Request, ingress: Any) -> None:
    """401 unless the server has no key or one of the presented keys matches it."""
    expected = ingress.cfg.auth.resolve()
    if expected is None:
        return
    if not any(hmac.compare_digest(k.encode(), expected.encode()) for k in _presented_keys(request)):
        raise StarletteHTTPException(401, "missing or wrong API key (X-API-Key, Token, Authorization: Token/Bearer, "
                                          "or HTTP Basic with the key as password)")


def require_key(request: Request, ingress: Any = Depends(current_ingress)) -> None:
    """Route dependency: runs before the body is validated, so a keyless request is a 401, not a 422."""
    check_key(request, ingress)


async def embedding(ingress: Any, data: bytes) -> tuple[str, Any]:
    """Image bytes -> (embedding id, CacheEntry) through the ingress cache (encodes on a miss)."""
    key, entry, _ = await ingress._embedding_for(data)
    return key, entry


def _xy(values: list[list[float]] | None, width: int, height: int) -> list[list[float]] | None:
    """Clip coordinates within half a pixel outside the image (percent rounding) onto its border; farther
    ones stay and are refused by validate_prompts."""
    if not values:
        return None
    out = []
    for v in values:
        row = list(v)
        for k in range(0, len(row), 2):
            row[k] = min(max(row[k], 0.0), width) if -0.5 <= row[k] <= width + 0.5 else row[k]
            row[k + 1] = min(max(row[k + 1], 0.0), height) if -0.5 <= row[k + 1] <= height + 0.5 else row[k + 1]
        out.append(row)
    return out


async def decode_masks(ingress: Any, key: str, entry: Any, points: list[list[float]] | None,
                       labels: list[int] | None, boxes: list[list[float]] | None,
                       num_outputs: int = 1) -> list[tuple[np.ndarray, float]]:
    """Prompts in original pixels (points+labels one prompt; each box one prompt with the points) ->
    [(bool (H, W) mask, stability score)] per prompt (the best by stability when ``num_outputs`` > 1)."""
    h, w = entry.original_hw
    try:
        req = SegmentRequest(embedding_id=key, points=_xy(points, w, h), labels=labels or None,
                             boxes=_xy(boxes, w, h))
    except ValueError as e:  # pydantic ValidationError: non-finite numbers, wrong lengths
        raise RequestError(f"invalid prompt: {str(e).splitlines()[0][:200]}", 422) from None
    prompts = validate_prompts(req, h, w, ingress.limits)
    select = "stability" if num_outputs > 1 else "all"
    check_segment(h, w, 1 if prompts["boxes"] is None else len(prompts["boxes"]), num_outputs, select,
                  ingress.limits)  # full-size masks: the same memory budget as /v1/segment
    result = await ingress.decoder.decode.remote(ingress.decode_request(
        key, entry, num_outputs=num_outputs, select=select, **prompts))  # the embedding travels by ObjectRef
    if "error" in result:
        raise RequestError(result["error"], 422)
    masks = await asyncio.to_thread(lambda: [decode_rle(m["segmentation"]) for m in result["masks"]])
    return [(m, float(r["stability_score"])) for m, r in zip(masks, result["masks"])]
