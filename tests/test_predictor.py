"""Predictor semantics: coordinates in the original frame, input validation, batching."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from edgesam.data.transforms import ResizeLongestSide, preprocess, resized_shape
from edgesam.inference import Predictor
from edgesam.models import EdgeSAM


@pytest.fixture(scope="module")
def predictor() -> Predictor:
    torch.manual_seed(0)
    p = Predictor.from_model(EdgeSAM(256).eval())
    rng = np.random.default_rng(0)
    p.set_image(rng.integers(0, 255, (150, 300, 3), dtype=np.uint8))
    return p


def test_transform_matches_sam_resize():
    assert resized_shape(150, 300, 256) == (128, 256)
    assert resized_shape(1500, 2250, 1024) == (683, 1024)
    t = ResizeLongestSide(256)
    np.testing.assert_allclose(t.apply_coords(np.array([[300.0, 150.0]]), (150, 300)), [[256.0, 128.0]])
    np.testing.assert_allclose(t.invert_coords(t.apply_coords(np.array([[17.0, 33.0]]), (150, 300)), (150, 300)),
                               [[17.0, 33.0]], rtol=1e-5)
    x, hw = preprocess(np.full((150, 300, 3), 255, np.uint8), 256)
    assert x.shape == (1, 3, 256, 256) and hw == (128, 256)
    assert torch.all(x[..., 128:, :] == 0)  # padding is zero after normalisation
    assert torch.allclose(x[0, 0, 0, 0], torch.tensor((255 - 123.675) / 58.395))


def test_predict_shapes_and_outputs(predictor):
    masks, scores, low = predictor.predict(np.array([[10, 20], [200, 100]]), np.array([1, 0]), num_multimask_outputs=3,
                                         use_stability_score=True)
    assert masks.shape == (3, 150, 300) and masks.dtype == bool
    assert scores.shape == (3,) and low.shape == (3, 64, 64)
    assert np.all((scores >= 0) & (scores <= 1))
    logits, _, _ = predictor.predict(box=np.array([10, 20, 200, 140]), multimask_output=False, return_logits=True)
    assert logits.shape == (1, 150, 300) and logits.dtype == np.float32
    p = predictor.predict_batch(boxes=np.array([[0, 0, 50, 50], [10, 20, 200, 140]]), num_outputs=4)
    assert p.masks.shape == (2, 4, 150, 300) and p.iou.shape == (2, 4)


def test_batched_equals_individual(predictor):
    boxes = np.array([[0, 0, 50, 50], [10, 20, 200, 140], [100, 10, 290, 149]], np.float32)
    batched = predictor.predict_batch(boxes=boxes, return_logits=True)
    for i, b in enumerate(boxes):
        single, _, _ = predictor.predict(box=b, multimask_output=False, return_logits=True)
        np.testing.assert_allclose(batched.masks[i], single, atol=1e-3)


def test_mask_input_changes_output(predictor):
    _, _, low = predictor.predict(np.array([[100, 60]]), np.array([1]), multimask_output=False)
    a, _, _ = predictor.predict(np.array([[100, 60]]), np.array([1]), multimask_output=False, return_logits=True)
    b, _, _ = predictor.predict(np.array([[100, 60]]), np.array([1]), mask_input=low * 10, multimask_output=False,
                              return_logits=True)
    assert not np.allclose(a, b)


@pytest.mark.parametrize("kwargs, message", [
    (dict(point_coords=np.array([[301, 10]]), point_labels=np.array([1])), "outside the image"),
    (dict(point_coords=np.array([[-1, 10]]), point_labels=np.array([1])), "outside the image"),
    (dict(point_coords=np.array([[np.nan, 10]]), point_labels=np.array([1])), "non-finite"),
    (dict(point_coords=np.array([[1, 10]]), point_labels=np.array([1, 0])), "does not match"),
    (dict(point_coords=np.array([[1, 10]]), point_labels=np.array([5])), "must be 0"),
    (dict(point_coords=np.array([[1, 10]])), "together"),
    (dict(point_coords=np.zeros((0, 2)), point_labels=np.zeros(0)), "empty"),
    (dict(point_coords=np.array([1, 2, 3])), "together"),
    (dict(box=np.array([50, 50, 10, 10])), "XYXY"),
    (dict(box=np.array([0, 0, 10])), "box must have shape"),
    (dict(box=np.array([0, 0, 10, 400])), "outside the image"),
    ({}, "no prompt"),
    (dict(box=np.array([0, 0, 10, 10]), num_multimask_outputs=2), "num_multimask_outputs"),
    (dict(box=np.array([0, 0, 10, 10]), mask_input=np.zeros((1, 10, 10))), "mask_input"),
])
def test_bad_prompts_raise_clear_value_errors(predictor, kwargs, message):
    with pytest.raises(ValueError, match=message):
        predictor.predict(**kwargs)


def test_too_many_prompts_rejected(predictor):
    with pytest.raises(ValueError, match="exceed the limit"):
        predictor.predict_batch(boxes=np.tile(np.array([[0, 0, 5, 5]]), (predictor.max_prompts + 1, 1)))


def test_image_conversion_and_errors():
    p = Predictor.from_model(EdgeSAM(256).eval())
    rgb = np.random.default_rng(1).integers(0, 255, (64, 80, 3), dtype=np.uint8)
    gray = rgb[..., 0]
    p.set_image(gray)
    emb_gray = p.embedding.copy()
    p.set_image(np.repeat(gray[..., None], 3, axis=2))
    np.testing.assert_allclose(emb_gray, p.embedding, atol=1e-5)  # grayscale == replicated RGB
    rgba = np.concatenate([rgb, np.full((64, 80, 1), 7, np.uint8)], axis=2)
    p.set_image(rgba)
    emb_rgba = p.embedding.copy()
    p.set_image(rgb)
    np.testing.assert_allclose(emb_rgba, p.embedding, atol=1e-5)  # alpha dropped
    for bad, msg in [(rgb.astype(np.float32), "uint8"), (rgb[..., :2], "shape"), (np.zeros((0, 5, 3), np.uint8), "empty"),
                     ([[1, 2]], "numpy array")]:
        with pytest.raises(ValueError, match=msg):
            p.set_image(bad)
    with pytest.raises(RuntimeError, match="set_image"):
        Predictor.from_model(EdgeSAM(256).eval()).predict(box=np.array([0, 0, 1, 1]))
    with pytest.raises(ValueError, match="embedding must have shape"):
        p.set_embedding(np.zeros((1, 256, 8, 8), np.float32), (10, 10))


def test_defaults_follow_sam_predictor(predictor):
    """3 multimask outputs (tokens 1-3) scored by the IoU head, like SamPredictor and EdgeSAM's predictor."""
    pts, labels = np.array([[100, 60]]), np.array([1])
    masks, scores, low = predictor.predict(pts, labels)
    assert masks.shape == (3, 150, 300) and low.shape == (3, 64, 64)
    all4 = predictor.predict_batch(pts[None], labels[None], num_outputs=4, return_logits=True)
    np.testing.assert_allclose(scores, all4.iou[0, 1:], atol=1e-6)
    np.testing.assert_allclose(low, all4.low_res_logits[0, 1:], atol=1e-6)
    single, s1, _ = predictor.predict(pts, labels, multimask_output=False, use_stability_score=True)
    assert single.shape == (1, 150, 300)
    np.testing.assert_allclose(s1, all4.stability[0, :1], atol=1e-6)
    four, _, _ = predictor.predict(pts, labels, num_multimask_outputs=4)  # EdgeSAM's spelling wins
    assert four.shape[0] == 4
    with pytest.warns(DeprecationWarning, match="num_outputs"):
        old, old_scores, _ = predictor.predict(pts, labels, num_outputs=1, score="stability")
    np.testing.assert_array_equal(old, single)
    np.testing.assert_allclose(old_scores, s1)


def test_box_corner_labels_accepted(predictor):
    """Labels 2/3 on points are box corners, as in SAM's ONNX convention; a box needs no padding point."""
    box = np.array([10, 20, 200, 140], np.float32)
    a, sa, _ = predictor.predict(box=box, return_logits=True)
    b, sb, _ = predictor.predict(box.reshape(2, 2), np.array([2, 3]), return_logits=True)
    # point-only prompts get SAM's padding point, so the two differ by exactly that extra token
    coords, labels = predictor._build_prompts(box.reshape(1, 2, 2), np.array([[2, 3]]), None)
    assert labels.tolist() == [[2, 3, -1]]
    coords, labels = predictor._build_prompts(None, None, box[None])
    assert labels.tolist() == [[2, 3]]
    assert a.shape == b.shape


def test_select_happens_at_low_resolution(predictor):
    """predict_batch(select=...) keeps one output per prompt, chosen on the low-res logits, and upsamples
    only that one: identical to picking from select="all"."""
    boxes = np.array([[0, 0, 50, 50], [10, 20, 200, 140], [100, 10, 290, 149]], np.float32)
    full = predictor.predict_batch(boxes=boxes, num_outputs=4)
    for select, key in (("stability", full.stability), ("iou", full.iou), ("best_iou", full.iou)):
        best = predictor.predict_batch(boxes=boxes, num_outputs=4, select=select)
        want = key.argmax(1)
        assert best.masks.shape == (3, 1, 150, 300) and best.output_index[:, 0].tolist() == want.tolist()
        np.testing.assert_array_equal(best.masks[:, 0], full.masks[np.arange(3), want])
        np.testing.assert_allclose(best.low_res_logits[:, 0], full.low_res_logits[np.arange(3), want])
    mixed = predictor.predict_batch(boxes=boxes, num_outputs=3, select=["stability", "iou", "iou"])
    assert mixed.masks.shape == (3, 1, 150, 300)
    assert full.output_index.tolist() == [[0, 1, 2, 3]] * 3
    with pytest.raises(ValueError, match="select"):
        predictor.predict_batch(boxes=boxes, select="biggest")
    with pytest.raises(ValueError, match="entries"):
        predictor.predict_batch(boxes=boxes, num_outputs=3, select=["iou", "iou"])


def test_chunked_upsample_equals_one_shot(predictor):
    low = torch.randn(5, 3, 64, 64)
    from edgesam.data.transforms import postprocess_masks

    want = postprocess_masks(low, predictor.input_hw, predictor.original_hw, 256).numpy()
    np.testing.assert_allclose(predictor.upsample(low, return_logits=True, chunk=4), want, atol=1e-6)
    np.testing.assert_array_equal(predictor.upsample(low, chunk=7), want > 0)


def test_sam_preprocessing_and_torch_image_entry():
    """set_image resizes uint8 through segment-anything's ResizeLongestSide (PIL); set_torch_image with
    that resized image gives the same embedding; get_image_embedding returns it as torch (1,256,16,16)."""
    from segment_anything.utils.transforms import ResizeLongestSide as SamResize

    rng = np.random.default_rng(3)
    image = rng.integers(0, 255, (90, 200, 3), dtype=np.uint8)
    ours = ResizeLongestSide(256).apply_image(image)
    sam = SamResize(256).apply_image(image)
    np.testing.assert_array_equal(ours[0].permute(1, 2, 0).numpy(), sam.astype(np.float32))
    p = Predictor.from_model(EdgeSAM(256).eval())
    p.set_image(image)
    emb = p.get_image_embedding().clone()
    assert emb.shape == (1, 256, 16, 16) and p.is_image_set and p.input_size == (115, 256)
    q = Predictor.from_model(p_model := EdgeSAM(256).eval())
    q.encoder, q.decoder = p.encoder, p.decoder
    q.set_torch_image(torch.as_tensor(sam).permute(2, 0, 1)[None].float(), image.shape[:2])
    np.testing.assert_allclose(q.get_image_embedding().numpy(), emb.numpy(), atol=1e-6)
    assert q.original_size == (90, 200) and p_model is not None
    with pytest.raises(ValueError, match="long side"):
        q.set_torch_image(torch.zeros(1, 3, 100, 100), (100, 100))
    with pytest.raises(RuntimeError, match="set_image"):
        Predictor.from_model(EdgeSAM(256).eval()).get_image_embedding()


def test_edgesam_spellings(predictor):
    """EdgeSAM's predictor passes num_multimask_outputs where SamPredictor has multimask_output, and takes
    ``features=`` to decode against a given embedding."""
    pts, labels = np.array([[100, 60]]), np.array([1])
    assert predictor.predict(pts, labels, None, None, 1)[0].shape[0] == 1
    assert predictor.predict(pts, labels, None, None, 4)[0].shape[0] == 4
    assert predictor.predict(pts, labels, None, None, True)[0].shape[0] == 3
    own, _, _ = predictor.predict(pts, labels, return_logits=True)
    same, _, _ = predictor.predict(pts, labels, return_logits=True, features=predictor.get_image_embedding())
    np.testing.assert_allclose(own, same, atol=1e-6)
    saved = predictor.embedding.copy()
    other, _, _ = predictor.predict(pts, labels, return_logits=True, features=torch.zeros(1, 256, 16, 16))
    assert not np.allclose(own, other)
    np.testing.assert_array_equal(predictor.embedding, saved)  # the set image's embedding is restored
