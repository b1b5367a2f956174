"""Serve app refinement with ``mask_input``: masks equal the library predictor's given the same low-res logits,
concurrent refinements keep their own masks, the decoder's grouping, and malformed mask inputs are 4xx."""
from __future__ import annotations

import base64
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

requests = pytest.importorskip("requests")
pytest.importorskip("ray.serve")

from edgesam.data.rle import decode_rle as rle_to_mask  # noqa: E402
from serve.samples import sample_image  # noqa: E402
from tests.imaging import b64 as _b64  # noqa: E402

from .helpers import IMG, LOW, SERVER_TIMEOUT, _iou, _load_npy_b64, _npy_b64, _segment  # noqa: E402

pytestmark = [pytest.mark.ray,
              # pycocotools under numpy 2 (inside edgesam.data.rle.decode_rle), not ours
              pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")]


@pytest.mark.timeout(SERVER_TIMEOUT)
def test_segment_refinement_with_mask_input_matches_library(server, coffee, predictor):
    """Click, take the returned low-res logits, click again with them as mask_input: the library predictor
    given the same mask_input and clicks returns the same masks."""
    predictor.set_image(coffee["image"])
    first = _segment(server, embedding_id=coffee["embedding_id"], points=[[300, 200]], labels=[1], num_outputs=3,
                     multimask_select="stability", return_low_res_logits=True)
    assert first.status_code == 200, first.text
    (m1,) = first.json()["masks"]
    low = _load_npy_b64(m1["low_res_logits"])
    assert low.dtype == np.float16 and low.shape == (1, LOW, LOW)
    ref1 = predictor.predict_batch(np.array([[[300, 200]]], np.float32), np.array([[1]]), num_outputs=3)
    j = m1["output_index"]
    np.testing.assert_allclose(low[0].astype(np.float32), ref1.low_res_logits[0, j], atol=2e-3, rtol=2e-3)
    mask_in = low.astype(np.float32)[None]  # (1,1,L,L): what the server decodes the float16 .npy to

    pts, labels = [[300, 200], [100, 50]], [1, 0]
    body = {"embedding_id": coffee["embedding_id"], "points": pts, "labels": labels, "return_low_res_logits": True}
    refined = _segment(server, **body, mask_input=m1["low_res_logits"])
    assert refined.status_code == 200, refined.text
    (m2,) = refined.json()["masks"]
    ref2 = predictor.predict_batch(np.array([pts], np.float32), np.array([labels]), mask_input=mask_in)
    got = rle_to_mask(m2["segmentation"])
    assert _iou(got, ref2.masks[0, 0]) >= 0.99
    assert abs(m2["stability_score"] - ref2.stability[0, 0]) < 0.02 and abs(m2["iou"] - ref2.iou[0, 0]) < 1e-3
    low2 = _load_npy_b64(m2["low_res_logits"])
    np.testing.assert_allclose(low2[0].astype(np.float32), ref2.low_res_logits[0, 0], atol=2e-3, rtol=2e-3)
    # The mask prompt mattered: the same clicks without it give a different mask.
    plain = _segment(server, embedding_id=coffee["embedding_id"], points=pts, labels=labels)
    no_mask = predictor.predict_batch(np.array([pts], np.float32), np.array([labels]))
    assert _iou(rle_to_mask(plain.json()["masks"][0]["segmentation"]), no_mask.masks[0, 0]) >= 0.99
    assert _iou(got, no_mask.masks[0, 0]) < 0.95
    assert plain.json()["masks"][0]["low_res_logits"] is None  # only on request
    # Same logits as float32 (L,L): the same answer. With boxes the mask prompts every box.
    again = _segment(server, **body, mask_input=_npy_b64(mask_in[0, 0]))
    assert _iou(rle_to_mask(again.json()["masks"][0]["segmentation"]), got) >= 0.99
    boxes = [[200, 120, 420, 330], [10, 10, 300, 200]]
    r = _segment(server, embedding_id=coffee["embedding_id"], boxes=boxes, mask_input=m1["low_res_logits"])
    assert r.status_code == 200, r.text
    ref3 = predictor.predict_batch(boxes=np.array(boxes, np.float32), mask_input=mask_in)
    assert [m["prompt_index"] for m in r.json()["masks"]] == [0, 1]
    for m in r.json()["masks"]:
        assert _iou(rle_to_mask(m["segmentation"]), ref3.masks[m["prompt_index"], 0]) >= 0.99
    schema = requests.get(server.url + "/openapi.json", timeout=30).json()["components"]["schemas"]
    assert ".npy" in schema["SegmentRequest"]["properties"]["mask_input"]["description"]
    assert "mask_input" in schema["MaskOut"]["properties"]["low_res_logits"]["description"]


@pytest.mark.timeout(SERVER_TIMEOUT)
def test_concurrent_refinements_keep_their_own_masks(server, coffee, predictor):
    """Same embedding and prompt length at once, different (or no) mask prompts: whether or not the decoder
    batches them, every answer is the library's for that request's own mask_input."""
    rng = np.random.default_rng(5)
    ramp = np.linspace(-8, 8, LOW, dtype=np.float32)
    masks = [None, rng.normal(0, 4, (LOW, LOW)).astype(np.float32), np.tile(ramp, (LOW, 1)),
             np.tile(ramp[:, None], (1, LOW)).astype(np.float16)]
    pts, labels = [[300, 200], [120, 300]], [1, 1]

    def send(m):
        extra = {} if m is None else {"mask_input": _npy_b64(m)}
        return _segment(server, embedding_id=coffee["embedding_id"], points=pts, labels=labels, **extra)

    with ThreadPoolExecutor(len(masks)) as pool:
        outs = list(pool.map(send, masks))
    predictor.set_image(coffee["image"])
    got = []
    for m, r in zip(masks, outs):
        assert r.status_code == 200, r.text
        mi = None if m is None else m.astype(np.float32)[None, None]
        ref = predictor.predict_batch(np.array([pts], np.float32), np.array([labels]), mask_input=mi)
        got.append(rle_to_mask(r.json()["masks"][0]["segmentation"]))
        assert _iou(got[-1], ref.masks[0, 0]) >= 0.99
    assert min(_iou(a, b) for k, a in enumerate(got) for b in got[k + 1:]) < 0.95  # the masks made a difference


def test_decoder_groups_requests_with_their_own_mask_rows(checkpoint, predictor):
    """No Ray: the MaskDecoder's group logic. Mask and no-mask requests never share a call; requests with
    different masks may, and each then decodes exactly as if alone."""
    from serve.deployments import MaskDecoder, _BatchStats
    from serve.messages import DecodeRequest

    image = sample_image("coffee")
    predictor.set_image(image)
    rng = np.random.default_rng(6)

    def req(mask, boxes=None):
        return DecodeRequest(embedding_id="e", embedding=predictor.embedding, original_hw=predictor.original_hw,
                             input_hw=predictor.input_hw, points=np.array([[300, 200]], np.float32),
                             labels=np.array([1]), boxes=boxes, num_outputs=3, select="all",
                             mask_input=mask, return_low_res_logits=True)

    m1, m2 = (rng.normal(0, s_, (1, 1, LOW, LOW)).astype(np.float32) for s_ in (3.0, 8.0))
    two_boxes = np.array([[200, 120, 420, 330], [10, 10, 300, 200]], np.float32)
    a, b, c, a2 = req(m1, two_boxes), req(m2, two_boxes), req(None, two_boxes), req(m2)
    assert a.group_key() == b.group_key() != c.group_key()
    dec = object.__new__(MaskDecoder.func_or_class)  # the class behind the deployment, without a replica
    dec.decoder, dec.img_size, dec.groups = predictor.decoder, IMG, _BatchStats()
    together = dec._run_group([a, b])
    assert dec.groups.sizes == {2: 1}  # one decoder call for both
    for r, out in zip((a, b), together):
        alone = dec._run_group([r])[0]
        assert len(out["masks"]) == len(alone["masks"]) == 2 * 3
        for x, y in zip(out["masks"], alone["masks"]):
            assert (x["prompt_index"], x["output_index"]) == (y["prompt_index"], y["output_index"])
            assert _iou(rle_to_mask(x["segmentation"]), rle_to_mask(y["segmentation"])) >= 0.99
            assert np.abs(_load_npy_b64(x["low_res_logits"]).astype(np.float32)
                          - _load_npy_b64(y["low_res_logits"]).astype(np.float32)).max() < 1e-2
    ra = predictor.predict_batch(point_coords=np.array([[300, 200]], np.float32), point_labels=np.array([1]),
                                 boxes=two_boxes, mask_input=m1, num_outputs=3)
    for x in together[0]["masks"]:
        assert _iou(rle_to_mask(x["segmentation"]), ra.masks[x["prompt_index"], x["output_index"]]) >= 0.99
    assert together[0]["masks"][0]["segmentation"] != together[1]["masks"][0]["segmentation"]  # m1 vs m2
    assert len(dec._run_group([a2])[0]["masks"]) == 3


MASK_L = np.zeros((LOW, LOW), np.float32)


@pytest.mark.timeout(SERVER_TIMEOUT)
@pytest.mark.parametrize("extra,status,needle", [
    ({"mask_input": "@@not base64@@"}, 400, "base64"),
    ({"mask_input": _b64(b"just some bytes, not numpy")}, 400, ".npy"),
    ({"mask_input": _b64(b"\x93NUMPY\x01\x00\x08\x00{'x': 1}")}, 400, "header"),
    ({"mask_input": _b64(base64.b64decode(_npy_b64(MASK_L))[:-100])}, 400, "truncated"),
    ({"mask_input": _npy_b64(MASK_L.astype(np.int32))}, 422, "dtype"),
    ({"mask_input": _npy_b64(MASK_L[:32, :32].astype(np.float64))}, 422, "dtype"),
    ({"mask_input": _npy_b64(np.array([[{"a": 1}]], dtype=object), allow_pickle=True)}, 422, "dtype"),
    ({"mask_input": _npy_b64(MASK_L[:32])}, 422, "shape"),
    ({"mask_input": _npy_b64(np.zeros((2, LOW, LOW), np.float16))}, 422, "shape"),
    ({"mask_input": _npy_b64(np.zeros((4 * LOW, 4 * LOW), np.float16))}, 413, "limit"),
    ({"mask_input": _npy_b64(MASK_L.astype(np.float64))}, 413, "limit"),
    ({"mask_input": "A" * 400_000}, 413, "limit"),
    ({"mask_input": _npy_b64(np.full((LOW, LOW), np.nan, np.float32))}, 422, "NaN"),
    ({"mask_input": _npy_b64(np.full((1, LOW, LOW), np.inf, np.float16))}, 422, "infinite"),
    ({"mask_input": _npy_b64(np.full((LOW, LOW), 1e6, np.float32))}, 422, "within"),
    ({"mask_input": ""}, 422, "empty"),
    ({"mask_input": 5}, 422, "mask_input"),
    ({"mask_input": [[0.0] * 4] * 4}, 422, "mask_input"),
    ({"return_low_res_logits": "yes"}, 422, "return_low_res_logits"),
    ({"return_low_res_logits": 1}, 422, "return_low_res_logits"),
])
def test_segment_bad_mask_input_is_4xx(server, coffee, extra, status, needle):
    r = _segment(server, embedding_id=coffee["embedding_id"], points=[[300, 200]], labels=[1], **extra)
    assert r.status_code == status, r.text
    assert needle in r.json()["error"]
