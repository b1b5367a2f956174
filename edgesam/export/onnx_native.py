"""The native EdgeSAM graphs: ``encoder.onnx`` (dynamic batch) and ``decoder.onnx`` (dynamic prompts and points).

Their I/O is documented in :mod:`edgesam.export.onnx_export`.
"""
from __future__ import annotations

import copy
import json
from pathlib import Path

import torch
from torch import nn

from ..models.bicubic import bicubic_as_conv
from ..models.edgesam import EdgeSAM
from ..models.layers import fuse_for_deploy
from ..models.prompt_decoder import PromptDecoder
from .onnx_common import (DECODER_INPUTS, DECODER_OUTPUTS, DEFAULT_OPSET, ENCODER_BATCH_AXIS, ENCODER_INPUTS,
                          ENCODER_OUTPUTS, FP32_SCOPES_KEY, PointPromptEmbedding, _export, _finalise, _fp32_scopes)


class OnnxPromptDecoder(nn.Module):
    """Wraps a :class:`PromptDecoder` with SAM's ONNX inputs (mask prompt blended by ``has_mask_input``); the point
    embedding runs in ``prompt_pe`` (:class:`PointPromptEmbedding`), whose scope FP16 copies keep in FP32."""

    def __init__(self, prompt_decoder: PromptDecoder) -> None:
        super().__init__()
        self.prompt_encoder = prompt_decoder.prompt_encoder
        self.mask_decoder = prompt_decoder.mask_decoder
        self.prompt_pe = PointPromptEmbedding(self.prompt_encoder)

    def forward(self, image_embeddings: torch.Tensor, point_coords: torch.Tensor, point_labels: torch.Tensor,
                mask_input: torch.Tensor, has_mask_input: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(1,256,h,w), (N,P,2), (N,P), (N,1,4h,4w), (N,) -> scores (N,4), masks (N,4,4h,4w)."""
        pe = self.prompt_encoder
        sparse = self.prompt_pe(point_coords, point_labels)
        has = has_mask_input.reshape(-1, 1, 1, 1)
        no_mask = pe.no_mask_embed.weight.reshape(1, -1, 1, 1)
        dense = has * pe._embed_masks(mask_input) + (1.0 - has) * no_mask  # (N,256,h,w)
        masks, scores = self.mask_decoder.predict_all(image_embeddings, pe.get_dense_pe(), sparse, dense)
        return scores, masks


def export_encoder(model: EdgeSAM, path: str | Path, fuse: bool = True, opset: int = DEFAULT_OPSET,
                   cubic_as_conv: bool = True) -> Path:
    """Export ``model.image_encoder``: ``image`` (B,3,S,S) -> ``image_embeddings`` (B,256,S/16,S/16).

    The batch axis B is dynamic (ONNX dim_param ``"batch"`` on input and output); S is fixed at
    ``model.img_size``. The graph is traced with B = 2 so that the tracer cannot bake a batch of 1 into
    a reshape or broadcast. ``fuse`` folds BatchNorms and RepVGG branches on a deep copy first (``model`` is left untouched).
    ``cubic_as_conv`` writes the neck's x2 bicubic upsample as the exactly equivalent pad + depthwise conv +
    DepthToSpace (:class:`BicubicUpsample2x`); False keeps ONNX ``Resize`` (cubic, a = -0.75, half_pixel).
    Both match PyTorch's bicubic to float rounding; the conv form is much faster in ONNX Runtime.
    """
    path = Path(path)
    encoder = copy.deepcopy(model.image_encoder).cpu().float().eval()
    if fuse:
        fuse_for_deploy(encoder)
    if cubic_as_conv:
        bicubic_as_conv(encoder)
    s = model.img_size
    dynamic_axes = {"image": {0: ENCODER_BATCH_AXIS}, "image_embeddings": {0: ENCODER_BATCH_AXIS}}
    with torch.no_grad():  # batch 2, not 1: see the docstring
        _export(encoder, (torch.zeros(2, 3, s, s),), path, ENCODER_INPUTS, ENCODER_OUTPUTS, opset, dynamic_axes)
    _finalise(path, {FP32_SCOPES_KEY: json.dumps(_fp32_scopes(path)), "edgesam.img_size": str(s),
                     "edgesam.fused": str(bool(fuse)), "edgesam.cubic_as_conv": str(bool(cubic_as_conv))},
              {"image_embeddings": (ENCODER_BATCH_AXIS, 256, s // 16, s // 16)})
    return path


def export_decoder(model: EdgeSAM, path: str | Path, opset: int = DEFAULT_OPSET) -> Path:
    """Export the prompt encoder + mask decoder with dynamic N (prompts) and P (points); see module doc."""
    path = Path(path)
    pd = model.prompt_decoder if isinstance(getattr(model, "prompt_decoder", None), nn.Module) \
        else model.as_prompt_decoder()
    wrapper = OnnxPromptDecoder(copy.deepcopy(pd).cpu().float().eval()).eval()
    s = model.img_size
    h = s // 16
    n, p = 2, 3  # not 1, so that the tracer cannot specialise a broadcast on these axes
    args = (torch.randn(1, 256, h, h), torch.rand(n, p, 2) * s, torch.tensor([[1.0, 0.0, -1.0], [2.0, 3.0, 1.0]]),
            torch.zeros(n, 1, 4 * h, 4 * h), torch.zeros(n))
    prompts = {0: "num_prompts"}
    points = {0: "num_prompts", 1: "num_points"}
    dynamic_axes = {"point_coords": points, "point_labels": points, "mask_input": prompts,
                    "has_mask_input": prompts, "scores": prompts, "masks": prompts}
    with torch.no_grad():
        _export(wrapper, args, path, DECODER_INPUTS, DECODER_OUTPUTS, opset, dynamic_axes)
    _finalise(path, {FP32_SCOPES_KEY: json.dumps(_fp32_scopes(path)), "edgesam.img_size": str(s)},
              {"scores": ("num_prompts", 4), "masks": ("num_prompts", 4, 4 * h, 4 * h)})
    return path


