"""Serve app refusals: evicted embeddings (404), client errors (4xx), the API key (401) and the per-request
memory budget (413, and its figures without Ray)."""
from __future__ import annotations

import numpy as np
import pytest

requests = pytest.importorskip("requests")
pytest.importorskip("ray.serve")

from tests.imaging import b64 as _b64  # noqa: E402
from tests.imaging import png_bytes as _png  # noqa: E402

from .helpers import H, SERVER_TIMEOUT, _big_png, _segment  # noqa: E402

pytestmark = [pytest.mark.ray,
              # pycocotools under numpy 2 (inside edgesam.data.rle.decode_rle), not ours
              pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")]


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
