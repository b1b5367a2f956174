"""One training step of each distillation stage, as pure torch functions (no optimizer, no Ray).

Each returns ``(loss, metrics)``; the caller does backward, clipping and the optimizer step, so DDP and
gradient clipping stay outside. Metrics are detached 0-d tensors (no device sync here).
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from ..models.edgesam import EdgeSAM
from ..models.prompt_decoder import IGNORE, PromptDecoder, decode_prompts
from .losses import bce_dice_loss, decoder_valid_mask, embedding_valid_mask, gt_mask_loss, masked_embedding_mse
from .prompts import PROMPT_KINDS, append_points, make_prompt_batch, pick_tokens, sample_refinement_points

PromptSet = Mapping[str, Any] | tuple[Any, Any]
MASK_TARGETS = ("teacher", "gt", "teacher+gt")


def encoder_kd_step(student_encoder: nn.Module, images: torch.Tensor, teacher_emb: torch.Tensor,
                    input_hw: Sequence[tuple[int, int]], img_size: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Stage 1. images (B,3,S,S) normalised padded; teacher_emb (B,256,S/16,S/16) (fp16 ok, cast to fp32);
    input_hw: B resized extents (h, w). -> (masked MSE, {"mse"})."""
    if images.ndim != 4 or images.shape[1] != 3 or images.shape[-2:] != (img_size, img_size):
        raise ValueError(f"images must be (B,3,{img_size},{img_size}), got {tuple(images.shape)}")
    if len(input_hw) != images.shape[0]:
        raise ValueError(f"{len(input_hw)} input_hw entries for {images.shape[0]} images")
    student_emb = student_encoder(images)
    if teacher_emb.shape != student_emb.shape:
        raise ValueError(f"teacher embedding {tuple(teacher_emb.shape)} != student {tuple(student_emb.shape)}")
    valid = embedding_valid_mask(input_hw, img_size, student_emb.shape[-1], device=student_emb.device)
    loss = masked_embedding_mse(student_emb, teacher_emb.to(student_emb.dtype), valid)
    return loss, {"mse": loss.detach()}


def freeze_for_prompt_kd(student: EdgeSAM, train_decoder: bool = True) -> EdgeSAM:
    """Stage-2 trainability: prompt encoder frozen; image encoder and the whole mask decoder trainable
    (``train_decoder=False``: the decoder frozen too, the paper's freezing ablation)."""
    student.image_encoder.requires_grad_(True)
    student.mask_decoder.requires_grad_(train_decoder)
    student.prompt_encoder.requires_grad_(False)
    return student


def _prompt_tensors(prompts: Sequence[PromptSet], device: torch.device) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Per-image ``{"boxes": (K,4), "points": (K,2)}`` dicts or ``(boxes, points)`` pairs -> float32 tensors."""
    boxes, points = [], []
    for i, p in enumerate(prompts):
        b, q = (p["boxes"], p["points"]) if isinstance(p, Mapping) else p
        b = torch.as_tensor(np.asarray(b, np.float32) if not torch.is_tensor(b) else b, dtype=torch.float32).to(device)
        q = torch.as_tensor(np.asarray(q, np.float32) if not torch.is_tensor(q) else q, dtype=torch.float32).to(device)
        if b.numel() == 0 and q.numel() == 0:  # an image without annotations: [] -> (0,4), (0,2)
            b, q = b.reshape(0, 4), q.reshape(0, 2)
        if b.ndim != 2 or b.shape[1] != 4 or q.ndim != 2 or q.shape[1] != 2 or len(b) != len(q):
            raise ValueError(f"image {i}: prompts need boxes (K,4) and points (K,2), got {tuple(b.shape)}, {tuple(q.shape)}")
        boxes.append(b)
        points.append(q)
    return boxes, points


def prompt_kd_step(student: EdgeSAM, teacher_pd: PromptDecoder, images: torch.Tensor, teacher_emb: torch.Tensor,
                   prompts: Sequence[PromptSet], input_hw: Sequence[tuple[int, int]], kind: str,
                   decode_iters: int = 2, generator: torch.Generator | None = None, bce_weight: float = 5.0,
                   dice_weight: float = 5.0, min_pixels: int = 10, target: str = "teacher",
                   gt_masks: Sequence[torch.Tensor] | None = None, gt_weight: float = 1.0
                   ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Stage 2: prompt-in-the-loop KD (method doc §5.3, §5.4).

    images (B,3,S,S); teacher_emb (B,256,S/16,S/16) cached teacher embeddings (fp16 ok, cast to fp32);
    prompts: per image boxes (K_i,4) XYXY and points (K_i,2) in the input frame; kind "box" | "point".

    All prompts of the batch are decoded together, each with its own image's embedding
    (``repeat_interleave``). Iteration 0 uses the GT prompts; each later iteration appends one click drawn
    from the student/teacher disagreement (teacher best-IoU token for point prompts, token 0 for boxes).
    The previous mask is not fed back. Box prompts are distilled on token 0, point prompts on all 4 tokens
    (index-matched). The teacher decoder runs under no_grad with its own prompt encoder, which equals the
    student's after INIT_FROM_TEACHER (the student's is frozen). Loss = sum over iterations / decode_iters.

    ``target`` "teacher" is the paper's recipe. "gt" trains on ground-truth masks instead (``gt_masks``: per
    image (K_i, S/4, S/4) bool, aligned with the prompts; :func:`gt_mask_loss`), with refinement clicks from
    the student/GT disagreement on token 0 and no teacher decoder call; "teacher+gt" adds ``gt_weight`` times
    the GT loss to the teacher loss (clicks from the teacher disagreement). GT targets are for users whose
    data has masks, and for sets where the teacher is weak.
    """
    if target not in MASK_TARGETS:
        raise ValueError(f"target must be one of {MASK_TARGETS}, got {target!r}")
    use_teacher, use_gt = target != "gt", target != "teacher"
    if use_gt and (gt_masks is None or len(gt_masks) != len(prompts)):
        raise ValueError(f"target {target!r} needs gt_masks for each of the {len(prompts)} images")
    if kind not in PROMPT_KINDS:
        raise ValueError(f"kind must be one of {PROMPT_KINDS}, got {kind!r}")
    if decode_iters < 1:
        raise ValueError(f"decode_iters must be >= 1, got {decode_iters}")
    b = images.shape[0]
    if len(prompts) != b or len(input_hw) != b or teacher_emb.shape[0] != b:
        raise ValueError(f"batch mismatch: {b} images, {len(prompts)} prompt sets, {len(input_hw)} input_hw, "
                         f"{teacher_emb.shape[0]} teacher embeddings")
    img_size = student.img_size
    student_emb = student.embed(images)
    if teacher_emb.shape != student_emb.shape:
        raise ValueError(f"teacher embedding {tuple(teacher_emb.shape)} != student {tuple(student_emb.shape)}")
    device = student_emb.device
    boxes, points = _prompt_tensors(prompts, device)
    counts = torch.tensor([len(x) for x in boxes], device=device)
    n = int(counts.sum())
    if n == 0:  # keep the graph connected so DDP and backward still work
        zero = student_emb.sum() * 0.0
        gt_zero = {k: torch.zeros(()) for k in ("gt_bce", "gt_dice", "iou_mse")} if use_gt else {}
        return zero, {"bce": zero.detach(), "dice": zero.detach(), "num_prompts": torch.zeros(()),
                      "mask_iou": torch.zeros(()), "ignored_clicks": torch.zeros(()), **gt_zero}

    image_idx = torch.repeat_interleave(torch.arange(b, device=device), counts)
    s_emb = student_emb[image_idx]  # (N,256,h,w), gradients accumulate back per image
    t_emb = teacher_emb.to(device, student_emb.dtype)[image_idx] if use_teacher else None  # gt: no teacher decode
    side = student_emb.shape[-1] * 4
    valid = decoder_valid_mask(input_hw, img_size, side, device=device)[image_idx]  # (N,1,H,W) soft
    valid_hard = valid[:, 0] > 0
    gt = None
    if use_gt:
        for i, (g, bx) in enumerate(zip(gt_masks, boxes)):
            if tuple(g.shape) != (len(bx), side, side):
                raise ValueError(f"image {i}: gt_masks must be ({len(bx)},{side},{side}), got {tuple(g.shape)}")
        gt = torch.cat([g.to(device).bool() for g in gt_masks])
    coords, labels = make_prompt_batch(kind, torch.cat(boxes), torch.cat(points))
    coords, labels = coords.to(device), labels.to(device)

    total = student_emb.new_zeros(())
    bce_sum, dice_sum = student_emb.new_zeros(()), student_emb.new_zeros(())
    mask_iou, ignored = torch.zeros(()), torch.zeros(())
    gt_parts: dict[str, torch.Tensor] = {}
    for it in range(decode_iters):
        s_logits, s_iou = decode_prompts(student.prompt_encoder, student.mask_decoder, s_emb, coords, labels)
        if use_teacher:
            with torch.no_grad():
                t_logits, t_iou = teacher_pd(t_emb, coords, labels)
            tokens = slice(0, 1) if kind == "box" else slice(0, 4)
            loss, parts = bce_dice_loss(s_logits[:, tokens], t_logits[:, tokens], valid, bce_weight, dice_weight)
            total = total + loss / decode_iters
            bce_sum, dice_sum = bce_sum + parts["bce"] / decode_iters, dice_sum + parts["dice"] / decode_iters
        if use_gt:
            # a single point is ambiguous (multimask); boxes and refinement iterations train token 0 only
            g_loss, g_parts = gt_mask_loss(s_logits, s_iou, gt, valid, multimask=kind == "point" and it == 0,
                                           bce_weight=bce_weight, dice_weight=dice_weight)
            total = total + (gt_weight if use_teacher else 1.0) * g_loss / decode_iters
            for k, v in g_parts.items():
                gt_parts[k] = gt_parts.get(k, 0.0) + v / decode_iters  # stays on the device: no sync
        with torch.no_grad():
            if not use_teacher:
                s_pick, t_pick = s_logits[:, 0], gt
            elif kind == "box":
                s_pick, t_pick = s_logits[:, 0], t_logits[:, 0]
            else:
                s_pick, t_pick = pick_tokens(s_logits, t_iou), pick_tokens(t_logits, t_iou)
            if it == 0:
                sm, tm = (s_pick > 0) & valid_hard, (t_pick > 0) & valid_hard
                union = (sm | tm).sum((-1, -2))
                mask_iou = torch.where(union > 0, (sm & tm).sum((-1, -2)) / union.clamp(min=1), 1.0).mean()
            if it < decode_iters - 1:
                new_c, new_l = sample_refinement_points(s_pick, t_pick, valid_hard, generator, min_pixels, img_size)
                coords, labels = append_points(coords, labels, new_c, new_l)
                ignored = (new_l == IGNORE).float().mean()
    metrics = {"bce": bce_sum, "dice": dice_sum, "num_prompts": torch.tensor(float(n)),
               "mask_iou": mask_iou.detach(), "ignored_clicks": ignored.detach(), **gt_parts}
    return total, metrics
