"""Half-precision (fp16 / bf16) EdgeSAM modules that keep the FP32 scopes of the FP16 ONNX graphs.

:func:`to_half` casts a module's parameters and buffers to ``dtype`` in place, except where half precision
loses the result, the same scopes that ``edgesam.fp32_scopes`` names in the exported graphs:

* normalisations (``nn.LayerNorm``, segment-anything's ``LayerNorm2d``, ``nn.GroupNorm``): parameters stay
  float32 and each runs on a float32 copy of its input, its output cast back. ``LayerNorm2d`` is written
  out as mean / pow / sqrt, and ``(x - mean)^2`` overflows fp16 on large activations;
* the prompt encoder's random-Fourier positional encoding (``PositionEmbeddingRandom``): its Gaussian stays
  float32 and :class:`edgesam.models.prompt_decoder.EdgePromptEncoder` computes the PE in float32;
* softmax in the split decoder (``edgesam.export.decoder_fast._softmax``) and RPN box decoding
  (``RPN.forward`` / ``EncoderWithRPN``) cast to float32 themselves when they see half inputs.

Callers cast images and embeddings to ``dtype``; point coordinates stay float32 (fp16 has a 0.5 px step
at 512-1024 px). Outputs come back in ``dtype``, or float32 from an FP32 scope.
"""
from __future__ import annotations

import torch
from segment_anything.modeling.common import LayerNorm2d
from segment_anything.modeling.prompt_encoder import PositionEmbeddingRandom
from torch import nn

DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
NORM_TYPES: tuple[type[nn.Module], ...] = (nn.LayerNorm, LayerNorm2d, nn.GroupNorm)


class _Float32Norm:
    """Mixin placed before a normalisation class: run it on float32, return the input's dtype."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.float32:
            return super().forward(x)  # type: ignore[misc]
        return super().forward(x.float()).to(x.dtype)  # type: ignore[misc]


_FLOAT32_CLASSES: dict[type, type] = {}


def _float32_class(cls: type) -> type:
    """The float32-running subclass of a normalisation class (one per class, so isinstance checks and
    ``torch.compile``'s guards see a stable type)."""
    if cls not in _FLOAT32_CLASSES:
        _FLOAT32_CLASSES[cls] = type(f"Float32{cls.__name__}", (_Float32Norm, cls), {})
    return _FLOAT32_CLASSES[cls]


def torch_dtype(name: str) -> torch.dtype:
    """``"fp32" | "fp16" | "bf16"`` -> the torch dtype, or a ValueError naming the choices."""
    if name not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {name!r}")
    return DTYPES[name]


def to_half(module: nn.Module, dtype: torch.dtype) -> nn.Module:
    """Cast ``module`` (in place) to ``dtype`` with the FP32 scopes kept (see the module doc); returns it.

    ``dtype`` float32 leaves the module as it is. Fuse RepVGG/BatchNorm branches (``fuse_for_deploy``) first:
    BatchNorm folded into a conv costs nothing, and an unfused one would run in half precision.
    """
    if dtype == torch.float32:
        return module
    if dtype not in (torch.float16, torch.bfloat16):
        raise ValueError(f"to_half takes torch.float16 or torch.bfloat16, got {dtype}")
    module.to(dtype)
    for m in module.modules():
        if isinstance(m, NORM_TYPES):
            m.float()
            if not isinstance(m, _Float32Norm):
                m.__class__ = _float32_class(type(m))
        elif isinstance(m, PositionEmbeddingRandom):
            m.float()
    return module

