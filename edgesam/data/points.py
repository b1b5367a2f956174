"""The centre click of a mask: the one definition used by the readers (COCO point prompts) and by evaluation."""
from __future__ import annotations

import cv2
import numpy as np


def centre_click(mask: np.ndarray) -> tuple[int, int]:
    """Interior point of a binary mask (H, W): the argmax of its Euclidean distance transform -> (x, y).

    The mask is padded with 1 px of background so objects touching the image border still get an
    interior point. Ties (a ridge, e.g. in a non-square rectangle) go to the maximal pixel nearest to
    the centroid of all maximal pixels, so the click sits mid-ridge. Raises ValueError on an empty mask.
    """
    m = np.asarray(mask)
    if m.ndim != 2:
        raise ValueError(f"mask must be (H,W), got shape {m.shape}")
    if not m.any():
        raise ValueError("centre_click needs a non-empty mask")
    padded = np.pad(m.astype(np.uint8), 1)
    dist = cv2.distanceTransform(padded, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)[1:-1, 1:-1]
    ys, xs = np.nonzero(dist >= dist.max() - 1e-4)
    j = int(np.argmin((ys - ys.mean()) ** 2 + (xs - xs.mean()) ** 2))
    return int(xs[j]), int(ys[j])
