"""HTTP request/response schemas (pydantic 2): the OpenAPI document at ``/docs`` is generated from them.

Coordinates are x-y pixels in the original image frame; ``bbox`` is XYWH (COCO); masks are COCO RLE
with ``counts`` as a str, or a base64 grayscale PNG (255 = inside). Unknown fields are rejected.
"""
from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

# Static caps keep absurd payloads from being fully validated; configured limits are checked after.
HARD_MAX_ITEMS = 4096
SHA256_HEX = r"^[0-9a-f]{64}$"

FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]
Point = Annotated[list[FiniteFloat], Field(min_length=2, max_length=2, description="[x, y] pixels")]
Box = Annotated[list[FiniteFloat], Field(min_length=4, max_length=4, description="[x0, y0, x1, y1] pixels")]
Label = Annotated[int, Field(strict=True, ge=0, le=1, description="1 positive, 0 negative")]
# Bound on |mask logit| accepted in ``mask_input``; returned ``low_res_logits`` are clipped to it, so a response
# can always be sent back. SAM-family logits are tens at most; the bound keeps float16 round trips finite.
MAX_ABS_MASK_LOGIT = 1e4


class ApiModel(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ErrorResponse(ApiModel):
    error: str


class ImageRequest(ApiModel):
    """JSON form of an image upload; multipart (field ``file``) and raw ``image/*`` bodies are accepted too."""

    image_b64: str = Field(..., description="base64 image bytes (PNG/JPEG/WebP/...), or a data:image/...;base64 URI. "
                                            "URLs are refused: the server never fetches.")


class EverythingRequest(ApiModel):
    """One image (``image_b64``) or several (``images_b64``)."""

    image_b64: str | None = None
    images_b64: list[str] | None = Field(None, max_length=64)


class EmbeddingResponse(ApiModel):
    embedding_id: str = Field(..., description="sha256 of the image bytes; pass it to /v1/segment")
    width: int
    height: int
    cached: bool = Field(..., description="true when the embedding came from the cache (no encoder call)")


class SegmentRequest(ApiModel):
    """Prompts for one image. ``points``+``labels`` form one prompt; each box is one prompt (the points, if
    any, are added to every box). Each prompt yields ``num_outputs`` masks (1: single-mask token,
    3: SAM's multimask tokens, 4: all), reduced to one by ``multimask_select`` unless ``all``.

    Refinement (SAM's ``mask_input``): ask for ``return_low_res_logits`` on a first request, then send the
    chosen mask's ``low_res_logits`` back as ``mask_input`` together with the corrected clicks."""

    embedding_id: str | None = Field(None, pattern=SHA256_HEX)
    image_b64: str | None = None
    points: list[Point] | None = Field(None, max_length=HARD_MAX_ITEMS)
    labels: list[Label] | None = Field(None, max_length=HARD_MAX_ITEMS)
    boxes: list[Box] | None = Field(None, max_length=HARD_MAX_ITEMS)
    num_outputs: Literal[1, 3, 4] = 1
    format: Literal["rle", "png"] = "rle"
    multimask_select: Literal["all", "stability", "iou"] = Field(
        "all", description="keep every output mask, or only the best per prompt by stability score / IoU head")
    mask_input: str | None = Field(
        None, description="SAM's mask prompt: low-res mask logits from an earlier response (its `low_res_logits`) "
                          "to refine, as base64 of a `.npy` file (`np.save`, no pickle) holding float16 or float32 "
                          "logits of shape (L, L) or (1, L, L), L = img_size / 4 (256 at img_size 1024; see "
                          "/healthz), in the padded model frame that `low_res_logits` uses. Applies to every prompt "
                          f"of the request. Values must be finite with |x| <= {MAX_ABS_MASK_LOGIT:g}. Errors: 400 "
                          "not base64 / not a .npy / corrupt, 413 more bytes than a float32 array needs, 422 wrong "
                          "dtype, shape or values.")
    return_low_res_logits: bool = Field(
        False, strict=True, description="also return each mask's low-res logits (`low_res_logits`), ready to be "
                                        "sent back as `mask_input`")


class RLE(ApiModel):
    size: list[int] = Field(..., description="[height, width]")
    counts: str


class MaskOut(ApiModel):
    prompt_index: int
    output_index: int = Field(..., description="mask token index within num_outputs")
    score: float = Field(..., description="stability score (EdgeSAM's IoU head is not distilled)")
    stability_score: float
    iou: float = Field(..., description="IoU head prediction")
    bbox: list[float] = Field(..., description="XYWH pixels")
    area: int
    segmentation: RLE | None = None
    png: str | None = Field(None, description="base64 grayscale PNG, 255 inside the mask")
    low_res_logits: str | None = Field(
        None, description="with `return_low_res_logits`: this mask's low-res logits (threshold 0) as base64 of a "
                          "`.npy` float16 array of shape (1, L, L), L = img_size / 4, in the padded model frame "
                          f"(clipped to +-{MAX_ABS_MASK_LOGIT:g}); send it back unchanged as `mask_input` to refine "
                          "the mask (about 11 kB at img_size 256, 175 kB at 1024)")


class SegmentResponse(ApiModel):
    embedding_id: str
    width: int
    height: int
    masks: list[MaskOut]
    weights: str = Field(..., description="'random' when the server runs untrained weights")


class Annotation(ApiModel):
    """SA-1B-style record from ``EverythingGenerator`` (bbox/crop_box/rpn_box XYWH, original pixels)."""

    id: int
    segmentation: RLE
    bbox: list[float]
    area: int
    score: float = Field(..., description="stability score")
    stability_score: float
    predicted_iou: float
    point_coords: list[list[float]]
    crop_box: list[float] | None = None
    rpn_box: list[float] | None = Field(None, description="the RPN proposal that prompted this mask (rpn mode)")
    rpn_score: float | None = None


class EverythingResult(ApiModel):
    width: int
    height: int
    annotations: list[Annotation]


class EverythingResponse(ApiModel):
    results: list[EverythingResult]
    weights: str


class SampleInfo(ApiModel):
    name: str
    title: str
    width: int
    height: int
    url: str


class HealthResponse(ApiModel):
    status: str
    model: str = Field(..., description="model identity (checkpoint name + hash, or random seed)")
    weights: str = Field(..., description="'checkpoint' | 'onnx' | 'random'")
    warning: str | None
    backend: dict[str, str]
    img_size: int
    auth: bool = Field(..., description="true when /v1 model endpoints need X-API-Key")
    cache: dict[str, int]
    batching: dict[str, Any]
    everything: str = Field(..., description="segment-everything implementation and mode")
