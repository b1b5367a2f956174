"""Shared fixtures. Tests run on 2 CPU cores: keep torch to one thread per process."""
from __future__ import annotations

import atexit
import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)
# Serve replicas export checkpoints to ONNX once per weights; keep that cache private to this test session
# (Ray workers inherit the environment of the process that starts the local cluster).
# The session that made the folder removes it when it exits (a caller's own EDGESAM_ONNX_CACHE is kept).
if "EDGESAM_ONNX_CACHE" not in os.environ:
    os.environ["EDGESAM_ONNX_CACHE"] = tempfile.mkdtemp(prefix="edgesam-onnx-cache-")
    atexit.register(shutil.rmtree, os.environ["EDGESAM_ONNX_CACHE"], True)

REPO = Path(__file__).resolve().parent.parent
MANIFEST = REPO.parent / "shared" / "reference" / "edgesam_state_dict_manifest.json"


@pytest.fixture(scope="session")
def manifest() -> dict:
    if not MANIFEST.is_file():
        pytest.skip(f"reference manifest not found at {MANIFEST}")
    return json.loads(MANIFEST.read_text())
