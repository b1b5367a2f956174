"""Distillation losses (method doc §4 and §5.4).

* Step 1: per-pixel MSE between student and teacher embeddings, padding masked out.
* Step 2: BCE + Dice between student mask logits and the *binarised* teacher logits at S/4 x S/4.

Both take a validity map describing the non-padded part of the S x S input (images are padded
bottom/right, see :mod:`edgesam.data.transforms`).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from ..data.transforms import valid_mask


def _check_hw_list(input_hw: Sequence[tuple[int, int]], img_size: int) -> None:
    for h, w in input_hw:
        if not (0 < h <= img_size and 0 < w <= img_size):
            raise ValueError(f"input_hw {(h, w)} must lie within the {img_size}x{img_size} padded frame")


def decoder_valid_mask(input_hw: Sequence[tuple[int, int]], img_size: int, out: int,
                       device: torch.device | str | None = None) -> torch.Tensor:
    """Soft validity (B, 1, out, out) float in [0, 1]: the S x S frame bilinearly downsampled, NOT thresholded.

    This is the weight map of the stage-2 BCE/Dice losses (reference behaviour).
    """
    _check_hw_list(input_hw, img_size)
    if not input_hw:
        return torch.zeros(0, 1, out, out, device=device)
    return torch.stack([valid_mask(tuple(hw), img_size, out) for hw in input_hw])[:, None].to(device)


def embedding_valid_mask(input_hw: Sequence[tuple[int, int]], img_size: int, out: int,
                         device: torch.device | str | None = None) -> torch.Tensor:
    """Hard validity (B, 1, out, out) bool: the S x S frame bilinearly downsampled to out x out, > 0.5."""
    return decoder_valid_mask(input_hw, img_size, out, device) > 0.5


def masked_embedding_mse(student: torch.Tensor, teacher: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Step-1 loss. student, teacher (B, C, h, w); valid (B, 1, h, w) bool or 0/1 float -> scalar.

    Squared error averaged over channels, summed over valid pixels / number of valid pixels, then
    averaged over the batch. Padded pixels are selected out (not multiplied by 0), so even a
    non-finite student value there cannot leak into the loss. An image with no valid pixel adds 0.
    """
    if student.shape != teacher.shape or student.ndim != 4:
        raise ValueError(f"student {tuple(student.shape)} and teacher {tuple(teacher.shape)} must be equal (B,C,h,w)")
    if valid.shape != (student.shape[0], 1, *student.shape[2:]):
        raise ValueError(f"valid must be (B,1,h,w) = {(student.shape[0], 1, *student.shape[2:])}, got {tuple(valid.shape)}")
    keep = valid.bool() if valid.dtype != torch.bool else valid
    diff = torch.where(keep, student - teacher.to(student.dtype), torch.zeros((), dtype=student.dtype, device=student.device))
    per_pixel = diff.pow(2).mean(dim=1, keepdim=True)  # (B,1,h,w)
    per_image = per_pixel.sum(dim=(1, 2, 3)) / keep.sum(dim=(1, 2, 3)).clamp(min=1).to(student.dtype)
    return per_image.mean()


def bce_dice_per_map(student_logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Unweighted BCE and Dice of each (prompt, token) map: (N,C,H,W) logits and bool/0-1 targets,
    valid (N|1,1,H,W) soft validity -> (bce (N,C), dice (N,C)). See :func:`bce_dice_loss` for the terms."""
    target = target.to(student_logits.dtype)
    valid = valid.to(student_logits.dtype)
    bce_map = F.binary_cross_entropy_with_logits(student_logits, target, reduction="none") * valid
    valid_sum = valid.sum(dim=(-1, -2)).clamp(min=1e-6)  # (N|1, 1)
    bce = bce_map.sum(dim=(-1, -2)) / valid_sum
    p = torch.sigmoid(student_logits) * valid
    t = target * valid
    dice = 1.0 - (2.0 * (p * t).sum(dim=(-1, -2)) + 1.0) / (p.sum(dim=(-1, -2)) + t.sum(dim=(-1, -2)) + 1.0)
    return bce, dice


def bce_dice_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, valid: torch.Tensor,
                  bce_weight: float = 5.0, dice_weight: float = 5.0) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Step-2 mask loss against hard teacher targets.

    student_logits (N, C, H, W); teacher_logits (N, C, H, W) logits (target = logits > 0) or bool masks;
    valid (N, 1, H, W) or (1, 1, H, W) soft validity in [0, 1] (bilinear, not re-thresholded).

    BCE: elementwise, times valid, summed per (prompt, token) map / valid sum of that map, then mean.
    Dice: on (sigmoid(student) * valid, target * valid), 1 - (2 sum(pt) + 1) / (sum(p) + sum(t) + 1), mean.
    Returns (bce_weight * bce + dice_weight * dice, {"bce": .., "dice": ..} detached, unweighted).
    """
    if student_logits.ndim != 4 or student_logits.shape != teacher_logits.shape:
        raise ValueError(f"student {tuple(student_logits.shape)} and teacher {tuple(teacher_logits.shape)} "
                         "must be equal (N,C,H,W)")
    if valid.ndim != 4 or valid.shape[1] != 1 or valid.shape[2:] != student_logits.shape[2:] \
            or valid.shape[0] not in (1, student_logits.shape[0]):
        raise ValueError(f"valid must be (N|1,1,H,W) for logits {tuple(student_logits.shape)}, got {tuple(valid.shape)}")
    target = teacher_logits if teacher_logits.dtype == torch.bool else teacher_logits > 0
    bce, dice = bce_dice_per_map(student_logits, target, valid)
    bce, dice = bce.mean(), dice.mean()
    return bce_weight * bce + dice_weight * dice, {"bce": bce.detach(), "dice": dice.detach()}


def gt_mask_loss(student_logits: torch.Tensor, student_iou: torch.Tensor, gt: torch.Tensor, valid: torch.Tensor,
                 multimask: bool, bce_weight: float = 5.0, dice_weight: float = 5.0, iou_weight: float = 1.0
                 ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Supervised mask loss against ground-truth masks (SAM's recipe, for users with labelled data).

    student_logits (N,4,H,W) low-res logits; student_iou (N,4) IoU-head output; gt (N,H,W) bool GT at the
    low-res frame; valid (N|1,1,H,W). Token 0 is always trained; with ``multimask`` (a single point, which is
    ambiguous) the best of tokens 1-3 is trained too (min over tokens, as SAM does). The IoU head regresses
    the actual IoU of each trained token with the GT (MSE), which EdgeSAM's teacher-only recipe leaves as is.
    Returns (loss, {"gt_bce", "gt_dice", "iou_mse"} detached).
    """
    if student_logits.ndim != 4 or student_logits.shape[1] < 1 or gt.shape != (student_logits.shape[0],
                                                                                 *student_logits.shape[2:]):
        raise ValueError(f"logits (N,C,H,W) and gt (N,H,W) expected, got {tuple(student_logits.shape)}, {tuple(gt.shape)}")
    target = gt.bool()[:, None].expand_as(student_logits)
    bce, dice = bce_dice_per_map(student_logits, target, valid)  # (N,C)
    per_map = bce_weight * bce + dice_weight * dice
    tokens = torch.zeros(per_map.shape, dtype=torch.bool, device=per_map.device)
    tokens[:, 0] = True
    mask_loss = per_map[:, 0]
    if multimask and per_map.shape[1] > 1:
        best = per_map[:, 1:].argmin(dim=1) + 1
        mask_loss = mask_loss + per_map.gather(1, best[:, None])[:, 0]
        tokens[torch.arange(len(best), device=best.device), best] = True
    with torch.no_grad():
        hard_valid = valid > 0.5
        pred, tgt = (student_logits > 0) & hard_valid, target & hard_valid
        union = (pred | tgt).sum(dim=(-1, -2))
        actual = torch.where(union > 0, (pred & tgt).sum(dim=(-1, -2)) / union.clamp(min=1), torch.ones_like(union,
                             dtype=student_logits.dtype)).to(student_logits.dtype)
    iou_mse = ((student_iou - actual) ** 2)[tokens].mean()
    loss = mask_loss.mean() + iou_weight * iou_mse
    return loss, {"gt_bce": bce[:, 0].mean().detach(), "gt_dice": dice[:, 0].mean().detach(),
                  "iou_mse": iou_mse.detach()}
