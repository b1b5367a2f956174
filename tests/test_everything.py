"""Segment-everything: filters and NMS on hand-made logits/masks, decoder-call counts, record schema, ONNX, eval."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from pycocotools.coco import COCO

from edgesam.data.rle import decode_rle, encode_mask, mask_to_bbox
from edgesam.data.synthetic import make_scene
from edgesam.data.transforms import postprocess_masks, resized_shape
from edgesam.eval.everything_eval import box_recall_hits, coco_segm_ap, evaluate_everything
from edgesam.inference import amg_utils as U
from edgesam.inference.backends import TorchDecoder
from edgesam.inference.everything import EverythingConfig, EverythingGenerator, candidates_from_logits
from edgesam.models import EdgeSAM
from edgesam.models.rpn import build_rpn

S = 256
RECORD_KEYS = {"segmentation", "bbox", "area", "score", "stability_score", "predicted_iou", "point_coords", "crop_box"}


class CountingDecoder:
    """The real torch decoder, recording the (N, P) prompt shape and labels of every call."""

    def __init__(self, inner: TorchDecoder) -> None:
        self.inner, self.name, self.device = inner, inner.name, inner.device
        self.calls: list[tuple[int, int]] = []
        self.labels: list[np.ndarray] = []

    def __call__(self, embedding, point_coords, point_labels, mask_input=None):
        self.calls.append(tuple(point_coords.shape[:2]))
        self.labels.append(np.asarray(point_labels))
        return self.inner(embedding, point_coords, point_labels, mask_input)

    def decode_tensors(self, embedding, point_coords, point_labels, mask_input=None):
        assert isinstance(embedding, torch.Tensor)  # the torch path never goes through numpy
        self.calls.append(tuple(point_coords.shape[:2]))
        self.labels.append(point_labels.cpu().numpy())
        return self.inner.decode_tensors(embedding, point_coords, point_labels, mask_input)


@pytest.fixture(scope="module")
def model() -> EdgeSAM:
    torch.manual_seed(0)
    m = EdgeSAM(S).eval()
    m.rpn = build_rpn(m.image_encoder.feature_channels, width=32, gn_groups=8).eval()
    return m


@pytest.fixture(scope="module")
def scenes() -> list[tuple[np.ndarray, list[np.ndarray]]]:
    rng = np.random.default_rng(3)
    return [make_scene(rng, 200, 300), make_scene(rng, 240, 180)]


def _generator(model: EdgeSAM, **cfg) -> tuple[EverythingGenerator, CountingDecoder]:
    gen = EverythingGenerator.from_model(model, EverythingConfig(**cfg))
    gen.decoder = CountingDecoder(gen.decoder)
    return gen, gen.decoder


# -- amg_utils on hand-made masks ---------------------------------------------------------------------------
def _square(y0, y1, x0, x1, hw=(100, 100)) -> np.ndarray:
    m = np.zeros(hw, bool)
    m[y0:y1, x0:x1] = True
    return m


def test_mask_nms_removes_duplicates():
    a = _square(10, 60, 10, 60)
    a2 = _square(12, 60, 10, 60)  # IoU with a = 48/50 = 0.96
    b = _square(70, 90, 70, 90)  # disjoint
    c = _square(10, 60, 35, 85)  # IoU with a = 1250 / 3750 = 1/3
    rles = U.masks_to_rles(np.stack([a, a2, b, c]))
    iou = U.mask_iou_matrix(rles, rles)
    assert iou[0, 1] == pytest.approx(0.96) and iou[0, 3] == pytest.approx(1 / 3) and iou[0, 2] == 0
    keep = U.mask_nms(rles, np.array([0.9, 0.99, 0.8, 0.7]), iou_thresh=0.7)
    assert keep.tolist() == [1, 2, 3]  # a2 (best) suppresses its duplicate a
    assert U.mask_nms(rles, np.array([0.9, 0.99, 0.8, 0.7]), iou_thresh=0.97).tolist() == [1, 0, 2, 3]
    assert U.mask_nms(rles, np.array([0.9, 0.99, 0.8, 0.7]), 0.7, order=np.array([0, 1, 2, 3])).tolist() == [0, 2, 3]
    assert U.mask_nms([], np.zeros(0), 0.7).tolist() == []


def test_grid_prompts_crops_and_rle_helpers():
    pts = U.grid_points(4, (100, 200))
    assert pts.shape == (16, 2)
    assert pts[0].tolist() == [25.0, 12.5] and pts[-1].tolist() == [175.0, 87.5]
    coords, labels = U.point_prompts(pts)
    assert coords.shape == (16, 2, 2) and labels[0].tolist() == [1, -1]
    coords, labels = U.box_prompts(np.array([[10, 20, 30, 60]]), with_centre_point=True)
    assert coords.tolist() == [[[20, 40], [10, 20], [30, 60]]] and labels.tolist() == [[1, 2, 3]]
    boxes, layers = U.crop_boxes((100, 200), 1, 512 / 1500)
    assert boxes[0] == [0, 0, 200, 100] and len(boxes) == 5 and layers == [0, 1, 1, 1, 1]
    m = _square(5, 20, 30, 70, (40, 80))
    rle = U.masks_to_rles(m[None])[0]
    assert isinstance(rle["counts"], str) and rle["size"] == [40, 80]
    area, bbox = U.rle_area_bbox([rle])
    assert area.tolist() == [15 * 40] and bbox[0].tolist() == mask_to_bbox(m)
    full = U.uncrop_rle(rle, [10, 5, 90, 45], (60, 100))
    assert np.array_equal(decode_rle(full)[5:45, 10:90], m) and decode_rle(full).sum() == m.sum()
    near = U.near_crop_edge(np.array([[0, 10, 30, 30], [30, 10, 50, 30]]), [50, 0, 100, 60], [0, 0, 100, 60])
    assert near.tolist() == [True, False]  # touches the inner (left) crop edge / does not


# -- filters on hand-made logits -----------------------------------------------------------------------------
def test_filters_on_hand_made_logits():
    orig_hw = (200, 300)
    input_hw = resized_shape(*orig_hw, S)
    low = S // 4
    logits = np.full((6, 4, low, low), -10.0, np.float32)
    logits[0, 0, 8:24, 16:40] = 10.0  # sharp square: stability 1
    logits[1, 0] = np.linspace(-3, 3, low, dtype=np.float32)[None, :]  # soft ramp: stability 0.5
    logits[2, 0, 30:32, 30:32] = 10.0  # sharp but tiny (~80 px at the original size)
    # logits[3] stays empty
    logits[4, 0, 10:20, 10:20] = 10.0  # sharp, but the IoU head says 0.1
    logits[5, 0, 20:40, 40:60] = 10.0
    iou = np.full((6, 4), 0.9, np.float32)
    iou[4, 0] = 0.1
    cfg = EverythingConfig(num_outputs=1, stability_score_thresh=0.95, pred_iou_thresh=0.5, min_mask_area=200)
    out = candidates_from_logits(logits, iou, cfg, input_hw, orig_hw, S)
    assert [c["prompt"] for c in out] == [0, 5]
    assert all(c["stability"] == 1.0 and c["token"] == 0 for c in out)
    # the RLE is ONE bilinear resize of the low-res valid region to the original size (torch's rule with the
    # composed scale), and agrees with SAM's two-step resize (to S, crop, to the original size) to IoU >= 0.99
    hl, wl = -(-input_hw[0] // 4), -(-input_hw[1] // 4)
    once = F.interpolate(torch.from_numpy(logits[[0, 5], :1, :hl, :wl]), scale_factor=(4 * orig_hw[0] / input_hw[0],
                         4 * orig_hw[1] / input_hw[1]), mode="bilinear", align_corners=False,
                         recompute_scale_factor=False)[:, 0, :orig_hw[0], :orig_hw[1]].numpy() > 0
    twice = postprocess_masks(torch.from_numpy(logits[[0, 5], :1]), input_hw, orig_hw, S)[:, 0].numpy() > 0
    for c, e, e2 in zip(out, once, twice):
        m = decode_rle(c["rle"])
        assert m.shape == orig_hw and np.array_equal(m, e)
        assert (m & e2).sum() / (m | e2).sum() >= 0.99
        assert c["area"] == int(m.sum()) and c["bbox"] == mask_to_bbox(m)
    # and sits where the low-res square says: rows 8..24 / cols 16..40 of the S/4 frame, scaled by 4 * 300/256
    sx, sy = orig_hw[1] / input_hw[1], orig_hw[0] / input_hw[0]
    analytic = np.zeros(orig_hw, bool)
    analytic[round(32 * sy):round(96 * sy), round(64 * sx):round(160 * sx)] = True
    m0 = decode_rle(out[0]["rle"])
    assert (m0 & analytic).sum() / (m0 | analytic).sum() > 0.95
    # relaxing each filter lets its mask through
    relaxed = candidates_from_logits(logits, iou, cfg.model_copy(update={"min_mask_area": 0}), input_hw, orig_hw, S)
    assert [c["prompt"] for c in relaxed] == [0, 2, 5]
    relaxed = candidates_from_logits(logits, iou, cfg.model_copy(update={"stability_score_thresh": 0.4}), input_hw, orig_hw, S)
    assert [c["prompt"] for c in relaxed] == [0, 1, 5]
    relaxed = candidates_from_logits(logits, iou, cfg.model_copy(update={"pred_iou_thresh": 0.0}), input_hw, orig_hw, S)
    assert [c["prompt"] for c in relaxed] == [0, 4, 5]
    # pred_iou_thresh 0 means OFF (SAM): a negative IoU-head prediction does not drop the mask
    neg = iou.copy()
    neg[:, 0] = -0.3
    off = candidates_from_logits(logits, neg, cfg.model_copy(update={"pred_iou_thresh": 0.0}), input_hw, orig_hw, S)
    assert [c["prompt"] for c in off] == [0, 4, 5]
    assert candidates_from_logits(logits, neg, cfg.model_copy(update={"pred_iou_thresh": 0.01}), input_hw, orig_hw, S) == []
    # the empty mask (prompt 3) never passes, even with every threshold at 0
    zero = cfg.model_copy(update={"stability_score_thresh": 0.0, "pred_iou_thresh": 0.0, "min_mask_area": 0})
    assert 3 not in [c["prompt"] for c in candidates_from_logits(logits, neg, zero, input_hw, orig_hw, S)]
    # num_outputs 3 looks at tokens 1..3 only (all empty here)
    assert candidates_from_logits(logits, iou, cfg.model_copy(update={"num_outputs": 3}), input_hw, orig_hw, S) == []


# -- the generator with a real (random) student ------------------------------------------------------------------
def test_grid_mode_emits_points_per_side_squared_prompts_in_batches(model, scenes):
    gen, dec = _generator(model, mode="grid", points_per_side=8, points_per_batch=10, stability_score_thresh=0.0,
                          decoder_chunk={"cpu": 16})
    gen.generate(scenes[0][0])
    assert dec.calls == [(10, 2)] * 6 + [(4, 2)]
    assert all(l[:, 0].tolist() == [1] * len(l) and l[:, 1].tolist() == [-1] * len(l) for l in dec.labels)
    assert gen.stats == {"images": 1, "encoder_calls": 1, "decoder_calls": 7, "prompts": 64, "redecoded_prompts": 0}
    assert gen.last_proposals.shape == (0, 5)
    # points_per_batch is an upper bound: decoder_chunk (the memory bound, 8 on the CPU by default) caps it
    gen, dec = _generator(model, mode="grid", points_per_side=8, points_per_batch=64, stability_score_thresh=0.0)
    gen.generate(scenes[0][0])
    assert dec.calls == [(8, 2)] * 8


def test_rpn_mode_one_decoder_call_per_image_and_crop(model, scenes):
    gen, dec = _generator(model, mode="rpn", rpn_score_thresh=0.0, rpn_nms_iou=1.0, max_proposals=12,
                          stability_score_thresh=0.0, decoder_chunk={"cpu": 16})
    for img, _ in scenes:
        gen.generate(img)
    assert dec.calls == [(12, 2), (12, 2)]
    assert gen.stats["decoder_calls"] == 2 and gen.stats["encoder_calls"] == 2
    assert gen.last_proposals.shape == (12, 5)
    h, w = scenes[1][0].shape[:2]
    p = gen.last_proposals
    assert (p[:, 0] >= 0).all() and (p[:, 2] <= w + 1e-3).all() and (p[:, 3] <= h + 1e-3).all()
    assert (np.diff(p[:, 4]) <= 0).all()

    gen, dec = _generator(model, mode="rpn", prompt="box+point", rpn_score_thresh=0.0, rpn_nms_iou=1.0,
                          max_proposals=5, crop_n_layers=1, stability_score_thresh=0.0)
    gen.generate(scenes[0][0])
    assert dec.calls == [(5, 3)] * 5  # whole image + 4 crops, one call each
    assert all((l == np.array([1, 2, 3])).all() for l in dec.labels)


def test_records_schema_rle_bbox_area_and_nms(model, scenes):
    img = scenes[0][0]
    h, w = img.shape[:2]
    loose, _ = _generator(model, mode="rpn", num_outputs=3, rpn_score_thresh=0.0, max_proposals=20,
                          stability_score_thresh=0.0, mask_nms_iou=1.0)
    n_all = len(loose.generate(img))
    gen, _ = _generator(model, mode="rpn", num_outputs=3, rpn_score_thresh=0.0, max_proposals=20,
                        stability_score_thresh=0.0, mask_nms_iou=0.7)
    recs = gen.generate(img)
    assert 0 < len(recs) < n_all  # random masks overlap heavily: NMS removes some
    rles = [r["segmentation"] for r in recs]
    iou = U.mask_iou_matrix(rles, rles)
    # NMS runs on the low-res (S/4) masks, before upsampling: at the original size a kept pair may overlap a
    # little more than the threshold (resize rounding), never much more
    assert (iou[~np.eye(len(recs), dtype=bool)] <= 0.75).all()
    assert [r["score"] for r in recs] == sorted((r["score"] for r in recs), reverse=True)
    for r in recs:
        assert RECORD_KEYS | {"rpn_box", "rpn_score"} == set(r)
        seg = r["segmentation"]
        assert isinstance(seg["counts"], str) and seg["size"] == [h, w]
        m = decode_rle(seg)
        assert r["area"] == int(m.sum()) > 0 and r["bbox"] == mask_to_bbox(m)
        assert r["crop_box"] == [0.0, 0.0, float(w), float(h)]
        x, y = r["point_coords"][0]
        bx, by, bw, bh = r["rpn_box"]
        assert x == pytest.approx(bx + bw / 2, abs=1e-3) and y == pytest.approx(by + bh / 2, abs=1e-3)
    # pycocotools takes them as results
    gt = COCO()
    gt.dataset = {"images": [{"id": 1, "height": h, "width": w}], "categories": [{"id": 1, "name": "object"}],
                  "annotations": []}
    gt.createIndex()
    res = gt.loadRes([{"image_id": 1, "category_id": 1, "segmentation": r["segmentation"], "score": r["score"]} for r in recs])
    assert len(res.getAnnIds()) == len(recs)
    assert [a["area"] for a in res.loadAnns(res.getAnnIds())] == [r["area"] for r in recs]


def test_rpn_mode_needs_an_rpn(model):
    plain = EdgeSAM(S).eval()
    with pytest.raises(ValueError, match="no RPN"):
        EverythingGenerator.from_model(plain, EverythingConfig(mode="rpn"))
    gen = EverythingGenerator.from_model(plain, EverythingConfig(mode="grid", points_per_side=2))
    assert gen.generate(np.zeros((64, 64), np.uint8)) is not None  # grayscale accepted
    with pytest.raises(ValueError):
        EverythingConfig(mode="boxes")


def test_onnx_rpn_mode_matches_torch(model, scenes, tmp_path):
    pytest.importorskip("onnxruntime")
    from edgesam.export.onnx_export import export_all
    from edgesam.export.rpn_onnx import export_rpn_onnx

    files = export_all(model, tmp_path)
    assert files["rpn"] == tmp_path / "rpn.onnx"  # a student with an RPN exports it beside encoder/decoder
    cfg = EverythingConfig(mode="rpn", num_outputs=3, rpn_score_thresh=0.0, max_proposals=10, stability_score_thresh=0.0,
                          decoder_chunk={"cpu": 16})
    files["rpn"].unlink()
    with pytest.raises(FileNotFoundError, match="rpn.onnx"):
        EverythingGenerator.from_onnx(tmp_path, cfg)
    export_rpn_onnx(model, tmp_path / "rpn.onnx")
    onnx_gen = EverythingGenerator.from_onnx(tmp_path, cfg, threads=1)
    torch_gen = EverythingGenerator.from_model(model, cfg)
    img = scenes[0][0]
    a, b = onnx_gen.generate(img), torch_gen.generate(img)
    assert onnx_gen.stats["decoder_calls"] == 1 and onnx_gen.decoder.name.startswith("onnxruntime")
    assert np.abs(onnx_gen.last_proposals - torch_gen.last_proposals).max() < 0.05
    assert abs(len(a) - len(b)) <= 2


# -- evaluation ------------------------------------------------------------------------------------------------
def _eval_image(i: int, masks: list[np.ndarray], preds: list[tuple[np.ndarray, float]], proposals=None) -> dict:
    h, w = masks[0].shape
    return {"id": i, "height": h, "width": w,
            "gt": [{"segmentation": encode_mask(m), "bbox": mask_to_bbox(m)} for m in masks],
            "pred": [{"segmentation": encode_mask(m), "score": s} for m, s in preds], "proposals": proposals}


def test_eval_perfect_predictions(scenes):
    images = []
    for i, (_, masks) in enumerate(scenes):
        boxes = np.array([[b[0], b[1], b[0] + b[2], b[1] + b[3]] for b in map(mask_to_bbox, masks)])
        images.append(_eval_image(i + 1, masks, [(m, 1.0) for m in masks], boxes))
    r = evaluate_everything(images)
    assert r["num_gt"] == r["num_pred"] == sum(len(m) for _, m in scenes)
    assert r["recall@0.5"] == r["recall@0.75"] == r["box_recall@0.5"] == 1.0
    assert r["AP"] == pytest.approx(1.0) and r["AP50"] == pytest.approx(1.0) and r["AP75"] == pytest.approx(1.0)


def test_eval_matches_hand_computation():
    gts = [_square(0, 20, 0, 20), _square(0, 20, 40, 60), _square(50, 70, 0, 20), _square(50, 70, 50, 90)]
    partial = _square(0, 20, 40, 52)  # IoU with gts[1] = 240 / 400 = 0.6
    images = [_eval_image(1, gts, [(gts[0], 0.9), (partial, 0.8)],
                          proposals=np.array([[0, 0, 20, 20], [40, 0, 60, 12], [200, 200, 210, 210]]))]
    r = evaluate_everything(images)
    assert r["recall@0.5"] == 0.5 and r["recall@0.75"] == 0.25
    assert r["box_recall@0.5"] == 0.5  # gt 0 exact; gt 1 at IoU 0.6; gts 2, 3 missed
    assert box_recall_hits(np.array([[40, 0, 60, 12]]), np.array([[40, 0, 60, 20]]), 0.5) == 1
    assert box_recall_hits(np.array([[40, 0, 60, 12]]), np.array([[40, 0, 60, 20]]), 0.7) == 0
    # one GT, a false positive ranked above the true positive: precision 1/2 at every recall -> AP 0.5
    one = [_eval_image(1, [gts[0]], [(gts[3], 0.9), (gts[0], 0.5)])]
    ap = coco_segm_ap(one)
    assert ap["AP"] == pytest.approx(0.5) and ap["AP50"] == pytest.approx(0.5) and ap["AR"] == pytest.approx(1.0)
    assert coco_segm_ap([_eval_image(1, [gts[0]], [])])["AP"] == 0.0
    # polygon GT (COCO style) is accepted
    poly = [{"segmentation": [[0, 0, 20, 0, 20, 20, 0, 20]], "bbox": [0, 0, 20, 20]}]
    r = evaluate_everything([{"id": 1, "height": 100, "width": 100, "gt": poly,
                              "pred": [{"segmentation": encode_mask(gts[0]), "score": 1.0}]}])
    assert r["recall@0.75"] == 1.0 and r["box_recall@0.5"] is None


def test_ranking_score_options():
    from edgesam.inference.everything import EverythingConfig, _score

    assert _score("stability", 0.9, 0.5, 0.4) == 0.9
    assert _score("iou", 0.9, 0.5, 0.4) == 0.5
    assert _score("iou*stability", 0.9, 0.5, 0.4) == pytest.approx(0.45)
    assert _score("rpn*stability", 0.9, 0.5, 0.4) == pytest.approx(0.36)
    assert _score("rpn*stability", 0.9, 0.5, None) == 0.9  # grid mode has no proposal score
    with pytest.raises(ValueError):
        EverythingConfig(score="area")


def test_rpn_decoder_calls_chunked_and_timed(model, scenes):
    gen, dec = _generator(model, mode="rpn", rpn_score_thresh=0.0, rpn_nms_iou=1.0, max_proposals=12,
                          stability_score_thresh=0.0, mask_nms_iou=1.0, decoder_chunk={"cpu": 5})
    recs = gen.generate(scenes[0][0])
    assert dec.calls == [(5, 2), (5, 2), (2, 2)]
    assert gen.stats["prompts"] == 12 and all(v > 0 for v in gen.timings.values())
    one, _ = _generator(model, mode="rpn", rpn_score_thresh=0.0, rpn_nms_iou=1.0, max_proposals=12,
                        stability_score_thresh=0.0, mask_nms_iou=1.0, decoder_chunk={"cpu": 64})
    assert [r["segmentation"] for r in one.generate(scenes[0][0])] == [r["segmentation"] for r in recs]
