"""Distillation library prompts without Ray: GT prompt sampling and prompt batches, refinement clicks in the
error regions, token picking, centre clicks, and training batches with GT masks decoded from cache rows."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from edgesam.distill import (centre_click, make_prompt_batch, pick_tokens, sample_error_points, sample_gt_prompts,
                             sample_refinement_points)
from tests.distill_lib_shapes import S


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
