"""Serve with two ingress replicas and under faults, over real HTTP on 127.0.0.1.

* Embeddings live in the ``EmbeddingStore`` deployment: an embedding made through one ingress replica is found
  through the other (0 404s), and the decoder receives it by ``ObjectRef``, reading each embedding from the
  object store once, not once per click.
* A decoder replica killed (``ray.kill``) during a 16-client load test: requests in flight may fail with 503
  (never 500), every request sent after the first post-kill success succeeds; the recovery time is printed
  (run with ``-s``: ``python -m pytest tests/test_serve_faults.py -s -m slow``).

One private local Ray cluster (2 CPUs) and one Serve app for the module; random-weight student (no weights can
be downloaded).
"""
from __future__ import annotations

import json
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

requests = pytest.importorskip("requests")
pytest.importorskip("ray.serve")

from serve.local import LocalServer, small_config  # noqa: E402
from tests.imaging import png_bytes as _png  # noqa: E402
from tests.students import random_student_checkpoint  # noqa: E402

pytestmark = [pytest.mark.ray, pytest.mark.slow]
IMG = 256
EMB_BYTES = 256 * (IMG // 16) ** 2 * 4
REPLICA = "x-edgesam-replica"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    ckpt = random_student_checkpoint(tmp_path_factory.mktemp("faults") / "student_random.pt", IMG, seed=123)
    cfg = small_config(model={"checkpoint": str(ckpt)}, ingress={"num_replicas": 2, "num_cpus": 0.2},
                       cache={"max_embeddings": 16, "decoder_local": 8},
                       decoder={"batch_wait_timeout_s": 0.01, "max_ongoing_requests": 64})
    srv = LocalServer(cfg, ready_timeout_s=240).start()
    yield srv
    srv.stop()


def _embed(server, png: bytes) -> requests.Response:
    return requests.post(server.url + "/v1/embeddings", data=png, headers={"Content-Type": "image/png"}, timeout=120)


def _segment(server, emb: str, x: float = 20.0) -> requests.Response:
    return requests.post(server.url + "/v1/segment", json={"embedding_id": emb, "points": [[x, 30.0]], "labels": [1]},
                         timeout=120)


@pytest.mark.timeout(600)
def test_two_ingress_replicas_share_embeddings_by_reference(server):
    rng = np.random.default_rng(0)
    pngs = [_png(rng.integers(0, 255, (96 + 8 * i, 128, 3), dtype=np.uint8)) for i in range(6)]
    with ThreadPoolExecutor(6) as pool:  # concurrent: both ingress replicas take some
        embs = list(pool.map(lambda p: _embed(server, p), pngs))
    assert all(r.status_code == 200 for r in embs), [r.text for r in embs]
    made_by = {r.json()["embedding_id"]: r.headers[REPLICA] for r in embs}
    statuses: Counter[int] = Counter()
    crossed: set[str] = set()
    seen = set(made_by.values())
    clicks = 0
    for _ in range(15):  # rounds of concurrent clicks until every embedding was used through the other replica
        jobs = [(e, 10.0 + k) for e in made_by for k in range(2)]
        with ThreadPoolExecutor(8) as pool:
            outs = list(pool.map(lambda j: (j[0], _segment(server, *j)), jobs))
        clicks += len(outs)
        for e, r in outs:
            statuses[r.status_code] += 1
            seen.add(r.headers.get(REPLICA))
            if r.status_code == 200 and r.headers[REPLICA] != made_by[e]:
                crossed.add(e)
        if len(seen) == 2 and crossed == set(made_by):
            break
    assert len(seen) == 2, f"only one ingress replica answered: {seen}"
    assert statuses == {200: clicks}, statuses  # 0 404s: the store is shared
    assert crossed == set(made_by), f"never segmented through the other replica: {set(made_by) - crossed}"
    # The same bytes again, through whichever replica: a store hit, no second encode.
    again = [_embed(server, p) for p in pngs[:3]]
    assert all(r.json()["cached"] for r in again)
    h = requests.get(server.url + "/healthz", timeout=60).json()
    assert h["cache"]["misses"] == len(pngs) and h["cache"]["size"] == len(pngs)
    t = h["batching"]["decoder"]["embeddings"]
    # Every click reached the decoder as a ref; each embedding was read from the object store once (4 MB at
    # img_size 1024, 256 kB here), later clicks hit the decoder's local copy.
    assert t["inline"] == 0 and t["by_ref"] == clicks and t["requests"] == clicks
    assert t["store_reads"] == len(pngs) and t["bytes_read"] == len(pngs) * EMB_BYTES
    assert t["local_hits"] == clicks - len(pngs)


def _decode_request_bytes(server) -> tuple[int, int]:
    """Pickled size of a DecodeRequest carrying a ref vs the embedding itself (what Ray would ship per click)."""
    import ray
    from ray import cloudpickle

    from serve.messages import DecodeRequest

    emb = np.zeros((1, 256, IMG // 16, IMG // 16), np.float32)
    kw = dict(embedding_id="e" * 64, original_hw=(400, 600), input_hw=(171, 256), points=np.zeros((1, 2), np.float32),
              labels=np.ones(1, np.int64), boxes=None)
    by_ref = len(cloudpickle.dumps(DecodeRequest(embedding=None, embedding_ref=[ray.put(emb)], **kw)))
    inline = len(cloudpickle.dumps(DecodeRequest(embedding=emb, **kw)))
    return by_ref, inline


@pytest.mark.timeout(600)
def test_decode_request_by_ref_is_small(server):
    by_ref, inline = _decode_request_bytes(server)
    assert by_ref < 4096 < EMB_BYTES <= inline


def _decoder_actor():
    import ray

    names = [a for a in ray.util.list_named_actors(all_namespaces=True) if "MaskDecoder" in a["name"]]
    assert len(names) == 1, names
    return ray.get_actor(names[0]["name"], namespace=names[0]["namespace"]), names[0]["name"]


@pytest.mark.timeout(600)
def test_killed_decoder_under_16_clients_gives_503_then_recovers(server):
    import ray

    emb = _embed(server, _png(np.random.default_rng(7).integers(0, 255, (120, 160, 3), dtype=np.uint8))).json()
    emb_id = emb["embedding_id"]
    assert _segment(server, emb_id).status_code == 200
    log: list[tuple[float, float, int]] = []  # (sent, done, status)
    lock = threading.Lock()
    stop = threading.Event()
    per_client_max = 150

    def client(k: int) -> None:
        for i in range(per_client_max):
            if stop.is_set():
                return
            t0 = time.monotonic()
            try:
                status = _segment(server, emb_id, 5.0 + (k * 7 + i) % 150).status_code
            except requests.RequestException:
                status = -1  # connection error: counted, must not happen
            with lock:
                log.append((t0, time.monotonic(), status))

    threads = [threading.Thread(target=client, args=(k,), daemon=True) for k in range(16)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 240
    while len(log) < 48 and time.monotonic() < deadline:  # load established
        time.sleep(0.05)
    actor, old_name = _decoder_actor()
    t_kill = time.monotonic()
    ray.kill(actor, no_restart=True)
    recovered = None
    while time.monotonic() < deadline:
        with lock:
            ok_after = [d for s, d, st in log if s > t_kill and st == 200]
        if ok_after:
            recovered = min(ok_after)
            break
        time.sleep(0.05)
    assert recovered is not None, "no request succeeded after the kill within the deadline"
    while time.monotonic() < min(deadline, recovered + 5):  # 5 s more load after recovery
        time.sleep(0.1)
    stop.set()
    for t in threads:
        t.join(150)
    statuses = Counter(st for _, _, st in log)
    after = [st for s, _, st in log if s > recovered]
    in_flight_503 = sum(1 for s, d, st in log if st == 503)
    figures = {"clients": 16, "requests": len(log), "statuses": {str(k): v for k, v in statuses.items()},
               "failed_503": in_flight_503, "recovery_s": round(recovered - t_kill, 2),
               "requests_after_recovery": len(after), "killed": old_name}
    print("\n[faults] decoder kill under 16-client load:", json.dumps(figures))
    assert set(statuses) <= {200, 503}, statuses  # never 500, never a dropped connection
    assert len(after) >= 16 and set(after) == {200}, Counter(after)
    h = requests.get(server.url + "/healthz", timeout=60)
    assert h.status_code == 200 and _segment(server, emb_id).status_code == 200
    assert _decoder_actor()[1] != old_name  # Serve replaced the replica
