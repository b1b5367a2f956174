"""SAM's training loss: focal + dice (20 : 1) per mask, MSE of the IoU head against the actual IoU.

For an ambiguous prompt (a single point) SAM predicts 3 masks and back-propagates only the one with the
lowest loss; here the decoder's 4 tokens are kept as EdgeSAM uses them: token 0 (single-output) is always
trained and, for ambiguous prompts, the lowest-loss of tokens 1-3 as well.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def focal_per_map(logits: torch.Tensor, target: torch.Tensor, alpha: float = 0.25, gamma: float = 2.0) -> torch.Tensor:
    """Sigmoid focal loss averaged over pixels: (N,C,H,W) logits, same-shape 0/1 target -> (N,C)."""
    t = target.to(logits.dtype)
    p = torch.sigmoid(logits)
    ce = F.binary_cross_entropy_with_logits(logits, t, reduction="none")
    p_t = p * t + (1 - p) * (1 - t)
    loss = ce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = (alpha * t + (1 - alpha) * (1 - t)) * loss
    return loss.mean(dim=(-1, -2))


def dice_per_map(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """1 - (2 sum(p t) + 1) / (sum(p) + sum(t) + 1) per map: (N,C,H,W) -> (N,C)."""
    p = torch.sigmoid(logits)
    t = target.to(logits.dtype)
    return 1.0 - (2.0 * (p * t).sum(dim=(-1, -2)) + 1.0) / (p.sum(dim=(-1, -2)) + t.sum(dim=(-1, -2)) + 1.0)


def sam_loss(logits: torch.Tensor, iou_pred: torch.Tensor, gt: torch.Tensor, multimask: bool,
             focal_weight: float = 20.0, dice_weight: float = 1.0, iou_weight: float = 1.0,
             focal_alpha: float = 0.25) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """logits (N,4,H,W) at the GT's resolution; iou_pred (N,4); gt (N,H,W) bool.

    Returns (mean over prompts of [mask loss of the trained tokens + iou_weight x IoU MSE], metrics).
    The IoU target is the IoU of the thresholded (> 0) prediction with the GT, not back-propagated.
    """
    if logits.ndim != 4 or gt.shape != (logits.shape[0], *logits.shape[2:]) or iou_pred.shape != logits.shape[:2]:
        raise ValueError(f"logits (N,C,H,W), iou (N,C), gt (N,H,W) expected; got {tuple(logits.shape)}, "
                         f"{tuple(iou_pred.shape)}, {tuple(gt.shape)}")
    target = gt[:, None].expand_as(logits)
    focal, dice = focal_per_map(logits, target, alpha=focal_alpha), dice_per_map(logits, target)
    per_map = focal_weight * focal + dice_weight * dice  # (N,C)
    trained = torch.zeros_like(per_map, dtype=torch.bool)
    trained[:, 0] = True
    mask_loss = per_map[:, 0]
    if multimask and per_map.shape[1] > 1:
        best = per_map[:, 1:].detach().argmin(dim=1) + 1
        mask_loss = mask_loss + per_map.gather(1, best[:, None])[:, 0]
        trained[torch.arange(len(best), device=best.device), best] = True
    with torch.no_grad():
        pred = logits > 0
        inter = (pred & target).sum(dim=(-1, -2)).to(logits.dtype)
        union = (pred | target).sum(dim=(-1, -2)).to(logits.dtype)
        actual = torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))
    iou_mse = ((iou_pred - actual) ** 2)[trained].mean()
    loss = mask_loss.mean() + iou_weight * iou_mse
    return loss, {"focal": focal[:, 0].mean().detach(), "dice": dice[:, 0].mean().detach(),
                  "iou_mse": iou_mse.detach(), "train_iou": actual[:, 0].mean().detach()}
