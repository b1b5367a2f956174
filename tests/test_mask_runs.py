"""Low-res logits -> full-resolution RLE from threshold crossings, against the dense resize + threshold."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from edgesam.data.rle import decode_rle, mask_to_bbox
from edgesam.inference.mask_runs import Upsampler, masks_to_rles, runs_rle


def _smooth_logits(rng: np.random.Generator, k: int, h: int, w: int) -> torch.Tensor:
    """(k, h, w) blobs with ragged edges: a disc per mask plus low-frequency noise, some touching the frame."""
    yy, xx = np.mgrid[:h, :w]
    out = np.empty((k, h, w), np.float32)
    for i in range(k):
        cy, cx, r = rng.uniform(-2, h + 2), rng.uniform(-2, w + 2), rng.uniform(1, max(h, w) / 2)
        noise = F.interpolate(torch.randn(1, 1, 6, 6), size=(h, w), mode="bilinear", align_corners=False)[0, 0].numpy()
        out[i] = (r - np.hypot(yy - cy, xx - cx)) / 2 + 3 * noise
    return torch.from_numpy(out)


@pytest.mark.parametrize("input_hw,out_hw,offset,image_hw,thr", [
    ((150, 200), (600, 800), (10, 20), (700, 900), 0.0),  # upsampling, a crop placed inside a bigger image
    ((150, 200), (600, 800), (0, 0), (600, 800), 0.5),  # the whole image: runs continue across columns
    ((255, 191), (1021, 767), (0, 0), (1021, 767), 0.0),  # valid region not a multiple of 4 (ceil)
    ((192, 256), (97, 131), (3, 0), (97, 140), -0.3),  # downsampling (several low-res rows per pixel)
])
def test_crossing_rle_equals_dense_resize(input_hw, out_hw, offset, image_hw, thr):
    rng = np.random.default_rng(sum(out_hw))
    up = Upsampler(input_hw, out_hw)
    low = _smooth_logits(rng, 12, up.hl, up.wl)
    low[0] = -5.0  # empty
    low[1] = 5.0  # full crop
    ref = F.interpolate(low[:, None], scale_factor=(out_hw[0] * 4 / input_hw[0], out_hw[1] * 4 / input_hw[1]),
                        mode="bilinear", align_corners=False, recompute_scale_factor=False)[:, 0, :out_hw[0], :out_hw[1]]
    bad_total = 0
    for (rle, area, bbox), r in zip(masks_to_rles(low, up, offset, image_hw, thr), ref):
        m = decode_rle(rle)
        expect = np.zeros(image_hw, bool)
        expect[offset[1]:offset[1] + out_hw[0], offset[0]:offset[0] + out_hw[1]] = (r > thr).numpy()
        assert m.shape == image_hw
        bad = int((m != expect).sum())
        assert bad <= max(2, expect.sum() // 20000)  # only samples within float rounding of a crossing
        bad_total += bad
        assert area == int(m.sum())
        assert bbox == (mask_to_bbox(m) if area else [0.0, 0.0, 0.0, 0.0])
    assert bad_total <= 6
    rles = masks_to_rles(low[:2], up, offset, image_hw, thr)
    assert rles[0][1] == 0 and rles[1][1] == out_hw[0] * out_hw[1]


def test_runs_rle_cancels_equal_transitions():
    m = np.zeros((4, 3), bool)
    m[2:, 0] = m[:, 1] = True  # one run through the boundary of columns 0 and 1 (positions 2..8)
    # column 0 ends at 4, column 1 starts at 4 (cancel); an empty run at 10 (cancels too)
    rle = runs_rle(np.array([2, 4, 4, 8, 10, 10]), (4, 3))
    assert (decode_rle(rle) == m).all()
