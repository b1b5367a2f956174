"""Serve app endpoints over real HTTP: health, page/docs/samples, the embedding cache, /v1/segment against the
library predictor (prompts, output counts, formats, multimask selection), dynamic batching and /v1/everything."""
from __future__ import annotations

import hashlib
import io
import re
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image

requests = pytest.importorskip("requests")
pytest.importorskip("ray.serve")

from edgesam.data.rle import decode_rle as rle_to_mask  # noqa: E402
from serve.codec import png_b64_to_mask  # noqa: E402
from serve.samples import sample_image, sample_png  # noqa: E402
from tests.imaging import b64 as _b64  # noqa: E402
from tests.imaging import png_bytes as _png  # noqa: E402

from .helpers import H, IMG, SERVER_TIMEOUT, _iou, _segment  # noqa: E402

pytestmark = [pytest.mark.ray,
              # pycocotools under numpy 2 (inside edgesam.data.rle.decode_rle), not ours
              pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")]


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
