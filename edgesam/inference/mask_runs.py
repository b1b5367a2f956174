"""Low-res mask logits -> full-resolution COCO RLE without ever building the full-resolution mask.

The everything pipeline keeps only the final masks as low-res logits (K, hl, wl) (the valid region of the
decoder's S/4 output). Their original-size masks are ``bilinear(logits) > threshold`` (PyTorch's
``align_corners=False`` rule, straight from the low-res valid region to the original size). COCO RLE is in
column-major order, so what is needed per output column is the list of rows where the mask switches on or
off. :func:`lowres_to_rle` gets those directly:

1. Columns: each output column x is a linear mix of two low-res columns; gathering them gives the column
   profiles ``P`` (nx, m) at the low-res rows (knots) that matter (the mask's low-res rows +- 1). Work:
   nx x m, not nx x ny.
2. Rows: along y the bilinear value is piecewise linear between knots (constant beyond the first/last
   one), so it crosses the threshold at ``p = k + a / (a - b)`` between knots k and k+1 (values a, b above
   and below it), and the first output row sampling at or past p is ``ceil((p + 0.5) / s - 0.5)`` (s = low-res
   rows per output row). Those rows are the RLE transitions.

Cost per mask: O(nx x m) arithmetic plus O(transitions) (about 2 per column for a compact mask), instead
of O(nx x ny) for a resize + threshold + run scan; memory is one (nx, m) float32 array. The result equals
the dense resize + threshold except where a sample lands within float rounding of a crossing (a pixel
here and there on the boundary; ``tests/test_mask_runs.py`` bounds it).
"""
from __future__ import annotations

import math

import numpy as np
import torch
from pycocotools import mask as mask_utils

__all__ = ["valid_lowres_hw", "Upsampler", "lowres_boxes", "runs_rle", "box_rle", "masks_to_rles"]


def valid_lowres_hw(input_hw: tuple[int, int]) -> tuple[int, int]:
    """Low-res (S/4 frame) extent of the resized image: ceil(h/4), ceil(w/4)."""
    return math.ceil(input_hw[0] / 4), math.ceil(input_hw[1] / 4)


def _axis(n_out: int, n_in: int, scale: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Bilinear taps (align_corners False, PyTorch's rule) for ``n_out`` samples of an ``n_in`` axis where one
    output pixel is ``scale`` input pixels: -> (i0, i1, weight of i1), each (n_out,)."""
    src = np.maximum((np.arange(n_out) + 0.5) * scale - 0.5, 0.0)
    i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    i1 = np.minimum(i0 + 1, n_in - 1)
    return i0, i1, np.clip(src - i0, 0.0, 1.0).astype(np.float32)


class Upsampler:
    """The bilinear map from low-res valid-region logits (hl, wl) to a crop of ``out_hw`` original pixels.

    ``input_hw``: the resized extent inside the S frame (low-res extent ceil(h/4) x ceil(w/4)); ``out_hw``: the
    original (crop) size. It runs on the host (numpy). Output pixel y samples low-res row (y + 0.5) * h / (4 H) - 0.5 (clamped at 0)."""

    def __init__(self, input_hw: tuple[int, int], out_hw: tuple[int, int]) -> None:
        self.hl, self.wl = valid_lowres_hw(input_hw)
        self.out_hw = (int(out_hw[0]), int(out_hw[1]))
        (h, w), (ih, iw) = self.out_hw, input_hw
        self.scale = (4 * h / ih, 4 * w / iw)  # output pixels per low-res pixel (rows, cols)
        self.src_per_row = ih / (4 * h)  # low-res rows per output row
        self.rows = _axis(h, self.hl, self.src_per_row)
        self.cols = _axis(w, self.wl, iw / (4 * w))

    def span(self, ax: int, a: int, b: int) -> tuple[int, int]:
        """Output index range [lo, hi) that can see low-res indices a..b (inclusive) on axis 0 (rows) / 1 (cols)."""
        i0, i1, _ = self.rows if ax == 0 else self.cols
        lo = int(np.searchsorted(i1, a, side="left"))
        hi = int(np.searchsorted(i0, b, side="right"))
        return lo, max(lo, hi)

    def region(self, logits: torch.Tensor | np.ndarray, y: tuple[int, int], x: tuple[int, int]) -> np.ndarray:
        """logits (hl, wl) -> dense bilinear values (ny, nx) float32 on output rows y[0]:y[1], cols x[0]:x[1]
        (the reference that :meth:`column_profiles` + :func:`lowres_to_rle` avoid materialising)."""
        lt = np.asarray(logits, np.float32)
        (r0, r1, rw), (c0, c1, cw) = self.rows, self.cols
        sy, sx = slice(*y), slice(*x)
        wy = rw[sy, None]
        rows = lt[r0[sy]] * (1 - wy) + lt[r1[sy]] * wy
        return rows[:, c0[sx]] * (1 - cw[sx]) + rows[:, c1[sx]] * cw[sx]

    def column_profiles(self, lt_t: np.ndarray, x: tuple[int, int], knots: tuple[int, int]) -> np.ndarray:
        """Transposed logits ``lt_t`` (wl, hl) -> (nx, m) values of output columns x[0]:x[1] at low-res rows
        knots[0]..knots[1] (inclusive): one row gather per column tap, contiguous copies."""
        c0, c1, cw = self.cols
        sx, sk = slice(*x), slice(knots[0], knots[1] + 1)
        w = cw[sx, None]
        return lt_t[c0[sx], sk] * (1 - w) + lt_t[c1[sx], sk] * w


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


def _cancel(pos: np.ndarray) -> np.ndarray:
    """Sorted transitions -> the same with equal positions cancelled in pairs (an odd count leaves one)."""
    if pos.size > 1 and (pos[1:] == pos[:-1]).any():
        u, cnt = np.unique(pos, return_counts=True)
        return u[cnt % 2 == 1]
    return pos


def runs_rle(pos: np.ndarray, hw: tuple[int, int]) -> dict:
    """Sorted transition positions (column-major pixel indices where the mask switches, first switch = on) ->
    compressed COCO RLE ``{"size": [H, W], "counts": str}``. Equal positions cancel in pairs (a run ending at
    the bottom of a column and one starting at the top of the next, or an empty run)."""
    h, w = hw
    pos = _cancel(np.asarray(pos, np.int64))
    runs = np.diff(np.concatenate([[0], pos, [h * w]]))
    if runs.size > 1 and runs[-1] == 0:
        runs = runs[:-1]
    rle = mask_utils.frPyObjects({"size": [h, w], "counts": runs.astype(np.uint32).tolist()}, h, w)
    counts = rle["counts"]
    return {"size": [int(h), int(w)], "counts": counts.decode("ascii") if isinstance(counts, bytes) else counts}


def box_rle(col: np.ndarray, x0: int, y0: int, hw: tuple[int, int]) -> dict:
    """A mask given as its box ``col`` (nx, ny) bool, column-major (``col[i, j]`` = pixel (x0+i, y0+j)), in an
    image of ``hw`` -> compressed COCO RLE of the full image (pixels outside the box are 0)."""
    nx, ny = col.shape
    p = np.zeros((nx, ny + 2), bool)
    p[:, 1:-1] = col
    c, r = np.nonzero(p[:, 1:] != p[:, :-1])
    return runs_rle((x0 + c).astype(np.int64) * hw[0] + (y0 + r), hw)


def _empty(image_hw: tuple[int, int]) -> tuple[dict, int, list[float]]:
    return runs_rle(np.zeros(0, np.int64), image_hw), 0, [0.0, 0.0, 0.0, 0.0]


def lowres_to_rle(lt_t: np.ndarray, box: np.ndarray, up: Upsampler, offset: tuple[int, int],
                  image_hw: tuple[int, int], mask_threshold: float = 0.0) -> tuple[dict, int, list[float]]:
    """One mask: transposed low-res logits ``lt_t`` (wl, hl), its low-res box [r0, r1, c0, c1] (inclusive, from
    :func:`lowres_boxes`) -> (RLE of the image of ``image_hw``, area, bbox XYWH) of ``bilinear(logits) >
    mask_threshold`` placed at ``offset`` (x0, y0) (see the module doc)."""
    r0, r1, c0, c1 = (int(v) for v in box)
    if r1 < 0:
        return _empty(image_hw)
    x = up.span(1, c0, c1)
    if x[1] <= x[0]:
        return _empty(image_hw)
    hl, ny = up.hl, up.out_hw[0]
    k0, k1 = max(r0 - 1, 0), min(r1 + 1, hl - 1)  # knots beyond these are below the threshold
    d = up.column_profiles(lt_t, x, (k0, k1))
    if mask_threshold:
        d -= np.float32(mask_threshold)
    on = d > 0
    ci, k = np.nonzero(on[:, 1:] != on[:, :-1])
    a, b = d[ci, k].astype(np.float64), d[ci, k + 1].astype(np.float64)
    p = k0 + k + a / (a - b)  # crossing, in low-res rows
    ys = np.clip(np.ceil((p + 0.5) / up.src_per_row - 0.5), 0, ny).astype(np.int64)
    # the value is constant beyond the end knots: on at the top / bottom when the end knot is on (and the end
    # knot is the frame's, or it is below the threshold)
    top, bot = np.flatnonzero(on[:, 0]), np.flatnonzero(on[:, -1])
    cols = np.concatenate([top, ci, bot])
    rows = np.concatenate([np.zeros(top.size, np.int64), ys, np.full(bot.size, ny, np.int64)])
    h_img = image_hw[0]
    pos = _cancel(np.sort((offset[0] + x[0] + cols).astype(np.int64) * h_img + offset[1] + rows))
    if pos.size == 0:
        return _empty(image_hw)
    start, end = pos[0::2], pos[1::2]
    area = int((end - start).sum())
    xs, xe = start // h_img, (end - 1) // h_img
    if (xs != xe).any():  # a run through a column boundary (full-height crops): rows 0..H-1
        y0, y1 = 0, h_img - 1
    else:
        y0, y1 = int((start % h_img).min()), int(((end - 1) % h_img).max())
    bx0, bx1 = int(xs.min()), int(xe.max())
    return runs_rle(pos, image_hw), area, [float(bx0), float(y0), float(bx1 - bx0 + 1), float(y1 - y0 + 1)]


def masks_to_rles(logits: torch.Tensor | np.ndarray, up: Upsampler, offset: tuple[int, int],
                  image_hw: tuple[int, int], mask_threshold: float = 0.0) -> list[tuple[dict, int, list[float]]]:
    """Low-res logits (K, hl, wl) -> per mask (RLE of the image of ``image_hw``, area, bbox XYWH), in the image
    frame: ``offset`` (x0, y0) places the upsampler's output (a crop) in the image. Empty masks give area 0."""
    lt = torch.as_tensor(logits).detach().float().cpu()
    boxes = lowres_boxes(lt > mask_threshold)
    lt_t = lt.transpose(1, 2).contiguous().numpy()  # (K, wl, hl): a column tap is a contiguous row
    return [lowres_to_rle(lt_t[k], boxes[k], up, offset, image_hw, mask_threshold) for k in range(len(lt_t))]
