"""After the RPN head: threshold + class-agnostic NMS of proposals, and encoder + RPN as one deploy graph."""
from __future__ import annotations

import torch
from torch import nn
from torchvision.ops import nms

RPN_ONNX_FILE = "rpn.onnx"
RPN_ONNX_INPUTS = ("image",)
RPN_ONNX_OUTPUTS = ("image_embeddings", "rpn_boxes", "rpn_scores")


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


class EncoderWithRPN(nn.Module):
    """image (B,3,S,S) -> (image_embeddings (B,256,S/16,S/16), rpn_boxes (B,L,4) XYXY S frame, rpn_scores (B,L)).

    One encoder pass feeds both the decoder (embedding) and the RPN (s8/s16/s32), which is what
    ``rpn.onnx`` holds: the ONNX encoder graph only outputs the embedding, so RPN mode with ONNX runs this
    graph instead of ``encoder.onnx`` (no second encoder pass). Threshold/NMS stay outside the graph
    (:func:`select_proposals`), so the graph has static shapes (L is fixed by S).
    """

    def __init__(self, image_encoder: nn.Module, rpn: nn.Module) -> None:
        super().__init__()
        self.image_encoder = image_encoder
        self.rpn = rpn

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        feats = self.image_encoder.forward_features(images)
        outputs = self.rpn(feats)
        if outputs[0]["logits"].dtype != torch.float32:  # half models: scores and boxes are decoded in float32
            outputs = [{k: v.float() for k, v in level.items()} for level in outputs]
        boxes, scores = self.rpn.decode(outputs)
        return feats["embedding"], boxes, scores
