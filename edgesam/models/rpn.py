"""Class-agnostic region proposal network (RPN) on the frozen student encoder (distillation step 3).

Why FCOS-style (anchor-free) rather than the paper's EfficientDet anchors:

* SA-1B boxes are multi-granular (parts, objects, stuff) with every aspect ratio and size. Anchors would need
  scales/ratios tuned to that distribution and an IoU assigner; FCOS assigns GT boxes to feature locations by
  centre region and per-level size range, with nothing to tune per dataset.
* It is tiny: FPN + head have 0.53M parameters at width 64 (0.2M at width 32), against 9.6M for the
  student, and the head's two 3x3 towers are shared across levels.
* Outputs map directly onto "proposals for a promptable decoder": one box per location plus a centerness
  that down-weights boxes predicted far from an object's centre, so score = sqrt(objectness * centerness)
  ranks well-localised boxes first; class-agnostic NMS then yields box prompts.

Layout. Inputs are the encoder's ``forward_features`` maps ``s8`` (B,96,S/8,S/8), ``s16`` (B,192,S/16,S/16),
``s32`` (B,384,S/32,S/32). A small FPN (lateral 1x1, top-down nearest upsampling + add, 3x3 output convs)
gives P3/P4/P5 and, with ``use_p6``, P6 = 3x3 stride-2 conv of the raw s32 map. A head shared over levels
(cls tower and box tower: ``num_convs`` x [3x3 conv, GroupNorm, ReLU]) predicts per location:
objectness logit (1), ltrb distances in pixels (4, ``stride * exp(scale_l * x)``, positive by
construction), centerness logit (1, from the box tower).

Frames: boxes are XYXY pixels in the padded S x S input frame ("S frame"), the frame of decoder prompts.
Location (i, j) at stride s sits at pixel (j*s + s//2, i*s + s//2).

Training (:meth:`RPN.loss`): FCOS assignment (centre sampling radius ``center_radius`` strides, per-level
max-regression ranges, smallest-area GT wins on ties), sigmoid focal loss on objectness (normalised by the
number of positives), GIoU loss on decoded boxes weighted by centerness targets, BCE on centerness.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import generalized_box_iou_loss, nms, sigmoid_focal_loss

LEVEL_KEYS = ("s8", "s16", "s32")
INF = 1e8


class _Scale(nn.Module):
    """A learnable scalar per pyramid level (FCOS): the shared box head then regresses level-relative sizes."""

    def __init__(self, init: float = 1.0) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(float(init)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale


def _tower(width: int, num_convs: int, groups: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for _ in range(num_convs):
        layers += [nn.Conv2d(width, width, 3, padding=1), nn.GroupNorm(groups, width), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)


class RPN(nn.Module):
    """FCOS-style class-agnostic proposal head. Build with :func:`build_rpn`.

    ``size_ranges``: boundaries of the per-level max-regression ranges in S-frame pixels, one fewer than the
    number of levels (default (64, 128, 256): P3 <= 64 < P4 <= 128 < P5 <= 256 < P6).
    """

    def __init__(self, feature_channels: dict[str, int], width: int = 64, num_convs: int = 2, use_p6: bool = True,
                 gn_groups: int = 16, size_ranges: Sequence[float] | None = None, center_radius: float = 1.5,
                 focal_alpha: float = 0.25, focal_gamma: float = 2.0, box_weight: float = 1.0,
                 prior_prob: float = 0.01, max_log_ltrb: float = 8.0) -> None:
        super().__init__()
        missing = [k for k in LEVEL_KEYS if k not in feature_channels]
        if missing:
            raise ValueError(f"feature_channels needs keys {LEVEL_KEYS}, missing {missing}")
        if width % gn_groups:
            raise ValueError(f"width ({width}) must be divisible by gn_groups ({gn_groups})")
        self.use_p6 = bool(use_p6)
        self.strides: tuple[int, ...] = (8, 16, 32, 64) if use_p6 else (8, 16, 32)
        if size_ranges is None:
            size_ranges = (64, 128, 256)[: len(self.strides) - 1]
        if len(size_ranges) != len(self.strides) - 1 or list(size_ranges) != sorted(size_ranges):
            raise ValueError(f"size_ranges must be {len(self.strides) - 1} increasing boundaries, got {list(size_ranges)}")
        bounds = [0.0, *map(float, size_ranges), INF]
        self.ranges = tuple((bounds[i], bounds[i + 1]) for i in range(len(self.strides)))
        self.center_radius = float(center_radius)
        self.focal_alpha, self.focal_gamma = float(focal_alpha), float(focal_gamma)
        self.box_weight = float(box_weight)
        self.max_log_ltrb = float(max_log_ltrb)

        self.lateral = nn.ModuleList(nn.Conv2d(feature_channels[k], width, 1) for k in LEVEL_KEYS)
        self.output = nn.ModuleList(nn.Conv2d(width, width, 3, padding=1) for _ in LEVEL_KEYS)
        self.p6 = nn.Conv2d(feature_channels["s32"], width, 3, stride=2, padding=1) if use_p6 else None
        self.cls_tower = _tower(width, num_convs, gn_groups)
        self.box_tower = _tower(width, num_convs, gn_groups)
        self.cls_logits = nn.Conv2d(width, 1, 3, padding=1)
        self.box_ltrb = nn.Conv2d(width, 4, 3, padding=1)
        self.centerness = nn.Conv2d(width, 1, 3, padding=1)
        self.scales = nn.ModuleList(_Scale() for _ in self.strides)
        self._init_weights(prior_prob)

    def _init_weights(self, prior_prob: float) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, std=0.01)
                nn.init.zeros_(m.bias)
        for m in (*self.lateral, *self.output, *(p for p in [self.p6] if p is not None)):
            nn.init.kaiming_uniform_(m.weight, a=1)
        # Focal-loss prior: every location starts at P(object) = prior_prob, so the loss starts small.
        nn.init.constant_(self.cls_logits.bias, -math.log((1 - prior_prob) / prior_prob))

    # -- forward -------------------------------------------------------------------------------------
    def pyramid(self, features: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        """{"s8","s16","s32"} -> [P3 (B,W,S/8,S/8), P4, P5, (P6 (B,W,S/64,S/64))]."""
        lat = [conv(features[k]) for conv, k in zip(self.lateral, LEVEL_KEYS)]
        for i in (1, 0):  # top-down
            lat[i] = lat[i] + F.interpolate(lat[i + 1], size=lat[i].shape[-2:], mode="nearest")
        levels = [conv(x) for conv, x in zip(self.output, lat)]
        if self.p6 is not None:
            levels.append(self.p6(features["s32"]))
        return levels

    def forward(self, features: dict[str, torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        """Encoder features -> one dict per level (strides ``self.strides``):
        ``logits`` (B,1,H,W) objectness logits, ``ltrb`` (B,4,H,W) distances in S-frame pixels (> 0),
        ``centerness`` (B,1,H,W) logits."""
        out = []
        for level, (x, stride, scale) in enumerate(zip(self.pyramid(features), self.strides, self.scales)):
            c = self.cls_tower(x)
            b = self.box_tower(x)
            log_ltrb = scale(self.box_ltrb(b)).clamp(max=self.max_log_ltrb)
            out.append({"logits": self.cls_logits(c), "ltrb": stride * torch.exp(log_ltrb),
                        "centerness": self.centerness(b)})
        return out

    # -- geometry ------------------------------------------------------------------------------------
    def locations(self, outputs: list[dict[str, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
        """-> points (L,2) x-y S-frame pixels of every location (levels concatenated, row-major) and
        level index (L,) long."""
        pts, lvl = [], []
        for i, (o, s) in enumerate(zip(outputs, self.strides)):
            h, w = o["logits"].shape[-2:]
            dev = o["logits"].device
            ys, xs = torch.meshgrid(torch.arange(h, device=dev), torch.arange(w, device=dev), indexing="ij")
            p = torch.stack([xs.reshape(-1), ys.reshape(-1)], dim=1).float() * s + s // 2
            pts.append(p)
            lvl.append(torch.full((h * w,), i, dtype=torch.long, device=dev))
        return torch.cat(pts), torch.cat(lvl)

    @staticmethod
    def flatten(outputs: list[dict[str, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """-> logits (B,L), ltrb (B,L,4), centerness logits (B,L), levels concatenated like :meth:`locations`."""
        logits = torch.cat([o["logits"].flatten(2)[:, 0] for o in outputs], dim=1)
        ltrb = torch.cat([o["ltrb"].flatten(2).transpose(1, 2) for o in outputs], dim=1)
        ctr = torch.cat([o["centerness"].flatten(2)[:, 0] for o in outputs], dim=1)
        return logits, ltrb, ctr

    def decode(self, outputs: list[dict[str, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
        """-> boxes (B,L,4) XYXY S frame (unclipped) and scores (B,L) = sqrt(sigmoid(obj) * sigmoid(ctr))."""
        logits, ltrb, ctr = self.flatten(outputs)
        pts, _ = self.locations(outputs)
        boxes = torch.cat([pts[None] - ltrb[..., :2], pts[None] + ltrb[..., 2:]], dim=-1)
        scores = torch.sqrt(torch.sigmoid(logits) * torch.sigmoid(ctr))
        return boxes, scores

    def proposals(self, outputs: list[dict[str, torch.Tensor]], img_size: int, score_thresh: float = 0.05,
                  nms_iou: float = 0.7, max_proposals: int = 100,
                  pre_nms_top_k: int = 1000) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per image: (boxes (M,4) XYXY S frame clipped to [0, img_size], scores (M,)), best first, M <= max_proposals."""
        boxes, scores = self.decode(outputs)
        return [select_proposals(b, s, (img_size, img_size), score_thresh, nms_iou, max_proposals, pre_nms_top_k)
                for b, s in zip(boxes, scores)]

    # -- training ------------------------------------------------------------------------------------
    @torch.no_grad()
    def targets(self, outputs: list[dict[str, torch.Tensor]],
                gt_boxes: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """FCOS assignment. gt_boxes: per image (K,4) XYXY S frame.

        Returns labels (B,L) float {0,1}, box targets (B,L,4) XYXY (valid where labels == 1) and
        centerness targets (B,L) in [0,1].
        """
        pts, lvl = self.locations(outputs)
        strides = torch.tensor(self.strides, dtype=torch.float32, device=pts.device)[lvl]
        ranges = torch.tensor(self.ranges, dtype=torch.float32, device=pts.device)[lvl]  # (L,2)
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
            r = self.center_radius * strides[:, None]  # (L,1)
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

    def loss(self, outputs: list[dict[str, torch.Tensor]], gt_boxes: Sequence[torch.Tensor],
             img_size: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """-> (total loss, parts {"cls", "box", "ctr", "num_pos"} detached). gt_boxes: per image (K,4) XYXY S frame."""
        if len(gt_boxes) != outputs[0]["logits"].shape[0]:
            raise ValueError(f"gt_boxes has {len(gt_boxes)} entries for a batch of {outputs[0]['logits'].shape[0]}")
        labels, box_t, ctr_t = self.targets(outputs, [g.clamp(0, img_size) for g in gt_boxes])
        logits, ltrb, ctr = self.flatten(outputs)
        pts, _ = self.locations(outputs)
        pos = labels > 0
        num_pos = pos.sum()
        norm = num_pos.clamp(min=1).float()
        cls = sigmoid_focal_loss(logits, labels, alpha=self.focal_alpha, gamma=self.focal_gamma, reduction="sum") / norm
        if bool(num_pos > 0):
            p = pts[None].expand_as(ltrb[..., :2])[pos]
            pred = torch.cat([p - ltrb[pos][:, :2], p + ltrb[pos][:, 2:]], dim=1)
            w = ctr_t[pos]
            box = (generalized_box_iou_loss(pred, box_t[pos], reduction="none") * w).sum() / w.sum().clamp(min=1e-6)
            ctr_loss = F.binary_cross_entropy_with_logits(ctr[pos], ctr_t[pos], reduction="sum") / norm
        else:  # keep the graph connected (DDP) with zero-valued terms
            box = ltrb.sum() * 0.0
            ctr_loss = ctr.sum() * 0.0
        total = cls + self.box_weight * box + ctr_loss
        return total, {"cls": cls.detach(), "box": box.detach(), "ctr": ctr_loss.detach(),
                       "num_pos": num_pos.detach().float()}


def select_proposals(boxes: torch.Tensor, scores: torch.Tensor, clip_hw: tuple[int, int], score_thresh: float = 0.05,
                     nms_iou: float = 0.7, max_proposals: int = 100, pre_nms_top_k: int = 1000,
                     min_size: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """One image's decoded boxes (L,4) XYXY and scores (L,) -> (boxes (M,4), scores (M,)), best first.

    Keeps scores > ``score_thresh``, the ``pre_nms_top_k`` best, clips to ``clip_hw`` = (h, w) (e.g. the
    unpadded input extent), drops boxes thinner than ``min_size`` pixels, class-agnostic NMS at ``nms_iou``,
    then the ``max_proposals`` best.
    """
    boxes = boxes.float().reshape(-1, 4)
    scores = scores.float().reshape(-1)
    keep = scores > score_thresh
    boxes, scores = boxes[keep], scores[keep]
    if scores.numel() > pre_nms_top_k:
        scores, idx = scores.topk(pre_nms_top_k)
        boxes = boxes[idx]
    h, w = clip_hw
    boxes = torch.stack([boxes[:, 0].clamp(0, w), boxes[:, 1].clamp(0, h),
                         boxes[:, 2].clamp(0, w), boxes[:, 3].clamp(0, h)], dim=1)
    ok = ((boxes[:, 2] - boxes[:, 0]) >= min_size) & ((boxes[:, 3] - boxes[:, 1]) >= min_size)
    boxes, scores = boxes[ok], scores[ok]
    keep = nms(boxes, scores, nms_iou)[:max_proposals]
    return boxes[keep], scores[keep]


def build_rpn(feature_channels: dict[str, int], **cfg) -> RPN:
    """RPN for an encoder with ``feature_channels`` {"s8","s16","s32"} (96/192/384 for RepViT-M1).

    ``cfg``: JSON-serialisable keyword arguments of :class:`RPN` (``width``, ``num_convs``, ``use_p6``,
    ``gn_groups``, ``size_ranges``, ``center_radius``, ``focal_alpha``, ``focal_gamma``, ``box_weight``,
    ``prior_prob``, ``max_log_ltrb``); they are stored in checkpoints as ``meta["rpn_config"]``.
    """
    config = dict(cfg)  # as given (JSON-able): save_student records it so load_student rebuilds the same head
    if "size_ranges" in cfg and cfg["size_ranges"] is not None:
        cfg = {**cfg, "size_ranges": tuple(cfg["size_ranges"])}
    rpn = RPN(dict(feature_channels), **cfg)
    rpn.build_config = config
    return rpn


def train_rpn_step(rpn: RPN, encoder_features: dict[str, torch.Tensor], gt_boxes: Sequence[torch.Tensor],
                   img_size: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Step 3 of distillation: loss of the RPN on frozen encoder features (computed under ``no_grad``).

    encoder_features: ``forward_features`` output (the ``embedding`` entry is ignored); gt_boxes: per image
    (K,4) XYXY in the S frame. Returns ``(loss, metrics)``; the caller runs backward and the optimizer step.
    metrics: ``rpn_cls``, ``rpn_box``, ``rpn_ctr``, ``rpn_num_pos`` (detached scalars).
    """
    feats = {k: encoder_features[k].detach() for k in LEVEL_KEYS}
    outputs = rpn(feats)
    loss, parts = rpn.loss(outputs, gt_boxes, img_size)
    return loss, {f"rpn_{k}": v for k, v in parts.items()}


# -- deployment: encoder + RPN as one graph ----------------------------------------------------------------
class EncoderWithRPN(nn.Module):
    """image (B,3,S,S) -> (image_embeddings (B,256,S/16,S/16), rpn_boxes (B,L,4) XYXY S frame, rpn_scores (B,L)).

    One encoder pass feeds both the decoder (embedding) and the RPN (s8/s16/s32), which is what
    ``rpn.onnx`` holds: the ONNX encoder graph only outputs the embedding, so RPN mode with ONNX runs this
    graph instead of ``encoder.onnx`` (no second encoder pass). Threshold/NMS stay outside the graph
    (:func:`select_proposals`), so the graph has static shapes (L is fixed by S).
    """

    def __init__(self, image_encoder: nn.Module, rpn: RPN) -> None:
        super().__init__()
        self.image_encoder = image_encoder
        self.rpn = rpn

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        feats = self.image_encoder.forward_features(images)
        boxes, scores = self.rpn.decode(self.rpn(feats))
        return feats["embedding"], boxes, scores


RPN_ONNX_FILE = "rpn.onnx"
RPN_ONNX_INPUTS = ("image",)
RPN_ONNX_OUTPUTS = ("image_embeddings", "rpn_boxes", "rpn_scores")
