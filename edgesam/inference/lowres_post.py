"""Segment-everything post-processing that stays at low resolution until the masks are final.

The decoder's logits are (N, 4, S/4, S/4). Everything that decides WHICH masks survive runs there, on the
device the logits are on (CPU or CUDA):

1. :func:`filter_lowres`: pick the tokens, crop the valid region ceil(h/4) x ceil(w/4) of the resized image
   (the rest is padding), stability score (IoU of the logits thresholded at +-offset; 0 for an empty mask),
   IoU-head filter only when ``pred_iou_thresh`` > 0 (SAM's convention), drop empty masks.
2. :func:`lowres_nms`: greedy mask NMS with IoU from one matmul of the binary low-res masks.
3. :func:`masks_to_rles` (:mod:`edgesam.inference.mask_runs`): only the kept masks go to the original size,
   as COCO RLE computed from the low-res logits directly (column profiles + the rows where the bilinear
   value crosses the threshold), with area and bbox; the full-resolution mask is never built.

Memory is bounded by one (output columns x low-res rows) float32 array per mask, not N full masks.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..models.prompt_decoder import select_outputs, stability_score
from .mask_runs import Upsampler, box_rle, lowres_boxes, masks_to_rles, valid_lowres_hw

__all__ = ["LowRes", "filter_lowres", "lowres_iou", "lowres_nms", "lowres_boxes_in_crop",
           # the full-resolution step lives in mask_runs; re-exported for callers of this module
           "Upsampler", "box_rle", "lowres_boxes", "masks_to_rles", "valid_lowres_hw"]


@dataclass
class LowRes:
    """Candidate masks at low resolution: logits (K, hl, wl) float (valid region), prompt/token (K,) long,
    stability/iou (K,) float, all on one device."""

    logits: torch.Tensor
    prompt: torch.Tensor
    token: torch.Tensor
    stability: torch.Tensor
    iou: torch.Tensor

    def __len__(self) -> int:
        return int(self.logits.shape[0])

    def take(self, idx: torch.Tensor | np.ndarray) -> "LowRes":
        i = torch.as_tensor(np.asarray(idx, np.int64) if not isinstance(idx, torch.Tensor) else idx,
                            dtype=torch.long, device=self.logits.device)
        return LowRes(self.logits[i], self.prompt[i], self.token[i], self.stability[i], self.iou[i])

    @staticmethod
    def cat(parts: list["LowRes"]) -> "LowRes":
        return LowRes(*(torch.cat([getattr(p, f) for p in parts]) for f in ("logits", "prompt", "token", "stability", "iou")))


def filter_lowres(logits: torch.Tensor, iou: torch.Tensor, num_outputs: int, input_hw: tuple[int, int],
                  mask_threshold: float = 0.0, stability_offset: float = 1.0, stability_thresh: float = 0.0,
                  pred_iou_thresh: float = 0.0, prompt_offset: int = 0) -> LowRes:
    """logits (N,4,S/4,S/4), iou (N,4) (any device) -> the candidates that pass the filters (see module doc).

    ``prompt_offset`` is added to the prompt indices (for chunked decoder calls)."""
    hl, wl = valid_lowres_hw(input_hw)
    lt, it = select_outputs(logits, iou, num_outputs)
    lt = lt[..., :hl, :wl]
    stab = stability_score(lt, mask_threshold, stability_offset)
    ok = (stab >= stability_thresh) & (lt > mask_threshold).flatten(2).any(-1)
    if pred_iou_thresh > 0:  # 0 means off, as in SAM (an undistilled IoU head may predict negative values)
        ok &= it >= pred_iou_thresh
    rows, cols = torch.nonzero(ok, as_tuple=True)
    return LowRes(lt[rows, cols].float().contiguous(), rows + prompt_offset, cols, stab[rows, cols].float(),
                  it[rows, cols].float())


def lowres_iou(masks: torch.Tensor, block: int = 256) -> torch.Tensor:
    """Binary masks (K, h, w) -> IoU matrix (K, K) float32, in row blocks of ``block`` (bounded memory)."""
    k = masks.shape[0]
    f = masks.flatten(1).float()
    area = f.sum(1)
    out = torch.empty(k, k, device=masks.device)
    for i in range(0, k, block):
        inter = f[i:i + block] @ f.T
        out[i:i + block] = inter / (area[i:i + block, None] + area[None] - inter).clamp(min=1)
    return out


def lowres_nms(cands: LowRes, scores: torch.Tensor, iou_thresh: float, mask_threshold: float = 0.0,
               max_keep: int | None = None) -> np.ndarray:
    """Greedy NMS on low-res mask IoU, best ``scores`` first -> kept indices (int64, visiting order)."""
    if len(cands) == 0:
        return np.zeros(0, np.int64)
    iou = lowres_iou(cands.logits > mask_threshold).cpu().numpy()
    order = np.argsort(-scores.detach().cpu().numpy().astype(np.float64), kind="stable")
    suppressed = np.zeros(len(order), bool)
    keep: list[int] = []
    for i in order:
        if suppressed[i]:
            continue
        keep.append(int(i))
        if max_keep is not None and len(keep) >= max_keep:
            break
        suppressed |= iou[i] > iou_thresh
    return np.asarray(keep, np.int64)


def lowres_boxes_in_crop(cands: LowRes, up: Upsampler, mask_threshold: float = 0.0) -> np.ndarray:
    """Approximate XYXY boxes (K, 4) in the crop frame from the low-res masks (for the crop-edge filter)."""
    b = lowres_boxes(cands.logits > mask_threshold).astype(np.float64)
    sy, sx = up.scale
    return np.stack([b[:, 2] * sx, b[:, 0] * sy, (b[:, 3] + 1) * sx, (b[:, 1] + 1) * sy], 1)
