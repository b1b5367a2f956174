"""ONNX export of the encoder + RPN graph (``rpn.onnx``) for RPN-driven segment-everything."""
from __future__ import annotations

import copy
import json
import warnings
from pathlib import Path

import torch
from torch import nn

from ..models.bicubic import bicubic_as_conv
from ..models.layers import fuse_for_deploy
from ..models.rpn import RPN_ONNX_INPUTS, RPN_ONNX_OUTPUTS, EncoderWithRPN
from .onnx_common import FP32_SCOPES_KEY, _finalise, _fp32_scopes


def export_rpn_onnx(model: nn.Module, path: str | Path, opset: int = 17, fuse: bool = True) -> Path:
    """Write ``rpn.onnx``: ``image`` (1,3,S,S) float32 normalised padded -> ``image_embeddings``
    (1,256,S/16,S/16), ``rpn_boxes`` (1,L,4) XYXY S frame, ``rpn_scores`` (1,L) in [0,1].

    ``model``: an EdgeSAM with ``model.rpn`` set. The encoder is deep-copied and RepVGG-fused first
    (exact in eval), and the neck's bicubic x2 upsample is written as its exact conv form (fast in ONNX
    Runtime), as for ``encoder.onnx``. Like every exported graph it records ``edgesam.fp32_scopes`` (here also
    the box decoding after the head's convolutions) in its metadata.
    """
    if getattr(model, "rpn", None) is None:
        raise ValueError("model has no RPN (model.rpn is None): train one with distillation step 3 first")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    encoder = copy.deepcopy(model.image_encoder).cpu().float().eval()
    if fuse:
        fuse_for_deploy(encoder)
    bicubic_as_conv(encoder)
    wrapper = EncoderWithRPN(encoder, copy.deepcopy(model.rpn).cpu().float().eval()).eval()
    s = int(model.img_size)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=UserWarning)
        torch.onnx.export(wrapper, (torch.zeros(1, 3, s, s),), str(path), input_names=list(RPN_ONNX_INPUTS),
                          output_names=list(RPN_ONNX_OUTPUTS), opset_version=opset, do_constant_folding=True,
                          dynamo=False)
    _finalise(path, {FP32_SCOPES_KEY: json.dumps(_fp32_scopes(path)), "edgesam.img_size": str(s),
                     "edgesam.fused": str(bool(fuse))})
    return path
