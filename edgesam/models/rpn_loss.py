"""Training of the RPN head (distillation step 3): FCOS assignment, the loss, and one training step.

Training (:func:`rpn_loss`): FCOS assignment (centre sampling radius ``center_radius`` strides, per-level
max-regression ranges, smallest-area GT wins on ties), sigmoid focal loss on objectness (normalised by the
number of positives), GIoU loss on decoded boxes weighted by centerness targets, BCE on centerness.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torchvision.ops import generalized_box_iou_loss, sigmoid_focal_loss

from .rpn_head import INF, LEVEL_KEYS, RPN


@torch.no_grad()
def fcos_targets(rpn: RPN, outputs: list[dict[str, torch.Tensor]],
                 gt_boxes: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """FCOS assignment with the hyper-parameters of ``rpn`` (``center_radius``, ``ranges``). gt_boxes: per image (K,4) XYXY S frame.

    Returns labels (B,L) float {0,1}, box targets (B,L,4) XYXY (valid where labels == 1) and
    centerness targets (B,L) in [0,1].
    """
    pts, lvl = rpn.locations(outputs)
    strides = torch.tensor(rpn.strides, dtype=torch.float32, device=pts.device)[lvl]
    ranges = torch.tensor(rpn.ranges, dtype=torch.float32, device=pts.device)[lvl]  # (L,2)
    labels, box_t, ctr_t = [], [], []
    n = pts.shape[0]
    for gt in gt_boxes:
        gt = gt.to(pts.device, torch.float32).reshape(-1, 4)
        gt = gt[(gt[:, 2] > gt[:, 0]) & (gt[:, 3] > gt[:, 1])]
        if gt.shape[0] == 0:
            labels.append(pts.new_zeros(n))
            box_t.append(pts.new_zeros(n, 4))
            ctr_t.append(pts.new_zeros(n))
            continue
        x, y = pts[:, 0:1], pts[:, 1:2]  # (L,1)
        ltrb = torch.stack([x - gt[:, 0], y - gt[:, 1], gt[:, 2] - x, gt[:, 3] - y], dim=-1)  # (L,K,4)
        # centre sampling: a radius of center_radius strides around the GT centre, clipped to the box
        cx, cy = (gt[:, 0] + gt[:, 2]) / 2, (gt[:, 1] + gt[:, 3]) / 2
        r = rpn.center_radius * strides[:, None]  # (L,1)
        x0, y0 = torch.maximum(cx - r, gt[:, 0]), torch.maximum(cy - r, gt[:, 1])
        x1, y1 = torch.minimum(cx + r, gt[:, 2]), torch.minimum(cy + r, gt[:, 3])
        in_centre = (x > x0) & (y > y0) & (x < x1) & (y < y1)  # (L,K)
        max_reg = ltrb.max(dim=-1).values
        in_range = (max_reg >= ranges[:, 0:1]) & (max_reg <= ranges[:, 1:2])
        area = ((gt[:, 2] - gt[:, 0]) * (gt[:, 3] - gt[:, 1]))[None].expand(n, -1)
        area = torch.where(in_centre & in_range, area, torch.full_like(area, INF))
        best_area, best = area.min(dim=1)  # smallest GT wins
        pos = best_area < INF
        lt = ltrb[torch.arange(n, device=pts.device), best]  # (L,4)
        lr, tb = lt[:, [0, 2]], lt[:, [1, 3]]
        ctr = torch.sqrt((lr.min(1).values / lr.max(1).values.clamp(min=1e-6)).clamp(min=0)
                         * (tb.min(1).values / tb.max(1).values.clamp(min=1e-6)).clamp(min=0))
        labels.append(pos.float())
        box_t.append(gt[best])
        ctr_t.append(torch.where(pos, ctr, torch.zeros_like(ctr)))
    return torch.stack(labels), torch.stack(box_t), torch.stack(ctr_t)

def rpn_loss(rpn: RPN, outputs: list[dict[str, torch.Tensor]], gt_boxes: Sequence[torch.Tensor],
             img_size: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """-> (total loss, parts {"cls", "box", "ctr", "num_pos"} detached). gt_boxes: per image (K,4) XYXY S frame."""
    if len(gt_boxes) != outputs[0]["logits"].shape[0]:
        raise ValueError(f"gt_boxes has {len(gt_boxes)} entries for a batch of {outputs[0]['logits'].shape[0]}")
    labels, box_t, ctr_t = fcos_targets(rpn, outputs, [g.clamp(0, img_size) for g in gt_boxes])
    logits, ltrb, ctr = rpn.flatten(outputs)
    pts, _ = rpn.locations(outputs)
    pos = labels > 0
    num_pos = pos.sum()
    norm = num_pos.clamp(min=1).float()
    cls = sigmoid_focal_loss(logits, labels, alpha=rpn.focal_alpha, gamma=rpn.focal_gamma, reduction="sum") / norm
    if bool(num_pos > 0):
        p = pts[None].expand_as(ltrb[..., :2])[pos]
        pred = torch.cat([p - ltrb[pos][:, :2], p + ltrb[pos][:, 2:]], dim=1)
        w = ctr_t[pos]
        box = (generalized_box_iou_loss(pred, box_t[pos], reduction="none") * w).sum() / w.sum().clamp(min=1e-6)
        ctr_loss = F.binary_cross_entropy_with_logits(ctr[pos], ctr_t[pos], reduction="sum") / norm
    else:  # keep the graph connected (DDP) with zero-valued terms
        box = ltrb.sum() * 0.0
        ctr_loss = ctr.sum() * 0.0
    total = cls + rpn.box_weight * box + ctr_loss
    return total, {"cls": cls.detach(), "box": box.detach(), "ctr": ctr_loss.detach(),
                   "num_pos": num_pos.detach().float()}


def train_rpn_step(rpn: RPN, encoder_features: dict[str, torch.Tensor], gt_boxes: Sequence[torch.Tensor],
                   img_size: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Step 3 of distillation: loss of the RPN on frozen encoder features (computed under ``no_grad``).

    encoder_features: ``forward_features`` output (the ``embedding`` entry is ignored); gt_boxes: per image
    (K,4) XYXY in the S frame. Returns ``(loss, metrics)``; the caller runs backward and the optimizer step.
    metrics: ``rpn_cls``, ``rpn_box``, ``rpn_ctr``, ``rpn_num_pos`` (detached scalars).
    """
    feats = {k: encoder_features[k].detach() for k in LEVEL_KEYS}
    outputs = rpn(feats)
    loss, parts = rpn_loss(rpn, outputs, gt_boxes, img_size)
    return loss, {f"rpn_{k}": v for k, v in parts.items()}
