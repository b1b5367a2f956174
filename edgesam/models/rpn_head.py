"""The head of the class-agnostic region proposal network (RPN) on the frozen student encoder (distillation step 3).

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

Training targets and losses: :mod:`.rpn_loss`; threshold + NMS and the deploy graph: :mod:`.rpn_postprocess`.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .rpn_postprocess import select_proposals

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
            if log_ltrb.dtype != torch.float32:  # box decoding stays float32: exp(.) reaches S-frame pixels
                log_ltrb = log_ltrb.float()
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
