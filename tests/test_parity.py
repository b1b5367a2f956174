"""End-to-end parity with the reference EdgeSAM SamPredictor (fixture in ../shared/reference/parity/).

The fixture holds a random-weight checkpoint in the official format (fp16 under "model") and the
reference predictor's outputs on a photo for a fixed prompt set (box, point, point+negative, box+point;
3 and 1 outputs). Our :class:`Predictor`, through the SamPredictor API with SAM's preprocessing, must give
mask IoU >= 0.999 per output, low-res logits within 1e-3 and scores within 1e-3. Weights are random.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from edgesam.inference import Predictor
from edgesam.models import EdgeSAM
from edgesam.models.checkpoint import _unwrap, load_state_dict_strict

REPO = Path(__file__).resolve().parents[1]
FIXTURE = REPO.parent / "shared" / "reference" / "parity"
IMAGES = REPO.parent / "shared" / "images"
MIN_IOU, LOGIT_TOL, SCORE_TOL = 0.999, 1e-3, 1e-3


def _fixture() -> dict:
    if not (FIXTURE / "fixture.json").exists():
        pytest.skip(f"parity fixture not found at {FIXTURE}")
    return json.loads((FIXTURE / "fixture.json").read_text())


def load_reference_predictor(fixture: dict) -> Predictor:
    """The fixture's checkpoint (fp16 under "model", cast to float32), loaded strict."""
    state, _ = _unwrap(torch.load(FIXTURE / fixture["checkpoint"], map_location="cpu", weights_only=True))
    model = EdgeSAM(1024)
    load_state_dict_strict(model, {k: v.float() for k, v in state.items()}, "parity checkpoint")
    return Predictor.from_model(model.eval())


def _cases(fixture: dict):
    for name, spec in fixture["images"].items():
        for prompt in spec["prompts"]:
            for n in (3, 1):
                yield name, prompt, n


@pytest.fixture(scope="module")
def parity():
    from PIL import Image

    fixture = _fixture()
    predictor = load_reference_predictor(fixture)
    out = {"fixture": fixture, "predictor": predictor, "images": {}, "figures": {}}
    for name, spec in fixture["images"].items():
        path = IMAGES / name
        if not path.exists():
            pytest.skip(f"photo {path} not found")
        image = np.array(Image.open(path).convert("RGB"))
        assert list(image.shape[:2]) == spec["hw"]
        predictor.set_image(image)
        ref = np.load(FIXTURE / f"{Path(name).stem}.npz")
        out["images"][name] = (predictor.get_image_embedding().clone(), ref)
    return out


def _mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def test_embedding_matches_reference(parity):
    for name, (emb, ref) in parity["images"].items():
        diff = float(np.abs(emb[0].numpy() - ref["embedding"]).max())
        assert diff < 1e-3, f"{name}: embedding max |diff| {diff:.2e}"


@pytest.mark.parametrize("use_stability_score", [False, True])
def test_predict_matches_reference(parity, use_stability_score):
    predictor, fixture = parity["predictor"], parity["fixture"]
    min_iou, max_logit, max_score = 1.0, 0.0, 0.0
    for name, prompt, n in _cases(fixture):
        emb, ref = parity["images"][name]
        h, w = fixture["images"][name]["hw"]
        predictor.set_embedding(emb.numpy(), (h, w))
        kwargs = {k: np.array(v, np.float32) for k, v in fixture["images"][name]["prompts"][prompt].items()}
        if "point_labels" in kwargs:
            kwargs["point_labels"] = kwargs["point_labels"].astype(np.int64)
        # SamPredictor spelling for one call in two, EdgeSAM's for the other
        extra = dict(multimask_output=n == 3) if use_stability_score else dict(num_multimask_outputs=n)
        masks, scores, low = predictor.predict(**kwargs, **extra, use_stability_score=use_stability_score)
        key = f"{prompt}__n{n}__"
        want_masks = np.unpackbits(ref[key + "masks_packed"], axis=-1)[..., :w].astype(bool)
        want_scores = ref[key + ("scores_stability" if use_stability_score else "scores_iou")]
        assert masks.shape == want_masks.shape == (n, h, w) and masks.dtype == bool
        assert scores.shape == (n,) and low.shape == ref[key + "lowres"].shape
        ious = [_mask_iou(masks[i], want_masks[i]) for i in range(n)]
        logit_diff = float(np.abs(low - ref[key + "lowres"]).max())
        score_diff = float(np.abs(scores - want_scores).max())
        assert min(ious) >= MIN_IOU, f"{key}: mask IoU {ious}"
        assert logit_diff <= LOGIT_TOL, f"{key}: low-res logits max |diff| {logit_diff:.2e}"
        assert score_diff <= SCORE_TOL, f"{key}: scores max |diff| {score_diff:.2e}"
        min_iou, max_logit, max_score = min(min_iou, *ious), max(max_logit, logit_diff), max(max_score, score_diff)
    print(f"\nparity (stability={use_stability_score}): min mask IoU {min_iou:.6f}, "
          f"max |low-res logit diff| {max_logit:.2e}, max |score diff| {max_score:.2e}")


def test_predict_torch_matches_predict(parity):
    """SamPredictor.predict_torch (input frame, batch axis) agrees with predict on the same prompt."""
    predictor, fixture = parity["predictor"], parity["fixture"]
    name = next(iter(fixture["images"]))
    emb, _ = parity["images"][name]
    hw = tuple(fixture["images"][name]["hw"])
    predictor.set_embedding(emb.numpy(), hw)
    spec = fixture["images"][name]["prompts"]["box_and_point"]
    masks, scores, low = predictor.predict(np.array(spec["point_coords"]), np.array(spec["point_labels"]),
                                           np.array(spec["box"]))
    tf = predictor.transform
    pc = torch.as_tensor(tf.apply_coords(np.array(spec["point_coords"]), hw))[None]
    box = torch.as_tensor(tf.apply_boxes(np.array(spec["box"]), hw))[None]
    m_t, s_t, l_t = predictor.predict_torch(pc, torch.tensor([spec["point_labels"]]), box)
    assert m_t.shape == (1, 3, *hw) and s_t.shape == (1, 3) and l_t.shape == (1, 3, 256, 256)
    np.testing.assert_array_equal(m_t[0].numpy(), masks)
    np.testing.assert_allclose(s_t[0].numpy(), scores, atol=1e-6)
    np.testing.assert_allclose(l_t[0].numpy(), low, atol=1e-5)
