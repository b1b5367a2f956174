"""Encoder + RPN backends for RPN-mode segment everything: one pass gives the embedding and the proposals.

``TorchRpnEncoder`` runs the student's encoder and RPN in PyTorch; ``OrtRpnEncoder`` runs ``rpn.onnx``
(:func:`edgesam.models.rpn.export_rpn_onnx`: image -> embedding + decoded boxes + scores in one graph, so no
second encoder pass and no torch weights at deploy time).
"""
from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from ..models.rpn import RPN_ONNX_OUTPUTS, EncoderWithRPN
from .torch_options import TorchOptions, compiled, prepare


class RpnEncoderBackend(Protocol):
    """images (1,3,S,S) float32 normalised padded -> (embedding (1,256,S/16,S/16), boxes (1,L,4) XYXY S frame,
    scores (1,L)), numpy float32."""

    img_size: int
    name: str

    def __call__(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]: ...


class TorchRpnEncoder:
    """Student encoder + RPN in PyTorch (one ``forward_features`` pass), run as ``opts`` says (default: eager
    float32; in half precision the boxes and scores are still decoded in float32)."""

    def __init__(self, image_encoder: torch.nn.Module, rpn: torch.nn.Module, img_size: int, device: str = "cpu",
                 opts: TorchOptions | None = None) -> None:
        self.opts = opts or TorchOptions()
        self.module = prepare(EncoderWithRPN(image_encoder, rpn), self.opts, device, conv=True)
        self._run = compiled(self.module, self.opts)
        self.img_size = img_size
        self.device = device
        self.name = self.opts.backend_name(device)

    @torch.inference_mode()
    def __call__(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return tuple(t.float().cpu().numpy() for t in self.tensors(images))  # type: ignore[return-value]

    @torch.inference_mode()
    def tensors(self, images: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """As ``__call__``, but torch tensors left on ``device`` (the embedding never visits the host; in
        ``opts.dtype``, the boxes and scores float32)."""
        return self._run(self.opts.images(images, self.device))


class OrtRpnEncoder:
    """``rpn.onnx`` in ONNX Runtime (see :func:`edgesam.models.rpn.export_rpn_onnx`)."""

    def __init__(self, path: str | Path, providers=None, threads: int | None = None) -> None:
        from .ort_backend import _backend_name, make_session

        self.path = Path(path)
        self.session = make_session(self.path, providers, threads)
        outs = tuple(o.name for o in self.session.get_outputs())
        if outs != RPN_ONNX_OUTPUTS:
            raise ValueError(f"{self.path} is not an EdgeSAM rpn graph: outputs {list(outs)}, expected {list(RPN_ONNX_OUTPUTS)}")
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        self.img_size = int(inp.shape[2])
        self.name = _backend_name(self.session, self.path)

    def __call__(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        x = np.ascontiguousarray(images, dtype=np.float32)
        if x.shape != (1, 3, self.img_size, self.img_size):
            raise ValueError(f"images must have shape (1,3,{self.img_size},{self.img_size}), got {x.shape}")
        emb, boxes, scores = self.session.run(list(RPN_ONNX_OUTPUTS), {self.input_name: x})
        return emb, boxes, scores
