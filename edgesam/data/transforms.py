"""SAM preprocessing: resize the longest side, normalise, pad bottom/right.

uint8 images are resized exactly as segment-anything does it (its ``ResizeLongestSide.apply_image``: PIL
bilinear on uint8 through torchvision), so masks match the reference SamPredictor end to end.

Coordinates everywhere are x-y pixels. The "input frame" is the resized, unpadded image placed at the
top-left of the S x S padded square; padding needs no coordinate offset.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

PIXEL_MEAN = (123.675, 116.28, 103.53)
PIXEL_STD = (58.395, 57.12, 57.375)


def resized_shape(height: int, width: int, target: int) -> tuple[int, int]:
    """(H, W) after scaling the longest side to ``target`` (SAM rounds with +0.5)."""
    scale = target / max(height, width)
    return int(height * scale + 0.5), int(width * scale + 0.5)


@dataclass(frozen=True)
class ResizeLongestSide:
    """Maps images, points and boxes from the original frame to the input frame and back."""

    target: int

    def apply_image(self, image: np.ndarray | torch.Tensor) -> torch.Tensor:
        """uint8 HxWx3 numpy -> float (1,3,h,w) with integer values 0..255, resized by segment-anything's
        ``ResizeLongestSide.apply_image`` (PIL bilinear on uint8, SAM's and EdgeSAM's preprocessing).
        A (B,3,H,W) tensor is resized as SAM's ``apply_image_torch`` does (torch bilinear + antialias)."""
        if isinstance(image, np.ndarray):
            from segment_anything.utils.transforms import ResizeLongestSide as SamResize

            resized = SamResize(self.target).apply_image(np.ascontiguousarray(image))  # (h,w,3) uint8
            return torch.from_numpy(resized).permute(2, 0, 1)[None].float()
        t = torch.as_tensor(image)
        h, w = resized_shape(t.shape[-2], t.shape[-1], self.target)
        return F.interpolate(t.float(), (h, w), mode="bilinear", align_corners=False, antialias=True)

    def apply_coords(self, coords: np.ndarray, original_hw: tuple[int, int]) -> np.ndarray:
        """(..., 2) x-y in the original frame -> input frame (float32)."""
        h, w = original_hw
        nh, nw = resized_shape(h, w, self.target)
        out = np.asarray(coords, dtype=np.float32).copy()
        out[..., 0] *= nw / w
        out[..., 1] *= nh / h
        return out

    def apply_boxes(self, boxes: np.ndarray, original_hw: tuple[int, int]) -> np.ndarray:
        """(..., 4) XYXY in the original frame -> input frame."""
        b = np.asarray(boxes, dtype=np.float32)
        return self.apply_coords(b.reshape(*b.shape[:-1], 2, 2), original_hw).reshape(b.shape)

    def invert_coords(self, coords: np.ndarray, original_hw: tuple[int, int]) -> np.ndarray:
        """(..., 2) input frame -> original frame."""
        h, w = original_hw
        nh, nw = resized_shape(h, w, self.target)
        out = np.asarray(coords, dtype=np.float32).copy()
        out[..., 0] *= w / nw
        out[..., 1] *= h / nh
        return out


def normalize_pad(image: torch.Tensor, size: int) -> torch.Tensor:
    """Resized float image (B,3,h,w) in 0..255 -> normalised and zero-padded (B,3,size,size)."""
    mean = torch.tensor(PIXEL_MEAN, device=image.device).view(1, 3, 1, 1)
    std = torch.tensor(PIXEL_STD, device=image.device).view(1, 3, 1, 1)
    x = (image - mean) / std
    return F.pad(x, (0, size - x.shape[-1], 0, size - x.shape[-2]))


def preprocess(image: np.ndarray, size: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """uint8 HxWx3 RGB -> ((1,3,size,size) float32 model input, (h, w) resized extent)."""
    resized = ResizeLongestSide(size).apply_image(image)
    return normalize_pad(resized, size), (int(resized.shape[-2]), int(resized.shape[-1]))


def postprocess_masks(low_res: torch.Tensor, input_hw: tuple[int, int], original_hw: tuple[int, int],
                      size: int) -> torch.Tensor:
    """Low-res logits (N,C,S/4,S/4) -> logits at the original size (N,C,H,W): upsample to S, crop, resize."""
    x = F.interpolate(low_res, (size, size), mode="bilinear", align_corners=False)
    x = x[..., : input_hw[0], : input_hw[1]]
    return F.interpolate(x, original_hw, mode="bilinear", align_corners=False)


def valid_mask(input_hw: tuple[int, int], size: int, out: int) -> torch.Tensor:
    """(out, out) float mask of the non-padded region, bilinearly downsampled from size x size."""
    m = torch.zeros(1, 1, size, size)
    m[..., : input_hw[0], : input_hw[1]] = 1.0
    return F.interpolate(m, (out, out), mode="bilinear", align_corners=False)[0, 0]


def lowres_masks(masks: torch.Tensor, input_hw: tuple[int, int], size: int) -> torch.Tensor:
    """GT masks at the original size (K,H,W) bool/0-1 -> the decoder's low-res frame (K,size/4,size/4) bool.

    Nearest resize to the input extent, zero-pad to size x size, bilinear downsample, > 0 (as the eval
    protocol compares low-res predictions with GT)."""
    side = size // 4
    if len(masks) == 0:
        return torch.zeros(0, side, side, dtype=torch.bool)
    h, w = input_hw
    m = F.interpolate(masks.float()[:, None], (h, w), mode="nearest")
    m = F.pad(m, (0, size - w, 0, size - h))
    return F.interpolate(m, (side, side), mode="bilinear", align_corners=False)[:, 0] > 0
