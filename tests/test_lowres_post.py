"""Low-resolution post-processing: stability of empty masks, box RLE, one-step resize, low-res NMS, chunking."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from edgesam.data.rle import decode_rle, encode_mask, mask_to_bbox
from edgesam.inference.lowres_post import PackedMasks, Upsampler, box_rle, filter_lowres, lowres_nms, masks_to_rles
from edgesam.models.prompt_decoder import stability_score


def test_stability_of_empty_mask_is_zero():
    logits = torch.full((3, 8, 8), -5.0)
    logits[1, 2:6, 2:6] = 5.0  # sharp: 1
    logits[2, :, :4] = 0.5  # above -1, below +1: 0
    assert stability_score(logits).tolist() == [0.0, 1.0, 0.0]


def test_box_rle_equals_pycocotools_on_random_masks():
    rng = np.random.default_rng(0)
    for _ in range(300):
        h, w = (int(v) for v in rng.integers(1, 25, 2))
        m = np.zeros((h, w), bool)
        y0, x0 = int(rng.integers(0, h)), int(rng.integers(0, w))
        y1, x1 = int(rng.integers(y0, h + 1)), int(rng.integers(x0, w + 1))
        m[y0:y1, x0:x1] = rng.random((y1 - y0, x1 - x0)) < rng.random()
        assert box_rle(m[y0:y1, x0:x1].T.copy(), x0, y0, (h, w)) == encode_mask(m)


def test_one_step_resize_matches_torch_and_records_area_bbox():
    input_hw, out_hw = (150, 200), (600, 800)  # low-res valid region 38 x 50
    low = torch.randn(2, 64, 64)
    up = Upsampler(input_hw, out_hw)
    ref = F.interpolate(low[:, None, :38, :50], scale_factor=(4 * 600 / 150, 4 * 800 / 200), mode="bilinear",
                        align_corners=False, recompute_scale_factor=False)[:, 0, :600, :800]
    assert np.abs(up.region(low[0, :38, :50], (0, 600), (0, 800)) - ref[0].numpy()).max() < 1e-4
    recs = masks_to_rles(low[:, :38, :50], up, (10, 20), (700, 900))  # placed at x0=10, y0=20 in a bigger image
    for (rle, area, bbox), r in zip(recs, ref):
        m = decode_rle(rle)
        expect = np.zeros((700, 900), bool)
        expect[20:620, 10:810] = (r > 0).numpy()
        assert m.shape == (700, 900) and (m != expect).sum() <= 5  # float rounding of the source index
        assert area == int(m.sum()) and bbox == mask_to_bbox(m)


def test_filter_and_lowres_nms():
    logits = torch.full((4, 4, 16, 16), -8.0)
    logits[0, 0, 2:8, 2:8] = 8.0
    logits[1, 0, 2:8, 2:9] = 8.0  # IoU 36/42 with prompt 0
    logits[2, 0, 3:7, 11:15] = 8.0
    logits[3, 0, 12:16, 0:4] = 8.0  # outside the valid region (rows >= 10): empty there
    iou = torch.tensor([[0.5] * 4, [0.9] * 4, [-0.2] * 4, [0.9] * 4])
    c = filter_lowres(logits, iou, 1, (40, 64), stability_thresh=0.9, pred_iou_thresh=0.0, prompt_offset=10)
    assert c.prompt.tolist() == [10, 11, 12] and c.logits.shape == (3, 10, 16)
    packed = PackedMasks.from_masks(c.logits > 0)
    assert packed.bits.shape == (3, 10, 2) and packed.area.tolist() == [36, 42, 16]
    assert packed.boxes.tolist() == [[2, 7, 2, 7], [2, 7, 2, 8], [3, 6, 11, 14]]
    assert np.array_equal(packed.bits, np.packbits((c.logits > 0).numpy(), axis=-1))
    keep = lowres_nms(packed, c.iou.numpy(), 0.7)
    assert c.prompt[torch.from_numpy(keep)].tolist() == [11, 12]  # 11 (iou 0.9) suppresses 10
    assert lowres_nms(packed, c.iou.numpy(), 0.9).tolist() == [1, 0, 2]
    assert lowres_nms(packed, c.iou.numpy(), 0.7, max_keep=1).tolist() == [1]
    assert len(PackedMasks.cat([packed, packed])) == 6 and len(c.take([0, 2])) == 2


def test_decoder_calls_are_chunked_per_device():
    from edgesam.inference.everything import EverythingConfig

    cfg = EverythingConfig(decoder_chunk={"cpu": 5, "cuda": 64})
    assert cfg.chunk_for("cpu") == 5 and cfg.chunk_for("cuda:1") == 64 and cfg.chunk_for("mps") == 5
