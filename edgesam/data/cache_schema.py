"""Teacher cache format: the Parquet schemas, the preprocessing identity and the byte codecs of a row.

Row schema (``CACHE_SCHEMA``), coordinates x-y in the *input frame* (resized so the longest side is
``img_size``; padding bottom/right, so no offset):

==================== ============================ ==========================================================
column               type                         meaning
==================== ============================ ==========================================================
image_id             string                       file stem, unique
source               string                       where the image came from (tar::member or path)
orig_height/width    int32                        original image size (pixels)
input_height/width   int32                        resized, unpadded extent in the S x S input
image_jpeg           binary                       the resized RGB image, JPEG (what teacher and student see)
embedding            binary                       float16 C-order (256, S/16, S/16) teacher embedding
gt_boxes             list<float32>                K*4 XYXY GT boxes, input frame
gt_points            list<float32>                K*2 GT points (SA-1B point_coords), input frame
gt_rles              list<string>                 K compressed-RLE counts at the original size
prompt_index         list<int32>                  K' annotation indices of the fixed, seeded prompt set
teacher_box_masks    binary                       packbits of (K', S/4, S/4) bool, token 0 for the GT box
teacher_point_masks  binary                       packbits of (K', S/4, S/4) bool, best-IoU token for the GT point
"""
from __future__ import annotations

import io
import json

import numpy as np
import pyarrow as pa
import torch
from PIL import Image
from pydantic import BaseModel, ConfigDict

from .transforms import PIXEL_MEAN, PIXEL_STD, normalize_pad

CACHE_FORMAT_VERSION = 1
MANIFEST = "manifest.json"

CACHE_SCHEMA = pa.schema([
    ("image_id", pa.string()), ("source", pa.string()),
    ("orig_height", pa.int32()), ("orig_width", pa.int32()),
    ("input_height", pa.int32()), ("input_width", pa.int32()),
    ("image_jpeg", pa.binary()), ("embedding", pa.binary()),
    ("gt_boxes", pa.list_(pa.float32())), ("gt_points", pa.list_(pa.float32())),
    ("gt_rles", pa.list_(pa.string())), ("prompt_index", pa.list_(pa.int32())),
    ("teacher_box_masks", pa.binary()), ("teacher_point_masks", pa.binary()),
])

# Between pipeline stages: raw records (bytes + JSON annotations) and a skip reason.
RAW_SCHEMA = pa.schema([
    ("image_id", pa.string()), ("source", pa.string()), ("image_bytes", pa.binary()),
    ("annotations_json", pa.string()), ("skip_reason", pa.string()),
])
PRE_SCHEMA = pa.schema([f for f in CACHE_SCHEMA if f.name not in ("embedding", "teacher_box_masks", "teacher_point_masks")]
                       + [pa.field("skip_reason", pa.string())])


class Preprocessing(BaseModel):
    """Everything that changes what the teacher sees or what a row holds; part of the cache identity."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    img_size: int = 1024
    jpeg_quality: int = 95
    num_prompts: int = 16
    prompt_seed: int = 0
    max_pixels: int = 50_000_000
    min_side: int = 8

    def identity(self) -> dict:
        return {"img_size": self.img_size, "pixel_mean": list(PIXEL_MEAN), "pixel_std": list(PIXEL_STD),
                "resize": "longest-side PIL bilinear on uint8 (segment-anything ResizeLongestSide), pad bottom/right", "jpeg_quality": self.jpeg_quality,
                "num_prompts": self.num_prompts, "prompt_seed": self.prompt_seed,
                "cache_format_version": CACHE_FORMAT_VERSION}


def encode_jpeg(image: np.ndarray, quality: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def decode_jpeg(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        return np.array(im.convert("RGB"))


def model_input(image_jpeg: bytes, img_size: int) -> torch.Tensor:
    """Stored resized JPEG -> normalised padded (3, S, S) float32, exactly what the teacher saw."""
    img = torch.from_numpy(decode_jpeg(image_jpeg)).permute(2, 0, 1)[None].float()
    return normalize_pad(img, img_size)[0]


def pack_masks(masks: np.ndarray) -> bytes:
    return np.packbits(masks.astype(bool), axis=None).tobytes()


def unpack_masks(data: bytes, k: int, side: int) -> np.ndarray:
    """Packed bytes -> (k, side, side) bool."""
    if k == 0:
        return np.zeros((0, side, side), bool)
    bits = np.unpackbits(np.frombuffer(data, np.uint8), count=k * side * side)
    return bits.reshape(k, side, side).astype(bool)


def schema_metadata(pre: Preprocessing) -> dict[bytes, bytes]:
    s = pre.img_size
    return {b"edgesam.embedding_shape": json.dumps([256, s // 16, s // 16]).encode(),
            b"edgesam.embedding_dtype": b"float16", b"edgesam.mask_side": str(s // 4).encode(),
            b"edgesam.cache_format_version": str(CACHE_FORMAT_VERSION).encode()}
