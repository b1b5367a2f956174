"""Segment-everything post-processing that stays at low resolution until the masks are final.

The decoder's logits are (N, 4, S/4, S/4). Everything that decides WHICH masks survive runs there:

1. :func:`filter_lowres` (on the device the logits are on, CPU or CUDA): pick the tokens, crop the valid
   region ceil(h/4) x ceil(w/4) of the resized image (the rest is padding), stability score (IoU of the
   logits thresholded at +-offset; 0 for an empty mask), IoU-head filter only when ``pred_iou_thresh`` > 0
   (SAM's convention), drop empty masks.
2. :class:`PackedMasks`: the survivors' binary masks (``logits > mask_threshold``) one bit per low-res pixel
   on the host, with their low-res boxes and areas: 8 KB per candidate at S = 1024, so every candidate of an
   image can wait for one NMS however the prompts were chunked.
3. :func:`lowres_nms`: one greedy mask NMS over all of them (IoU of the binary low-res masks), measuring
   only the pairs whose boxes and areas allow an IoU above the threshold.
4. :func:`masks_to_rles` (:mod:`edgesam.inference.mask_runs`): only the kept masks go to the original size,
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

__all__ = ["LowRes", "PackedMasks", "filter_lowres", "lowres_nms", "lowres_boxes_in_crop",
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


_BIT_WEIGHTS = (128, 64, 32, 16, 8, 4, 2, 1)  # np.packbits' order: the first pixel of a byte is its high bit
_POPCOUNT = np.array([bin(v).count("1") for v in range(256)], np.uint8)


def _pack_rows(masks: torch.Tensor) -> np.ndarray:
    """Binary masks (K, h, w) bool, any device -> (K, h, ceil(w/8)) uint8 on the host, rows packed as
    ``np.packbits(axis=-1)`` packs them. Off the CPU the packing runs on the device, so 1/8 of the bytes travel."""
    if masks.device.type == "cpu":
        return np.packbits(masks.numpy(), axis=-1)
    k, h, w = masks.shape
    wb = -(-w // 8)
    m = torch.nn.functional.pad(masks.to(torch.uint8), (0, 8 * wb - w)).view(k, h, wb, 8)
    weights = torch.tensor(_BIT_WEIGHTS, dtype=torch.uint8, device=masks.device)
    return (m * weights).sum(-1, dtype=torch.uint8).cpu().numpy()


def _popcount(a: np.ndarray) -> np.ndarray:
    """Set bits of each uint8 element (np.bitwise_count needs numpy >= 2; the table serves older ones)."""
    count = getattr(np, "bitwise_count", None)
    return count(a) if count is not None else _POPCOUNT[a]


def _first_last(on: np.ndarray) -> np.ndarray:
    """(K, n) bool -> (K, 2) int64 [first, last] index set per row, [0, -1] for a row with none."""
    n = on.shape[1]
    some = on.any(1)
    first = np.where(some, on.argmax(1), 0)
    last = np.where(some, n - 1 - on[:, ::-1].argmax(1), -1)
    return np.stack([first, last], 1).astype(np.int64)


@dataclass
class PackedMasks:
    """Binary low-res masks in compact form on the host: bits (K, h, ceil(w/8)) uint8 (rows packed as
    ``np.packbits(axis=-1)``), boxes (K, 4) int64 [row0, row1, col0, col1] inclusive ([0,-1,0,-1] when empty),
    area (K,) int64 low-res pixels."""

    bits: np.ndarray
    boxes: np.ndarray
    area: np.ndarray

    def __len__(self) -> int:
        return int(self.bits.shape[0])

    @staticmethod
    def from_masks(masks: torch.Tensor) -> "PackedMasks":
        """Binary masks (K, h, w) bool on any device. Boxes and areas come from the packed bits (1/8 of the
        bytes to read, and on the host whatever the device)."""
        bits = _pack_rows(masks)
        area = _popcount(bits).sum((1, 2), dtype=np.int64)
        rows = bits.any(axis=2)  # (K, h)
        cols = np.unpackbits(np.bitwise_or.reduce(bits, axis=1), axis=-1).astype(bool)  # (K, 8 ceil(w/8)), pad 0
        return PackedMasks(bits, np.concatenate([_first_last(rows), _first_last(cols)], 1), area)

    @staticmethod
    def cat(parts: list["PackedMasks"]) -> "PackedMasks":
        return PackedMasks(*(np.concatenate([getattr(p, f) for p in parts]) for f in ("bits", "boxes", "area")))

    def take(self, idx: np.ndarray) -> "PackedMasks":
        return PackedMasks(self.bits[idx], self.boxes[idx], self.area[idx])

    def intersections(self, i: int, others: np.ndarray) -> np.ndarray:
        """Pixels shared by mask ``i`` and each of ``others`` (M,) -> (M,) int64.

        Only the bytes inside mask i's box (widened to whole bytes) can hold shared pixels, so only those are
        ANDed and counted."""
        r0, r1, c0, c1 = (int(v) for v in self.boxes[i])
        if r1 < r0 or len(others) == 0:
            return np.zeros(len(others), np.int64)
        rows, cols = slice(r0, r1 + 1), slice(c0 // 8, c1 // 8 + 1)
        both = self.bits[others, rows, cols] & self.bits[i, rows, cols]
        return _popcount(both).reshape(len(others), -1).sum(1, dtype=np.int64)


def _iou_upper_bound(masks: PackedMasks, i: int, others: np.ndarray) -> np.ndarray:
    """An upper bound (M,) float64 on the IoU of mask ``i`` with each of ``others``: the intersection is at most
    m = min(area_i, area_j, area of the overlap of their boxes), and IoU = inter / (a_i + a_j - inter) grows
    with inter, so IoU <= m / (a_i + a_j - m). Disjoint boxes give 0; areas far apart give at most their ratio."""
    b, a = masks.boxes, masks.area
    bo, bi = b[others], b[i]
    dh = np.minimum(bo[:, 1], bi[1]) - np.maximum(bo[:, 0], bi[0]) + 1
    dw = np.minimum(bo[:, 3], bi[3]) - np.maximum(bo[:, 2], bi[2]) + 1
    m = np.minimum(np.minimum(a[others], a[i]), np.clip(dh, 0, None) * np.clip(dw, 0, None))
    return m / np.maximum(a[others] + a[i] - m, 1)


def lowres_nms(masks: PackedMasks, scores: np.ndarray, iou_thresh: float,
               max_keep: int | None = None) -> np.ndarray:
    """Greedy NMS on low-res mask IoU -> kept indices (int64, in visiting order).

    Visits the masks by descending ``scores`` (K,) (ties: lower index first) and keeps one unless its IoU with
    an already kept mask is > ``iou_thresh``; stops after ``max_keep`` kept. The IoU is that of a dense IoU
    matrix of the binary masks, inter / max(union, 1) in float32, so the kept set is the same; only pairs whose
    upper bound (:func:`_iou_upper_bound`) can pass the threshold are measured (exact pruning: the margin
    covers the float32 rounding of the IoU).
    """
    k = len(masks)
    if k == 0:
        return np.zeros(0, np.int64)
    order = np.argsort(-np.asarray(scores, np.float64), kind="stable")
    thresh = np.float32(iou_thresh)
    prune_below = float(iou_thresh) - 1e-6
    alive = np.ones(k, bool)  # neither visited nor suppressed
    keep: list[int] = []
    for i in order:
        if not alive[i]:
            continue
        keep.append(int(i))
        alive[i] = False
        if max_keep is not None and len(keep) >= max_keep:
            break
        others = np.flatnonzero(alive)
        others = others[_iou_upper_bound(masks, i, others) > prune_below]
        if others.size == 0:
            continue
        inter = masks.intersections(i, others)
        union = np.maximum(masks.area[others] + masks.area[i] - inter, 1)
        alive[others[inter.astype(np.float32) / union.astype(np.float32) > thresh]] = False
    return np.asarray(keep, np.int64)


def lowres_boxes_in_crop(boxes: np.ndarray, up: Upsampler) -> np.ndarray:
    """Low-res boxes (K, 4) [row0, row1, col0, col1] (:func:`lowres_boxes`) -> approximate XYXY boxes (K, 4) in
    the crop frame, original pixels (for the crop-edge filter)."""
    b = np.asarray(boxes, np.float64).reshape(-1, 4)
    sy, sx = up.scale
    return np.stack([b[:, 2] * sx, b[:, 0] * sy, (b[:, 3] + 1) * sx, (b[:, 1] + 1) * sy], 1)
