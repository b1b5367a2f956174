"""RPN head: shapes, FCOS assignment on hand-made boxes, overfitting a fixed batch, ONNX parity."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torchvision.ops import box_iou

from edgesam.models import EdgeSAM, load_student, save_student
from edgesam.models.rpn import RPN, build_rpn, fcos_targets, rpn_loss, select_proposals, train_rpn_step

S = 256
CHANNELS = {"s8": 96, "s16": 192, "s32": 384}


def _features(b: int = 1, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(b, c, S // s, S // s, generator=g) for (k, c), s in zip(CHANNELS.items(), (8, 16, 32))}


def test_shapes_per_level_and_config_is_json():
    cfg = {"width": 32, "num_convs": 2, "gn_groups": 8, "size_ranges": [64, 128, 256]}
    json.dumps(cfg)
    rpn = build_rpn(CHANNELS, **cfg)
    out = rpn(_features(2))
    assert rpn.strides == (8, 16, 32, 64)
    assert len(out) == 4
    for o, s in zip(out, rpn.strides):
        assert o["logits"].shape == (2, 1, S // s, S // s)
        assert o["ltrb"].shape == (2, 4, S // s, S // s)
        assert o["centerness"].shape == (2, 1, S // s, S // s)
        assert bool((o["ltrb"] > 0).all())
    boxes, scores = rpn.decode(out)
    n = sum((S // s) ** 2 for s in rpn.strides)
    assert boxes.shape == (2, n, 4) and scores.shape == (2, n)
    assert bool((boxes[..., 2] > boxes[..., 0]).all()) and bool(((scores >= 0) & (scores <= 1)).all())
    no_p6 = build_rpn(CHANNELS, width=32, use_p6=False, gn_groups=8)
    assert len(no_p6(_features())) == 3 and no_p6.strides == (8, 16, 32)
    with pytest.raises(ValueError, match="size_ranges"):
        build_rpn(CHANNELS, size_ranges=[64, 128])
    with pytest.raises(ValueError, match="feature_channels"):
        build_rpn({"s8": 96})


def _level0_index(rpn: RPN, i: int, j: int) -> int:
    return i * (S // 8) + j


def test_fcos_assignment_on_hand_made_boxes():
    rpn = build_rpn(CHANNELS, width=32, gn_groups=8)
    out = rpn(_features())
    # A 64x64 box centred at (128,128): centre radius 1.5*8 = 12 px -> P3 locations x,y in {124, 132}
    # (max regression 36 <= 64 -> P3); at P4 the candidates (120/136) regress 40 px, outside (64,128].
    box = torch.tensor([[96.0, 96.0, 160.0, 160.0]])
    labels, box_t, ctr_t = fcos_targets(rpn, out, [box])
    pos = torch.nonzero(labels[0]).flatten().tolist()
    expected = sorted(_level0_index(rpn, i, j) for i in (15, 16) for j in (15, 16))
    assert pos == expected
    assert torch.allclose(box_t[0, pos], box.expand(4, 4))
    # centerness at (124,124): l=t=28, r=b=36 -> sqrt((28/36)^2) = 28/36
    assert ctr_t[0, _level0_index(rpn, 15, 15)].item() == pytest.approx(28 / 36, abs=1e-6)

    # A large box goes to a coarse level: 256x256 centred at 128 -> max regression 144 at stride 32 -> P5.
    big = torch.tensor([[0.0, 0.0, 256.0, 256.0]])
    labels, _, _ = fcos_targets(rpn, out, [big])
    pos = torch.nonzero(labels[0]).flatten()
    n3, n4 = (S // 8) ** 2, (S // 16) ** 2
    assert len(pos) == 4 and bool(((pos >= n3 + n4) & (pos < n3 + n4 + (S // 32) ** 2)).all())

    # Overlap: at P3 location (124,124) both boxes are candidates; the smaller-area one wins.
    small = torch.tensor([100.0, 100.0, 150.0, 150.0])
    labels, box_t, _ = fcos_targets(rpn, out, [torch.stack([box[0], small])])
    assert labels[0, _level0_index(rpn, 15, 15)] == 1
    assert torch.allclose(box_t[0, _level0_index(rpn, 15, 15)], small)

    # No GT (or degenerate GT): no positives, and the loss is finite with zero box/centerness terms.
    labels, _, _ = fcos_targets(rpn, out, [torch.zeros(0, 4)])
    assert labels.sum() == 0
    loss, parts = rpn_loss(rpn, out, [torch.tensor([[10.0, 10.0, 10.0, 30.0]])], S)
    assert torch.isfinite(loss) and parts["num_pos"] == 0 and parts["box"] == 0


def _box_features(boxes: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    """Fixed synthetic features: box-interior and box-edge indicator channels plus a little noise."""
    g = torch.Generator().manual_seed(1)
    out = {}
    for (k, c), s in zip(CHANNELS.items(), (8, 16, 32)):
        n = S // s
        ys, xs = torch.meshgrid(torch.arange(n) * s + s / 2, torch.arange(n) * s + s / 2, indexing="ij")
        per_image = []
        for bxs in boxes:
            f = 0.1 * torch.randn(c, n, n, generator=g)
            for i, b in enumerate(bxs):
                inside = ((xs >= b[0]) & (xs <= b[2]) & (ys >= b[1]) & (ys <= b[3])).float()
                f[4 * i:4 * i + 4] += inside
                for e, (coord, val) in enumerate(((xs, b[0]), (xs, b[2]), (ys, b[1]), (ys, b[3]))):
                    f[20 + 10 * e + i] += ((coord - val).abs() < s).float() * inside
            per_image.append(f)
        out[k] = torch.stack(per_image)
    out["embedding"] = torch.zeros(len(boxes), 256, S // 16, S // 16)  # ignored by the RPN
    return out


def test_train_rpn_step_overfits_and_recalls_gt_boxes():
    torch.manual_seed(0)
    gt = [torch.tensor([[10.0, 20, 50, 80], [100, 60, 200, 140], [30, 100, 230, 250]]),
          torch.tensor([[150.0, 10, 250, 110], [20, 30, 70, 60]])]
    feats = _box_features(gt)
    rpn = build_rpn(CHANNELS, width=32, num_convs=2, gn_groups=8)
    opt = torch.optim.AdamW(rpn.parameters(), lr=3e-3)
    first = None
    for _ in range(250):
        loss, m = train_rpn_step(rpn, feats, gt, S)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if first is None:
            first = {k: float(v) for k, v in m.items()} | {"loss": float(loss.detach())}
    last = {k: float(v) for k, v in m.items()} | {"loss": float(loss.detach())}
    assert set(m) == {"rpn_cls", "rpn_box", "rpn_ctr", "rpn_num_pos"}
    assert last["rpn_num_pos"] > 0
    assert last["rpn_cls"] < first["rpn_cls"] / 20
    assert last["rpn_box"] < first["rpn_box"] / 4
    assert last["loss"] < 0.4 * first["loss"]  # the centerness BCE floors at the targets' entropy
    rpn.eval()
    with torch.no_grad():
        props = rpn.proposals(rpn(feats), S, score_thresh=0.05, nms_iou=0.6, max_proposals=10)
    for (boxes, scores), g in zip(props, gt):
        assert 0 < len(boxes) <= 10 and bool((scores[:-1] >= scores[1:]).all())
        assert bool((box_iou(g, boxes).max(dim=1).values >= 0.5).all())
        assert bool((boxes >= 0).all() and (boxes <= S).all())


def test_select_proposals_threshold_clip_nms():
    boxes = torch.tensor([[0.0, 0, 50, 50], [1, 1, 51, 51], [100, 100, 300, 300], [10, 10, 10.5, 40], [5, 5, 20, 20]])
    scores = torch.tensor([0.9, 0.8, 0.7, 0.95, 0.01])
    b, s = select_proposals(boxes, scores, (200, 250), score_thresh=0.05, nms_iou=0.5, max_proposals=10)
    # [3] is thinner than 1 px, [1] duplicates [0], [4] is below the threshold, [2] is clipped to (w=250, h=200)
    assert s.tolist() == pytest.approx([0.9, 0.7])
    assert b.tolist() == [[0, 0, 50, 50], [100, 100, 250, 200]]
    b, _ = select_proposals(boxes, scores, (200, 250), score_thresh=0.0, nms_iou=0.5, max_proposals=1)
    assert len(b) == 1


def test_checkpoint_round_trip_with_rpn(tmp_path):
    model = EdgeSAM(S).eval()
    cfg = {"width": 32, "num_convs": 1, "gn_groups": 8}
    model.rpn = build_rpn(model.image_encoder.feature_channels, **cfg)
    path = save_student(model, tmp_path / "s.pt", meta={"rpn_config": cfg})
    loaded, extras = load_student(path, S)
    assert loaded.rpn is not None and extras["meta"]["rpn_config"] == cfg
    feats = _features()
    with torch.no_grad():
        a, b = model.rpn(feats), loaded.rpn.eval()(feats)
    assert all(torch.equal(x[k], y[k]) for x, y in zip(a, b) for k in x)


def test_rpn_onnx_matches_torch(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    from edgesam.inference.everything import OrtRpnEncoder, TorchRpnEncoder
    from edgesam.export.rpn_onnx import export_rpn_onnx

    torch.manual_seed(0)
    model = EdgeSAM(S).eval()
    model.rpn = build_rpn(model.image_encoder.feature_channels, width=32, gn_groups=8).eval()
    path = export_rpn_onnx(model, tmp_path / "rpn.onnx")
    x = np.random.default_rng(0).standard_normal((1, 3, S, S)).astype(np.float32)
    e_t, b_t, s_t = TorchRpnEncoder(model.image_encoder, model.rpn, S)(x)
    o = OrtRpnEncoder(path, ["CPUExecutionProvider"], threads=1)
    assert o.img_size == S
    e_o, b_o, s_o = o(x)
    assert e_o.shape == e_t.shape and b_o.shape == b_t.shape and s_o.shape == s_t.shape
    assert np.abs(e_o - e_t).max() < 1e-3 * max(1.0, np.abs(e_t).max())
    assert np.abs(b_o - b_t).max() < 1e-2
    assert np.abs(s_o - s_t).max() < 1e-4
    assert ort is not None
