"""CVAT's SAM interactor contract: ``POST /cvat/sam`` with ``{"image": base64}`` -> ``{"blob": base64}``, the
image embedding as raw little-endian float32 bytes in C order, shape (1, 256, S/16, S/16): (1, 256, 64, 64)
at ``model.img_size`` 1024, which is what CVAT's browser plugin reads (``new Float32Array(...)`` reshaped to
[1, 256, 64, 64]) and feeds to its ONNX decoder, the ``sam`` flavour of ``python -m edgesam.export``.

CVAT invokes interactors through Nuclio; ``serve/integrations/cvat_nuclio/`` is a forwarding function that
posts the event body here with the API key.
"""
from __future__ import annotations

import base64
from typing import Any

import numpy as np
from fastapi import APIRouter, Depends
from pydantic import BaseModel, ConfigDict

from ..codec import decode_b64_image
from .common import current_ingress, require_key, embedding

router = APIRouter(prefix="/cvat", tags=["cvat"])


class EncodeRequest(BaseModel):
    model_config = ConfigDict(extra="allow")  # Nuclio events may carry more (e.g. CVAT's pos/neg points)
    image: str


def embedding_blob(embedding_array: np.ndarray) -> str:
    """(1, 256, h, w) float32 -> base64 of its little-endian C-order bytes."""
    return base64.b64encode(np.ascontiguousarray(embedding_array, dtype="<f4").tobytes()).decode("ascii")


@router.post("/sam", dependencies=[Depends(require_key)])
async def sam(req: EncodeRequest, ingress: Any = Depends(current_ingress)) -> dict[str, str]:
    data = decode_b64_image(req.image, ingress.limits.max_image_bytes, field="image")
    _, entry = await embedding(ingress, data)
    return {"blob": embedding_blob(await entry.ref)}  # read from the object store (EmbeddingStore owns it)
