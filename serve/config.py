"""Typed configuration of the Serve application (``configs/serve.yaml``).

The file is chosen by ``EDGESAM_SERVE_CONFIG`` (a YAML path or a name under ``configs/``), else
``configs/serve.yaml``. Deployment options (replicas, autoscaling, CPUs/GPUs per replica,
``max_ongoing_requests``) set here are the code defaults; ``serve deploy serve/serve_config.yaml``
may override them per deployment without touching this file.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal, Sequence

from pydantic import Field, model_validator

from edgesam.config import CONFIG_DIR, StrictModel, load_config
from edgesam.inference.torch_options import TorchRuntimeConfig

from .integrations.config import IntegrationsSection

CONFIG_ENV = "EDGESAM_SERVE_CONFIG"
DEFAULT_CONFIG = CONFIG_DIR / "serve.yaml"  # a path: the bare name "serve" would hit the serve/ package dir


class ModelSection(StrictModel):
    """Which weights and runtime the replicas load.

    ``checkpoint`` (student ``.pt`` via ``load_student``) or ``onnx_dir`` (exported encoder/decoder);
    with neither, the model is randomly initialised from ``seed`` and every replica logs a loud warning.
    ``backend: auto`` picks TensorRT on a GPU where installed, else ONNX Runtime, else torch; a checkpoint
    (or random model) served by an ONNX backend is exported once into ``export_cache_dir``.
    """

    checkpoint: str | None = None
    onnx_dir: str | None = None
    backend: Literal["auto", "torch", "onnxruntime", "tensorrt"] = "auto"
    device: Literal["cpu", "cuda"] = "cpu"
    img_size: int = Field(1024, ge=64, le=4096)
    seed: int = 0
    fuse: bool = True  # RepVGG re-parametrisation (exact in eval) for the torch backend
    precision: Literal["fp16", "fp32"] = "fp16"  # tensorrt engines
    trt_max_batch: int = Field(8, ge=1, le=256)  # tensorrt encoder engine: images per execute (>= encoder.max_batch_size)
    export_cache_dir: str | None = None  # ONNX exports of checkpoints (default $EDGESAM_ONNX_CACHE or ~/.cache/edgesam/onnx)
    threads: int | None = Field(None, ge=1, description="intra-op CPU threads per replica (torch / onnxruntime)")
    # onnxruntime on CPU: INT8 encoder channel mixers and decoder upscaling (edgesam.inference.quantize), or
    # "decoder" only (the INT8 encoder gains on VNNI CPUs, not on AVX2-only ones); written beside the fp32
    # graphs on first use. Mask IoU vs fp32 and speed-up: BENCHMARKS.md, section int8
    int8: bool | Literal["decoder"] = False
    # backend torch: precision, channels_last, torch.compile, CUDA graphs, split decoder (defaults by device)
    torch: TorchRuntimeConfig = Field(default_factory=TorchRuntimeConfig)

    @model_validator(mode="after")
    def _check(self) -> "ModelSection":
        if self.img_size % 64:
            raise ValueError(f"model.img_size must be a multiple of 64, got {self.img_size}")
        if self.int8 and (self.backend not in ("auto", "onnxruntime") or self.device != "cpu"):
            raise ValueError(f"model.int8 runs on backend onnxruntime with device cpu, got backend={self.backend!r}, "
                             f"device={self.device!r}")
        return self


class DeploymentSection(StrictModel):
    """Ray Serve options of one deployment.

    ``autoscaling`` is passed verbatim as ``autoscaling_config`` (min_replicas, max_replicas,
    target_ongoing_requests, ...); when it is set, ``num_replicas`` is ignored.
    """

    num_replicas: int = Field(1, ge=1)
    autoscaling: dict[str, Any] | None = None
    num_cpus: float = Field(0.25, ge=0)  # fractional: all four deployments fit a 1-CPU node (serve/preflight.py)
    num_gpus: float = Field(0.0, ge=0)
    max_ongoing_requests: int | None = Field(None, ge=1)

    def options(self, default_max_ongoing: int) -> dict[str, Any]:
        """Keyword arguments for ``Deployment.options``."""
        opts: dict[str, Any] = {
            "ray_actor_options": {"num_cpus": self.num_cpus, "num_gpus": self.num_gpus},
            "max_ongoing_requests": self.max_ongoing_requests or default_max_ongoing,
        }
        if self.autoscaling:
            opts["autoscaling_config"] = dict(self.autoscaling)
        else:
            opts["num_replicas"] = self.num_replicas
        return opts


class BatchedDeploymentSection(DeploymentSection):
    """A deployment with ``@serve.batch``: the batch size needs ``max_ongoing_requests`` >= 2x it."""

    max_batch_size: int = Field(8, ge=1, le=256)
    batch_wait_timeout_s: float = Field(0.01, ge=0, le=5)

    @model_validator(mode="after")
    def _check_ongoing(self) -> "BatchedDeploymentSection":
        if self.max_ongoing_requests is not None and self.max_ongoing_requests < self.max_batch_size:
            raise ValueError(f"max_ongoing_requests ({self.max_ongoing_requests}) is below max_batch_size "
                             f"({self.max_batch_size}): batches could never fill; use >= 2x max_batch_size")
        return self

    def options(self, default_max_ongoing: int = 0) -> dict[str, Any]:
        return super().options(max(default_max_ongoing, 2 * self.max_batch_size))


class EverythingSection(DeploymentSection):
    """Segment-everything through ``edgesam.inference.everything.EverythingGenerator``.

    ``mode``: ``rpn`` (EdgeSAM's proposals: needs a checkpoint with an RPN, or ``rpn.onnx`` in onnx_dir),
    ``grid`` (SAM's point grid) or ``auto`` (rpn when the model has one). ``generator`` holds any other
    ``EverythingConfig`` field (points_per_side, stability_score_thresh, mask_nms_iou, max_masks, ...);
    it is validated against that class when the application is built.
    """

    mode: Literal["auto", "rpn", "grid"] = "auto"
    generator: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _no_mode_in_generator(self) -> "EverythingSection":
        if "mode" in self.generator:
            raise ValueError("set everything.mode, not everything.generator.mode")
        return self


class CacheSection(StrictModel):
    """The ``EmbeddingStore`` deployment: one replica holding the embeddings in Ray's object store, shared by
    every ingress replica; decoder replicas keep ``decoder_local`` recent ones (read once from the store)."""

    max_embeddings: int = Field(64, ge=1, description="LRU bound on stored embeddings (count), for all ingress replicas")
    num_cpus: float = Field(0.1, ge=0)
    decoder_local: int = Field(4, ge=0, description="embeddings each decoder replica keeps locally (LRU)")


class LimitsSection(StrictModel):
    max_image_bytes: int = Field(20 * 2**20, ge=1024)
    max_pixels: int = Field(40_000_000, ge=64)
    max_points: int = Field(64, ge=1)
    max_boxes: int = Field(64, ge=1)
    max_images: int = Field(4, ge=1, description="images per /v1/everything request")
    memory_budget_bytes: int = Field(2_000_000_000, ge=1_000_000, description=(
        "per-request memory budget: a request whose full-size masks (pixels x masks x mask_bytes_per_pixel) "
        "would need more is refused with 413 before any work (serve.budget)"))
    mask_bytes_per_pixel: float = Field(6.0, gt=0, description="measured peak bytes per full-size mask pixel")

    @property
    def max_body_bytes(self) -> int:
        """Request bodies: base64 inflates by 4/3, plus room for JSON prompts and multipart framing."""
        return self.max_image_bytes * 4 // 3 * self.max_images + 1_048_576


class AuthSection(StrictModel):
    """Optional API key checked on ``/v1/*`` model endpoints (``X-API-Key`` header).

    ``api_key_env`` names an environment variable read inside the ingress replica, so the key need
    not sit in a config file (set it through ``runtime_env.env_vars`` with ``serve deploy``).
    """

    api_key: str | None = None
    api_key_env: str | None = "EDGESAM_API_KEY"

    def resolve(self) -> str | None:
        if self.api_key:
            return self.api_key
        if self.api_key_env:
            return os.environ.get(self.api_key_env) or None
        return None


class ServeAppConfig(StrictModel):
    model: ModelSection = ModelSection()
    encoder: BatchedDeploymentSection = BatchedDeploymentSection()
    decoder: BatchedDeploymentSection = BatchedDeploymentSection(max_batch_size=16)
    everything: EverythingSection = EverythingSection()
    ingress: DeploymentSection = DeploymentSection(num_cpus=0.1, max_ongoing_requests=64)
    cache: CacheSection = CacheSection()
    limits: LimitsSection = LimitsSection()
    auth: AuthSection = AuthSection()
    integrations: IntegrationsSection = IntegrationsSection()


def load_serve_config(name_or_path: str | Path | None = None, overrides: Sequence[str] = ()) -> ServeAppConfig:
    """``name_or_path`` > ``$EDGESAM_SERVE_CONFIG`` > ``configs/serve.yaml``, then ``key.sub=value`` overrides."""
    source = name_or_path or os.environ.get(CONFIG_ENV) or DEFAULT_CONFIG
    return load_config(ServeAppConfig, source, overrides)
