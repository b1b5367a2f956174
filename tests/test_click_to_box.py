"""Click -> RPN box (paper rule), the click+rpn evaluation kind, ClickBoxPredictor; RPN targets from all GT boxes."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from edgesam.eval.miou import EvalSample, evaluate_model, run_protocol
from edgesam.inference.click_to_box import (CLICK_RPN, ClickBoxPredictor, click_box_prompts, decode_with_optional_box,
                                            select_boxes)
from edgesam.models import EdgeSAM
from edgesam.models.rpn import build_rpn

S = 128


def test_select_boxes_follows_the_paper_rule():
    boxes = torch.tensor([[0.0, 0, 100, 100],    # 0 contains the click, centre far, best score
                          [40, 40, 60, 60],      # 1 contains, centre at the click
                          [45, 45, 56, 56],      # 2 contains, near
                          [30, 30, 70, 70],      # 3 contains, near
                          [42, 42, 62, 58],      # 4 contains, near
                          [35, 35, 66, 66],      # 5 contains, near
                          [200, 200, 220, 220]])  # 6 does not contain
    scores = torch.tensor([0.99, 0.5, 0.6, 0.7, 0.4, 0.3, 1.0])
    chosen, has = select_boxes(torch.tensor([[50.0, 50.0], [150.0, 150.0], [210.0, 210.0]]), boxes, scores, k=5)
    assert has.tolist() == [True, False, True]
    # centre distances to (50,50): 0, 0, 0.7, 0, 2, 0.7 -> the 5 nearest leave out box 4; best score: box 0
    assert chosen[0].tolist() == boxes[0].tolist()
    assert chosen[1].tolist() == [0, 0, 0, 0] and chosen[2].tolist() == boxes[6].tolist()
    # move box 0's centre away: now it is not among the 5 nearest, and the best of 1-5 (box 3) wins
    boxes[0] = torch.tensor([0.0, 0, 100, 160])
    chosen, has = select_boxes(torch.tensor([[50.0, 50.0]]), boxes, scores, k=5)
    assert chosen[0].tolist() == boxes[3].tolist()
    chosen, _ = select_boxes(torch.tensor([[50.0, 50.0]]), boxes, scores, k=6)  # with k=6 box 0 is in reach
    assert chosen[0].tolist() == boxes[0].tolist()
    chosen, has = select_boxes(torch.tensor([[5.0, 5.0]]), torch.zeros(0, 4), torch.zeros(0))
    assert not has.any() and chosen.shape == (1, 4)


@pytest.fixture(scope="module")
def model() -> EdgeSAM:
    torch.manual_seed(0)
    m = EdgeSAM(S).eval()
    m.rpn = build_rpn(m.image_encoder.feature_channels, width=32, gn_groups=8).eval()
    return m


def _decode(model):
    return lambda e, c, l: model.decode(e, c, l)


@torch.no_grad()
def test_optional_box_rows_decode_like_point_and_point_plus_box(model):
    emb = torch.randn(1, 256, S // 16, S // 16)
    clicks = torch.tensor([[20.0, 30.0], [60.0, 64.0], [100.0, 90.0]])
    boxes = torch.tensor([[10.0, 10, 40, 50], [0, 0, 0, 0], [80, 70, 120, 110]])
    has = torch.tensor([True, False, True])
    coords, labels = click_box_prompts(clicks, boxes, has)
    logits, iou = decode_with_optional_box(_decode(model), has)(emb, coords, labels)
    pt_c = torch.cat([clicks[1:2, None], torch.zeros(1, 1, 2)], 1)
    pt_logits, pt_iou = model.decode(emb, pt_c, torch.tensor([[1.0, -1.0]]))
    assert torch.allclose(logits[1], pt_logits[0], atol=1e-5) and torch.allclose(iou[1], pt_iou[0], atol=1e-5)
    bx_c = torch.cat([clicks[[0, 2], None], boxes[[0, 2]].view(2, 2, 2)], 1)
    bx_logits, _ = model.decode(emb, bx_c, torch.tensor([[1.0, 2.0, 3.0]]).expand(2, 3))
    assert torch.allclose(logits[[0, 2]], bx_logits, atol=1e-5)


def _sample() -> EvalSample:
    m = np.zeros((2, 96, 128), bool)
    m[0, 10:40, 10:50] = True
    m[1, 50:90, 70:120] = True
    boxes = np.array([[10, 10, 50, 40], [70, 50, 120, 90]], np.float32)
    return EvalSample("s", (96, 128), (96, 128), boxes, gt_masks=m)


@torch.no_grad()
def test_click_rpn_kind_is_point_without_proposals_and_point_plus_box_with_them(model):
    sample = _sample()
    emb = torch.randn(1, 256, S // 16, S // 16)
    no_props = (torch.zeros(0, 4), torch.zeros(0))
    gt_props = (torch.from_numpy(sample.boxes), torch.tensor([0.9, 0.8]))
    kw = dict(refine_iters=1)
    point = evaluate_model(_decode(model), [emb], [sample], S, kinds=("point",), **kw)
    box_free = evaluate_model(_decode(model), [emb], [sample], S, kinds=(CLICK_RPN,), proposals=[no_props], **kw)
    assert box_free[CLICK_RPN] == pytest.approx(point["point"], abs=1e-9)  # same prompts, same refinement seed
    with_box = evaluate_model(_decode(model), [emb], [sample], S, kinds=(CLICK_RPN,), proposals=[gt_props], **kw)
    assert with_box[CLICK_RPN] != pytest.approx(point["point"])
    # the iteration-0 prompt is [click, GT box corners]
    trace = run_protocol(_decode(model), emb, sample, CLICK_RPN, S, centres=np.array([[30, 25], [95, 70]], np.float32),
                         gt_lowres=torch.zeros(2, S // 4, S // 4, dtype=torch.bool), refine_iters=0, proposals=gt_props)
    assert trace.labels.tolist() == [[1, 2, 3], [1, 2, 3]]
    assert torch.equal(trace.coords[:, 1:].reshape(2, 4), gt_props[0])
    with pytest.raises(ValueError, match="proposals"):
        evaluate_model(_decode(model), [emb], [sample], S, kinds=(CLICK_RPN,))


def test_click_box_predictor_uses_the_chosen_box(model):
    pred = ClickBoxPredictor.from_model(model, score_thresh=0.0)
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (150, 200, 3), dtype=np.uint8)
    pred.set_image(image)
    boxes, scores = pred.proposals
    assert len(boxes) > 0 and bool((scores[:-1] >= scores[1:]).all())
    found = None
    for x, y in [(100, 75), (50, 40), (150, 110), (20, 20)]:
        box = pred.box_for_click(np.array([x, y]))
        if box is not None:
            found = (x, y, box)
            break
    assert found is not None, "a random RPN with threshold 0 has proposals around the image centre"
    x, y, box = found
    assert box[0] <= x <= box[2] and box[1] <= y <= box[3] and (box >= 0).all() and box[2] <= 200 and box[3] <= 150
    masks, sc, low, used = pred.predict_click(np.array([x, y]))
    ref_masks, _, ref_low = pred.predictor.predict(np.array([[x, y]]), np.array([1]), box, multimask_output=False,
                                                   use_stability_score=True)
    assert np.array_equal(used, box) and np.array_equal(masks, ref_masks) and np.allclose(low, ref_low)
    pred.proposals = (torch.zeros(0, 4), torch.zeros(0))
    masks, _, low, used = pred.predict_click(np.array([x, y]))
    ref_masks, _, ref_low = pred.predictor.predict(np.array([[x, y]]), np.array([1]), multimask_output=False,
                                                   use_stability_score=True)
    assert used is None and np.array_equal(masks, ref_masks)


def test_rpn_targets_are_all_gt_boxes():
    """Step 3 trains on every GT box of an image, not on the <= max_prompts sampled prompts."""
    import pyarrow as pa

    from edgesam.data.cache import Preprocessing, preprocess_row
    from edgesam.data.synthetic_dense import dense_sa1b_record
    from pipelines.distill_loop import decode_batch

    pre = Preprocessing(img_size=S, num_prompts=4)
    jpeg, doc = dense_sa1b_record(0, 0, size=(120, 160), min_masks=30)
    row = preprocess_row({"image_id": "d0", "source": "mem", "image_bytes": jpeg,
                          "annotations_json": json.dumps(doc["annotations"]), "skip_reason": None}, pre)
    row["embedding"] = np.zeros((256, S // 16, S // 16), np.float16).tobytes()
    batch = decode_batch(pa.Table.from_pylist([row]), S, torch.device("cpu"), max_prompts=4, rng=np.random.default_rng(0))
    k = len(doc["annotations"])
    assert k >= 30 and len(batch["prompts"][0]["boxes"]) == 4
    assert torch.equal(batch["gt_boxes"][0], torch.tensor(row["gt_boxes"]).view(-1, 4)) and len(batch["gt_boxes"][0]) == k
