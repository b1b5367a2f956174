"""Fuzz the HTTP API with a few hundred malformed requests from a seeded generator: never a 5xx, every 4xx
is JSON ``{"error": ...}``, and afterwards a valid request still returns the library predictor's mask.
The labelling-tool backends (``/label-studio``, ``/xanylabeling``, ``/cvat``) get their own malformed
bodies, prompts, label configs and image references. Malformed ``mask_input`` payloads (base64 ``.npy``) are both drawn by the generator and sent one by one,
each of those on an otherwise valid request, where it must be a 4xx.

Loopback only, bounded in count (``N_RANDOM`` + the fixed cases) and time. Random (seeded) weights:
the server and the reference predictor both build ``EdgeSAM(256)`` after ``torch.manual_seed(0)``.
"""
from __future__ import annotations

import io
import json
import math
import random
import time
import zlib

import numpy as np
import pytest
import torch

requests = pytest.importorskip("requests")
pytest.importorskip("ray.serve")

from edgesam.inference import Predictor  # noqa: E402
from edgesam.models import EdgeSAM, fuse_for_deploy  # noqa: E402
from edgesam.data.rle import decode_rle as rle_to_mask  # noqa: E402
from serve.local import LocalServer, small_config  # noqa: E402

pytestmark = [pytest.mark.ray,
              # pycocotools under numpy 2 (inside edgesam.data.rle.decode_rle), not ours
              pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")]
# Covers the module fixture starting Ray + Serve (~20 s idle, over 60 s when the 2 cores are saturated).
SERVER_TIMEOUT = 400  # the app has five deployments (EmbeddingStore too): ~170 s to start on 2 saturated cores
MAX_IMAGE_BYTES = 200_000
MAX_PIXELS = 1_000_000
N_RANDOM = 240
SEED = 1234
VERBOSE = False  # print every request/response (pytest -s)


from tests.imaging import b64 as _b64  # noqa: E402
from tests.imaging import png_bytes as _png  # noqa: E402


def _huge_dims_png(width: int, height: int) -> bytes:
    """A tiny file declaring a huge image (a decompression bomb): header + one zlib-compressed row pattern."""
    import struct

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    raw = zlib.compress(b"\x00" * (width + 1) * 8)  # only a few rows: decoding would fail later anyway
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)) + \
        chunk(b"IDAT", raw) + chunk(b"IEND", b"")


@pytest.fixture(scope="module")
def server():
    cfg = small_config(limits={"max_image_bytes": MAX_IMAGE_BYTES, "max_pixels": MAX_PIXELS, "max_points": 16,
                               "max_boxes": 8, "max_images": 2},
                       cache={"max_embeddings": 8})
    srv = LocalServer(cfg).start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def scene() -> dict:
    rng = np.random.default_rng(SEED)
    image = rng.integers(0, 255, (96, 128, 3), dtype=np.uint8)
    image[20:60, 30:90] = (250, 40, 40)
    return {"image": image, "png": _png(image)}


@pytest.fixture(scope="module")
def embedding_id(server, scene) -> str:
    r = requests.post(server.url + "/v1/embeddings", json={"image_b64": _b64(scene["png"])}, timeout=60)
    assert r.status_code == 200, r.text
    return r.json()["embedding_id"]


# -- the generator ------------------------------------------------------------------------------------
JUNK_VALUES = [None, True, False, 0, -1, 1.5, -1e308, 1e308, "", "x", "NaN", [], {}, [[]], [None], {"a": 1},
               "A" * 5000, [1] * 3, [[1, 2, 3]], [[1, "a"]], [["1", "2"]], 2**70, -(2**70)]
NONFINITE = ["NaN", "Infinity", "-Infinity"]


def _npy(arr: np.ndarray, **kw) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, **kw)
    return buf.getvalue()


def _npy_header(header: str) -> bytes:
    """A .npy 1.0 preamble + the given header dict text, padded as np.save pads it (no data)."""
    text = header.encode("latin1")
    text += b" " * (-(10 + len(text) + 1) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + len(text).to_bytes(2, "little") + text


LOW = 256 // 4  # the fuzz server's img_size / 4: side of a mask_input
_GOOD_NPY = _npy(np.zeros((LOW, LOW), np.float32))
# Malformed mask_input values (each a 4xx): not base64, not .npy, broken headers, truncated/padded data, wrong
# dtypes and shapes, non-finite or absurd values, pickles, oversized.
BAD_MASK_INPUTS = [
    "%%%", "data:application/octet-stream;base64,AAAA", _b64(b"\x93NUMPY"), _b64(b"\x93NUMPY\x09\x00"),
    _b64(b"\x93NUMPY\x01\x00\xff\xff" + b"{" * 100), _b64(b"\x93NUMPY\x02\x00\x10\x00\x00\x00{'descr': 1}    "),
    _b64(_npy_header("{'descr': '<f4', 'fortran_order': False, 'shape': (-64, 64), }")),
    _b64(_npy_header("{'descr': '<f4', 'fortran_order': False, 'shape': (64, 64), 'x': __import__('os')}")),
    _b64(_GOOD_NPY[:-1]), _b64(_GOOD_NPY + b"\x00"), _b64(_GOOD_NPY[:200]), _b64(b"PK\x03\x04" + _GOOD_NPY),
    _b64(_npy(np.zeros((LOW, LOW), np.int16))), _b64(_npy(np.zeros((LOW, LOW), np.complex64)[:16])),
    _b64(_npy(np.zeros((LOW, LOW), [("a", "<f2"), ("b", "<f2")]))), _b64(_npy(np.zeros((LOW, LOW), bool))),
    _b64(_npy(np.array([None, {"x": 1}], dtype=object), allow_pickle=True)),
    _b64(_npy(np.zeros((1, 1, LOW, LOW), np.float16))), _b64(_npy(np.zeros((LOW + 1, LOW), np.float16))),
    _b64(_npy(np.zeros((0,), np.float32))), _b64(_npy(np.float32(1.0))),
    _b64(_npy(np.full((LOW, LOW), np.nan, np.float16))), _b64(_npy(np.full((1, LOW, LOW), -np.inf, np.float32))),
    _b64(_npy(np.full((LOW, LOW), 3e38, np.float32))), _b64(_npy(np.zeros((4 * LOW, 4 * LOW), np.float32))),
    "QUFB" * 50_000, "",
]


def _raw_json_with_nonfinite(rng: random.Random, emb: str) -> bytes:
    v = rng.choice(NONFINITE)
    return f'{{"embedding_id": "{emb}", "points": [[{v}, 1.0]], "labels": [1]}}'.encode()


def _segment_case(rng: random.Random, emb: str) -> dict:
    base = {"embedding_id": emb, "points": [[10.0, 10.0]], "labels": [1], "boxes": [[5, 5, 50, 40]],
            "num_outputs": 1, "format": "rle", "multimask_select": "all"}
    body = dict(base)
    for _ in range(rng.randint(1, 3)):
        op = rng.randrange(10)
        key = rng.choice(list(base))
        if op == 0:
            body.pop(key, None)
        elif op == 1:
            body[key] = rng.choice(JUNK_VALUES)
        elif op == 2:
            body["points"] = [[rng.uniform(-1e4, 1e4), rng.uniform(-1e4, 1e4)] for _ in range(rng.choice([1, 17, 5000]))]
            body["labels"] = [rng.choice([0, 1, 2, -1]) for _ in range(len(body["points"]) + rng.choice([0, 0, 1]))]
        elif op == 3:
            body["boxes"] = [[rng.uniform(-100, 300) for _ in range(rng.choice([3, 4, 4, 5]))]
                             for _ in range(rng.choice([1, 9, 100]))]
        elif op == 4:
            body["embedding_id"] = rng.choice(["0" * 64, "g" * 64, emb[:-1], emb.upper(), "", "../../etc/passwd"])
        elif op == 5:
            body["image_b64"] = rng.choice(["http://127.0.0.1:1/x.png", "file:///etc/passwd", "////", "@@@",
                                            _b64(b"not an image"), "data:image/png;base64,AAAA"])
        elif op == 6:
            body[rng.choice(["extra", "mask_input", "url"])] = rng.choice(JUNK_VALUES)
        elif op == 7:
            body["num_outputs"] = rng.choice([0, 2, 5, -1, "3", 3.0, None])
        elif op == 8:
            body["labels"] = [rng.choice([True, 1.0, "1", None, 0.5])]
        else:
            body["mask_input"] = rng.choice(BAD_MASK_INPUTS + [_b64(_GOOD_NPY), None])
            body["return_low_res_logits"] = rng.choice([True, False, "true", 1, None])
    return body


def _image_payloads(rng: random.Random, good_png: bytes) -> list[tuple[str, dict]]:
    """(endpoint, requests kwargs) for /v1/embeddings and /v1/everything."""
    big = bytes(rng.getrandbits(8) for _ in range(64)) * (MAX_IMAGE_BYTES // 64 + 10)
    truncated = good_png[: len(good_png) // 2]
    bad = [b"", b"\x00" * 10, b"GIF89a", b"%PDF-1.4 hello", truncated, good_png[:40], big,
           _huge_dims_png(20000, 20000), _huge_dims_png(2000, 2000), b"\x89PNG\r\n\x1a\n" + b"\xff" * 100,
           b"BM" + b"\x00" * 60]
    cases = []
    for ep in ("/v1/embeddings", "/v1/everything"):
        for data in bad:
            cases += [(ep, {"data": data, "headers": {"Content-Type": "image/png"}}),
                      (ep, {"files": {"file": ("x.png", data, "image/png")}}),
                      (ep, {"json": {"image_b64": _b64(data)}})]
        cases += [
            (ep, {"data": good_png, "headers": {"Content-Type": "text/plain"}}),
            (ep, {"data": good_png, "headers": {"Content-Type": "application/xml"}}),
            (ep, {"data": good_png}),  # no content type
            (ep, {"data": b"{not json", "headers": {"Content-Type": "application/json"}}),
            (ep, {"data": b"\xff\xfe\x00garbage", "headers": {"Content-Type": "application/json"}}),
            (ep, {"data": b"[" * 50_000 + b"]" * 50_000, "headers": {"Content-Type": "application/json"}}),
            (ep, {"json": [1, 2, 3]}),
            (ep, {"json": "image"}),
            (ep, {"json": {}}),
            (ep, {"json": {"image_b64": 123}}),
            (ep, {"json": {"image_b64": "https://example.com/a.jpg"}}),
            (ep, {"json": {"image_b64": "  HTTP://EXAMPLE.COM/a.jpg"}}),
            (ep, {"json": {"image_b64": "www.example.com/a.jpg"}}),
            (ep, {"json": {"image_b64": "s3://bucket/key.png"}}),
            (ep, {"json": {"image_b64": "!!!not-base64!!!"}}),
            (ep, {"json": {"image_b64": "A" * 300_000}}),
            (ep, {"json": {"image_b64": _b64(good_png), "url": "http://x"}}),
            (ep, {"files": {"other": ("x.png", good_png, "image/png")}}),
            (ep, {"files": {"file": ("x.png", good_png, "image/png"), "file2": ("y.png", good_png, "image/png")},
                  "data": {"file": "text-not-file"}}),
            (ep, {"data": b"--xyz\r\nbroken", "headers": {"Content-Type": "multipart/form-data; boundary=xyz"}}),
            (ep, {"data": b"x" * 3_000_000, "headers": {"Content-Type": "image/png"}}),
            (ep, {"data": (b"x" * 65536 for _ in range(60)), "headers": {"Content-Type": "image/png"}}),  # chunked
        ]
    cases += [("/v1/everything", {"json": {"images_b64": [_b64(good_png)] * 3}}),
              ("/v1/everything", {"json": {"images_b64": []}}),
              ("/v1/everything", {"json": {"images_b64": [1, None]}}),
              ("/v1/everything", {"json": {"images_b64": "abc"}})]
    return cases


LS_CONFIG = ('<View><Image name="image" value="$image"/><BrushLabels name="tag" toName="image"><Label value="a"/>'
             '</BrushLabels></View>')


def _ls_item(rng: random.Random) -> object:
    base = {"type": rng.choice(["keypointlabels", "rectanglelabels", "choices", None, 3]), "is_positive": True,
            "value": {"x": 50, "y": 50, "width": 10, "height": 10, "keypointlabels": ["a"]}}
    op = rng.randrange(5)
    if op == 0:
        return rng.choice(JUNK_VALUES)
    if op == 1:
        base["value"] = rng.choice(JUNK_VALUES)
    elif op == 2:
        base["value"][rng.choice(["x", "y", "width", "height"])] = rng.choice(JUNK_VALUES + [1e9, -5, "NaN"])
    elif op == 3:
        base["is_positive"] = rng.choice(JUNK_VALUES)
    return base


def _integration_cases(rng: random.Random, good_png: bytes) -> list[tuple[str, str, dict]]:
    """(method, path, requests kwargs) for the labelling-tool backends (serve/integrations): malformed bodies,
    prompts, label configs, image references (only closed ports on 127.0.0.1: nothing leaves the machine)."""
    uri = "data:image/png;base64," + _b64(good_png)
    refs = [uri, "http://127.0.0.1:1/x.png", "https://127.0.0.1:1/x.png", "s3://b/k.png", "/data/upload/x.png",
            "file:///etc/passwd", "data:image/png;base64,!!", "data:text/plain;base64,AAAA", "", 5, None, ["x"]]
    configs = [LS_CONFIG, None, "", "<View", "<View/>", '<!DOCTYPE v [<!ENTITY e "x">]><View/>', 7,
               "<View><BrushLabels name='t' toName='nope'/></View>", "<a>" * 5000]
    cases: list[tuple[str, str, dict]] = []
    for _ in range(40):
        items = [_ls_item(rng) for _ in range(rng.choice([0, 1, 2, 300]))]
        body: dict = {"tasks": [{"data": {"image": rng.choice(refs)}}], "label_config": rng.choice(configs),
                      "params": {"context": {"result": items}}}
        op = rng.randrange(6)
        if op == 0:
            body["tasks"] = rng.choice(JUNK_VALUES + [[{"data": rng.choice(JUNK_VALUES)}], [{}] * 20])
        elif op == 1:
            body["params"] = rng.choice(JUNK_VALUES + [{"context": rng.choice(JUNK_VALUES)}])
        elif op == 2:
            body = rng.choice(JUNK_VALUES)
        cases.append(("POST", "/label-studio/predict", {"json": body}))
    for body in [{"schema": c} for c in configs if not isinstance(c, int)] + [[], "x", {"schema": 5}]:
        cases.append(("POST", "/label-studio/setup", {"json": body}))
    marks = [{"type": "point", "data": [10, 10], "label": 1}, {"type": "rectangle", "data": [5, 5, 50, 40]},
             {"type": "point", "data": [1e6, 10], "label": 1}, {"type": "point", "data": [10], "label": 1},
             {"type": "circle", "data": [1, 2]}, {"type": "point", "data": ["a", "b"]}, "x", None,
             {"type": "point", "data": [1, 2], "label": True}, {"type": "rectangle", "data": [float("inf")] * 4}]
    for _ in range(30):
        params = {"marks": rng.sample(marks, rng.randint(1, 3)) if rng.random() < 0.8 else rng.choice(JUNK_VALUES),
                  "epsilon_factor": rng.choice([0.001, -1, 2, "x", None, True])}
        body = {"model": rng.choice(["edgesam", "sam", "", None]), "image": rng.choice(refs[:1] + refs[5:]),
                "params": params}
        if rng.random() < 0.15:
            body = rng.choice(JUNK_VALUES)
        # json.dumps would refuse inf; send the raw text as X-AnyLabeling's client (requests) would fail to
        cases.append(("POST", "/xanylabeling/v1/predict",
                      {"data": json.dumps(body, allow_nan=True), "headers": {"Content-Type": "application/json"}}))
    for img in [_b64(b"junk"), "", None, 3, uri, "data:image/png;base64,AAAA", "A" * 300_000, _b64(good_png[:50])]:
        cases.append(("POST", "/cvat/sam", {"json": {"image": img}}))
    cases += [("POST", "/cvat/sam", {"json": [1]}), ("POST", "/cvat/sam", {"data": b"{", "headers": {
        "Content-Type": "application/json"}}), ("GET", "/cvat/sam", {}), ("POST", "/label-studio/health", {}),
              ("GET", "/xanylabeling/v1/models/../../healthz", {}), ("POST", "/xanylabeling/health", {})]
    return cases


def _check(r: requests.Response, what: str) -> int:
    assert r.status_code < 500, f"{what} -> {r.status_code}: {r.text[:300]}"
    if r.status_code >= 400:
        body = r.json()
        assert isinstance(body, dict) and isinstance(body.get("error"), str) and body["error"], f"{what}: {r.text[:200]}"
    return r.status_code


@pytest.mark.timeout(SERVER_TIMEOUT)
def test_fuzz_never_5xx_then_still_correct(server, scene, embedding_id):
    rng = random.Random(SEED)
    url = server.url
    statuses: dict[int, int] = {}
    t0 = time.monotonic()
    session = requests.Session()

    def send(method: str, path: str, what: str, **kw) -> None:
        r = session.request(method, url + path, timeout=60, **kw)
        code = _check(r, what)
        if VERBOSE:
            print(code, what[:90], "->", r.text[:160])
        statuses[code] = statuses.get(code, 0) + 1

    for ep, kw in _image_payloads(rng, scene["png"]):
        send("POST", ep, f"{ep} {str(kw)[:120]}", **kw)
    for i in range(N_RANDOM):
        body = _segment_case(rng, embedding_id)
        send("POST", "/v1/segment", f"segment #{i} {json.dumps(body)[:200]}", json=body)
    for _ in range(10):
        send("POST", "/v1/segment", "non-finite", data=_raw_json_with_nonfinite(rng, embedding_id),
             headers={"Content-Type": "application/json"})
    for k, bad in enumerate(BAD_MASK_INPUTS):  # each malformed mask_input on an otherwise valid request: a 4xx
        r = session.post(url + "/v1/segment", timeout=60, json={
            "embedding_id": embedding_id, "points": [[10.0, 10.0]], "labels": [1], "mask_input": bad})
        code = _check(r, f"mask_input #{k} {bad[:60]!r}")
        assert 400 <= code < 500, f"mask_input #{k} {bad[:60]!r} -> {code}: {r.text[:200]}"
        statuses[code] = statuses.get(code, 0) + 1
    before = dict(statuses)
    for method, path, kw in _integration_cases(rng, scene["png"]):
        send(method, path, f"{method} {path} {str(kw)[:160]}", **kw)
    integration = {k: v - before.get(k, 0) for k, v in statuses.items() if v - before.get(k, 0)}
    print(f"fuzz: labelling-tool routes {sum(integration.values())} requests, statuses {dict(sorted(integration.items()))}")
    assert sum(integration.values()) >= 90 and {401, 500} & set(integration) == set(), integration
    for method, path in [("GET", "/v1/segment"), ("PUT", "/v1/embeddings"), ("POST", "/nope"), ("GET", "/v1/samples/../x"),
                         ("DELETE", "/healthz"), ("POST", "/healthz"), ("GET", "/v1/samples/%00")]:
        send(method, path, f"{method} {path}")
    elapsed = time.monotonic() - t0
    total = sum(statuses.values())
    print(f"fuzz: {total} requests in {elapsed:.1f} s, statuses {dict(sorted(statuses.items()))}")
    assert total >= 300, statuses
    assert elapsed < 120, f"{total} fuzz requests took {elapsed:.1f} s"
    assert sum(v for k, v in statuses.items() if 400 <= k < 500) >= 0.8 * total, statuses
    for code in (400, 404, 413, 415, 422):
        assert statuses.get(code, 0) > 0, f"no {code} among {statuses}"

    # The server lost nothing: the cached embedding still answers, and with the library's mask.
    torch.manual_seed(0)
    model = EdgeSAM(256).eval()
    fuse_for_deploy(model)
    predictor = Predictor.from_model(model)
    predictor.set_image(scene["image"])
    ref = predictor.predict(np.array([[60.0, 40.0]], np.float32), np.array([1]), multimask_output=False)[0][0]
    r = session.post(url + "/v1/segment", json={"embedding_id": embedding_id, "points": [[60, 40]], "labels": [1]},
                     timeout=60)
    assert r.status_code == 200, r.text
    got = rle_to_mask(r.json()["masks"][0]["segmentation"])
    inter, union = np.logical_and(got, ref).sum(), np.logical_or(got, ref).sum()
    assert union == 0 or inter / union >= 0.99
    health = session.get(url + "/healthz", timeout=30).json()
    assert health["weights"] == "random" and "RANDOM" in health["warning"]


@pytest.mark.timeout(SERVER_TIMEOUT)
def test_limits_are_the_configured_ones(server, scene):
    """413s come from the configured limits (bytes, pixels, body size), not library defaults."""
    rng = np.random.default_rng(0)
    noisy = _png(rng.integers(0, 255, (300, 300, 3), dtype=np.uint8))  # ~270 kB > 200 kB
    assert len(noisy) > MAX_IMAGE_BYTES
    r = requests.post(server.url + "/v1/embeddings", data=noisy, headers={"Content-Type": "image/png"}, timeout=30)
    assert r.status_code == 413 and str(MAX_IMAGE_BYTES) in r.json()["error"]
    wide = _png(np.zeros((10, 1200 * 1000 // 10 + 10, 3), np.uint8))  # small file, > 1e6 pixels
    r = requests.post(server.url + "/v1/embeddings", data=wide, headers={"Content-Type": "image/png"}, timeout=30)
    assert r.status_code == 413 and "pixels" in r.json()["error"]
    r = requests.post(server.url + "/v1/embeddings", data=b"x" * 2_000_000, headers={"Content-Type": "image/png"}, timeout=30)
    assert r.status_code == 413 and "request body" in r.json()["error"]
    ok = requests.post(server.url + "/v1/embeddings", data=scene["png"], headers={"Content-Type": "image/png"}, timeout=30)
    assert ok.status_code == 200 and math.isfinite(ok.json()["width"])
