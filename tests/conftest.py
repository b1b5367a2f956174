"""Shared fixtures. Tests run on 2 CPU cores: keep torch to one thread per process."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)

REPO = Path(__file__).resolve().parent.parent
MANIFEST = REPO.parent / "shared" / "reference" / "edgesam_state_dict_manifest.json"


@pytest.fixture(scope="session")
def manifest() -> dict:
    if not MANIFEST.is_file():
        pytest.skip(f"reference manifest not found at {MANIFEST}")
    return json.loads(MANIFEST.read_text())
