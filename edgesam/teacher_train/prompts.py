"""Training prompts for the teacher (SAM's recipe): noisy GT boxes, points uniform in the mask.

Corrective clicks reuse :func:`edgesam.distill.prompts.sample_error_points` (one pixel uniform in the
error region, FN -> positive, FP -> negative) and the labelled-point conventions of
:mod:`edgesam.models.prompt_decoder`.
"""
from __future__ import annotations

import torch

from ..distill.prompts import make_prompt_batch


def noisy_boxes(boxes: torch.Tensor, img_size: int, generator: torch.Generator, noise: float = 0.1,
                max_px: float = 20.0) -> torch.Tensor:
    """(N,4) XYXY -> jittered (N,4): each coordinate moves by N(0, noise x side length), clipped to
    ``max_px`` (SAM: 10 % of the side, at most 20 px at 1024) and to the frame."""
    wh = (boxes[:, 2:] - boxes[:, :2]).repeat(1, 2)
    jitter = torch.randn(boxes.shape, generator=generator) * noise * wh
    out = boxes + jitter.clamp(-max_px, max_px)
    out = out.clamp(0, img_size)
    lo, hi = torch.minimum(out[:, :2], out[:, 2:]), torch.maximum(out[:, :2], out[:, 2:])
    return torch.cat([lo, hi], dim=1)


def uniform_points(masks: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """(N,S,S) bool non-empty masks -> (N,2) x-y of one pixel drawn uniformly from each mask (pixel centre
    convention of the prompt encoder: integer coordinates, it adds 0.5)."""
    n, _, w = masks.shape
    flat = masks.reshape(n, -1).float()
    idx = torch.multinomial(flat, 1, generator=generator)[:, 0]
    return torch.stack([idx % w, idx // w], dim=1).float()


def initial_prompts(kind: str, masks: torch.Tensor, boxes: torch.Tensor, img_size: int,
                    generator: torch.Generator, box_noise: float = 0.1, box_noise_max_px: float = 5.0
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Box (jittered) or single point (uniform in the GT mask) -> (coords (N,2,2), labels (N,2))."""
    if kind == "box":
        return make_prompt_batch("box", boxes=noisy_boxes(boxes, img_size, generator, box_noise, box_noise_max_px))
    return make_prompt_batch("point", points=uniform_points(masks, generator))
