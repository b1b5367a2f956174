"""Per-iteration learning-rate schedule: linear warm-up then cosine decay (method doc §4, §5.5).

Difference from the reference: timm's ``CosineLRScheduler(warmup_prefix=False)`` evaluates the cosine
on the absolute step over all ``total_steps`` (so when warm-up ends the lr is already partly decayed),
whereas this schedule reaches ``base_lr`` exactly at the end of warm-up and spreads the cosine over the
remaining ``total_steps - warmup_steps`` steps.
"""
from __future__ import annotations

import math

import torch
from torch.optim.lr_scheduler import LambdaLR


def lr_at(step: int, total_steps: int, warmup_steps: int, base_lr: float, min_lr: float, warmup_lr: float) -> float:
    """Learning rate after ``step`` scheduler steps (step 0 = the first optimizer step)."""
    if step < warmup_steps:
        return warmup_lr + (base_lr - warmup_lr) * step / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_lr + 0.5 * (base_lr - min_lr) * (1.0 + math.cos(math.pi * progress))


def cosine_with_warmup(optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int, base_lr: float,
                       min_lr: float, warmup_lr: float) -> LambdaLR:
    """A ``LambdaLR`` stepping per iteration. Every param group's lr is driven to :func:`lr_at` values
    (the groups' own ``lr`` is overwritten by ``base_lr``). Call ``scheduler.step()`` after each
    ``optimizer.step()``; past ``total_steps`` the lr stays at ``min_lr``.
    """
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    if not 0 <= warmup_steps <= total_steps:
        raise ValueError(f"warmup_steps must be in [0, total_steps={total_steps}], got {warmup_steps}")
    if base_lr <= 0 or min_lr < 0 or warmup_lr < 0:
        raise ValueError(f"need base_lr > 0 and min_lr, warmup_lr >= 0; got {base_lr}, {min_lr}, {warmup_lr}")
    for group in optimizer.param_groups:
        group["lr"] = base_lr
        group["initial_lr"] = base_lr

    def factor(step: int) -> float:
        return lr_at(step, total_steps, warmup_steps, base_lr, min_lr, warmup_lr) / base_lr

    return LambdaLR(optimizer, factor)
