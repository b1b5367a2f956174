"""Distillation library without Ray: losses, prompt sampling, step functions, lr schedule.

Models are randomly initialised (no weights can be downloaded): a tiny SAM teacher and EdgeSAM at 256 px.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from edgesam.distill import (bce_dice_loss, centre_click, cosine_with_warmup, embedding_valid_mask, encoder_kd_step,
                             freeze_for_prompt_kd, lr_at, make_prompt_batch, masked_embedding_mse, pick_tokens,
                             prompt_kd_step, sample_error_points, sample_gt_prompts, sample_refinement_points)
from edgesam.models import EdgeSAM, build_teacher

S = 256
INPUT_HW = [(256, 192), (160, 256)]


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


# ----------------------------------------------------------------------------------------------- losses
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


# ---------------------------------------------------------------------------------------------- prompts
def test_sample_gt_prompts_and_prompt_batch():
    boxes, points = np.zeros((40, 4), np.float32), np.zeros((40, 2), np.float32)
    idx = sample_gt_prompts(boxes, points, 16, np.random.default_rng(3))
    assert idx.shape == (16,) and idx.min() >= 0 and idx.max() < 40
    assert np.array_equal(idx, sample_gt_prompts(boxes, points, 16, np.random.default_rng(3)))
    many = np.concatenate([sample_gt_prompts(boxes, points, 16, np.random.default_rng(s)) for s in range(20)])
    assert any(len(set(many[i:i + 16])) < 16 for i in range(0, len(many), 16))  # with replacement
    assert np.array_equal(sample_gt_prompts(boxes[:5], points[:5], 16), np.arange(5))
    assert sample_gt_prompts(boxes[:0], points[:0], 16).shape == (0,)
    with pytest.raises(ValueError, match="points"):
        sample_gt_prompts(boxes, points[:3])

    b = torch.tensor([[10.0, 20.0, 50.0, 60.0], [0.0, 0.0, 5.0, 5.0]])
    coords, labels = make_prompt_batch("box", b)
    assert coords.shape == (2, 2, 2) and coords[0].tolist() == [[10.0, 20.0], [50.0, 60.0]]
    assert labels.tolist() == [[2.0, 3.0], [2.0, 3.0]]
    coords, labels = make_prompt_batch("point", points=torch.tensor([[7.0, 8.0]]))
    assert coords.tolist() == [[[7.0, 8.0], [0.0, 0.0]]] and labels.tolist() == [[1.0, -1.0]]
    with pytest.raises(ValueError, match="kind"):
        make_prompt_batch("mask", b)
    with pytest.raises(ValueError, match="boxes"):
        make_prompt_batch("box", points=torch.zeros(2, 2))


def _logits(mask: torch.Tensor) -> torch.Tensor:
    return torch.where(mask, 5.0, -5.0)


def test_refinement_points_land_in_error_regions():
    n, h = 6, 16
    student = torch.zeros(n, h, h, dtype=torch.bool)
    teacher = torch.zeros(n, h, h, dtype=torch.bool)
    student[0, 2:6, 2:6] = True                  # FP only -> negative click
    teacher[1, 8:12, 8:12] = True                # FN only -> positive click
    student[2, 0, :3] = True                     # 3 px disagreement -> ignored
    student[3, 4:9, 4:9] = teacher[3, 4:9, 4:9] = True  # agreement -> ignored
    student[4, 0:4, 0:4] = True                  # both kinds
    teacher[4, 10:14, 10:14] = True
    student[5, 12:16, 0:4] = True                # FP in the padding (invalid) ...
    teacher[5, 0:4, 0:4] = True                  # ... FN in the image: always positive
    valid = torch.ones(n, h, h, dtype=torch.bool)
    valid[5, 12:] = False
    coords, labels = sample_refinement_points(_logits(student), _logits(teacher), valid,
                                              torch.Generator().manual_seed(0), min_pixels=10, img_size=64)
    assert coords.shape == (n, 1, 2) and labels.shape == (n, 1)
    assert labels[:, 0].tolist()[:4] == [0.0, 1.0, -2.0, -2.0] and labels[5, 0] == 1.0
    assert coords[2:4].abs().sum() == 0
    grid = (coords[:, 0] / 4).long()  # S/H = 64/16 = 4
    assert (coords[:, 0] % 4 == 0).all()
    x, y = grid[0].tolist()
    assert 2 <= x < 6 and 2 <= y < 6
    x, y = grid[1].tolist()
    assert 8 <= x < 12 and 8 <= y < 12
    seen = set()
    for seed in range(40):
        c, lab = sample_refinement_points(_logits(student[4:6]), _logits(teacher[4:6]), valid[4:6],
                                          torch.Generator().manual_seed(seed), img_size=64)
        x, y = (c[0, 0] / 4).long().tolist()
        assert (student[4, y, x] and not teacher[4, y, x] and lab[0, 0] == 0) or \
               (teacher[4, y, x] and not student[4, y, x] and lab[0, 0] == 1)
        seen.add(lab[0, 0].item())
        x, y = (c[1, 0] / 4).long().tolist()
        assert teacher[5, y, x] and lab[1, 0] == 1
    assert seen == {0.0, 1.0}
    # uniform over the error pixels: 1200 maps with the same 12-pixel FN region, ~100 draws per pixel
    region = torch.zeros(1200, 8, 8, dtype=torch.bool)
    region[:, 2:5, 3:7] = True
    c, lab = sample_error_points(torch.zeros_like(region), region, torch.ones(1, 8, 8, dtype=torch.bool),
                                 torch.Generator().manual_seed(0), min_pixels=10, scale=1.0)
    assert (lab == 1).all()
    hist = torch.zeros(8, 8)
    hist.index_put_((c[:, 0, 1].long(), c[:, 0, 0].long()), torch.ones(1200), accumulate=True)
    assert hist[~region[0]].sum() == 0 and hist[region[0]].min() > 60 and hist[region[0]].max() < 140
    # deterministic given the generator; default scale is SAM's 4 (low-res 256 -> 1024)
    c1, _ = sample_refinement_points(_logits(student), _logits(teacher), valid, torch.Generator().manual_seed(5))
    c2, _ = sample_error_points(student, teacher, valid, torch.Generator().manual_seed(5))
    assert torch.equal(c1, c2)


def test_pick_tokens_uses_teacher_iou():
    logits = torch.arange(2 * 4 * 2 * 2, dtype=torch.float32).view(2, 4, 2, 2)
    iou = torch.tensor([[0.1, 0.9, 0.2, 0.3], [0.5, 0.1, 0.1, 0.7]])
    picked = pick_tokens(logits, iou)
    assert torch.equal(picked[0], logits[0, 1]) and torch.equal(picked[1], logits[1, 3])


def test_centre_click():
    square = np.zeros((40, 50), bool)
    square[10:21, 20:31] = True  # 11 x 11: unique distance peak at its centre
    assert centre_click(square) == (25, 15)
    rect = np.zeros((40, 50), bool)
    rect[10:21, 5:30] = True     # 11 x 25: a ridge of maxima; the mid-ridge pixel is chosen
    assert centre_click(rect) == (17, 15)
    corner = np.zeros((30, 30), bool)
    corner[:11, :11] = True      # touches the border: padding keeps the click interior
    assert centre_click(corner) == (5, 5)
    ring = np.zeros((40, 40), bool)
    ring[5:35, 5:35] = True
    ring[12:28, 12:28] = False
    x, y = centre_click(ring)
    assert ring[y, x]
    with pytest.raises(ValueError, match="non-empty"):
        centre_click(np.zeros((5, 5), bool))


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


def test_decode_batch_gt_masks_match_the_scene():
    """Cache rows -> training batch with GT masks at S/4, aligned with the (sampled) prompts."""
    import json

    import pyarrow as pa

    from edgesam.data.cache import Preprocessing, preprocess_row
    from edgesam.data.synthetic import sa1b_record
    from edgesam.data.transforms import lowres_masks
    from pipelines.distill_loop import decode_batch

    pre = Preprocessing(img_size=S, num_prompts=8)
    rows, scenes = [], []
    for i in range(2):
        jpeg, doc, masks = sa1b_record(7, i, (200, 300))
        row = preprocess_row({"image_id": f"img{i}", "source": "mem", "image_bytes": jpeg,
                              "annotations_json": json.dumps(doc["annotations"]), "skip_reason": None}, pre)
        assert row["skip_reason"] is None
        row["embedding"] = np.zeros((256, S // 16, S // 16), np.float16).tobytes()
        rows.append(row)
        scenes.append(masks)
    batch = decode_batch(pa.Table.from_pylist(rows), S, torch.device("cpu"), max_prompts=3,
                         rng=np.random.default_rng(0), with_gt_masks=True)
    for r, masks, p, g in zip(rows, scenes, batch["prompts"], batch["gt_masks"]):
        assert g.shape == (len(p["boxes"]), S // 4, S // 4) and g.dtype == torch.bool
        expect = lowres_masks(torch.from_numpy(np.stack(masks)), (r["input_height"], r["input_width"]), S)
        for box, m in zip(p["boxes"], g):  # find the instance this prompt came from by its box
            boxes = torch.tensor(r["gt_boxes"]).view(-1, 4)
            j = int((boxes - box).abs().sum(1).argmin())
            assert torch.equal(m, expect[j])
            ys, xs = torch.nonzero(m, as_tuple=True)
            assert abs(xs.min().item() * 4 - box[0].item()) <= 6 and abs(ys.max().item() * 4 + 4 - box[3].item()) <= 6
    plain = decode_batch(pa.Table.from_pylist(rows), S, torch.device("cpu"), 3, np.random.default_rng(0))
    assert "gt_masks" not in plain
    # an annotation without a mask is never a GT target; the others still are
    rows[0]["gt_rles"] = [""] + rows[0]["gt_rles"][1:]
    part = decode_batch(pa.Table.from_pylist(rows), S, torch.device("cpu"), max_prompts=8,
                        rng=np.random.default_rng(0), with_gt_masks=True)
    k0 = len(rows[0]["gt_rles"])
    assert len(part["prompts"][0]["boxes"]) == k0 - 1 == len(part["gt_masks"][0])
    assert not (part["prompts"][0]["boxes"] == torch.tensor(rows[0]["gt_boxes"][:4])).all(1).any()
