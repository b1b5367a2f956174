"""The web page in headless Chromium: pick a sample, click / right-click / drag, and check the overlay canvas
pixel by pixel against the server's mask for the same prompts.

Needs Debian's Chromium and playwright-core (no browser download):
    apt-get install -y chromium
    npm ci --prefix tests/browser        # or: npm install --prefix tests/browser
Skips with the reason when either is missing.
"""
from __future__ import annotations

import base64
import io
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

requests = pytest.importorskip("requests")
pytest.importorskip("ray.serve")

from edgesam.data.rle import decode_rle as rle_to_mask  # noqa: E402
from serve.codec import png_b64_to_mask  # noqa: E402
from serve.local import LocalServer, small_config  # noqa: E402
from serve.samples import sample_image  # noqa: E402

pytestmark = [pytest.mark.ray,
              # pycocotools under numpy 2 (inside edgesam.data.rle.decode_rle), not ours
              pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")]
BROWSER_DIR = Path(__file__).resolve().parent / "browser"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
NODE = shutil.which("node")
OVERLAY_RGBA = (30, 144, 255, 150)  # serve/static/index.html: OVERLAY


def _missing() -> str | None:
    if not Path(CHROMIUM).exists():
        return "chromium not installed (apt-get install -y chromium)"
    if NODE is None:
        return "node not installed (apt-get install -y nodejs)"
    if not (BROWSER_DIR / "node_modules" / "playwright-core").is_dir():
        return "playwright-core not installed (npm ci --prefix tests/browser)"
    return None


pytestmark.append(pytest.mark.skipif(_missing() is not None, reason=_missing() or ""))


def _data_url_rgba(url: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).convert("RGBA"))


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """Served through ONNX Runtime (exported from seeded random weights): backend ``auto`` + onnx_dir on CPU."""
    import torch

    from edgesam.export.onnx_export import export_all
    from edgesam.models import EdgeSAM

    torch.manual_seed(0)
    onnx_dir = tmp_path_factory.mktemp("onnx")
    export_all(EdgeSAM(256).eval(), onnx_dir, checkpoint_sha256="random")
    srv = LocalServer(small_config(model={"onnx_dir": str(onnx_dir)})).start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def driven(server) -> dict:
    proc = subprocess.run([NODE, str(BROWSER_DIR / "drive.mjs"), server.url, CHROMIUM], capture_output=True,
                          text=True, timeout=150)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout)
    assert out.get("ok"), out.get("error")
    return out


@pytest.mark.timeout(240)  # Ray + Serve start, ONNX export, Chromium
def test_page_loads_sample_and_warns_about_random_weights(driven):
    loaded = driven["steps"][0]
    h, w = sample_image("shapes").shape[:2]
    assert (loaded["height"], loaded["width"]) == (h, w)
    assert loaded["imageNonZero"] > 0.9 * h * w  # the sample is drawn
    assert loaded["painted"] == 0 and loaded["embeddingId"]  # encoded, no overlay yet
    assert "onnxruntime-cpu" in driven["health"] and "random" in driven["health"] and "RANDOM" in driven["banner"]
    assert driven["pageErrors"] == [] and driven["consoleErrors"] == []


@pytest.mark.timeout(240)  # Ray + Serve start, ONNX export, Chromium
@pytest.mark.parametrize("step", ["positive", "negative", "box"])
def test_overlay_matches_server_mask(driven, server, step):
    s = next(x for x in driven["steps"] if x["name"] == step)
    req = s["request"]
    near_px = lambda p, q: max(abs(a - b) for a, b in zip(p, q)) <= 1.0  # noqa: E731 (CSS scaling of the canvas)
    if step == "positive":
        assert len(req["points"]) == 1 and near_px(req["points"][0], [c + 0.5 for c in s["click"]])
        assert req["labels"] == [1] and req["num_outputs"] == 3
    elif step == "negative":
        assert req["labels"] == [1, 0] and near_px(req["points"][1], [c + 0.5 for c in s["click"]])
    else:
        x0, y0, x1, y1 = req["boxes"][0]
        assert x1 - x0 > 0.3 * s["width"] and y1 - y0 > 0.4 * s["height"]
    overlay = _data_url_rgba(s["overlayPng"])
    painted = overlay[..., 3] > 0
    assert painted.sum() == s["painted"] > 0
    # Overlay colour exactly where the page's mask is (canvas alpha premultiplication may move RGB by 1-2).
    assert np.abs(overlay[painted].astype(int) - OVERLAY_RGBA).max() <= 3
    page_mask = png_b64_to_mask(s["response"]["masks"][0]["png"])
    assert _iou(painted, page_mask) == 1.0
    # The same prompts sent by us give the same mask: the page showed the server's answer.
    body = {**req, "format": "rle"}
    r = requests.post(server.url + "/v1/segment", json=body, timeout=60)
    assert r.status_code == 200, r.text
    assert _iou(painted, rle_to_mask(r.json()["masks"][0]["segmentation"])) >= 0.99
    if step == "positive":
        # The overlay changed because of the click, and covers the clicked pixel when the mask does.
        x, y = (int(v) for v in req["points"][0])
        assert bool(painted[y, x]) == bool(page_mask[y, x])
        near = painted[max(0, y - 20):y + 21, max(0, x - 20):x + 21]
        assert near.any(), "no overlay near the click"
    assert s["segmentMs"] < 1000, f"click-to-overlay took {s['segmentMs']:.0f} ms"


@pytest.mark.timeout(240)  # Ray + Serve start, ONNX export, Chromium
def test_everything_overlay_paints_every_annotation(driven):
    """The page's own COCO-RLE decoder (JS) paints exactly the union of the returned masks."""
    s = next(x for x in driven["steps"] if x["name"] == "everything")
    anns = s["everything"]["results"][0]["annotations"]
    assert len(anns) >= 1
    union = np.zeros((s["height"], s["width"]), bool)
    for a in anns:
        union |= rle_to_mask(a["segmentation"])
    overlay = _data_url_rgba(s["overlayPng"])
    painted = overlay[..., 3] > 0
    assert _iou(painted, union) == 1.0
