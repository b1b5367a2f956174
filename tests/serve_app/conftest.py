"""Fixtures of the Serve app tests. ``checkpoint``, ``predictor`` and ``server`` are package-scoped: one private
local Ray cluster (2 CPUs, replicas at 0.25 CPU) and one Serve app for the whole package, started by the first
test that asks for it and stopped after the package's last test. The model is a random-weight student saved as a
checkpoint in a temp dir (no weights can be downloaded).
"""
from __future__ import annotations

from pathlib import Path

import pytest

from edgesam.inference import Predictor
from edgesam.models import load_student
from serve.local import LocalServer, small_config
from serve.samples import sample_image, sample_png
from tests.imaging import b64 as _b64
from tests.students import random_student_checkpoint

from .helpers import BUDGET, H, IMG, KEY


@pytest.fixture(scope="package")
def checkpoint(tmp_path_factory) -> Path:
    return random_student_checkpoint(tmp_path_factory.mktemp("serve") / "student_random.pt", IMG, seed=123)


@pytest.fixture(scope="package")
def predictor(checkpoint) -> Predictor:
    model, _ = load_student(checkpoint, img_size=IMG)
    return Predictor.from_model(model)


@pytest.fixture(scope="package")
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
    import requests  # optional: the test modules skip without it

    data = sample_png("coffee")
    r = requests.post(server.url + "/v1/embeddings", json={"image_b64": _b64(data)}, headers=H, timeout=60)
    assert r.status_code == 200, r.text
    return {"bytes": data, "image": sample_image("coffee"), **r.json()}
