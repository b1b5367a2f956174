"""Messages between the ingress and the model deployments (numpy only: the ingress never imports torch)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class DecodeRequest:
    """One /v1/segment call after validation. Coordinates in the original frame.

    embedding (1,256,S/16,S/16), or None with ``embedding_ref`` set: [ObjectRef] to it in the object store
    (``EmbeddingStore``), which the decoder resolves itself, so the 4 MB array never rides along; points (P,2) + labels (P,) form one prompt, or with boxes (N,4) XYXY
    the points join every box (N prompts). mask_input (1,1,S/4,S/4) float32 low-res logits (validated) are
    the mask prompt of every one of this request's prompts, or None.
    """

    embedding_id: str
    embedding: np.ndarray | None
    original_hw: tuple[int, int]
    input_hw: tuple[int, int]
    points: np.ndarray | None
    labels: np.ndarray | None
    boxes: np.ndarray | None
    num_outputs: int = 1
    select: str = "all"
    fmt: str = "rle"
    mask_input: np.ndarray | None = None
    return_low_res_logits: bool = False
    embedding_ref: list | None = None  # [ObjectRef]: boxed, so Ray passes the ref and not the array

    @property
    def num_prompts(self) -> int:
        return 1 if self.boxes is None else len(self.boxes)

    def group_key(self) -> tuple:
        """Requests with equal keys decode exactly as one call: same embedding, same prompt length
        (padding prompts to a common length would change SAM's attention and thus the masks), and all with
        or all without a mask prompt (a decoder call sets ``has_mask_input`` for all its prompts at once).
        Different masks may share a call: each prompt carries its own mask row."""
        return (self.embedding_id, None if self.points is None else len(self.points), self.boxes is not None,
                self.num_outputs, self.mask_input is not None)
