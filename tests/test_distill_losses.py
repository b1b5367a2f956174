"""Distillation library losses without Ray: the embedding validity mask, masked embedding MSE, BCE + Dice
(against hand computations) and the GT mask loss."""
from __future__ import annotations

import math

import pytest
import torch

from edgesam.distill import bce_dice_loss, embedding_valid_mask, masked_embedding_mse
from tests.distill_lib_shapes import INPUT_HW, S


def test_embedding_valid_mask_counts():
    valid = embedding_valid_mask([(256, 192), (160, 256), (200, 250)], S, 16)
    assert valid.shape == (3, 1, 16, 16) and valid.dtype == torch.bool
    assert valid[0, 0].sum() == 16 * 12 and valid[0, 0, :, :12].all() and not valid[0, 0, :, 12:].any()
    assert valid[1, 0].sum() == 10 * 16 and valid[1, 0, :10].all()
    # h = 200: row 12 samples pixel 199.5, half inside (0.5, not > 0.5); w = 250: column 15 samples 247.5, inside
    assert valid[2, 0].sum() == 12 * 16 and valid[2, 0, :12].all()
    with pytest.raises(ValueError, match="within"):
        embedding_valid_mask([(300, 10)], S, 16)


def test_masked_mse_matches_hand_computation_and_ignores_padding():
    g = torch.Generator().manual_seed(1)
    student, teacher = torch.randn(2, 256, 16, 16, generator=g), torch.randn(2, 256, 16, 16, generator=g)
    valid = embedding_valid_mask(INPUT_HW, S, 16)
    loss = masked_embedding_mse(student, teacher, valid)
    per_image = []
    for b in range(2):
        total, count = 0.0, 0
        for y in range(16):
            for x in range(16):
                if valid[b, 0, y, x]:
                    total += float(((student[b, :, y, x] - teacher[b, :, y, x]) ** 2).mean())
                    count += 1
        per_image.append(total / count)
    assert loss.item() == pytest.approx(sum(per_image) / 2, rel=1e-5)
    changed = student.clone()
    changed[~valid.expand_as(changed)] = 1e6
    changed[0, :, 0, 15] = float("inf")  # a padded pixel of image 0 (column 15 >= 12)
    assert masked_embedding_mse(changed, teacher, valid).item() == pytest.approx(loss.item(), rel=1e-6)
    with pytest.raises(ValueError):
        masked_embedding_mse(student, teacher[:, :128], valid)


def _hand_bce_dice(s: list[float], t_logits: list[float], v: list[float]) -> tuple[float, float]:
    t = [1.0 if x > 0 else 0.0 for x in t_logits]
    bce_terms = [math.log1p(math.exp(si)) - si * ti for si, ti in zip(s, t)]
    bce = sum(b * vi for b, vi in zip(bce_terms, v)) / sum(v)
    p = [1 / (1 + math.exp(-si)) * vi for si, vi in zip(s, v)]
    tv = [ti * vi for ti, vi in zip(t, v)]
    dice = 1 - (2 * sum(pi * ti for pi, ti in zip(p, tv)) + 1) / (sum(p) + sum(tv) + 1)
    return bce, dice


def test_bce_dice_matches_hand_computation():
    s = [[2.0, -1.0, 0.5, 1.5], [-0.3, 0.8, -2.0, 0.1]]
    t = [[1.0, -3.0, -0.2, 2.0], [0.4, 0.9, -1.0, -0.5]]
    v = [1.0, 1.0, 0.5, 0.0]  # soft validity: half-covered and padded pixels
    total, parts = bce_dice_loss(torch.tensor(s).view(1, 2, 1, 4), torch.tensor(t).view(1, 2, 1, 4),
                                 torch.tensor(v).view(1, 1, 1, 4), bce_weight=5.0, dice_weight=5.0)
    hand = [_hand_bce_dice(s[i], t[i], v) for i in range(2)]
    bce, dice = sum(h[0] for h in hand) / 2, sum(h[1] for h in hand) / 2
    assert parts["bce"].item() == pytest.approx(bce, rel=1e-5)
    assert parts["dice"].item() == pytest.approx(dice, rel=1e-5)
    assert total.item() == pytest.approx(5 * bce + 5 * dice, rel=1e-5)
    # a bool teacher mask is taken as the target directly
    total_bool, _ = bce_dice_loss(torch.tensor(s).view(1, 2, 1, 4), torch.tensor(t).view(1, 2, 1, 4) > 0,
                                  torch.tensor(v).view(1, 1, 1, 4))
    assert total_bool.item() == pytest.approx(total.item(), rel=1e-6)


def test_bce_dice_near_zero_when_student_agrees():
    g = torch.Generator().manual_seed(2)
    teacher = torch.randn(3, 4, 32, 32, generator=g)
    teacher[2] = -1.0  # an empty target: Dice smoothing keeps it at 0
    valid = torch.ones(3, 1, 32, 32)
    valid[..., 24:] = 0
    total, parts = bce_dice_loss(50.0 * torch.sign(teacher), teacher, valid)
    assert total.item() < 1e-6 and parts["bce"].item() < 1e-12 and parts["dice"].item() < 1e-6
    wrong, _ = bce_dice_loss(-50.0 * torch.sign(teacher), teacher, valid)
    assert wrong.item() > 100


def test_gt_mask_loss_min_over_tokens_and_iou_head():
    from edgesam.distill.losses import gt_mask_loss

    gt = torch.zeros(1, 8, 8, dtype=torch.bool)
    gt[0, 2:6, 2:6] = True
    sign = torch.where(gt, 20.0, -20.0)
    logits = torch.stack([-sign[0], sign[0], -sign[0], -sign[0]])[None]  # only token 1 is right
    valid = torch.ones(1, 1, 8, 8)
    iou = torch.tensor([[0.0, 1.0, 0.0, 0.0]])  # the actual IoUs: token 1 is exact, the others share nothing
    single, parts = gt_mask_loss(logits, iou, gt, valid, multimask=False)
    multi, _ = gt_mask_loss(logits, iou, gt, valid, multimask=True)
    # token 0 is wrong in both; multimask adds only the best of 1-3 (token 1, ~0 loss)
    assert single.item() > 5.0 and multi.item() == pytest.approx(single.item(), abs=1e-3)
    assert parts["iou_mse"].item() == pytest.approx(0.0, abs=1e-6)
    right = torch.stack([sign[0]] * 4)[None]
    good, parts = gt_mask_loss(right, torch.ones(1, 4), gt, valid, multimask=True)
    assert good.item() < 1e-3 and parts["gt_dice"].item() < 1e-3
    bad_iou, parts = gt_mask_loss(right, torch.zeros(1, 4), gt, valid, multimask=True)
    assert parts["iou_mse"].item() == pytest.approx(1.0) and bad_iou.item() == pytest.approx(good.item() + 1.0, abs=1e-3)
    with pytest.raises(ValueError, match="gt"):
        gt_mask_loss(logits, iou, gt[:, :4], valid, multimask=False)
