"""Distillation library step functions without Ray: encoder KD and prompt KD steps (gradients, both prompt kinds,
GT targets, learning) and the lr schedule.

Models are randomly initialised (no weights can be downloaded): a tiny SAM teacher and EdgeSAM at 256 px.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from edgesam.distill import cosine_with_warmup, encoder_kd_step, freeze_for_prompt_kd, lr_at, prompt_kd_step
from edgesam.models import EdgeSAM, build_teacher
from tests.distill_lib_shapes import INPUT_HW, S


@pytest.fixture(scope="module")
def synthetic() -> dict:
    """Two padded 'images' (random texture inside the input frame, zero padding) and tiny-teacher embeddings."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    images = torch.randn(2, 3, S, S, generator=g)
    for i, (h, w) in enumerate(INPUT_HW):
        images[i, :, h:, :] = 0
        images[i, :, :, w:] = 0
    teacher = build_teacher("tiny", img_size=S)
    return {"images": images, "teacher": teacher, "teacher_emb": teacher.embed(images).half()}


# ------------------------------------------------------------------------------------------------ steps
def test_encoder_kd_step_learns(synthetic):
    torch.manual_seed(0)
    encoder = EdgeSAM(S).image_encoder.train()
    opt = torch.optim.AdamW(encoder.parameters(), lr=3e-3, weight_decay=0.01)
    losses = []
    for _ in range(30):
        loss, metrics = encoder_kd_step(encoder, synthetic["images"], synthetic["teacher_emb"], INPUT_HW, S)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
        assert metrics["mse"].item() == pytest.approx(losses[-1])
    assert losses[-1] < 0.5 * losses[0], losses
    with pytest.raises(ValueError, match="input_hw"):
        encoder_kd_step(encoder, synthetic["images"], synthetic["teacher_emb"], INPUT_HW[:1], S)


def _prompts(seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    out = []
    for (h, w), k in zip(INPUT_HW, (4, 3)):
        x0, y0 = rng.uniform(0, 0.6 * w, k), rng.uniform(0, 0.6 * h, k)
        x1, y1 = x0 + rng.uniform(16, 0.4 * w, k), y0 + rng.uniform(16, 0.4 * h, k)
        boxes = np.stack([x0, y0, x1, y1], 1).astype(np.float32)
        out.append({"boxes": torch.from_numpy(boxes), "points": torch.from_numpy((boxes[:, :2] + boxes[:, 2:]) / 2)})
    return out


def _student_from_teacher(teacher) -> EdgeSAM:
    torch.manual_seed(0)
    student = EdgeSAM(S)
    # INIT_FROM_TEACHER: the student's prompt encoder / decoder start as the teacher's
    student.prompt_encoder.load_state_dict(teacher.prompt_decoder.prompt_encoder.state_dict())
    student.mask_decoder.load_state_dict(teacher.prompt_decoder.mask_decoder.state_dict())
    return freeze_for_prompt_kd(student).train()


def test_prompt_kd_gradients_and_both_kinds(synthetic):
    student = _student_from_teacher(synthetic["teacher"])
    teacher_pd = synthetic["teacher"].prompt_decoder
    gen = torch.Generator().manual_seed(0)
    for kind in ("box", "point"):
        student.zero_grad(set_to_none=True)
        loss, metrics = prompt_kd_step(student, teacher_pd, synthetic["images"], synthetic["teacher_emb"],
                                       _prompts(0), INPUT_HW, kind, decode_iters=2, generator=gen)
        loss.backward()
        assert torch.isfinite(loss) and loss.item() > 0
        assert metrics["num_prompts"].item() == 7 and 0 <= metrics["mask_iou"].item() <= 1
        assert loss.item() == pytest.approx(5 * metrics["bce"].item() + 5 * metrics["dice"].item(), rel=1e-5)
        enc_grad = sum(p.grad.abs().sum().item() for p in student.image_encoder.parameters() if p.grad is not None)
        dec_grad = sum(p.grad.abs().sum().item() for p in student.mask_decoder.output_hypernetworks_mlps.parameters())
        assert enc_grad > 0 and dec_grad > 0
        assert all(p.grad is None for p in student.prompt_encoder.parameters())
        assert all(p.grad is None for p in teacher_pd.parameters())
    with pytest.raises(ValueError, match="kind"):
        prompt_kd_step(student, teacher_pd, synthetic["images"], synthetic["teacher_emb"], _prompts(0), INPUT_HW, "mask")
    with pytest.raises(ValueError, match="batch mismatch"):
        prompt_kd_step(student, teacher_pd, synthetic["images"], synthetic["teacher_emb"], _prompts(0)[:1], INPUT_HW, "box")
    # an image without prompts is fine, a batch without any gives a zero loss that still backprops
    empty = [{"boxes": [], "points": []}, {"boxes": [], "points": []}]
    zero, _ = prompt_kd_step(student, teacher_pd, synthetic["images"], synthetic["teacher_emb"], empty, INPUT_HW, "box")
    zero.backward()
    assert zero.item() == 0.0


def test_prompt_kd_loss_decreases(synthetic):
    student = _student_from_teacher(synthetic["teacher"])
    teacher_pd = synthetic["teacher"].prompt_decoder
    opt = torch.optim.AdamW([p for p in student.parameters() if p.requires_grad], lr=1e-3, weight_decay=0.05)
    gen = torch.Generator().manual_seed(0)
    prompts = _prompts(1)
    losses = []
    for i in range(16):
        loss, _ = prompt_kd_step(student, teacher_pd, synthetic["images"], synthetic["teacher_emb"], prompts, INPUT_HW,
                                 "box" if i % 2 == 0 else "point", decode_iters=2, generator=gen)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-4:]) < 0.8 * sum(losses[:4]), losses


def _box_gt(prompts: list[dict]) -> list[torch.Tensor]:
    """GT masks at S/4 for the prompts: the filled box of each prompt (inside the input frame)."""
    out = []
    for p in prompts:
        m = torch.zeros(len(p["boxes"]), S // 4, S // 4, dtype=torch.bool)
        for j, (x0, y0, x1, y1) in enumerate((p["boxes"] / 4).round().long().tolist()):
            m[j, y0:y1, x0:x1] = True
        out.append(m)
    return out


def test_prompt_kd_gt_target_learns_the_gt(synthetic):
    """target="gt" needs no teacher decoder, and its student/GT IoU rises when fitting the GT boxes."""
    student = _student_from_teacher(synthetic["teacher"])
    opt = torch.optim.AdamW([p for p in student.parameters() if p.requires_grad], lr=1e-3, weight_decay=0.05)
    gen = torch.Generator().manual_seed(0)
    prompts = _prompts(1)
    gt = _box_gt(prompts)
    ious, losses = [], []
    for i in range(16):
        loss, m = prompt_kd_step(student, None, synthetic["images"], synthetic["teacher_emb"], prompts, INPUT_HW,
                                 "box" if i % 2 == 0 else "point", decode_iters=2, generator=gen, target="gt",
                                 gt_masks=gt)
        assert {"gt_bce", "gt_dice", "iou_mse"} <= set(m) and m["bce"].item() == 0.0  # no teacher term
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
        ious.append(m["mask_iou"].item())
    assert sum(losses[-4:]) < 0.7 * sum(losses[:4]), losses
    assert np.mean(ious[-4:]) > np.mean(ious[:4]) + 0.1, ious
    both, m = prompt_kd_step(student, synthetic["teacher"].prompt_decoder, synthetic["images"], synthetic["teacher_emb"],
                             prompts, INPUT_HW, "box", target="teacher+gt", gt_masks=gt, gt_weight=0.5)
    assert m["bce"].item() > 0 and m["gt_bce"].item() > 0
    with pytest.raises(ValueError, match="gt_masks"):
        prompt_kd_step(student, None, synthetic["images"], synthetic["teacher_emb"], prompts, INPUT_HW, "box", target="gt")
    with pytest.raises(ValueError, match="gt_masks must be"):
        prompt_kd_step(student, None, synthetic["images"], synthetic["teacher_emb"], prompts, INPUT_HW, "box",
                       target="gt", gt_masks=[g[:, :8] for g in gt])
    with pytest.raises(ValueError, match="target"):
        prompt_kd_step(student, None, synthetic["images"], synthetic["teacher_emb"], prompts, INPUT_HW, "box", target="x")


# --------------------------------------------------------------------------------------------- schedule
def test_cosine_with_warmup():
    param = torch.nn.Parameter(torch.zeros(2))
    opt = torch.optim.AdamW([param], lr=123.0)
    sched = cosine_with_warmup(opt, total_steps=100, warmup_steps=10, base_lr=1e-2, min_lr=1e-4, warmup_lr=1e-6)
    seen = []
    for _ in range(110):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert seen[0] == pytest.approx(1e-6)
    assert seen[5] == pytest.approx(1e-6 + (1e-2 - 1e-6) * 0.5)
    assert seen[10] == pytest.approx(1e-2)  # base lr exactly at the end of warm-up
    assert seen[55] == pytest.approx((1e-2 + 1e-4) / 2)
    assert seen[100] == pytest.approx(1e-4) and seen[109] == pytest.approx(1e-4)
    assert all(a >= b for a, b in zip(seen[10:], seen[11:]))
    assert seen[37] == pytest.approx(lr_at(37, 100, 10, 1e-2, 1e-4, 1e-6))
    no_warm = cosine_with_warmup(torch.optim.SGD([param], lr=1.0), 10, 0, 1e-4, 1e-5, 0.0)
    assert no_warm.get_last_lr()[0] == pytest.approx(1e-4)
    with pytest.raises(ValueError, match="warmup_steps"):
        cosine_with_warmup(opt, 10, 20, 1e-2, 1e-4, 1e-6)
