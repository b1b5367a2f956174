"""Prompt sampling for prompt-in-the-loop distillation and for the mIoU protocol (method doc §5.2, §5.3, §6.2).

Coordinates are x-y pixels in the padded S x S input frame. Prompts travel as labelled points
(labels: -2 ignore, -1 padding, 0 negative, 1 positive, 2/3 box corners), the convention of
:mod:`edgesam.models.prompt_decoder`.
"""
from __future__ import annotations

from typing import Literal

import numpy as np
import torch

from ..data.points import centre_click  # noqa: F401  (re-exported)
from ..models.prompt_decoder import BOX_BR, BOX_TL, IGNORE, NEG, PAD, POS

PromptKind = Literal["box", "point"]
PROMPT_KINDS: tuple[str, ...] = ("box", "point")


def sample_gt_prompts(boxes: np.ndarray | torch.Tensor, points: np.ndarray | torch.Tensor, max_prompts: int = 16,
                      rng: np.random.Generator | None = None) -> np.ndarray:
    """Indices (k,) int64 of the GT prompts to use for one image.

    boxes (K, 4) XYXY and points (K, 2) are the image's annotations in the input frame. With K <= max_prompts
    all are used in order; otherwise ``max_prompts`` indices are drawn uniformly *with replacement*, as the
    reference does, so duplicates are possible.
    """
    if boxes.ndim != 2 or boxes.shape[1] != 4 or points.ndim != 2 or points.shape[1] != 2:
        raise ValueError(f"boxes must be (K,4) and points (K,2), got {tuple(boxes.shape)} and {tuple(points.shape)}")
    k = int(boxes.shape[0])
    if points.shape[0] != k:
        raise ValueError(f"{k} boxes but {points.shape[0]} points")
    if max_prompts < 1:
        raise ValueError(f"max_prompts must be >= 1, got {max_prompts}")
    if k <= max_prompts:
        return np.arange(k, dtype=np.int64)
    rng = rng if rng is not None else np.random.default_rng(0)
    return rng.integers(0, k, size=max_prompts, dtype=np.int64)


def make_prompt_batch(kind: PromptKind, boxes: torch.Tensor | None = None,
                      points: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Initial prompts as labelled points: -> (coords (N, 2, 2) float32, labels (N, 2) float32).

    "box": boxes (N, 4) XYXY -> two corners labelled 2, 3. "point": points (N, 2) -> the point labelled 1
    plus a padding point (0, 0, -1), as SAM's predictor appends when no box is given. Both give P = 2.
    """
    if kind == "box":
        if boxes is None or boxes.ndim != 2 or boxes.shape[1] != 4:
            raise ValueError(f"box prompts need boxes (N,4), got {None if boxes is None else tuple(boxes.shape)}")
        boxes = torch.as_tensor(boxes, dtype=torch.float32)
        coords = boxes.reshape(-1, 2, 2)
        labels = torch.tensor([BOX_TL, BOX_BR], dtype=torch.float32, device=coords.device).expand(len(coords), 2)
        return coords, labels.clone()
    if kind == "point":
        if points is None or points.ndim != 2 or points.shape[1] != 2:
            raise ValueError(f"point prompts need points (N,2), got {None if points is None else tuple(points.shape)}")
        points = torch.as_tensor(points, dtype=torch.float32)
        coords = torch.cat([points[:, None], torch.zeros_like(points)[:, None]], dim=1)
        labels = torch.tensor([POS, PAD], dtype=torch.float32, device=coords.device).expand(len(coords), 2)
        return coords, labels.clone()
    raise ValueError(f"prompt kind must be one of {PROMPT_KINDS}, got {kind!r}")


def pick_tokens(logits: torch.Tensor, teacher_iou: torch.Tensor) -> torch.Tensor:
    """Per prompt, the mask token with the highest teacher IoU prediction: (N, T, H, W), (N, T) -> (N, H, W)."""
    if logits.ndim != 4 or teacher_iou.shape != logits.shape[:2]:
        raise ValueError(f"logits (N,T,H,W) and iou (N,T) expected, got {tuple(logits.shape)}, {tuple(teacher_iou.shape)}")
    best = teacher_iou.argmax(dim=1)
    return logits[torch.arange(logits.shape[0], device=logits.device), best.to(logits.device)]


def sample_error_points(pred: torch.Tensor, ref: torch.Tensor, valid: torch.Tensor,
                        generator: torch.Generator | None = None, min_pixels: int = 10,
                        scale: float = 4.0) -> tuple[torch.Tensor, torch.Tensor]:
    """One click per map from the disagreement between two binary masks.

    pred, ref, valid: (N, H, W) bool (valid broadcastable). FP = pred & ~ref -> label 0 (negative);
    FN = ~pred & ref -> label 1 (positive). One pixel is drawn uniformly from FP | FN (inside ``valid``).
    Maps with fewer than ``min_pixels`` disagreeing pixels get a dummy (0, 0) point with label -2 (ignored).
    Returns coords (N, 1, 2) x-y multiplied by ``scale`` (grid -> input frame; no +0.5, the prompt encoder
    adds it) and labels (N, 1) float32, on ``pred``'s device.
    """
    if pred.ndim != 3 or pred.shape != ref.shape:
        raise ValueError(f"pred and ref must be equal (N,H,W), got {tuple(pred.shape)} and {tuple(ref.shape)}")
    n, h, w = pred.shape
    out_dev = pred.device
    pred, ref, valid = pred.bool(), ref.bool(), valid.bool()
    fp = pred & ~ref & valid
    fn = ~pred & ref & valid
    err = (fp | fn).reshape(n, h * w)
    counts = err.sum(dim=1)
    ok = counts >= max(int(min_pixels), 1)
    # Uniform pick without moving maps off their device: one uniform per map (drawn where the caller's
    # generator lives, so a CPU generator drives CUDA maps deterministically) selects the r-th error pixel
    # in raster order via a cumulative count; r = floor(u * count) is uniform over the count pixels.
    u = torch.rand(n, generator=generator, dtype=torch.float64,
                   device=generator.device if generator is not None else out_dev).to(out_dev)
    rank = torch.minimum((u * counts).floor().long(), (counts - 1).clamp(min=0))
    flat = torch.searchsorted(err.cumsum(dim=1), (rank + 1)[:, None])[:, 0].clamp(max=h * w - 1)
    ys, xs = flat // w, flat % w
    is_fn = fn.reshape(n, h * w).gather(1, flat[:, None])[:, 0]
    labels = torch.where(is_fn, float(POS), float(NEG))
    labels = torch.where(ok, labels, float(IGNORE)).to(torch.float32)
    coords = torch.stack([xs, ys], dim=-1).to(torch.float32) * float(scale)
    coords = torch.where(ok[:, None], coords, torch.zeros_like(coords))
    return coords[:, None], labels[:, None]


def sample_refinement_points(student_logits: torch.Tensor, teacher_logits: torch.Tensor, valid: torch.Tensor,
                             generator: torch.Generator | None = None, min_pixels: int = 10,
                             img_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Training refinement click from student/teacher low-res logits (N, H, W) (both thresholded at 0).

    valid (N, H, W) bool. FP (student 1, teacher 0) -> 0, FN (student 0, teacher 1) -> 1, fewer than
    ``min_pixels`` disagreeing pixels -> -2. Coordinates are scaled to the S frame by ``img_size / W``
    (4 when ``img_size`` is None, SAM's low-res ratio). Returns coords (N, 1, 2), labels (N, 1).
    """
    scale = 4.0 if img_size is None else img_size / student_logits.shape[-1]
    return sample_error_points(student_logits > 0, teacher_logits > 0, valid, generator, min_pixels, scale)


def append_points(coords: torch.Tensor, labels: torch.Tensor, new_coords: torch.Tensor,
                  new_labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, P, 2), (N, P) + (N, Q, 2), (N, Q) -> (N, P+Q, 2), (N, P+Q).

    Token order does not matter to SAM's decoder (attention is permutation-equivariant over prompt
    tokens), so a padding point left before the new clicks is equivalent to SAM's trailing one.
    """
    return torch.cat([coords, new_coords.to(coords)], dim=1), torch.cat([labels, new_labels.to(labels)], dim=1)
