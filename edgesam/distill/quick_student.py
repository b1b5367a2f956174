"""Brief supervised training of a student, for checks that need non-random weights (confident logits) but no
teacher: one step = one image with its GT masks, box prompts (half with a click inside the mask), SAM's GT mask
loss (:func:`edgesam.distill.losses.gt_mask_loss`), AdamW.

``benchmarks/quick_student.py`` runs it for minutes on synthetic scenes and saves a checkpoint; tests run it
for about a minute on a few images. The result is not a distilled EdgeSAM; it is a segmenter whose weights
have the structure of trained ones (peaked activations, confident logits), which is what a quantisation or
post-processing check needs.
"""
from __future__ import annotations

import numpy as np
import torch

from ..data.transforms import ResizeLongestSide, lowres_masks, preprocess
from ..models.prompt_decoder import IGNORE, PAD, POS
from .losses import decoder_valid_mask, gt_mask_loss

__all__ = ["scene_prompts", "quick_optimizer", "quick_train_step"]


def scene_prompts(masks: list[np.ndarray], tf: ResizeLongestSide, hw: tuple[int, int],
                  rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """GT masks (K of (H,W) bool) -> box prompts, half also with a click inside the mask: coords (K,3,2) x-y in
    the S frame, labels (K,3) [1 (click) or -2 (ignored point), 2, 3]; the click (point 0) is a random mask pixel."""
    coords, labels = [], []
    for m in masks:
        ys, xs = np.nonzero(m)
        box = np.array([[xs.min(), ys.min()], [xs.max() + 1, ys.max() + 1]], np.float32)
        i = rng.integers(len(xs))
        pt = np.array([[xs[i] + 0.5, ys[i] + 0.5]], np.float32)
        coords.append(tf.apply_coords(np.concatenate([pt, box]), hw))
        labels.append([float(POS) if rng.random() < 0.5 else float(IGNORE), 2.0, 3.0])
    return torch.tensor(np.stack(coords)), torch.tensor(labels, dtype=torch.float32)


def quick_optimizer(model: torch.nn.Module, lr: float = 1e-3, freeze_encoder: bool = False) -> torch.optim.Optimizer:
    """AdamW over the student's prompt encoder and decoder, and its image encoder unless ``freeze_encoder``
    (then frozen here); the RPN, if any, is left out (untrained)."""
    skip = ("rpn.", "image_encoder.") if freeze_encoder else ("rpn.",)
    if freeze_encoder:
        model.image_encoder.eval().requires_grad_(False)
    return torch.optim.AdamW([q for n, q in model.named_parameters() if not n.startswith(skip)], lr=lr,
                             weight_decay=0.01)


def quick_train_step(model: torch.nn.Module, opt: torch.optim.Optimizer, image: np.ndarray, masks: list[np.ndarray],
                     rng: np.random.Generator, freeze_encoder: bool = False, clicks: bool = False) -> tuple[float, float]:
    """One optimiser step of ``model`` (an :class:`~edgesam.models.EdgeSAM` in train mode) on ``image`` uint8
    (H,W,3) and its non-empty GT ``masks`` (K of (H,W) bool): box prompts (:func:`scene_prompts`) with the
    single-mask loss; with ``clicks`` also the click alone (what a point grid sends: [click, padding]) with
    the multimask loss (token 0 and the best of tokens 1-3). -> (loss, mean IoU of token 0 on the box prompts)."""
    s = int(model.img_size)
    h, w = image.shape[:2]
    x, input_hw = preprocess(image, s)
    coords, labels = scene_prompts(masks, ResizeLongestSide(s), (h, w), rng)
    gt = lowres_masks(torch.from_numpy(np.stack(masks)), input_hw, s)
    valid = decoder_valid_mask([input_hw], s, s // 4)
    with torch.set_grad_enabled(not freeze_encoder):
        emb = model.embed(x)
    logits, iou = model.decode(emb, coords, labels)
    loss, _ = gt_mask_loss(logits, iou, gt, valid, multimask=False)
    if clicks:
        click = torch.cat([coords[:, :1], torch.zeros_like(coords[:, :1])], 1)
        click_labels = torch.tensor([[float(POS), float(PAD)]] * len(masks))
        click_logits, click_iou = model.decode(emb, click, click_labels)
        loss = loss + gt_mask_loss(click_logits, click_iou, gt, valid, multimask=True)[0]
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    with torch.no_grad():
        pred = logits[:, 0] > 0
        miou = float(((pred & gt).sum((-1, -2)) / (pred | gt).sum((-1, -2)).clamp(min=1)).mean())
    return float(loss.detach()), miou
