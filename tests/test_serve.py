"""Ray Serve application over real HTTP on 127.0.0.1: every endpoint, masks equal to the library predictor's
(also for refinement with ``mask_input``), the embedding cache, dynamic batching, the API key, and
``serve/serve_config.yaml`` against Ray's schema.

One private local Ray cluster (2 CPUs, replicas at 0.25 CPU) and one Serve app for the whole module.
The model is a random-weight student saved as a checkpoint in a temp dir (no weights can be downloaded).
"""
from __future__ import annotations

import base64
import hashlib
import io
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

requests = pytest.importorskip("requests")
pytest.importorskip("ray.serve")

from edgesam.inference import Predictor  # noqa: E402
from edgesam.models import EdgeSAM, load_student, save_student  # noqa: E402
from edgesam.data.rle import decode_rle as rle_to_mask  # noqa: E402
from serve.codec import png_b64_to_mask  # noqa: E402
from serve.local import LocalServer, small_config  # noqa: E402
from serve.samples import sample_image, sample_png  # noqa: E402

pytestmark = [pytest.mark.ray,
              # pycocotools under numpy 2 (inside edgesam.data.rle.decode_rle), not ours
              pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")]
# Covers the module fixture starting Ray + Serve (~20 s idle, over 60 s when the 2 cores are saturated).
SERVER_TIMEOUT = 400  # five deployments now (the EmbeddingStore too): ~170 s to start on 2 saturated cores
REPO = Path(__file__).resolve().parent.parent
KEY = "test-key-123"
H = {"X-API-Key": KEY}
IMG = 256
BUDGET = 64_000_000  # per-request memory budget of the test server: coffee (600x400) x 4 boxes x 4 outputs fits


from tests.imaging import b64 as _b64  # noqa: E402
from tests.imaging import png_bytes as _png  # noqa: E402


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    torch.manual_seed(123)
    path = tmp_path_factory.mktemp("serve") / "student_random.pt"
    save_student(EdgeSAM(IMG).eval(), path, meta={"note": "random weights for tests"})
    return path


@pytest.fixture(scope="module")
def predictor(checkpoint) -> Predictor:
    model, _ = load_student(checkpoint, img_size=IMG)
    return Predictor.from_model(model)


@pytest.fixture(scope="module")
def server(checkpoint):
    cfg = small_config(model={"checkpoint": str(checkpoint)}, auth={"api_key": KEY},
                       encoder={"batch_wait_timeout_s": 0.1}, decoder={"batch_wait_timeout_s": 0.1},
                       cache={"max_embeddings": 4},
                       limits={"max_points": 8, "max_boxes": 4, "memory_budget_bytes": BUDGET})
    srv = LocalServer(cfg).start()
    yield srv
    srv.stop()


@pytest.fixture
def coffee(server) -> dict:
    """The coffee sample's embedding, (re-)posted per test: the small cache may have evicted it."""
    data = sample_png("coffee")
    r = requests.post(server.url + "/v1/embeddings", json={"image_b64": _b64(data)}, headers=H, timeout=60)
    assert r.status_code == 200, r.text
    return {"bytes": data, "image": sample_image("coffee"), **r.json()}


@pytest.mark.timeout(SERVER_TIMEOUT)
def test_healthz_reports_model_and_weights(server, checkpoint):
    h = requests.get(server.url + "/healthz", timeout=30).json()
    assert h["status"] == "ok"
    assert h["weights"] == "checkpoint" and checkpoint.name in h["model"] and "sha256=" in h["model"]
    assert h["warning"] is None
    assert h["img_size"] == IMG and h["auth"] is True
    assert h["backend"]["encoder"].startswith("onnxruntime-cpu")  # auto on CPU: the checkpoint, exported once
    assert h["batching"]["encoder"]["max_batch_size"] == 4 and h["batching"]["decoder"]["max_batch_size"] == 8
    assert h["cache"]["capacity"] == 4
    assert h["everything"] == "EverythingGenerator(mode=grid)"  # auto: the random student has no RPN


@pytest.mark.timeout(SERVER_TIMEOUT)
def test_page_docs_and_samples(server):
    page = requests.get(server.url + "/", timeout=30)
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert '<canvas id="overlay"' in page.text and "/v1/segment" in page.text
    assert not re.search(r"(src|href)=[\"']?(https?:)?//", page.text), "the page must be self-contained (no CDN)"
    assert requests.get(server.url + "/docs", timeout=30).status_code == 200
    paths = requests.get(server.url + "/openapi.json", timeout=30).json()["paths"]
    assert {"/v1/embeddings", "/v1/segment", "/v1/everything", "/healthz", "/v1/samples"} <= set(paths)
    assert "multipart/form-data" in paths["/v1/embeddings"]["post"]["requestBody"]["content"]
    samples = requests.get(server.url + "/v1/samples", timeout=30).json()
    assert [s["name"] for s in samples][:1] == ["shapes"] and len(samples) >= 3
    for s in samples:
        r = requests.get(server.url + s["url"], timeout=30)
        assert r.headers["content-type"] == "image/png"
        assert Image.open(io.BytesIO(r.content)).size == (s["width"], s["height"])
    assert requests.get(server.url + "/v1/samples/nope", timeout=30).status_code == 404


@pytest.mark.timeout(SERVER_TIMEOUT)
def test_embeddings_cache_by_content_hash(server, coffee):
    data = coffee["bytes"]
    assert coffee["embedding_id"] == hashlib.sha256(data).hexdigest()
    assert (coffee["width"], coffee["height"]) == (600, 400)
    before = requests.get(server.url + "/healthz", timeout=30).json()["cache"]
    # Same bytes three ways: multipart, raw body, JSON data URI -> all cache hits, same id.
    r1 = requests.post(server.url + "/v1/embeddings", files={"file": ("c.png", data, "image/png")}, headers=H, timeout=30)
    r2 = requests.post(server.url + "/v1/embeddings", data=data, headers={**H, "Content-Type": "image/png"}, timeout=30)
    r3 = requests.post(server.url + "/v1/embeddings", json={"image_b64": "data:image/png;base64," + _b64(data)},
                       headers=H, timeout=30)
    for r in (r1, r2, r3):
        assert r.status_code == 200, r.text
        assert r.json() == {**{k: coffee[k] for k in ("embedding_id", "width", "height")}, "cached": True}
    after = requests.get(server.url + "/healthz", timeout=30).json()["cache"]
    assert after["hits"] - before["hits"] == 3 and after["misses"] == before["misses"]


def _segment(server, **body) -> requests.Response:
    return requests.post(server.url + "/v1/segment", json=body, headers=H, timeout=60)


@pytest.mark.timeout(SERVER_TIMEOUT)
@pytest.mark.parametrize("prompt", [
    {"points": [[300, 200]], "labels": [1]},
    {"points": [[300, 200], [100, 50]], "labels": [1, 0]},
    {"boxes": [[200, 120, 420, 330]]},
    {"points": [[300, 200]], "labels": [1], "boxes": [[200, 120, 420, 330], [10, 10, 300, 200]]},
])
@pytest.mark.parametrize("num_outputs,fmt", [(1, "rle"), (3, "png"), (4, "rle")])
def test_segment_matches_library_predictor(server, coffee, predictor, prompt, num_outputs, fmt):
    r = _segment(server, embedding_id=coffee["embedding_id"], num_outputs=num_outputs, format=fmt, **prompt)
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["width"], body["height"], body["weights"]) == (600, 400, "checkpoint")
    predictor.set_image(coffee["image"])
    pts = np.array(prompt["points"], np.float32) if "points" in prompt else None
    labels = np.array(prompt["labels"]) if "labels" in prompt else None
    boxes = np.array(prompt["boxes"], np.float32) if "boxes" in prompt else None
    ref = predictor.predict_batch(None if pts is None else pts[None], None if labels is None else labels[None], boxes,
                                  num_outputs=num_outputs)
    n_prompts = 1 if boxes is None else len(boxes)
    assert len(body["masks"]) == n_prompts * num_outputs
    for m in body["masks"]:
        i, j = m["prompt_index"], m["output_index"]
        got = rle_to_mask(m["segmentation"]) if fmt == "rle" else png_b64_to_mask(m["png"])
        assert got.shape == (400, 600)
        assert _iou(got, ref.masks[i, j]) >= 0.99
        assert m["area"] == int(got.sum())
        assert abs(m["stability_score"] - ref.stability[i, j]) < 0.02 and m["score"] == m["stability_score"]
        assert abs(m["iou"] - ref.iou[i, j]) < 1e-3
        if got.any():
            ys, xs = np.nonzero(got)
            assert m["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]


@pytest.mark.timeout(SERVER_TIMEOUT)
def test_segment_multimask_select_and_inline_image(server, coffee, predictor):
    predictor.set_image(coffee["image"])
    ref = predictor.predict_batch(np.array([[[150, 300]]], np.float32), np.array([[1]]), num_outputs=3)
    best = int(np.argmax(ref.stability[0]))
    # image_b64 instead of embedding_id: hits the cache (same bytes), same answer.
    r = _segment(server, image_b64=_b64(coffee["bytes"]), points=[[150, 300]], labels=[1], num_outputs=3,
                 multimask_select="stability")
    assert r.status_code == 200, r.text
    (m,) = r.json()["masks"]
    assert m["output_index"] == best
    assert _iou(rle_to_mask(m["segmentation"]), ref.masks[0, best]) >= 0.99
    r = _segment(server, embedding_id=coffee["embedding_id"], points=[[150, 300]], labels=[1], num_outputs=3,
                 multimask_select="iou")
    assert r.json()["masks"][0]["output_index"] == int(np.argmax(ref.iou[0]))


@pytest.mark.timeout(SERVER_TIMEOUT)
def test_concurrent_requests_are_batched_and_correct(server, predictor):
    """Distinct images at once -> encoder batches > 1; clicks on one image at once -> one decoder group."""
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (120 + 8 * i, 160, 3), dtype=np.uint8) for i in range(4)]  # <= cache size
    with ThreadPoolExecutor(4) as pool:
        embs = list(pool.map(lambda im: requests.post(server.url + "/v1/embeddings", data=_png(im),
                                                      headers={**H, "Content-Type": "image/png"}, timeout=60).json(),
                             images))
    assert all(not e["cached"] for e in embs)
    points = [[20 + 15 * k, 30 + 5 * k] for k in range(6)]
    with ThreadPoolExecutor(6) as pool:
        outs = list(pool.map(lambda p: _segment(server, embedding_id=embs[0]["embedding_id"], points=[p], labels=[1]),
                             points))
    predictor.set_image(images[0])
    for p, r in zip(points, outs):
        assert r.status_code == 200, r.text
        ref = predictor.predict(np.array([p], np.float32), np.array([1]), multimask_output=False)[0][0]
        assert _iou(rle_to_mask(r.json()["masks"][0]["segmentation"]), ref) >= 0.99
    b = requests.get(server.url + "/healthz", timeout=30).json()["batching"]
    assert max(int(k) for k in b["encoder"]["histogram"]) > 1, b["encoder"]
    assert max(int(k) for k in b["decoder"]["groups"]["histogram"]) > 1, b["decoder"]


def _npy_b64(arr: np.ndarray, **kw) -> str:
    buf = io.BytesIO()
    np.save(buf, arr, **kw)
    return base64.b64encode(buf.getvalue()).decode()


def _load_npy_b64(text: str) -> np.ndarray:
    return np.load(io.BytesIO(base64.b64decode(text)), allow_pickle=False)


LOW = IMG // 4  # side of the low-res mask logits


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


@pytest.mark.timeout(SERVER_TIMEOUT)
def test_cache_eviction_gives_404(server):
    rng = np.random.default_rng(1)
    ids = []
    for _ in range(5):  # capacity is 4
        r = requests.post(server.url + "/v1/embeddings", data=_png(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)),
                          headers={**H, "Content-Type": "image/png"}, timeout=60)
        ids.append(r.json()["embedding_id"])
    r = _segment(server, embedding_id=ids[0], points=[[5, 5]], labels=[1])
    assert r.status_code == 404 and "evicted" in r.json()["error"]
    assert _segment(server, embedding_id=ids[-1], points=[[5, 5]], labels=[1]).status_code == 200


@pytest.mark.timeout(SERVER_TIMEOUT)
@pytest.mark.parametrize("body,status,needle", [
    ({"embedding_id": "0" * 64, "points": [[1, 1]], "labels": [1]}, 404, "unknown embedding_id"),
    ({"points": [[1, 1]], "labels": [1]}, 422, "exactly one of"),
    ({"image_b64": "https://example.com/cat.png", "points": [[1, 1]], "labels": [1]}, 400, "URL"),
    ({"EMB": None, "points": [[700, 1]], "labels": [1]}, 422, "outside the image"),
    ({"EMB": None, "points": [[1, 1], [2, 2]], "labels": [1]}, 422, "one label per point"),
    ({"EMB": None, "points": [[1, 1]], "labels": [2]}, 422, "labels"),
    ({"EMB": None, "boxes": [[50, 50, 10, 10]]}, 422, "x1 >= x0"),
    ({"EMB": None, "points": [[1, 1]] * 9, "labels": [1] * 9}, 413, "limit of 8"),
    ({"EMB": None}, 422, "no prompt"),
])
def test_segment_client_errors(server, coffee, body, status, needle):
    if "EMB" in body:
        body = {"embedding_id": coffee["embedding_id"], **{k: v for k, v in body.items() if k != "EMB"}}
    r = _segment(server, **body)
    assert r.status_code == status, r.text
    assert needle in r.json()["error"]


@pytest.mark.timeout(SERVER_TIMEOUT)
def test_everything_returns_coco_annotations(server):
    from pycocotools.coco import COCO

    imgs = [sample_png("shapes"), sample_png("chelsea")]
    r = requests.post(server.url + "/v1/everything", json={"images_b64": [_b64(b) for b in imgs]}, headers=H, timeout=60)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["weights"] == "checkpoint" and len(body["results"]) == 2
    coco = {"images": [], "annotations": [], "categories": [{"id": 1, "name": "object"}]}
    for k, res in enumerate(body["results"]):
        h, w = sample_image(["shapes", "chelsea"][k]).shape[:2]
        assert (res["height"], res["width"]) == (h, w)
        assert 1 <= len(res["annotations"]) <= 16 * 3  # 4x4 grid, 3 outputs per point
        scores = [a["score"] for a in res["annotations"]]
        assert scores == sorted(scores, reverse=True)
        coco["images"].append({"id": k + 1, "height": h, "width": w})
        for a in res["annotations"]:
            m = rle_to_mask(a["segmentation"])
            assert m.shape == (h, w) and int(m.sum()) == a["area"] > 0
            coco["annotations"].append({**a, "id": len(coco["annotations"]) + 1, "image_id": k + 1, "category_id": 1,
                                        "iscrowd": 0})
    api = COCO()
    api.dataset = coco
    api.createIndex()
    assert len(api.getAnnIds()) == sum(len(r["annotations"]) for r in body["results"])
    # Multipart upload of one image.
    r = requests.post(server.url + "/v1/everything", files={"file": ("s.png", imgs[0], "image/png")}, headers=H, timeout=60)
    assert r.status_code == 200 and len(r.json()["results"]) == 1


@pytest.mark.timeout(SERVER_TIMEOUT)
def test_api_key_enforced_on_model_endpoints(server, coffee):
    body = {"embedding_id": coffee["embedding_id"], "points": [[1, 1]], "labels": [1]}
    for headers in ({}, {"X-API-Key": "wrong"}):
        r = requests.post(server.url + "/v1/segment", json=body, headers=headers, timeout=30)
        assert r.status_code == 401 and "X-API-Key" in r.json()["error"]
        r = requests.post(server.url + "/v1/embeddings", json={"image_b64": "!!"}, headers=headers, timeout=30)
        assert r.status_code == 401
        r = requests.post(server.url + "/v1/everything", data=b"x", headers=headers, timeout=30)
        assert r.status_code == 401
    # Health, page, docs and samples stay open (probes, the page's first load).
    for path in ("/healthz", "/", "/docs", "/v1/samples"):
        assert requests.get(server.url + path, timeout=30).status_code == 200


@pytest.mark.timeout(120)
def test_backend_selection_and_weight_reporting(tmp_path, checkpoint):
    """No Ray. auto on CPU -> onnxruntime: onnx_dir as given, a checkpoint or random model through a cached
    export (made once, reused); torch on request; random weights always flagged."""
    from edgesam.export.onnx_export import export_all
    from serve.config import ModelSection
    from serve.model import load_backends

    torch.manual_seed(0)
    export_all(EdgeSAM(IMG).eval(), tmp_path / "onnx", checkpoint_sha256="random")
    x = np.random.default_rng(0).standard_normal((1, 3, IMG, IMG)).astype(np.float32)
    cache = tmp_path / "cache"
    ort = load_backends(ModelSection(img_size=IMG, onnx_dir=str(tmp_path / "onnx"), threads=1), with_rpn=True)
    rnd = load_backends(ModelSection(img_size=IMG, seed=0, threads=1, export_cache_dir=str(cache)), with_rpn=True)
    tch = load_backends(ModelSection(img_size=IMG, seed=0, threads=1, backend="torch"), with_rpn=True)
    ckpt = load_backends(ModelSection(img_size=IMG, checkpoint=str(checkpoint), threads=1, export_cache_dir=str(cache)))
    assert ort.rpn is None and rnd.rpn is None and tch.rpn is None  # no RPN here -> everything mode "auto" is the grid
    assert ort.info.backend == "onnxruntime-cpu/onnxruntime-cpu" and ort.info.weights == "random" and ort.info.warning
    assert rnd.info.backend == "onnxruntime-cpu/onnxruntime-cpu" and rnd.info.weights == "random" and rnd.info.warning
    assert tch.info.backend == "torch-cpu/torch-cpu" and tch.info.weights == "random" and tch.info.warning
    assert ckpt.info.backend.startswith("onnxruntime-cpu") and ckpt.info.weights == "checkpoint"
    assert ckpt.info.warning is None and checkpoint.name in ckpt.info.identity
    exported = sorted(p for p in cache.iterdir() if p.is_dir() and not p.name.startswith("."))
    assert len(exported) == 2 and {ckpt.info.meta["onnx_dir"], rnd.info.meta["onnx_dir"]} == {str(p) for p in exported}
    np.testing.assert_allclose(ort.encoder(x), tch.encoder(x), atol=1e-3)  # same seed, two runtimes
    np.testing.assert_allclose(rnd.encoder(x), tch.encoder(x), atol=1e-3)
    assert np.abs(ckpt.encoder(x) - rnd.encoder(x)).max() > 1e-2  # a different (seed 123) model
    # the export is made once: a second load reuses the folder untouched
    stamp = {p: p.stat().st_mtime_ns for p in exported[0].iterdir()}
    again = load_backends(ModelSection(img_size=IMG, checkpoint=str(checkpoint), threads=1, export_cache_dir=str(cache)))
    assert again.info.meta["onnx_dir"] == ckpt.info.meta["onnx_dir"]
    assert {p: p.stat().st_mtime_ns for p in exported[0].iterdir()} == stamp
    with pytest.raises(ValueError, match="takes 256px inputs"):
        load_backends(ModelSection(img_size=512, onnx_dir=str(tmp_path / "onnx")))


@pytest.mark.timeout(120)
def test_auto_backend_exports_the_rpn_with_the_checkpoint(tmp_path):
    """A checkpoint with an RPN served by ONNX Runtime (auto): rpn.onnx comes with the cached export and its
    proposals equal the torch RPN's."""
    from edgesam.inference.everything import OrtRpnEncoder, TorchRpnEncoder
    from edgesam.models import save_student
    from edgesam.models.rpn import build_rpn
    from serve.config import ModelSection
    from serve.model import load_backends

    torch.manual_seed(7)
    model = EdgeSAM(IMG).eval()
    model.rpn = build_rpn(model.image_encoder.feature_channels, width=32, num_convs=1).eval()
    ckpt = save_student(model, tmp_path / "rpn_student.pt")
    ort = load_backends(ModelSection(img_size=IMG, checkpoint=str(ckpt), threads=1,
                                     export_cache_dir=str(tmp_path / "cache")), with_rpn=True)
    tch = load_backends(ModelSection(img_size=IMG, checkpoint=str(ckpt), threads=1, backend="torch"), with_rpn=True)
    assert isinstance(ort.rpn, OrtRpnEncoder) and isinstance(tch.rpn, TorchRpnEncoder)
    assert (Path(ort.info.meta["onnx_dir"]) / "rpn.onnx").is_file() and ort.info.weights == "checkpoint"
    x = np.random.default_rng(1).standard_normal((1, 3, IMG, IMG)).astype(np.float32)
    (e1, b1, s1), (e2, b2, s2) = ort.rpn(x), tch.rpn(x)
    np.testing.assert_allclose(e1, e2, atol=1e-3)
    np.testing.assert_allclose(s1, s2, atol=1e-3)
    top = np.argsort(-s2[0])[:50]  # the proposals that matter; boxes are in pixels
    np.testing.assert_allclose(b1[0][top], b2[0][top], atol=0.5)


@pytest.mark.timeout(30)
def test_serve_config_yaml_matches_ray_schema_and_app():
    from ray.serve.schema import ServeDeploySchema

    raw = yaml.safe_load((REPO / "serve" / "serve_config.yaml").read_text())
    schema = ServeDeploySchema.model_validate(raw)
    (app,) = schema.applications
    assert app.import_path == "serve.app:edgesam" and app.route_prefix == "/"
    names = {d.name: d for d in app.deployments}
    assert set(names) == {"ImageEncoder", "MaskDecoder", "Everything", "EmbeddingStore", "EdgeSamIngress"}
    assert names["EmbeddingStore"].num_replicas == 1  # the shared state: never more than one
    for name in ("ImageEncoder", "MaskDecoder"):
        d = names[name]
        assert d.max_ongoing_requests >= 2 * d.user_config["max_batch_size"]
        assert d.autoscaling_config["min_replicas"] >= 1


@pytest.mark.timeout(30)
def test_default_app_builds_from_config_file(monkeypatch, tmp_path):
    import serve.app as app_module
    from serve.config import load_serve_config

    cfg = load_serve_config()
    assert cfg.model.img_size == 1024 and cfg.encoder.options()["max_ongoing_requests"] >= 2 * cfg.encoder.max_batch_size
    custom = tmp_path / "serve_small.yaml"
    custom.write_text(yaml.safe_dump({"model": {"img_size": 256}, "encoder": {"max_batch_size": 2}}))
    monkeypatch.setenv("EDGESAM_SERVE_CONFIG", str(custom))
    assert load_serve_config().model.img_size == 256
    assert app_module.edgesam is not None  # builds the Application graph without starting anything
    custom.write_text(yaml.safe_dump({"model": {"img_size": 100}}))
    with pytest.raises(ValueError, match="multiple of 64"):
        app_module.__getattr__("edgesam")


def _big_png(h: int = 3000, w: int = 4000) -> bytes:
    """A 12 MP photo-sized PNG that compresses to a few kB (a flat colour with one square)."""
    img = np.full((h, w, 3), (90, 120, 200), np.uint8)
    img[h // 3:h // 2, w // 3:w // 2] = 240
    return _png(img)


@pytest.mark.timeout(SERVER_TIMEOUT)
def test_over_budget_is_413_before_any_work_and_the_server_stays_healthy(server, coffee):
    """A 12 MP image with 4 boxes x 4 outputs (288 MB of masks) against a 64 MB budget: 413 naming both figures,
    nothing encoded (no store miss), everything refused too; then /healthz and a normal request answer."""
    big = _big_png()
    before = requests.get(server.url + "/healthz", timeout=30).json()["cache"]
    boxes = [[10, 10, 3000, 2000], [100, 100, 500, 500], [0, 0, 4000, 3000], [5, 5, 50, 50]]
    r = _segment(server, image_b64=_b64(big), boxes=boxes, num_outputs=4)
    assert r.status_code == 413, r.text
    err = r.json()["error"]
    assert "memory budget of 0.06 GB" in err and "1.15 GB" in err and "4000x3000 pixels x 16 masks" in err
    # best-per-prompt returns 4 masks (288 MB): still over; one box, one output (72 MB): still over this budget
    r = _segment(server, image_b64=_b64(big), boxes=boxes, num_outputs=4, multimask_select="stability")
    assert r.status_code == 413 and "x 4 masks" in r.json()["error"]
    r = requests.post(server.url + "/v1/everything", data=big, headers={**H, "Content-Type": "image/png"}, timeout=60)
    assert r.status_code == 413 and "memory budget" in r.json()["error"], r.text
    after = requests.get(server.url + "/healthz", timeout=30)
    assert after.status_code == 200 and after.json()["status"] == "ok"
    assert after.json()["cache"]["misses"] == before["misses"]  # the big image was never encoded
    # within budget: coffee x 4 boxes x 4 outputs (23 MB) is served
    r = _segment(server, embedding_id=coffee["embedding_id"], boxes=[[200, 120, 420, 330]] * 4, num_outputs=4)
    assert r.status_code == 200 and len(r.json()["masks"]) == 16


def test_budget_figures_and_defaults():
    """No Ray: the default budget (<= 2 GB) refuses the issue's requests and admits ordinary clicks; decoder calls
    are split so batched requests stay within it."""
    from serve.budget import check_everything, check_segment, everything_masks_in_flight, split_by_budget
    from serve.codec import RequestError
    from serve.config import LimitsSection

    lim = LimitsSection()
    assert lim.memory_budget_bytes <= 2_000_000_000
    for h, w, n, k in [(3000, 4000, 16, 4), (5000, 8000, 64, 4), (5000, 8000, 16, 1)]:  # 12 MP, 40 MP
        with pytest.raises(RequestError) as e:
            check_segment(h, w, n, k, "all", lim)
        assert e.value.status == 413 and f"{w}x{h} pixels x {n * k} masks" in str(e.value)
    assert check_segment(5000, 8000, 1, 4, "stability", lim) == 40_000_000 * 6  # one returned mask at 40 MP
    assert check_segment(3000, 4000, 16, 4, "iou", lim) == 12_000_000 * 16 * 6
    assert everything_masks_in_flight({}, "rpn") == 100 and everything_masks_in_flight({}, "grid") == 64 * 3
    assert everything_masks_in_flight({"points_per_side": 4}, "auto") == 100
    check_everything([(400, 600)] * 4, 100, lim)
    with pytest.raises(RequestError, match="memory budget"):
        check_everything([(3000, 4000)], 100, lim)  # 100 full-size 12 MP masks in flight: 7.2 GB
    assert split_by_budget([5, 5, 5, 9, 1], lambda c: c, 10) == [[5, 5], [5], [9, 1]]
    assert split_by_budget([12, 3], lambda c: c, 10) == [[12], [3]]  # alone over: admitted alone
