"""TensorRT pieces shared by the engine builder (``export.tensorrt_build``) and the runtime
(``inference.trt_backend``): the lazy import, the CUDA check, optimisation-profile bounds, the
execute plan, and the cross-process build lock.

Nothing here imports TensorRT or touches a GPU at import time, so it is testable on any machine.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

TRT_MISSING = "TensorRT is not installed: pip install 'edgesam-ray[trt]' on a machine with an NVIDIA GPU"
PRECISIONS = ("fp16", "fp32")


def import_tensorrt():
    """``import tensorrt`` or a RuntimeError saying how to install it."""
    try:
        import tensorrt as trt
    except ImportError as e:
        raise RuntimeError(TRT_MISSING) from e
    return trt


def require_cuda(device: str | int = 0) -> "object":
    """The torch CUDA device for TensorRT, or a RuntimeError when there is none."""
    import torch

    dev = torch.device(device if isinstance(device, str) else f"cuda:{device}")
    if dev.type != "cuda":
        raise ValueError(f"TensorRT runs on a CUDA device, got device {device!r}")
    if not torch.cuda.is_available():
        raise RuntimeError("TensorRT needs an NVIDIA GPU, but torch.cuda.is_available() is False on this machine")
    return dev


@dataclass(frozen=True)
class DecoderProfile:
    """Optimisation-profile bounds for the decoder's dynamic axes (prompts N, points per prompt P)."""

    min_prompts: int = 1
    opt_prompts: int = 1
    max_prompts: int = 64
    min_points: int = 1
    opt_points: int = 1
    max_points: int = 16

    def __post_init__(self) -> None:
        if not (1 <= self.min_prompts <= self.opt_prompts <= self.max_prompts):
            raise ValueError(f"need 1 <= min_prompts <= opt_prompts <= max_prompts, got {self}")
        if not (1 <= self.min_points <= self.opt_points <= self.max_points):
            raise ValueError(f"need 1 <= min_points <= opt_points <= max_points, got {self}")


def decoder_profile_for(prompts_per_call: int, max_points: int = 16) -> DecoderProfile:
    """The profile for a caller that sends up to ``prompts_per_call`` prompts per decoder call (the
    everything generator's ``max_proposals``, a server's batch): max >= it (at least the default 64), opt
    = it, so one execute covers a call and TensorRT tunes its kernels for that size."""
    if prompts_per_call < 1:
        raise ValueError(f"prompts_per_call must be >= 1, got {prompts_per_call}")
    return DecoderProfile(opt_prompts=prompts_per_call, max_prompts=max(64, prompts_per_call), max_points=max_points)


@dataclass(frozen=True)
class EncoderProfile:
    """Optimisation-profile bounds for the encoder's batch axis: [1, ``max_batch``], tuned for ``opt_batch``
    (None: ``max_batch``, the size a batching server fills under load). Used only when the ONNX encoder's
    batch axis is dynamic; ``TrtEncoder`` splits larger batches into chunks of ``max_batch``."""

    max_batch: int = 8
    opt_batch: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.max_batch, int) or self.max_batch < 1:
            raise ValueError(f"max_batch must be an int >= 1, got {self.max_batch!r}")
        if self.opt_batch is not None and not (1 <= self.opt_batch <= self.max_batch):
            raise ValueError(f"need 1 <= opt_batch <= max_batch, got {self}")

    @property
    def shapes(self) -> tuple[int, int, int]:
        """(min, opt, max) batch."""
        return 1, self.opt_batch or self.max_batch, self.max_batch


def execute_chunks(n: int, per_execute: int) -> list[slice]:
    """The slices of ``n`` items that one engine execute each takes, at most ``per_execute`` per execute."""
    if n < 1 or per_execute < 1:
        raise ValueError(f"need n >= 1 and per_execute >= 1, got {n}, {per_execute}")
    return [slice(i, min(i + per_execute, n)) for i in range(0, n, per_execute)]


@contextlib.contextmanager
def file_lock(artifact: str | Path) -> Iterator[None]:
    """An exclusive ``flock`` for building ``artifact`` (a file path) during the ``with`` block: processes on
    one machine building the same artefact (Serve replicas starting together) queue here, and the later ones
    find the result. The lock file lives under the temporary directory, keyed by the artefact's absolute
    path, so no lock file is left beside the artefact (an export folder uploaded to object storage stays
    clean)."""
    key = hashlib.sha1(str(Path(artifact).resolve()).encode()).hexdigest()[:20]
    path = Path(tempfile.gettempdir()) / "edgesam-locks" / f"{key}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)  # released when the file closes
        yield
