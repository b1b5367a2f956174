"""Synthetic training / held-out scenes in the teacher's padded S x S frame.

A scene is :func:`edgesam.data.synthetic.scene_for_index` (the same generator as the SA-1B-format sample
sets), resized longest-side to S, JPEG round-tripped at the cache's quality (what the teacher sees when it
caches), normalised and padded bottom/right. GT masks are the generator's exact masks.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from ..data.rle import mask_to_bbox
from ..data.synthetic import scene_for_index
from ..data.transforms import ResizeLongestSide, normalize_pad


@dataclass
class Scene:
    """One scene. image (3,S,S) float32 normalised padded; input_hw resized extent; masks (K,S,S) bool in the
    padded frame; orig_masks (K,H,W) bool at the original size; boxes (K,4) XYXY input frame (from the masks)."""

    index: int
    image: torch.Tensor
    input_hw: tuple[int, int]
    orig_hw: tuple[int, int]
    masks: torch.Tensor
    orig_masks: np.ndarray
    boxes: np.ndarray


def jpeg_roundtrip(image: np.ndarray, quality: int = 95) -> np.ndarray:
    """uint8 (H,W,3) RGB -> the same after JPEG encoding at ``quality`` (as the teacher cache stores it)."""
    ok, buf = cv2.imencode(".jpg", image[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    return np.ascontiguousarray(cv2.imdecode(buf, cv2.IMREAD_COLOR)[..., ::-1])


def make_scene(seed: int, index: int, img_size: int, size_range: tuple[int, int] = (192, 320),
               jpeg_quality: int | None = 95) -> Scene:
    """Scene ``index`` of the dataset with generator seed ``seed``, at ``img_size``."""
    image, masks = scene_for_index(seed, index, size_range)
    orig_hw = image.shape[:2]
    tf = ResizeLongestSide(img_size)
    resized = tf.apply_image(image).round().clamp(0, 255).to(torch.uint8)[0]  # (3,h,w)
    if jpeg_quality is not None:
        resized = torch.from_numpy(jpeg_roundtrip(resized.permute(1, 2, 0).numpy(), jpeg_quality)).permute(2, 0, 1)
    h, w = int(resized.shape[-2]), int(resized.shape[-1])
    x = normalize_pad(resized[None].float(), img_size)[0]
    orig = np.stack(masks) if masks else np.zeros((0, *orig_hw), bool)
    m = torch.from_numpy(orig).float()[:, None]
    m = F.interpolate(m, (h, w), mode="nearest") if len(m) else torch.zeros(0, 1, h, w)
    padded = F.pad(m, (0, img_size - w, 0, img_size - h))[:, 0] > 0.5
    keep = padded.flatten(1).any(1).numpy()  # an instance can vanish when resized down
    boxes = tf.apply_boxes(np.array([mask_to_bbox(mm) for mm in orig], np.float32).reshape(-1, 4), orig_hw)
    boxes[:, 2:] += boxes[:, :2]  # XYWH -> XYXY
    return Scene(index, x, (h, w), tuple(orig_hw), padded[keep], orig[keep], boxes[keep])

