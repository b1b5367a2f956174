"""Export once, reuse: ONNX graphs of an in-memory student, cached on disk by a hash of its weights.

A server or annotation job given a checkpoint (or random weights) but asked for ONNX Runtime or TensorRT
calls :func:`cached_export`. The key is a SHA-256 over the export format version, ``img_size`` and every
tensor of the state dict (RPN included), so changed weights, code that changes the random initialisation,
or a new export format never reuse a stale folder. Several processes (Serve replicas) may race: one
exports under an exclusive file lock into a temporary folder that is renamed into place; the others wait
on the lock and find the finished folder.
"""
from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import tempfile
from pathlib import Path

import torch

from .onnx_export import DECODER_FILE, ENCODER_FILE, META_FILE, export_all

# Bump when the exported graphs change for the same weights (inputs, opset, fusing, layout).
EXPORT_FORMAT = "edgesam-onnx-v4-named-upscaling"  # v4: /up1/, /up2/ scopes for INT8
ENV_CACHE_DIR = "EDGESAM_ONNX_CACHE"


def default_cache_dir() -> Path:
    """``$EDGESAM_ONNX_CACHE``, else ``$XDG_CACHE_HOME/edgesam/onnx`` (``~/.cache/edgesam/onnx``)."""
    if os.environ.get(ENV_CACHE_DIR):
        return Path(os.environ[ENV_CACHE_DIR])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "edgesam" / "onnx"


def weights_key(model: torch.nn.Module, img_size: int) -> str:
    """Hex SHA-256 of the export format, ``img_size`` and all state-dict tensors (names, shapes, bytes)."""
    h = hashlib.sha256(f"{EXPORT_FORMAT}|{int(img_size)}".encode())
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"|{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.float().numpy().tobytes())
    return h.hexdigest()


def _complete(folder: Path) -> bool:
    return all((folder / f).is_file() for f in (ENCODER_FILE, DECODER_FILE, META_FILE))


def cached_export(model: torch.nn.Module, cache_dir: str | Path | None = None,
                  checkpoint_sha256: str | None = None) -> Path:
    """The ONNX folder (``encoder.onnx``, ``decoder.onnx``, ``rpn.onnx`` with an RPN, ``export_meta.json``)
    for ``model`` (an unfused or fused :class:`EdgeSAM`), exporting it on the first call.

    ``checkpoint_sha256`` is recorded in ``export_meta.json`` ("random" flags random weights).
    """
    root = Path(cache_dir) if cache_dir else default_cache_dir()
    root.mkdir(parents=True, exist_ok=True)
    folder = root / weights_key(model, model.img_size)[:24]
    if _complete(folder):
        return folder
    with open(root / f".{folder.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if _complete(folder):
            return folder
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=root))
        try:
            export_all(model, tmp, checkpoint_sha256=checkpoint_sha256)
            if folder.exists():  # an incomplete leftover from a killed export
                shutil.rmtree(folder)
            os.replace(tmp, folder)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return folder
