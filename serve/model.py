"""Load the encoder/decoder backends a replica serves, and describe what was loaded.

Weights come from ``model.checkpoint`` (``load_student``, torch backend), ``model.onnx_dir`` (graphs from
``python -m edgesam.export``, onnxruntime or tensorrt backend), or, with neither, a random initialisation
from ``model.seed``: deterministic, so every replica (and a test building ``EdgeSAM(img_size)`` after
``torch.manual_seed(seed)``) holds the same weights. Random weights, including ONNX graphs exported from
random weights (``export_meta.json``), are reported loudly in the logs and in ``/healthz``.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from edgesam.storage import sha256 as sha256_file
from edgesam.inference.backends import DecoderBackend, EncoderBackend
from edgesam.inference.runtime import make_backends
from edgesam.models import EdgeSAM, fuse_for_deploy, load_student

from .config import ModelSection

log = logging.getLogger("ray.serve")

RANDOM_WARNING = ("EdgeSAM is serving RANDOMLY INITIALISED weights (no trained model.checkpoint or model.onnx_dir): "
                  "masks are meaningless. Point model.checkpoint at a distilled student checkpoint.")
EXPORT_META = "export_meta.json"  # written by edgesam.export next to encoder.onnx / decoder.onnx


@dataclass
class ModelInfo:
    """What a replica loaded; reported by ``GET /healthz``."""

    identity: str
    weights: str  # "checkpoint" | "onnx" | "random"
    backend: str
    img_size: int
    device: str
    warning: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"identity": self.identity, "weights": self.weights, "backend": self.backend,
                "img_size": self.img_size, "device": self.device, "warning": self.warning, "meta": self.meta}


class ShapeOnlyEncoder:
    """Stands in for the encoder in a decoder-only :class:`Predictor` (which reads ``img_size`` from it)."""

    def __init__(self, img_size: int) -> None:
        self.img_size = img_size
        self.name = "none"

    def __call__(self, images):  # pragma: no cover - never called: decoder replicas get embeddings
        raise RuntimeError("this replica only decodes; embeddings come from the ImageEncoder deployment")


def _file_digest(path: Path) -> str:
    return sha256_file(path)[:16]


def _ort_has_cuda() -> bool:
    try:
        import onnxruntime as ort
    except ImportError:
        return False
    return "CUDAExecutionProvider" in ort.get_available_providers()


def resolve_kind(cfg: ModelSection) -> str:
    """``auto``: TensorRT on ``cuda`` where it is installed, else ONNX Runtime (CPU, or CUDA with
    onnxruntime-gpu), else torch. Without ``onnx_dir`` the ONNX backends serve a cached export of the
    checkpoint (or random) model, see :func:`load_backends`."""
    if cfg.backend != "auto":
        return cfg.backend
    if cfg.int8:  # an ONNX Runtime (CPU) recipe
        return "onnxruntime"
    if cfg.device == "cuda":
        if importlib.util.find_spec("tensorrt") is not None:
            return "tensorrt"
        return "onnxruntime" if _ort_has_cuda() else "torch"
    return "onnxruntime" if importlib.util.find_spec("onnxruntime") is not None else "torch"


def build_torch_model(cfg: ModelSection, fuse: bool | None = None) -> tuple[EdgeSAM, ModelInfo]:
    """The student from ``cfg.checkpoint`` or, without one, random weights from ``cfg.seed``; fused for
    deployment when ``fuse`` (default ``cfg.fuse``)."""
    if cfg.checkpoint:
        model, extras = load_student(cfg.checkpoint, img_size=cfg.img_size)
        digest = _file_digest(Path(cfg.checkpoint))
        info = ModelInfo(f"edgesam:{Path(cfg.checkpoint).name}:sha256={digest}", "checkpoint", "torch", cfg.img_size,
                         cfg.device, meta={**{k: v for k, v in (extras.get("meta") or {}).items()
                                              if isinstance(v, (str, int, float, bool))}, "checkpoint_sha256": digest})
    else:
        torch.manual_seed(cfg.seed)
        model = EdgeSAM(cfg.img_size).eval()
        info = ModelInfo(f"edgesam:random-seed{cfg.seed}", "random", "torch", cfg.img_size, cfg.device,
                         warning=RANDOM_WARNING)
    if cfg.fuse if fuse is None else fuse:
        fuse_for_deploy(model)
    return model.eval(), info


def describe_onnx(cfg: ModelSection, kind: str) -> ModelInfo:
    """Identity from the graphs' hashes; random weights flagged from ``export_meta.json``."""
    d = Path(cfg.onnx_dir)
    digest = hashlib.sha256()
    for p in sorted(d.glob("*.onnx")):
        digest.update(_file_digest(p).encode())
    meta: dict[str, Any] = {}
    if (d / EXPORT_META).is_file():
        raw = json.loads((d / EXPORT_META).read_text())
        meta = {k: raw[k] for k in ("checkpoint_sha256", "random_weights", "img_size", "opset") if k in raw}
    random_weights = bool(meta.get("random_weights"))
    return ModelInfo(f"edgesam-onnx:{d.name}:sha256={digest.hexdigest()[:16]}", "random" if random_weights else "onnx",
                     kind, cfg.img_size, cfg.device, warning=RANDOM_WARNING if random_weights else None, meta=meta)


@dataclass
class Backends:
    """What a replica runs: encoder/decoder (numpy I/O, ``edgesam.inference.backends`` protocols), the
    encoder+RPN backend for segment-everything when the model has one (else None), and a description."""

    encoder: EncoderBackend
    decoder: DecoderBackend
    info: ModelInfo
    rpn: Any = None


def _rpn_backend(cfg: ModelSection, model: EdgeSAM | None, kind: str = "onnxruntime") -> Any:
    """EdgeSAM's RPN next to the encoder: torch (a checkpoint from distillation step 3) or ``rpn.onnx``, as its
    own TensorRT engine under ``kind == "tensorrt"`` (never CPU ONNX Runtime there), else in ONNX Runtime."""
    from edgesam.inference.everything import OrtRpnEncoder, TorchRpnEncoder
    from edgesam.models.rpn import RPN_ONNX_FILE

    if model is not None:
        rpn = getattr(model, "rpn", None)
        return None if rpn is None else TorchRpnEncoder(model.image_encoder, rpn, cfg.img_size, cfg.device,
                                                        cfg.torch.options(cfg.device))
    path = Path(cfg.onnx_dir) / RPN_ONNX_FILE
    if not path.is_file():
        return None
    if kind == "tensorrt":
        from edgesam.inference.trt_backend import TrtRpnEncoder

        dev = cfg.device if cfg.device.startswith("cuda") else "cuda"  # load_backends already refused cpu
        return TrtRpnEncoder(path, cfg.precision, device=int(dev.split(":", 1)[1]) if ":" in dev else 0)
    from edgesam.inference.ort_backend import CPU_EP

    return OrtRpnEncoder(path, [CPU_EP] if cfg.device == "cpu" else None, cfg.threads)


def _export_for_serving(cfg: ModelSection) -> tuple[ModelSection, ModelInfo]:
    """Export the checkpoint (or random) student once into the ONNX cache; -> (cfg with onnx_dir, its info)."""
    from edgesam.export.cache import cached_export

    model, info = build_torch_model(cfg, fuse=False)  # the exporter fuses its own copy
    sha = info.meta.get("checkpoint_sha256", "random")
    onnx_dir = cached_export(model, cfg.export_cache_dir, checkpoint_sha256=sha)
    log.info("serving %s through ONNX exported at %s", info.identity, onnx_dir)
    return cfg.model_copy(update={"onnx_dir": str(onnx_dir)}), info


def load_backends(cfg: ModelSection, with_rpn: bool = False, max_prompts: int = 64) -> Backends:
    """Backends for ``cfg`` via ``edgesam.inference.runtime.make_backends`` (plus the RPN when ``with_rpn``
    and available). ``max_prompts``: the most prompts per decoder call (TensorRT profiles cover it in one
    execute). Logs a loud warning on random weights."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    from edgesam import storage  # s3:// / gs:// model paths: one local copy per node, then as before

    cfg = cfg.model_copy(update={k: storage.fetch(v) for k in ("checkpoint", "onnx_dir") if storage.is_uri(v := getattr(cfg, k) or "")})
    kind = resolve_kind(cfg)
    model = None
    if kind == "torch":
        model, info = build_torch_model(cfg)
        enc, dec = make_backends("torch", model=model, device=cfg.device, threads=cfg.threads,
                                 torch_options=cfg.torch.options(cfg.device))
    else:
        source = None
        if not cfg.onnx_dir:  # serve the checkpoint (or random) model through a cached ONNX export
            cfg, source = _export_for_serving(cfg)
        enc, dec = make_backends(kind, onnx_dir=cfg.onnx_dir, device=cfg.device, threads=cfg.threads,
                                 precision=cfg.precision, max_batch=cfg.trt_max_batch, max_prompts=max_prompts,
                                 int8=cfg.int8)
        info = describe_onnx(cfg, kind)
        if source is not None:  # report the checkpoint it came from, not the cache folder
            info.identity, info.weights = source.identity, source.weights
            info.meta = {**source.meta, "onnx_dir": cfg.onnx_dir}
    if enc.img_size != cfg.img_size:
        raise ValueError(f"the {kind} encoder takes {enc.img_size}px inputs but model.img_size is {cfg.img_size}")
    info.backend = f"{enc.name}/{dec.name}"
    if info.warning:
        log.warning("!" * 100 + "\n" + info.warning + "\n" + "!" * 100)
    return Backends(enc, dec, info, _rpn_backend(cfg, model, kind) if with_rpn else None)
