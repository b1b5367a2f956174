"""A click becomes a point + box prompt through the RPN's proposals (EdgeSAM paper, "RPN" use at inference).

The paper's rule, per click (x, y):

1. keep the proposals whose box contains the click;
2. of those, take the ``k`` (5) whose centres are nearest to the click;
3. of those, take the highest-scoring one: its box joins the click as one prompt (click label 1 + box
   corners 2/3). When no proposal contains the click there is no box: the prompt is the click alone
   (click + SAM's padding point, exactly the plain point prompt).

Three entry points share it:

* :func:`select_boxes` (the rule, batched over clicks; tensors or arrays in any one frame);
* :class:`ClickBoxPredictor`, a wrapper around :class:`~edgesam.inference.predictor.Predictor` that runs
  the encoder + RPN once per image (``set_image``) and answers ``predict_click``;
* the ``click+rpn`` prompt kind of the mIoU protocol (:mod:`edgesam.eval.miou`), through
  :func:`click_box_prompts` and :func:`decode_with_optional_box`.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from ..models.prompt_decoder import BOX_BR, BOX_TL, IGNORE, PAD, POS

__all__ = ["CLICK_RPN", "select_boxes", "click_box_prompts", "decode_with_optional_box", "rpn_proposals",
           "ClickBoxPredictor"]

CLICK_RPN = "click+rpn"  # the evaluation prompt kind
DecodeFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def select_boxes(clicks: torch.Tensor, boxes: torch.Tensor, scores: torch.Tensor,
                 k: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    """The paper's click -> box rule for K clicks at once.

    clicks (K,2) x-y; boxes (M,4) XYXY and scores (M,) proposals, all in one frame. A click on a box edge
    counts as inside. Returns (chosen boxes (K,4), has_box (K,) bool); rows without a box are zeros.
    """
    clicks = torch.as_tensor(clicks, dtype=torch.float32).reshape(-1, 2)
    boxes = torch.as_tensor(boxes, dtype=torch.float32, device=clicks.device).reshape(-1, 4)
    scores = torch.as_tensor(scores, dtype=torch.float32, device=clicks.device).reshape(-1)
    n = len(clicks)
    if len(boxes) == 0 or n == 0:
        return clicks.new_zeros(n, 4), torch.zeros(n, dtype=torch.bool, device=clicks.device)
    x, y = clicks[:, 0:1], clicks[:, 1:2]  # (K,1)
    inside = (boxes[None, :, 0] <= x) & (x <= boxes[None, :, 2]) & (boxes[None, :, 1] <= y) & (y <= boxes[None, :, 3])
    centres = (boxes[:, :2] + boxes[:, 2:]) / 2
    dist = torch.cdist(clicks, centres)  # (K,M)
    dist = torch.where(inside, dist, torch.full_like(dist, float("inf")))
    kk = min(int(k), len(boxes))
    near_d, near = dist.topk(kk, dim=1, largest=False)  # the k nearest containing proposals
    near_scores = torch.where(torch.isfinite(near_d), scores[near], torch.full_like(near_d, -float("inf")))
    best = near[torch.arange(n, device=clicks.device), near_scores.argmax(dim=1)]
    has_box = inside.any(dim=1)
    return torch.where(has_box[:, None], boxes[best], torch.zeros_like(boxes[best])), has_box


def click_box_prompts(clicks: torch.Tensor, boxes: torch.Tensor, has_box: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """-> coords (K,3,2), labels (K,3): ``[click (1), TL (2), BR (3)]`` where there is a box, else
    ``[click (1), padding (-1), placeholder (-2)]``. The placeholder column is dropped again by
    :func:`decode_with_optional_box`, so box-less rows decode exactly like the plain point prompt."""
    clicks = torch.as_tensor(clicks, dtype=torch.float32).reshape(-1, 2)
    n = len(clicks)
    coords = torch.zeros(n, 3, 2, dtype=torch.float32, device=clicks.device)
    coords[:, 0] = clicks
    coords[:, 1:] = torch.where(has_box[:, None, None], boxes.reshape(n, 2, 2).to(coords), coords[:, 1:])
    with_box = torch.tensor([POS, BOX_TL, BOX_BR], dtype=torch.float32, device=clicks.device)
    without = torch.tensor([POS, PAD, IGNORE], dtype=torch.float32, device=clicks.device)
    labels = torch.where(has_box[:, None], with_box, without)
    return coords, labels


def decode_with_optional_box(decode_fn: DecodeFn, has_box: torch.Tensor) -> DecodeFn:
    """Wrap a decoder for :func:`click_box_prompts` rows (and any points appended after column 2): rows
    with a box are decoded as they are, rows without one without their placeholder column."""
    has_box = torch.as_tensor(has_box, dtype=torch.bool)

    def fn(emb: torch.Tensor, coords: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hb = has_box.to(coords.device)
        if bool(hb.all()) or coords.shape[1] < 3:
            return decode_fn(emb, coords, labels)
        keep = [i for i in range(coords.shape[1]) if i != 2]
        if not bool(hb.any()):
            return decode_fn(emb, coords[:, keep], labels[:, keep])
        per_row_emb = emb.shape[0] > 1
        lb, ib = decode_fn(emb[hb] if per_row_emb else emb, coords[hb], labels[hb])
        ln, iw = decode_fn(emb[~hb] if per_row_emb else emb, coords[~hb][:, keep], labels[~hb][:, keep])
        logits = lb.new_empty((len(coords), *lb.shape[1:]))
        iou = ib.new_empty((len(coords), *ib.shape[1:]))
        logits[hb], logits[~hb], iou[hb], iou[~hb] = lb, ln, ib, iw
        return logits, iou

    return fn


@torch.no_grad()
def rpn_proposals(model: torch.nn.Module, image: torch.Tensor, input_hw: tuple[int, int], score_thresh: float = 0.05,
                  nms_iou: float = 0.7, max_proposals: int = 100) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    """One image (1,3,S,S) through ``model.image_encoder.forward_features`` and ``model.rpn`` ->
    (embedding (1,256,S/16,S/16), (boxes (M,4) XYXY input frame clipped to ``input_hw``, scores (M,)))."""
    from ..models.rpn import select_proposals

    if getattr(model, "rpn", None) is None:
        raise ValueError("the model has no RPN (model.rpn is None): train one with distillation step 3")
    feats = model.image_encoder.forward_features(image)
    boxes, scores = model.rpn.decode(model.rpn(feats))
    return feats["embedding"], select_proposals(boxes[0], scores[0], input_hw, score_thresh, nms_iou, max_proposals)


class ClickBoxPredictor:
    """A :class:`~edgesam.inference.predictor.Predictor` whose clicks gain an RPN box (paper's rule above).

    ``rpn_encoder``: images (1,3,S,S) float32 normalised padded -> (embedding (1,256,S/16,S/16), rpn_boxes
    (1,L,4) XYXY S frame, rpn_scores (1,L)) numpy, e.g. :class:`~edgesam.inference.everything.TorchRpnEncoder`
    or ``OrtRpnEncoder`` (``rpn.onnx``): one encoder pass serves the decoder and the RPN.
    """

    def __init__(self, predictor, rpn_encoder, k: int = 5, score_thresh: float = 0.05, nms_iou: float = 0.7,
                 max_proposals: int = 100) -> None:
        self.predictor = predictor
        self.rpn_encoder = rpn_encoder
        self.k, self.score_thresh, self.nms_iou, self.max_proposals = k, score_thresh, nms_iou, max_proposals
        self.proposals: tuple[torch.Tensor, torch.Tensor] | None = None

    @classmethod
    def from_model(cls, model: torch.nn.Module, device: str = "cpu", **kw) -> "ClickBoxPredictor":
        """Torch backends from an EdgeSAM with an RPN (``model.rpn``)."""
        from .everything import TorchRpnEncoder
        from .predictor import Predictor

        if getattr(model, "rpn", None) is None:
            raise ValueError("the model has no RPN (model.rpn is None): train one with distillation step 3")
        return cls(Predictor.from_model(model, device), TorchRpnEncoder(model.image_encoder, model.rpn, model.img_size, device), **kw)

    def set_image(self, image: np.ndarray, image_format: str = "RGB") -> None:
        """Encode once (embedding + proposals) for an image (uint8 HxWx3 RGB, any size)."""
        from ..data.transforms import normalize_pad
        from ..models.rpn import select_proposals
        from .predictor import as_rgb_uint8

        p = self.predictor
        image = as_rgb_uint8(image, image_format)
        resized = p.transform.apply_image(image)
        x = normalize_pad(resized, p.img_size).numpy()
        emb, boxes, scores = self.rpn_encoder(x)
        input_hw = tuple(resized.shape[-2:])
        p.set_embedding(np.asarray(emb), image.shape[:2], input_hw)
        self.proposals = select_proposals(torch.from_numpy(np.asarray(boxes)[0]), torch.from_numpy(np.asarray(scores)[0]),
                                          input_hw, self.score_thresh, self.nms_iou, self.max_proposals)

    def box_for_click(self, point: np.ndarray) -> np.ndarray | None:
        """The chosen proposal (4,) XYXY in the original frame for a click (2,) x-y original frame, or None."""
        p = self.predictor
        if self.proposals is None or p.original_hw is None:
            raise RuntimeError("call set_image() before predict_click()")
        click = p.transform.apply_coords(np.asarray(point, np.float32).reshape(1, 2), p.original_hw)
        box, has = select_boxes(torch.from_numpy(click), *self.proposals, k=self.k)
        if not bool(has[0]):
            return None
        h, w = p.original_hw
        out = p.transform.invert_coords(box[0].numpy().reshape(2, 2), p.original_hw).reshape(4)
        return np.clip(out, 0, [w, h, w, h]).astype(np.float32)

    def predict_click(self, point: np.ndarray, num_multimask_outputs: int = 1, return_logits: bool = False,
                      use_stability_score: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
        """One positive click (2,) x-y original frame -> (masks (C,H,W), scores (C,), low-res logits
        (C,S/4,S/4), the box used (4,) XYXY original frame or None when no proposal contains the click)."""
        box = self.box_for_click(point)
        masks, scores, low = self.predictor.predict(np.asarray(point, np.float32).reshape(1, 2), np.array([1]), box,
                                                    num_multimask_outputs=num_multimask_outputs, return_logits=return_logits,
                                                    use_stability_score=use_stability_score)
        return masks, scores, low, box
