"""How the torch backends run a module: precision, memory format, ``torch.compile``, CUDA graphs.

The torch backend on CUDA is the fast path on machines without TensorRT (most rented GPU machines):

* ``dtype`` fp16 or bf16 with the FP32 scopes kept (:func:`edgesam.models.half.to_half`), after the
  RepVGG/BatchNorm fusion (exact in eval);
* ``channels_last`` for the convolutional encoder (cuDNN's NHWC kernels, Tensor Cores);
* ``compile``: ``torch.compile(fullgraph=True)``, so a graph break is an error rather than a silent slowdown;
* ``cuda_graphs``: the encoder per batch size and the split decoder per bucketed prompt count replayed from
  CUDA graphs (:class:`edgesam.inference.cuda_graphs.CudaGraphRunner`);
* ``split_decoder``: prompts without a mask input go through the split decoder (image side once per image,
  :mod:`edgesam.export.decoder_fast`), which does about half the decoder's MACs per prompt.

:meth:`TorchOptions.for_device` gives the defaults: float32 eager on the CPU; half precision,
channels_last and the split decoder on CUDA. ``compile`` and ``cuda_graphs`` are opt-in: each adds start-up
time (compilation, one capture per shape), which pays off in a long-running server or annotation job.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field, replace
from typing import Literal

import numpy as np
import torch
from pydantic import Field
from torch import nn

from ..config import StrictModel
from ..models.half import to_half, torch_dtype
from ..models.layers import fuse_for_deploy
from .cuda_graphs import check_buckets

DtypeName = Literal["fp32", "fp16", "bf16"]


@dataclass(frozen=True)
class TorchOptions:
    """Settings of the torch backends; see the module doc. ``prompt_buckets``: prompt counts the split
    decoder pads a call to when compiled or graphed (larger calls run in chunks of the largest);
    ``max_graphs``: CUDA graphs kept per backend (least recently used dropped first); ``compile_backend``:
    ``torch.compile``'s backend (``"eager"`` checks the full-graph capture without code generation).
    Half precision always runs on the fused modules (``fuse`` is set): an unfused BatchNorm would run in half."""

    dtype: DtypeName = "fp32"
    channels_last: bool = False
    compile: bool = False
    cuda_graphs: bool = False
    split_decoder: bool = False
    fuse: bool = False
    prompt_buckets: tuple[int, ...] = field(default=(1, 8, 16, 32, 64, 128, 256))
    max_graphs: int = 16
    compile_backend: str = "inductor"

    def __post_init__(self) -> None:
        torch_dtype(self.dtype)
        object.__setattr__(self, "fuse", self.fuse or self.dtype != "fp32")
        object.__setattr__(self, "prompt_buckets", check_buckets(self.prompt_buckets))
        if self.max_graphs < 1:
            raise ValueError(f"max_graphs must be >= 1, got {self.max_graphs}")

    @classmethod
    def for_device(cls, device: str, **overrides: object) -> "TorchOptions":
        """Defaults for ``device``: CPU float32 eager; CUDA fp16 + channels_last + fused + split decoder."""
        base = cls(dtype="fp16", channels_last=True, split_decoder=True, fuse=True) \
            if str(device).startswith("cuda") else cls()
        return replace(base, **overrides) if overrides else base

    @property
    def torch_dtype(self) -> torch.dtype:
        return torch_dtype(self.dtype)

    @property
    def pads_prompts(self) -> bool:
        """Static shapes wanted: compiled or graphed calls see only bucket sizes."""
        return self.compile or self.cuda_graphs

    def images(self, images: "np.ndarray | torch.Tensor", device: str) -> torch.Tensor:
        """(B,3,S,S) normalised padded images -> the encoder's input on ``device``: ``dtype``, and channels_last
        when set."""
        x = torch.as_tensor(images, device=device).to(self.torch_dtype)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def check_device(self, device: str) -> None:
        """A ValueError for CUDA graphs off CUDA; a RuntimeError for a CUDA device on a machine without one."""
        cuda = str(device).startswith("cuda")
        if self.cuda_graphs and not cuda:
            raise ValueError(f"cuda_graphs needs a CUDA device, got device={device!r}")
        if cuda and not torch.cuda.is_available():
            raise RuntimeError(f"device {device!r} requested but torch.cuda.is_available() is False")

    def backend_name(self, device: str) -> str:
        """``torch-<device>`` for the defaults, else with a tag such as ``-fp16-cl-compiled-graphs``."""
        if self == TorchOptions():
            return f"torch-{device}"
        tags = [self.dtype] + [tag for on, tag in ((self.channels_last, "cl"), (self.compile, "compiled"),
                                                  (self.cuda_graphs, "graphs"), (self.split_decoder, "split")) if on]
        return "-".join([f"torch-{device}", *tags])


def prepare(module: nn.Module, opts: TorchOptions, device: str, conv: bool) -> nn.Module:
    """A copy of ``module`` ready to run under ``opts`` on ``device``: fused (``opts.fuse``), in ``opts.dtype``
    with the FP32 scopes kept, channels_last when ``conv`` (a convolutional module) and asked for, in eval mode.
    The caller's module is never modified when any setting applies; with none it is moved and returned."""
    opts.check_device(device)
    if not (opts.fuse or opts.dtype != "fp32" or (conv and opts.channels_last)):
        return module.to(device).eval()
    m = copy.deepcopy(module).eval()
    if opts.fuse:
        fuse_for_deploy(m)
    to_half(m, opts.torch_dtype)
    m = m.to(device)
    if conv and opts.channels_last:
        m = m.to(memory_format=torch.channels_last)
    return m


def compiled(module: nn.Module, opts: TorchOptions) -> nn.Module:
    """``torch.compile(module, fullgraph=True)`` when ``opts.compile``, else ``module``. Shapes are static
    (``dynamic=False``): callers pad to buckets, and one specialised graph per shape is the fastest."""
    if not opts.compile:
        return module
    return torch.compile(module, fullgraph=True, dynamic=False, backend=opts.compile_backend)  # type: ignore[return-value]


class TorchRuntimeConfig(StrictModel):
    """The ``model.torch`` section of the serve and annotate configs: :class:`TorchOptions` from YAML.

    ``dtype: auto`` and unset (None) switches take :meth:`TorchOptions.for_device`'s defaults for the device the
    replica or actor runs on; anything set here overrides them.
    """

    dtype: Literal["auto", "fp32", "fp16", "bf16"] = "auto"
    channels_last: bool | None = None
    compile: bool = False
    cuda_graphs: bool = False
    split_decoder: bool | None = None
    prompt_buckets: list[int] = Field(default_factory=lambda: list(TorchOptions().prompt_buckets))

    def options(self, device: str) -> TorchOptions:
        """The :class:`TorchOptions` for ``device`` (``cpu``, ``cuda``, ``cuda:N``)."""
        overrides: dict[str, object] = {"compile": self.compile, "cuda_graphs": self.cuda_graphs,
                                        "prompt_buckets": tuple(self.prompt_buckets)}
        if self.dtype != "auto":
            overrides["dtype"] = self.dtype
        for key in ("channels_last", "split_decoder"):
            if getattr(self, key) is not None:
                overrides[key] = getattr(self, key)
        return TorchOptions.for_device(device, **overrides)
