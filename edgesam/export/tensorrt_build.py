"""TensorRT engines from the exported ONNX graphs, strongly typed (TensorRT 10.x and 11.x), cached on disk.

``import tensorrt`` happens inside the functions, so importing this module never needs TensorRT.

* Network: ``builder.create_network(1 << STRONGLY_TYPED)`` and ``OnnxParser``. TensorRT 11 removed weakly typed
  builds (``BuilderFlag.FP16``, precision constraints, per-layer precision and output types); a strongly typed
  network takes every tensor's type from the graph, and TensorRT 10.x builds the same network the same way
  (11.x accepts the flag and is strongly typed regardless). No precision flag or per-layer type is set.
* ``precision="fp16"`` builds the mixed-precision copy ``NAME.fp16.onnx`` (:mod:`edgesam.export.fp16`; written
  beside ``NAME.onnx`` when missing or stale): FP16 tensors, with LayerNorm/GroupNorm, attention softmax, the
  positional encodings and the RPN box decoding in FP32 and float32 graph I/O, so the engine's I/O is float32.
  ``precision="fp32"`` builds ``NAME.onnx`` itself (all float32).
* Decoder optimisation profile: prompts N in [1, 64], points P in [1, 16], optimum N = P = 1 by default;
  callers that send ``max_proposals`` prompts per call build with ``decoder_profile_for(max_proposals)``
  (max >= it, opt = it), so one execute covers a call.
* Builds are serialised across processes by a per-engine lock (``trt_common.file_lock``) (Serve replicas starting together
  build once; the others wait and load the result).
* Encoder optimisation profile (graphs exported with a dynamic batch axis): batch in [1, ``max_batch``],
  optimum ``max_batch`` (default 8, :class:`EncoderProfile`). Older encoder graphs with a fixed batch of 1
  get no profile and a batch-1 engine.
* Cache: ``<cache_dir>/<onnx stem>-<precision>-<key>.engine`` with key = sha256(GPU name, TensorRT version,
  hash of the graph actually built (the ``.fp16.onnx`` copy for fp16), precision, profile), so a new GPU,
  TensorRT, export, FP16 conversion or profile (for the encoder: its batch bounds) never reuses a stale engine.
* Accuracy gate (``export.tensorrt_gate.build_engines``): the fresh engines run beside ONNX Runtime (CPU, the
  float32 graphs) on random input (a batch of 2 images when the encoder engine takes it); engines whose masks
  disagree (IoU < 0.9) or give non-finite values are deleted and refused. It stays on for strongly typed
  engines: TensorRT 11.1 has an open report of silently wrong results from them (NVIDIA/TensorRT#4813).
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict
from pathlib import Path

from ..storage import sha256 as sha256_file
from .fp16 import ensure_fp16
from .trt_common import (PRECISIONS, TRT_MISSING, DecoderProfile, EncoderProfile, file_lock,  # noqa: F401
                         import_tensorrt, require_cuda)

DECODER_DYNAMIC = ("point_coords", "point_labels", "mask_input", "has_mask_input")


_sha256 = sha256_file


def is_decoder_graph(onnx_path: str | Path) -> bool:
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    return "point_coords" in {i.name for i in model.graph.input}


def has_dynamic_batch(onnx_path: str | Path) -> bool:
    """True when the graph's first input has a symbolic (or unset) dim 0, as ``encoder.onnx`` exports now do;
    False for a fixed batch (older encoder exports: 1)."""
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    dims = model.graph.input[0].type.tensor_type.shape.dim
    return len(dims) > 0 and not dims[0].HasField("dim_value")


def graph_profile(onnx_path: str | Path, profile: DecoderProfile = DecoderProfile(),
                  encoder_profile: EncoderProfile = EncoderProfile()) -> DecoderProfile | EncoderProfile | None:
    """The profile an engine for this graph is built with: ``profile`` for a decoder, ``encoder_profile`` for an
    encoder with a dynamic batch axis, None for a fixed-shape encoder."""
    if is_decoder_graph(onnx_path):
        return profile
    return encoder_profile if has_dynamic_batch(onnx_path) else None


def engine_cache_key(gpu: str, trt_version: str, onnx_sha256: str, precision: str,
                     profile: DecoderProfile | EncoderProfile | None) -> str:
    """16 hex digits identifying an engine build. Decoder keys hash ``asdict(profile)`` (as before encoder
    profiles existed, so cached decoder engines stay valid); encoder keys hash the batch bounds under
    ``encoder_batch``, so a different ``max_batch`` never reuses an engine built for another."""
    if isinstance(profile, EncoderProfile):
        prof = {"encoder_batch": dict(zip(("min", "opt", "max"), profile.shapes))}
    else:
        prof = asdict(profile) if profile else None
    key_src = json.dumps({"gpu": gpu, "trt": trt_version, "onnx": onnx_sha256, "precision": precision,
                          "profile": prof}, sort_keys=True)
    return hashlib.sha256(key_src.encode()).hexdigest()[:16]


def engine_cache_path(onnx_path: str | Path, precision: str = "fp16", cache_dir: str | Path | None = None,
                      profile: DecoderProfile | EncoderProfile | None = None, device: str | int = 0) -> Path:
    """Where the engine for this ONNX file, GPU, TensorRT version, precision and profile is cached (the key hashes
    the graph actually built: :func:`built_graph`, so fp16 writes the FP16 copy first when it is missing).

    ``profile``: what the engine is built with (see :func:`graph_profile`): the DecoderProfile for
    ``decoder.onnx``, the EncoderProfile for an ``encoder.onnx`` with a dynamic batch, else None."""
    return _engine_path(Path(onnx_path), built_graph(onnx_path, precision), precision, cache_dir, profile, device)


def _engine_path(onnx_path: Path, graph: Path, precision: str, cache_dir: str | Path | None,
                 profile: DecoderProfile | EncoderProfile | None, device: str | int) -> Path:
    """:func:`engine_cache_path` for ``graph``, the graph already chosen (and written) by :func:`built_graph`."""
    trt = import_tensorrt()
    import torch

    dev = require_cuda(device)
    key = engine_cache_key(torch.cuda.get_device_name(dev), trt.__version__, _sha256(graph), precision, profile)
    cache = Path(cache_dir) if cache_dir else onnx_path.parent / "trt_cache"
    return cache / f"{onnx_path.stem}-{precision}-{key}.engine"


def built_graph(onnx_path: str | Path, precision: str) -> Path:
    """The graph an engine of ``precision`` is built from: ``NAME.fp16.onnx`` for fp16 (written beside ``NAME.onnx``
    by :func:`edgesam.export.fp16.ensure_fp16` when missing or stale), ``onnx_path`` itself for fp32."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    return ensure_fp16(onnx_path) if precision == "fp16" else Path(onnx_path)


def build_engine(onnx_path: str | Path, precision: str = "fp16", cache_dir: str | Path | None = None,
                 profile: DecoderProfile = DecoderProfile(), workspace_gib: float = 4.0, force: bool = False,
                 device: str | int = 0, verbose: bool = False,
                 encoder_profile: EncoderProfile = EncoderProfile()) -> Path:
    """Build (or reuse from the cache) a serialized, strongly typed engine for ``encoder.onnx``, ``decoder.onnx`` or
    ``rpn.onnx``: from its FP16 copy for ``precision="fp16"`` (:func:`built_graph`), from the graph for fp32.

    ``profile`` bounds the decoder's prompt/point axes, ``encoder_profile`` the encoder's batch axis (when
    the graph has a dynamic one). Returns the engine path. Use ``tensorrt_gate.build_engines`` to also
    pass the accuracy gate.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    onnx_path = Path(onnx_path)
    if not onnx_path.is_file():
        raise FileNotFoundError(f"ONNX file not found: {onnx_path} (create it with `python -m edgesam.export`)")
    trt = import_tensorrt()
    decoder = is_decoder_graph(onnx_path)
    used_profile = graph_profile(onnx_path, profile, encoder_profile)
    require_cuda(device)  # before any FP16 copy is written
    graph = built_graph(onnx_path, precision)
    out = _engine_path(onnx_path, graph, precision, cache_dir, used_profile, device)
    if out.is_file() and not force:
        return out
    # Replicas starting together build once: the first takes the lock, the others wait and find the engine.
    with file_lock(out):
        if out.is_file() and not force:
            return out
        return _build(trt, graph, out, precision, decoder, profile, used_profile, workspace_gib, device, verbose)


def _build(trt, onnx_path: Path, out: Path, precision: str, decoder: bool, profile: DecoderProfile,
           used_profile: DecoderProfile | EncoderProfile | None, workspace_gib: float, device: str | int,
           verbose: bool) -> Path:
    """Parse ``onnx_path`` (the graph of :func:`built_graph`) into a strongly typed network, add the profiles and
    serialise one engine to ``out`` (written to a temporary file, then renamed: readers never see a partial
    engine). The graph's tensor types are the engine's precision; no builder precision flag is set."""
    import torch

    torch.cuda.set_device(require_cuda(device))
    logger = trt.Logger(trt.Logger.VERBOSE if verbose else trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT could not parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    if decoder:
        opt = builder.create_optimization_profile()
        for i in range(network.num_inputs):
            t = network.get_input(i)
            if t.name not in DECODER_DYNAMIC:
                continue
            shape = list(t.shape)
            shapes = []
            for n, p in ((profile.min_prompts, profile.min_points), (profile.opt_prompts, profile.opt_points),
                         (profile.max_prompts, profile.max_points)):
                s = list(shape)
                s[0] = n
                if t.name in ("point_coords", "point_labels"):
                    s[1] = p
                shapes.append(tuple(s))
            opt.set_shape(t.name, *shapes)
        config.add_optimization_profile(opt)
    elif isinstance(used_profile, EncoderProfile):
        opt = builder.create_optimization_profile()
        for i in range(network.num_inputs):
            t = network.get_input(i)
            shape = tuple(t.shape)
            if any(d < 0 for d in shape[1:]):
                raise RuntimeError(f"{onnx_path}: encoder input {t.name} has dynamic dims beyond the batch: {shape}")
            if shape[0] >= 0:
                continue
            opt.set_shape(t.name, *[(b, *shape[1:]) for b in used_profile.shapes])
        config.add_optimization_profile(opt)
    t0 = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(f"TensorRT failed to build an engine from {onnx_path} (precision {precision}); "
                           "rerun with verbose=True for the builder log")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({
        "onnx": str(onnx_path), "precision": precision, "tensorrt": trt.__version__,
        "gpu": torch.cuda.get_device_name(), "build_s": round(time.perf_counter() - t0, 1),
        "profile": asdict(used_profile) if used_profile else None}, indent=2) + "\n")
    tmp = out.with_suffix(f".tmp{os.getpid()}")
    tmp.write_bytes(bytes(serialized))
    tmp.replace(out)  # last: an engine file on disk is always complete, its metadata beside it
    return out
