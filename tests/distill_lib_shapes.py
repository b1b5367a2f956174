"""Image size and padded input frames shared by the distillation-library tests (``tests/test_distill_*.py``)."""
from __future__ import annotations

S = 256
INPUT_HW = [(256, 192), (160, 256)]
