"""Typed configuration of the annotation job (``configs/annotate.yaml``; ``key.sub=value`` overrides)."""
from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from edgesam.config import StrictModel
from edgesam.data.images import IMAGE_EXTENSIONS
from edgesam.formats.export import FormatOptionsCfg, Formats
from edgesam.inference.everything import EverythingConfig
from edgesam.inference.torch_options import TorchRuntimeConfig


class AnnotateModelCfg(StrictModel):
    """Which weights label the images, and how they run (``model.*``)."""

    checkpoint: str | None = None  # student checkpoint (load_student)
    onnx_dir: str | None = None  # export folder: encoder.onnx, decoder.onnx (+ rpn.onnx for RPN mode)
    # auto: onnxruntime for onnx_dir, else torch; onnxruntime with a checkpoint (or random weights) exports it
    # once into export_cache_dir (edgesam.export.cache) and runs ONNX Runtime
    backend: Literal["auto", "torch", "onnxruntime"] = "auto"
    export_cache_dir: str | None = None  # default $EDGESAM_ONNX_CACHE or ~/.cache/edgesam/onnx
    img_size: int = Field(1024, ge=64)
    device: str = "auto"  # auto (cuda when the actor has a GPU), cpu, cuda, cuda:N
    threads: int | None = None  # intra-op threads per actor; None: max(1, round(compute.num_cpus))
    seed: int = 0  # random weights only
    rpn_config: dict[str, Any] = Field(default_factory=lambda: {"width": 64, "num_convs": 2})  # random RPN only
    # INT8 encoder / RPN backbone and decoder upscaling in ONNX Runtime (edgesam.inference.quantize), or
    # "decoder" only (the INT8 backbone gains on VNNI CPUs, not on AVX2-only ones); with a checkpoint it implies
    # the onnxruntime backend. Accuracy and speed-up: BENCHMARKS.md, section int8
    int8: bool | Literal["decoder"] = False
    # backend torch: precision, channels_last, torch.compile, CUDA graphs, split decoder (defaults by device)
    torch: TorchRuntimeConfig = Field(default_factory=TorchRuntimeConfig)


class AnnotateInputCfg(StrictModel):
    """Which files are listed and which are skipped as bad input (``input.*``)."""

    extensions: list[str] = Field(default_factory=lambda: list(IMAGE_EXTENSIONS))
    max_pixels: int = Field(40_000_000, ge=64)  # larger images are skipped (decompression-bomb guard too)
    min_side: int = Field(8, ge=1)  # images with a shorter side are skipped
    max_file_bytes: int = Field(256 * 2**20, ge=1)
    limit: int | None = Field(None, ge=1)  # first N files (sorted), for trials


class AnnotateOutputCfg(StrictModel):
    """What the workers write and what the shards are converted to (``output.*``)."""

    # images per Parquet shard (Ray Data's min_rows_per_file): a killed run redoes at most this many images per
    # write in flight; one shard of SA-1B-like images (100 masks) is ~25 MB
    shard_images: int = Field(256, ge=1, le=100_000)
    # COCO / Label Studio JSON files hold at most this many images; larger runs are split into numbered files
    coco_max_images: int = Field(10_000, ge=1)
    overlays: bool = False  # OUT/overlays/<relative path>.png, drawn by the workers
    overlay_max_side: int = Field(1024, ge=64)
    retry_skipped: bool = False
    # any of coco_rle, coco_polygons, yolo, label_studio, sa1b (edgesam.formats.export), converted from the shards
    formats: Formats = Field(default_factory=lambda: ["coco_rle"])
    export: FormatOptionsCfg = FormatOptionsCfg()  # options of those formats (edgesam.formats.export)


class AnnotateComputeCfg(StrictModel):
    """The Ray Data actor pool (``compute.*``)."""

    num_actors: int = Field(1, ge=1)
    num_cpus: float = Field(1.0, gt=0)  # fractional on small machines: whole-CPU actors can starve Ray Data
    num_gpus: float = Field(0.0, ge=0)
    max_tasks_in_flight_per_actor: int = Field(2, ge=1)


class AnnotateConfig(StrictModel):
    model: AnnotateModelCfg = AnnotateModelCfg()
    everything: EverythingConfig = EverythingConfig()
    input: AnnotateInputCfg = AnnotateInputCfg()
    output: AnnotateOutputCfg = AnnotateOutputCfg()
    compute: AnnotateComputeCfg = AnnotateComputeCfg()
    ray_address: str | None = None
