"""Labelling-tool backends over real HTTP on 127.0.0.1, with request bodies shaped as each tool sends them:
Label Studio's ML backend (``/label-studio``: percent keypoints/rectangles in ``params.context``, brush RLE
answers decoded back to masks), X-AnyLabeling's remote server (``/xanylabeling``: pixel marks, polygon shapes)
and CVAT's SAM contract (``/cvat/sam``: the float32 embedding blob), each compared with the library Predictor
(random-weight checkpoint: no weights can be downloaded). Images come as data URIs, from a local HTTP server,
and as Label Studio-relative URLs from that server with a token; auth and 4xx behaviour are checked too.
"""
from __future__ import annotations

import base64
import http.server
import json
import os
import threading
from pathlib import Path

import numpy as np
import pytest

requests = pytest.importorskip("requests")
pytest.importorskip("ray.serve")

from edgesam.data.rle import decode_segmentation  # noqa: E402
from edgesam.formats.label_studio_tasks import result_to_mask  # noqa: E402
from edgesam.inference import Predictor  # noqa: E402
from edgesam.models import load_student  # noqa: E402
from serve.local import LocalServer, small_config  # noqa: E402
from serve.samples import sample_image, sample_png  # noqa: E402
from tests.imaging import b64  # noqa: E402
from tests.students import random_student_checkpoint  # noqa: E402

pytestmark = [pytest.mark.ray, pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")]
SERVER_TIMEOUT = 400  # five deployments (EmbeddingStore too): ~170 s to start on 2 saturated cores
KEY = "integration-key-7"
LS_TOKEN = "ls-token-42"
IMG = 256
LABEL_CONFIG = """<View>
  <Image name="img" value="$picture" zoom="true"/>
  <BrushLabels name="brush" toName="img"><Label value="Cup"/><Label value="Plate"/></BrushLabels>
  <KeyPointLabels name="kp" toName="img" smart="true"><Label value="Cup" smart="true"/></KeyPointLabels>
  <RectangleLabels name="rect" toName="img" smart="true"><Label value="Plate"/></RectangleLabels>
</View>"""
POLY_CONFIG = LABEL_CONFIG.replace("BrushLabels", "PolygonLabels").replace('name="brush"', 'name="poly"')


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    u = np.logical_or(a, b).sum()
    return 1.0 if u == 0 else float(np.logical_and(a, b).sum() / u)


class _Files(http.server.BaseHTTPRequestHandler):
    """Serves the coffee PNG at /coffee.png and /data/upload/1/coffee.png (the latter only with the token)."""

    seen_auth: list = []

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        _Files.seen_auth.append(self.headers.get("Authorization"))
        ok = self.path == "/coffee.png" or (self.path == "/data/upload/1/coffee.png"
                                            and self.headers.get("Authorization") == f"Token {LS_TOKEN}")
        body = sample_png("coffee") if ok else b"no"
        self.send_response(200 if ok else 404)
        self.send_header("Content-Type", "image/png" if ok else "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def files():
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Files)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()
    srv.server_close()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return random_student_checkpoint(tmp_path_factory.mktemp("integrations") / "student_random.pt", IMG, seed=321)


@pytest.fixture(scope="module")
def predictor(checkpoint) -> Predictor:
    model, _ = load_student(checkpoint, img_size=IMG)
    p = Predictor.from_model(model)
    p.set_image(sample_image("coffee"))
    return p


@pytest.fixture(scope="module")
def server(checkpoint, files):
    os.environ["LABEL_STUDIO_API_KEY"] = LS_TOKEN  # read in the ingress replica (workers inherit the env)
    cfg = small_config(model={"checkpoint": str(checkpoint)}, auth={"api_key": KEY},
                       integrations={"label_studio": {"url": files, "max_tasks": 4}},
                       limits={"max_points": 8, "max_boxes": 4})
    srv = LocalServer(cfg).start()
    yield srv
    srv.stop()
    os.environ.pop("LABEL_STUDIO_API_KEY", None)


def _basic(password: str) -> dict:
    return {"Authorization": "Basic " + base64.b64encode(f"labelstudio:{password}".encode()).decode()}


def _ls_context(items: list[dict]) -> dict:
    return {"result": [{"original_width": 600, "original_height": 400, "image_rotation": 0, "from_name": it["from"],
                        "to_name": "img", "type": it["type"], "origin": "manual", "id": f"r{i}",
                        "value": it["value"], **({"is_positive": it["pos"]} if "pos" in it else {})}
                       for i, it in enumerate(items)]}


def _ls_predict(server, image_ref: str, items: list[dict], config: str = LABEL_CONFIG, headers=None):
    body = {"tasks": [{"id": 1, "data": {"picture": image_ref}}], "model_version": "", "project": "3.1700000000",
            "label_config": config, "params": {"login": None, "password": None, "context": _ls_context(items)}}
    return requests.post(server.url + "/label-studio/predict", json=body, headers=_basic(KEY) if headers is None else headers, timeout=120)


def _data_uri() -> str:
    return "data:image/png;base64," + b64(sample_png("coffee"))


POINT = {"from": "kp", "type": "keypointlabels", "pos": True,
         "value": {"x": 50.0, "y": 50.0, "width": 0.5, "keypointlabels": ["Cup"]}}
NEG = {"from": "kp", "type": "keypointlabels", "pos": False,
       "value": {"x": 10.0, "y": 10.0, "width": 0.5, "keypointlabels": ["Cup"]}}
RECT = {"from": "rect", "type": "rectanglelabels",
        "value": {"x": 25.0, "y": 25.0, "width": 50.0, "height": 50.0, "rotation": 0, "rectanglelabels": ["Plate"]}}


@pytest.mark.timeout(SERVER_TIMEOUT)
def test_label_studio_health_and_setup(server):
    h = requests.get(server.url + "/label-studio/health", timeout=30)
    assert h.status_code == 200 and h.json()["status"] == "UP"
    r = requests.post(server.url + "/label-studio/setup", headers=_basic(KEY), timeout=30,
                      json={"project": "3.1700000000", "schema": LABEL_CONFIG, "hostname": "http://localhost:8080",
                            "access_token": "x", "model_version": ""})
    assert r.status_code == 200 and r.json()["model_version"].startswith("edgesam:")
    assert requests.post(server.url + "/label-studio/setup", json={"schema": LABEL_CONFIG}, timeout=30).status_code == 401
    bad = requests.post(server.url + "/label-studio/setup", headers=_basic(KEY), timeout=30,
                        json={"schema": "<View><Image name='i' value='$x'/><Choices name='c' toName='i'/></View>"})
    assert bad.status_code == 422 and "BrushLabels" in bad.json()["error"]


@pytest.mark.timeout(SERVER_TIMEOUT)
@pytest.mark.parametrize("items,points,labels,boxes", [
    ([POINT], [[300, 200]], [1], None),
    ([POINT, NEG], [[300, 200], [60, 40]], [1, 0], None),
    ([RECT], None, None, [[150, 100, 450, 300]]),
    ([POINT, RECT], [[300, 200]], [1], [[150, 100, 450, 300]]),
])
def test_label_studio_brush_masks_match_the_predictor(server, predictor, items, points, labels, boxes):
    r = _ls_predict(server, _data_uri(), items)
    assert r.status_code == 200, r.text
    (pred,) = r.json()["results"]
    (region,) = pred["result"]
    assert region["type"] == "brushlabels" and region["from_name"] == "brush" and region["to_name"] == "img"
    assert (region["original_width"], region["original_height"]) == (600, 400)
    assert region["value"]["format"] == "rle" and region["value"]["brushlabels"] == [items[-1]["value"][items[-1]["type"]][0]]
    got = result_to_mask(region)  # brush RLE decoded back (edgesam.formats.brush_rle)
    ref = predictor.predict_batch(None if points is None else np.array([points], np.float32),
                                  None if labels is None else np.array([labels]),
                                  None if boxes is None else np.array(boxes, np.float32), num_outputs=1).masks[0, 0]
    assert got.shape == ref.shape == (400, 600)
    assert _iou(got, ref) >= 0.99
    assert 0.0 <= pred["score"] <= 1.0 and pred["model_version"].startswith("edgesam:")


@pytest.mark.timeout(SERVER_TIMEOUT)
def test_label_studio_image_sources_polygons_and_errors(server, files, predictor):
    ref = predictor.predict_batch(np.array([[[300, 200]]], np.float32), np.array([[1]]), num_outputs=1).masks[0, 0]
    _Files.seen_auth.clear()
    for ref_url in (files + "/coffee.png", "/data/upload/1/coffee.png"):  # reachable URL; Label Studio-relative
        r = _ls_predict(server, ref_url, [POINT])
        assert r.status_code == 200, r.text
        assert _iou(result_to_mask(r.json()["results"][0]["result"][0]), ref) >= 0.99
    assert f"Token {LS_TOKEN}" in _Files.seen_auth  # Label Studio media fetched with its token
    poly = _ls_predict(server, _data_uri(), [POINT], config=POLY_CONFIG)
    assert poly.status_code == 200, poly.text
    regions = poly.json()["results"][0]["result"]
    assert regions and all(g["type"] == "polygonlabels" and g["from_name"] == "poly" for g in regions)
    from scipy.ndimage import binary_fill_holes

    union = np.logical_or.reduce([result_to_mask(g) for g in regions])
    assert _iou(union, binary_fill_holes(ref)) >= 0.99  # polygons fill holes
    no_context = requests.post(server.url + "/label-studio/predict", headers=_basic(KEY), timeout=30,
                               json={"tasks": [{"data": {"picture": _data_uri()}}], "label_config": LABEL_CONFIG})
    assert no_context.status_code == 200 and no_context.json()["results"] == []
    cases = [
        (dict(image_ref=files + "/missing.png"), 422, "HTTP 404"),
        (dict(image_ref="http://127.0.0.1:1/x.png"), 422, "could not fetch"),
        (dict(image_ref="s3://bucket/x.png"), 422, "unsupported task image"),
        (dict(image_ref="/etc/passwd.png"), 422, "HTTP 404"),  # relative: asked of Label Studio, never read locally
        (dict(image_ref="data:image/png;base64,!!!"), 400, "base64"),
        (dict(image_ref=_data_uri(), headers=_basic("wrong")), 401, "API key"),
        (dict(image_ref=_data_uri(), headers={}), 401, "API key"),
        (dict(image_ref=_data_uri(), config="<View><Image"), 422, "XML"),
        (dict(image_ref=_data_uri(), config='<!DOCTYPE x [<!ENTITY a "b">]><View/>'), 422, "ENTITY"),
    ]
    for kw, status, needle in cases:
        r = _ls_predict(server, kw["image_ref"], [POINT], config=kw.get("config", LABEL_CONFIG), headers=kw.get("headers"))
        assert r.status_code == status and needle in r.json()["error"], (kw, r.status_code, r.text[:300])
    far = dict(POINT, value={"x": 150.0, "y": 50.0, "keypointlabels": ["Cup"]})
    r = _ls_predict(server, _data_uri(), [far])
    assert r.status_code == 422 and "outside the image" in r.json()["error"]
    r = _ls_predict(server, _data_uri(), [{"from": "x", "type": "choices", "value": {"x": 1, "y": 1}}])
    assert r.status_code == 422 and "keypointlabels" in r.json()["error"]
    many = {"tasks": [{"data": {"picture": "x"}}] * 5, "label_config": LABEL_CONFIG,
            "params": {"context": _ls_context([POINT])}}
    r = requests.post(server.url + "/label-studio/predict", json=many, headers=_basic(KEY), timeout=30)
    assert r.status_code == 413


@pytest.mark.timeout(SERVER_TIMEOUT)
def test_xanylabeling_remote_server_protocol(server, predictor):
    from scipy.ndimage import binary_fill_holes

    base, token = server.url + "/xanylabeling", {"Token": KEY}
    h = requests.get(base + "/health", timeout=30).json()
    assert h["status"] == "healthy" and h["models_loaded"] == 1
    assert requests.get(base + "/v1/models", timeout=30).status_code == 401
    models = requests.get(base + "/v1/models", headers=token, timeout=30).json()
    assert models["success"] and "edgesam" in models["data"]
    assert {w["name"] for w in models["data"]["edgesam"]["widgets"]} >= {"button_add_point", "button_add_rect"}
    image = "data:image/png;base64," + b64(sample_png("coffee"))
    marks = [{"type": "point", "data": [300, 200], "label": 1}, {"type": "point", "data": [60, 40], "label": 0}]
    body = {"model": "edgesam", "image": image,
            "params": {"marks": marks, "epsilon_factor": 0.0, "conf_threshold": 0.0, "iou_threshold": 0.0}}
    r = requests.post(base + "/v1/predict", json=body, headers=token, timeout=120)
    assert r.status_code == 200, r.text
    data = r.json()["data"]
    assert r.json()["success"] and data["replace"] is False
    shapes = data["shapes"]
    assert shapes and all(s["shape_type"] == "polygon" and s["label"] == "AUTOLABEL_OBJECT" for s in shapes)
    assert all(s["points"][0] == s["points"][-1] and 0 <= s["score"] <= 1 for s in shapes)
    got = decode_segmentation([np.asarray(s["points"][:-1]).ravel().tolist() for s in shapes], 400, 600)
    ref = predictor.predict_batch(np.array([[[300, 200], [60, 40]]], np.float32), np.array([[1, 0]]),
                                  num_outputs=1).masks[0, 0]
    assert _iou(got, binary_fill_holes(ref)) >= 0.99
    # a rectangle drawn right-to-left, plus the bounding-box shape; raw base64 without a data: prefix
    body = {"model": "edgesam", "image": b64(sample_png("coffee")),
            "params": {"marks": [{"type": "rectangle", "data": [450, 300, 150, 100], "label": 1}], "show_boxes": True}}
    r = requests.post(base + "/v1/predict", json=body, headers=token, timeout=120)
    assert r.status_code == 200, r.text
    kinds = [s["shape_type"] for s in r.json()["data"]["shapes"]]
    assert kinds[-1] == "rectangle" and "polygon" in kinds
    assert requests.post(base + "/v1/predict", json={**body, "params": {}}, headers=token,
                         timeout=30).json()["data"]["shapes"] == []
    for bad, status in [({**body, "model": "sam"}, 404), ({**body, "params": {"marks": [{"type": "point"}]}}, 422),
                        ({**body, "params": {"marks": [{"type": "point", "data": [1, 2], "label": 5}]}}, 422),
                        ({**body, "image": "https://example.com/x.png"}, 400), ({"image": image}, 422)]:
        r = requests.post(base + "/v1/predict", json=bad, headers=token, timeout=30)
        assert r.status_code == status and r.json()["error"], (bad.get("params"), r.status_code, r.text[:200])


@pytest.mark.timeout(SERVER_TIMEOUT)
def test_cvat_sam_blob_is_the_float32_embedding(server, predictor):
    image_b64 = b64(sample_png("coffee"))
    r = requests.post(server.url + "/cvat/sam", json={"image": image_b64}, headers={"X-API-Key": KEY}, timeout=120)
    assert r.status_code == 200, r.text
    assert set(r.json()) == {"blob"}
    raw = base64.b64decode(r.json()["blob"])
    side = IMG // 16  # 64 at img_size 1024, CVAT's [1, 256, 64, 64]
    assert len(raw) == 4 * 256 * side * side
    emb = np.frombuffer(raw, "<f4").reshape(1, 256, side, side)  # how CVAT's browser plugin reads it
    np.testing.assert_allclose(emb, predictor.embedding, atol=2e-3, rtol=1e-3)
    assert requests.post(server.url + "/cvat/sam", json={"image": image_b64}, timeout=30).status_code == 401
    r = requests.post(server.url + "/cvat/sam", json={"image": b64(b"not an image")}, headers={"X-API-Key": KEY}, timeout=30)
    assert r.status_code == 400 and r.json()["error"]

    # the Nuclio forwarder in serve/integrations/cvat_nuclio/main.py, called as Nuclio calls a handler
    import importlib.util

    spec = importlib.util.spec_from_file_location("cvat_forwarder", Path(__file__).resolve().parent.parent
                                                  / "serve" / "integrations" / "cvat_nuclio" / "main.py")
    forwarder = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(forwarder)

    class Context:  # the two attributes of Nuclio's context object the handler uses
        class user_data:  # noqa: N801
            pass

        class Response:
            def __init__(self, body, headers, content_type, status_code):
                self.body, self.status_code = body, status_code

    class Event:
        body = {"image": image_b64}

    os.environ["EDGESAM_URL"], os.environ["EDGESAM_API_KEY"] = server.url, KEY
    try:
        forwarder.init_context(Context)
        out = forwarder.handler(Context, Event)
    finally:
        os.environ.pop("EDGESAM_URL"), os.environ.pop("EDGESAM_API_KEY")
    assert out.status_code == 200 and json.loads(out.body)["blob"] == r_blob(server, image_b64)


def r_blob(server, image_b64: str) -> str:
    return requests.post(server.url + "/cvat/sam", json={"image": image_b64}, headers={"X-API-Key": KEY},
                         timeout=60).json()["blob"]
