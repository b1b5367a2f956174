"""Random-weight student checkpoints for the Serve and integration tests."""
from __future__ import annotations

from pathlib import Path

import torch

from edgesam.models import EdgeSAM, save_student


def random_student_checkpoint(path: Path, img_size: int, seed: int) -> Path:
    """Write a seeded random-weight EdgeSAM student (img_size px) to ``path``; its meta says the weights are random."""
    torch.manual_seed(seed)
    save_student(EdgeSAM(img_size).eval(), path, meta={"note": "random weights for tests"})
    return path
