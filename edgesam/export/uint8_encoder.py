"""Encoder graph that takes the client's resized uint8 image and normalises and pads inside the graph.

``--encoder-input uint8``: input ``image`` uint8 (1, 3, h, w) RGB, dynamic h and w, where the client has
already resized the image so that its long side is S (``max(h, w) == S``; X-AnyLabeling's EdgeSAM loader
does this with ``cv2.resize``). The graph casts to float, applies SAM's pixel mean/std, zero-pads
bottom/right to S x S and runs the (fused, exact-bicubic) encoder: output ``image_embeddings`` float32
(1, 256, S/16, S/16), the same as the float encoder on the same resized pixels.
"""
from __future__ import annotations

import copy
import json
from pathlib import Path

import torch
from torch import nn

from ..data.transforms import PIXEL_MEAN, PIXEL_STD
from ..models.edgesam import EdgeSAM
from ..models.layers import fuse_for_deploy
from ..models.bicubic import bicubic_as_conv
from .onnx_common import DEFAULT_OPSET, FP32_SCOPES_KEY, _export, _finalise, _fp32_scopes

UINT8_ENCODER_INPUTS = ("image",)
UINT8_ENCODER_OUTPUTS = ("image_embeddings",)


class Uint8Encoder(nn.Module):
    """uint8 (1,3,h,w) RGB, long side S -> normalise -> zero-pad to (1,3,S,S) -> encoder -> (1,256,S/16,S/16)."""

    def __init__(self, encoder: nn.Module, img_size: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.img_size = img_size
        self.register_buffer("mean", torch.tensor(PIXEL_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(PIXEL_STD).view(1, 3, 1, 1))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = (image.float() - self.mean) / self.std
        s = self.img_size
        x = nn.functional.pad(x, (0, s - x.shape[-1], 0, s - x.shape[-2]))  # traced as a dynamic Pad
        return self.encoder(x)


def export_uint8_encoder(model: EdgeSAM, path: str | Path, fuse: bool = True, opset: int = DEFAULT_OPSET) -> Path:
    """Write the uint8-input encoder graph (dynamic h, w; batch 1) to ``path``."""
    path = Path(path)
    encoder = copy.deepcopy(model.image_encoder).cpu().float().eval()
    if fuse:
        fuse_for_deploy(encoder)
    bicubic_as_conv(encoder)
    s = model.img_size
    wrapper = Uint8Encoder(encoder, s).eval()
    example = torch.zeros(1, 3, s * 3 // 4, s, dtype=torch.uint8)  # h < S so the pad is traced, not folded away
    with torch.no_grad():
        _export(wrapper, (example,), path, UINT8_ENCODER_INPUTS, UINT8_ENCODER_OUTPUTS, opset,
                {"image": {2: "height", 3: "width"}})
    _finalise(path, {FP32_SCOPES_KEY: json.dumps(_fp32_scopes(path)), "edgesam.img_size": str(s),
                     "edgesam.encoder_input": "uint8 (1,3,h,w) RGB, long side resized to img_size by the client"},
              {"image_embeddings": (1, 256, s // 16, s // 16)})
    return path
