"""Segment-everything post-processing that stays at low resolution until the masks are final.

The decoder's logits are (N, 4, S/4, S/4). Everything that decides WHICH masks survive runs there, on the
device the logits are on (CPU or CUDA):

1. :func:`filter_lowres`: pick the tokens, crop the valid region ceil(h/4) x ceil(w/4) of the resized image
   (the rest is padding), stability score (IoU of the logits thresholded at +-offset; 0 for an empty mask),
   IoU-head filter only when ``pred_iou_thresh`` > 0 (SAM's convention), drop empty masks.
2. :func:`lowres_nms`: greedy mask NMS with IoU from one matmul of the binary low-res masks.
3. :func:`masks_to_rles`: only the kept masks go to the original size, ONE bilinear resize straight from
   the low-res crop (the mapping of resize-to-S, crop, resize-to-original composed into one affine map),
   and only over each mask's bounding box (a bilinear sample is above the threshold only next to a low-res
   pixel above it). The thresholded box comes to the host bit-packed when on CUDA, and is run-length
   encoded straight from the box into a full-frame COCO RLE (no full-size copy, no uncrop); area and bbox
   fall out of the same pass.

Memory is bounded by one mask's bounding box at the original size at a time (float32), not N full masks.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from pycocotools import mask as mask_utils

from ..models.prompt_decoder import select_outputs, stability_score


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


def valid_lowres_hw(input_hw: tuple[int, int]) -> tuple[int, int]:
    """Low-res (S/4 frame) extent of the resized image: ceil(h/4), ceil(w/4)."""
    return math.ceil(input_hw[0] / 4), math.ceil(input_hw[1] / 4)


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


def lowres_boxes(masks: torch.Tensor) -> np.ndarray:
    """Binary masks (K, h, w) -> (K, 4) int64 [row0, row1, col0, col1] inclusive, on the host ([0,-1,0,-1] empty)."""
    k, h, w = masks.shape
    if k == 0:
        return np.zeros((0, 4), np.int64)
    rows, cols = masks.any(2), masks.any(1)
    ar_h = torch.arange(h, device=masks.device)
    ar_w = torch.arange(w, device=masks.device)
    big = max(h, w)
    r0 = torch.where(rows, ar_h, big).amin(1)
    r1 = torch.where(rows, ar_h, -1).amax(1)
    c0 = torch.where(cols, ar_w, big).amin(1)
    c1 = torch.where(cols, ar_w, -1).amax(1)
    return torch.stack([r0, r1, c0, c1], 1).cpu().numpy().astype(np.int64)


def _axis(n_out: int, n_in: int, scale: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Bilinear taps (align_corners False, PyTorch's rule) for ``n_out`` samples of an ``n_in`` axis where one
    input pixel is ``1/scale`` output pixels: -> (i0, i1, weight of i1), each (n_out,)."""
    src = np.maximum((np.arange(n_out) + 0.5) * scale - 0.5, 0.0)
    i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    i1 = np.minimum(i0 + 1, n_in - 1)
    return i0, i1, np.clip(src - i0, 0.0, 1.0).astype(np.float32)


class Upsampler:
    """Low-res valid-region logits (hl, wl) -> thresholded masks at ``out_hw`` in one bilinear step, per bbox.

    ``input_hw``: the resized extent inside the S frame (low-res extent ceil(h/4) x ceil(w/4)); ``out_hw``: the
    original (crop) size. Output pixel y samples low-res row (y + 0.5) * h / (4 H) - 0.5 (clamped at 0)."""

    def __init__(self, input_hw: tuple[int, int], out_hw: tuple[int, int], device: torch.device | str = "cpu") -> None:
        self.hl, self.wl = valid_lowres_hw(input_hw)
        self.out_hw = (int(out_hw[0]), int(out_hw[1]))
        (h, w), (ih, iw) = self.out_hw, input_hw
        self.scale = (4 * h / ih, 4 * w / iw)  # output pixels per low-res pixel (rows, cols)
        self.rows = _axis(h, self.hl, ih / (4 * h))
        self.cols = _axis(w, self.wl, iw / (4 * w))
        dev = torch.device(device)
        self._t = [tuple(torch.from_numpy(a).to(dev) for a in ax) for ax in (self.rows, self.cols)]

    def span(self, ax: int, a: int, b: int) -> tuple[int, int]:
        """Output index range [lo, hi) that can see low-res indices a..b (inclusive) on axis 0 (rows) / 1 (cols)."""
        i0, i1, _ = self.rows if ax == 0 else self.cols
        lo = int(np.searchsorted(i1, a, side="left"))
        hi = int(np.searchsorted(i0, b, side="right"))
        return lo, max(lo, hi)

    def region(self, logits: torch.Tensor, y: tuple[int, int], x: tuple[int, int]) -> torch.Tensor:
        """logits (hl, wl) -> bilinear values on output rows y[0]:y[1], cols x[0]:x[1] (float, same device)."""
        (r0, r1, rw), (c0, c1, cw) = self._t
        sy, sx = slice(*y), slice(*x)
        wy = rw[sy, None]
        rows = logits[r0[sy]] * (1 - wy) + logits[r1[sy]] * wy  # (ny, wl)
        wx = cw[sx]
        return rows[:, c0[sx]] * (1 - wx) + rows[:, c1[sx]] * wx  # (ny, nx)


def _colmajor_to_host(m: torch.Tensor) -> np.ndarray:
    """Bool (ny, nx) on any device -> numpy bool (nx, ny) (column-major order of the image); bit-packed on CUDA."""
    t = m.t().contiguous()
    if t.device.type == "cpu":
        return t.numpy()
    n = t.numel()
    flat = torch.nn.functional.pad(t.flatten().to(torch.uint8), (0, (-n) % 8)).reshape(-1, 8)
    weights = torch.tensor([128, 64, 32, 16, 8, 4, 2, 1], dtype=torch.uint8, device=t.device)
    packed = (flat * weights).sum(1, dtype=torch.uint8).cpu().numpy()
    return np.unpackbits(packed, count=n).astype(bool).reshape(t.shape)


def box_rle(col: np.ndarray, x0: int, y0: int, hw: tuple[int, int]) -> dict:
    """A mask given as its box ``col`` (nx, ny) bool, column-major (``col[i, j]`` = pixel (x0+i, y0+j)), in an
    image of ``hw`` -> compressed COCO RLE of the full image ``{"size": [H, W], "counts": str}``.

    Runs come from the transitions inside the box (each box column padded with a 0 above and below); pixels
    outside the box are 0. Transitions that coincide (a run ending at the bottom of one column and one
    starting at the top of the next) cancel."""
    h, w = hw
    nx, ny = col.shape
    p = np.zeros((nx, ny + 2), bool)
    p[:, 1:-1] = col
    c, r = np.nonzero(p[:, 1:] != p[:, :-1])
    pos = (x0 + c).astype(np.int64) * h + (y0 + r)
    if pos.size:
        u, cnt = np.unique(pos, return_counts=True)
        pos = u[cnt % 2 == 1]
    runs = np.diff(np.concatenate([[0], pos, [h * w]]))
    if runs.size > 1 and runs[-1] == 0:
        runs = runs[:-1]
    rle = mask_utils.frPyObjects({"size": [h, w], "counts": runs.astype(np.uint32).tolist()}, h, w)
    counts = rle["counts"]
    return {"size": [int(h), int(w)], "counts": counts.decode("ascii") if isinstance(counts, bytes) else counts}


def masks_to_rles(logits: torch.Tensor, up: Upsampler, offset: tuple[int, int], image_hw: tuple[int, int],
                  mask_threshold: float = 0.0) -> list[tuple[dict, int, list[float]]]:
    """Low-res logits (K, hl, wl) -> per mask (RLE of the image of ``image_hw``, area, bbox XYWH), in the image
    frame: ``offset`` (x0, y0) places the upsampler's output (a crop) in the image. Empty masks give area 0."""
    boxes = lowres_boxes(logits > mask_threshold)
    out = []
    for k in range(logits.shape[0]):
        r0, r1, c0, c1 = (int(v) for v in boxes[k])
        y = up.span(0, r0, r1) if r1 >= 0 else (0, 0)
        x = up.span(1, c0, c1) if c1 >= 0 else (0, 0)
        if y[1] <= y[0] or x[1] <= x[0]:
            out.append((box_rle(np.zeros((0, 0), bool), 0, 0, image_hw), 0, [0.0, 0.0, 0.0, 0.0]))
            continue
        col = _colmajor_to_host(up.region(logits[k], y, x) > mask_threshold)  # (nx, ny)
        area = int(col.sum())
        if area == 0:
            out.append((box_rle(np.zeros((0, 0), bool), 0, 0, image_hw), 0, [0.0, 0.0, 0.0, 0.0]))
            continue
        xs, ys = np.flatnonzero(col.any(1)), np.flatnonzero(col.any(0))
        bx, by = offset[0] + x[0], offset[1] + y[0]
        bbox = [float(bx + xs[0]), float(by + ys[0]), float(xs[-1] - xs[0] + 1), float(ys[-1] - ys[0] + 1)]
        out.append((box_rle(col, bx, by, image_hw), area, bbox))
    return out


def lowres_boxes_in_crop(cands: LowRes, up: Upsampler, mask_threshold: float = 0.0) -> np.ndarray:
    """Approximate XYXY boxes (K, 4) in the crop frame from the low-res masks (for the crop-edge filter)."""
    b = lowres_boxes(cands.logits > mask_threshold).astype(np.float64)
    sy, sx = up.scale
    return np.stack([b[:, 2] * sx, b[:, 0] * sy, (b[:, 3] + 1) * sx, (b[:, 1] + 1) * sy], 1)
