"""TensorRT 10 engines from the exported ONNX graphs (FP16 with normalisations kept in FP32), cached on disk.

``import tensorrt`` happens inside the functions, so importing this module never needs TensorRT.

* Network: ``builder.create_network(0)`` (explicit batch is the only mode in TensorRT 10), ``OnnxParser``.
* FP16: ``BuilderFlag.FP16`` plus ``OBEY_PRECISION_CONSTRAINTS``; every layer inside the ONNX name scopes
  listed in the graph's ``edgesam.fp32_scopes`` metadata (LayerNorm / LayerNorm2d) and every
  normalisation layer is pinned to FP32. All-FP16 LayerNorm overflows (x - mean)^2 in FP16 and is a known
  failure mode of SAM-family engines.
* Decoder optimisation profile: prompts N in [1, 64], points P in [1, 16], optimum N = P = 1.
* Encoder optimisation profile (graphs exported with a dynamic batch axis): batch in [1, ``max_batch``],
  optimum ``max_batch`` (default 8, :class:`EncoderProfile`). Older encoder graphs with a fixed batch of 1
  get no profile and a batch-1 engine.
* Cache: ``<cache_dir>/<onnx stem>-<precision>-<key>.engine`` with key = sha256(GPU name, TensorRT version,
  ONNX file hash, precision, profile), so a new GPU, TensorRT, export or profile (for the encoder: its
  batch bounds) never reuses a stale engine.
* Accuracy gate (:func:`build_engines`): the fresh engines run beside ONNX Runtime (CPU) on random
  input (a batch of 2 images when the encoder engine takes it); engines whose masks disagree (IoU < 0.9)
  or give non-finite values are deleted and refused.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .onnx_export import DECODER_FILE, ENCODER_FILE, FP32_SCOPES_KEY

TRT_MISSING = "TensorRT is not installed: pip install 'edgesam-ray[trt]' on a machine with an NVIDIA GPU"
PRECISIONS = ("fp16", "fp32")
DECODER_DYNAMIC = ("point_coords", "point_labels", "mask_input", "has_mask_input")


class EngineAccuracyError(RuntimeError):
    """A built engine disagrees with ONNX Runtime beyond the gate; the engine file was deleted."""


@dataclass(frozen=True)
class DecoderProfile:
    """Optimisation-profile bounds for the decoder's dynamic axes."""

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

    if not torch.cuda.is_available():
        raise RuntimeError("TensorRT needs an NVIDIA GPU, but torch.cuda.is_available() is False on this machine")
    dev = torch.device(device if isinstance(device, str) else f"cuda:{device}")
    if dev.type != "cuda":
        raise ValueError(f"TensorRT runs on a CUDA device, got device {device!r}")
    return dev


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


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
    """Where the engine for this ONNX file, GPU, TensorRT version, precision and profile is cached.

    ``profile``: what the engine is built with (see :func:`graph_profile`): the DecoderProfile for
    ``decoder.onnx``, the EncoderProfile for an ``encoder.onnx`` with a dynamic batch, else None."""
    trt = import_tensorrt()
    import torch

    dev = require_cuda(device)
    onnx_path = Path(onnx_path)
    key = engine_cache_key(torch.cuda.get_device_name(dev), trt.__version__, _sha256(onnx_path), precision, profile)
    cache = Path(cache_dir) if cache_dir else onnx_path.parent / "trt_cache"
    return cache / f"{onnx_path.stem}-{precision}-{key}.engine"


def _fp32_scopes(onnx_path: Path) -> list[str]:
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    props = {p.key: p.value for p in model.metadata_props}
    return json.loads(props.get(FP32_SCOPES_KEY, "[]"))


def _pin_normalisations_fp32(trt, network, scopes: list[str]) -> int:
    """Pin LayerNorm layers (by ONNX scope, or by layer type) to FP32; returns how many layers were pinned."""
    prefixes = tuple(s.rstrip("/") + "/" for s in scopes)
    floats = (trt.float32, trt.float16)
    skip = {trt.LayerType.CONSTANT, trt.LayerType.SHAPE}
    pinned = 0
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        is_norm = layer.type == trt.LayerType.NORMALIZATION
        if not (is_norm or layer.name.startswith(prefixes)) or layer.type in skip:
            continue
        if not all(layer.get_output(j).dtype in floats for j in range(layer.num_outputs)):
            continue  # shape/index arithmetic inside the scope
        layer.precision = trt.float32
        for j in range(layer.num_outputs):
            layer.set_output_type(j, trt.float32)
        if is_norm:
            layer.__class__ = trt.INormalizationLayer  # Python bindings hand out the base ILayer
            if hasattr(layer, "compute_precision"):
                layer.compute_precision = trt.float32
        pinned += 1
    return pinned


def build_engine(onnx_path: str | Path, precision: str = "fp16", cache_dir: str | Path | None = None,
                 profile: DecoderProfile = DecoderProfile(), workspace_gib: float = 4.0, force: bool = False,
                 device: str | int = 0, verbose: bool = False,
                 encoder_profile: EncoderProfile = EncoderProfile()) -> Path:
    """Build (or reuse from the cache) a serialized engine for ``encoder.onnx`` or ``decoder.onnx``.

    ``profile`` bounds the decoder's prompt/point axes, ``encoder_profile`` the encoder's batch axis (when
    the graph has a dynamic one). Returns the engine path. Use :func:`build_engines` to also pass the
    accuracy gate.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    onnx_path = Path(onnx_path)
    if not onnx_path.is_file():
        raise FileNotFoundError(f"ONNX file not found: {onnx_path} (create it with `python -m edgesam.export`)")
    trt = import_tensorrt()
    decoder = is_decoder_graph(onnx_path)
    used_profile = graph_profile(onnx_path, profile, encoder_profile)
    out = engine_cache_path(onnx_path, precision, cache_dir, used_profile, device)
    if out.is_file() and not force:
        return out
    if precision == "fp16" and not hasattr(trt.BuilderFlag, "FP16"):
        raise RuntimeError(f"TensorRT {trt.__version__} has no weakly typed FP16 builds (removed in TensorRT 11); "
                           "use precision='fp32' or TensorRT 10.x")

    import torch

    torch.cuda.set_device(require_cuda(device))
    logger = trt.Logger(trt.Logger.VERBOSE if verbose else trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT could not parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    if precision == "fp16":
        config.set_flag(trt.BuilderFlag.FP16)
        config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
        _pin_normalisations_fp32(trt, network, _fp32_scopes(onnx_path))
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
    tmp = out.with_suffix(f".tmp{os.getpid()}")
    tmp.write_bytes(bytes(serialized))
    tmp.replace(out)
    out.with_suffix(".json").write_text(json.dumps({
        "onnx": str(onnx_path), "precision": precision, "tensorrt": trt.__version__,
        "gpu": torch.cuda.get_device_name(), "build_s": round(time.perf_counter() - t0, 1),
        "profile": asdict(used_profile) if used_profile else None}, indent=2) + "\n")
    return out


def _mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    """Pooled IoU of the foregrounds (logits > 0) over all masks; 1.0 when both are empty."""
    fa, fb = a > 0, b > 0
    union = np.logical_or(fa, fb).sum()
    return 1.0 if union == 0 else float(np.logical_and(fa, fb).sum() / union)


def check_engine_accuracy(encoder_engine: str | Path, decoder_engine: str | Path, onnx_dir: str | Path,
                          min_iou: float = 0.9, seed: int = 0, device: str | int = 0) -> dict:
    """Run TensorRT and ONNX Runtime (CPU) on random images (two in one batch when the encoder engine takes a
    batch, else one) and a few prompts; compare.

    Returns ``{"embedding_rel_err", "mask_iou", "decoder_only_mask_iou", "max_abs_logit_diff"}``.
    Raises :class:`EngineAccuracyError` when outputs are non-finite or a mask IoU is below ``min_iou``.
    """
    from ..inference.ort_backend import CPU_EP, OrtDecoder, OrtEncoder
    from ..inference.trt_backend import TrtDecoder, TrtEncoder

    onnx_dir = Path(onnx_dir)
    ort_enc = OrtEncoder(onnx_dir / ENCODER_FILE, providers=[CPU_EP])
    ort_dec = OrtDecoder(onnx_dir / DECODER_FILE, providers=[CPU_EP])
    trt_enc = TrtEncoder(encoder_engine, device=device)
    trt_dec = TrtDecoder(decoder_engine, device=device)
    s = ort_enc.img_size
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((min(2, trt_enc.max_batch), 3, s, s)).astype(np.float32)
    n = 4
    coords = np.concatenate([rng.uniform(0, s, (n, 2, 2)), np.zeros((n, 1, 2))], axis=1).astype(np.float32)
    labels = np.tile(np.array([[1.0, 0.0, -1.0]], np.float32), (n, 1))
    coords[-1, :2] = np.sort(coords[-1, :2], axis=0)  # last prompt: a box (corners TL, BR) and no padding
    labels[-1] = (2.0, 3.0, -2.0)
    emb_ref = ort_enc(x)
    emb_trt = trt_enc(x)  # one execute over the batch
    masks_ref, _ = ort_dec(emb_ref[:1], coords, labels)
    masks_trt, _ = trt_dec(emb_trt[:1], coords, labels)
    masks_dec_only, _ = trt_dec(emb_ref[:1], coords, labels)
    report = {
        "embedding_rel_err": float(np.linalg.norm(emb_trt - emb_ref) / max(np.linalg.norm(emb_ref), 1e-12)),
        "mask_iou": _mask_iou(masks_ref, masks_trt),
        "decoder_only_mask_iou": _mask_iou(masks_ref, masks_dec_only),
        "max_abs_logit_diff": float(np.abs(masks_trt - masks_ref).max()),
    }
    finite = all(np.isfinite(a).all() for a in (emb_trt, masks_trt, masks_dec_only))
    if not finite or report["mask_iou"] < min_iou or report["decoder_only_mask_iou"] < min_iou:
        raise EngineAccuracyError(f"TensorRT engines disagree with ONNX Runtime (finite={finite}, {report}, "
                                  f"gate IoU >= {min_iou}); engines refused")
    return report


def build_engines(onnx_dir: str | Path, precision: str = "fp16", cache_dir: str | Path | None = None,
                  profile: DecoderProfile = DecoderProfile(), min_iou: float = 0.9, force: bool = False,
                  device: str | int = 0, encoder_profile: EncoderProfile = EncoderProfile()) -> dict[str, Path]:
    """Build encoder and decoder engines for ``onnx_dir`` and gate them against ONNX Runtime.

    ``encoder_profile.max_batch`` bounds the images per encoder execute (when ``encoder.onnx`` has a dynamic
    batch axis); it is part of the engine's cache key.

    Freshly built engines that fail the gate are deleted and :class:`EngineAccuracyError` is raised;
    cached engines passed the gate when they were written. Returns ``{"encoder", "decoder"}`` paths.
    """
    onnx_dir = Path(onnx_dir)
    enc_onnx, dec_onnx = onnx_dir / ENCODER_FILE, onnx_dir / DECODER_FILE
    for p in (enc_onnx, dec_onnx):
        if not p.is_file():
            raise FileNotFoundError(f"ONNX file not found: {p} (create it with `python -m edgesam.export`)")
    enc_profile = graph_profile(enc_onnx, profile, encoder_profile)
    fresh = [not engine_cache_path(enc_onnx, precision, cache_dir, enc_profile, device).is_file() or force,
             not engine_cache_path(dec_onnx, precision, cache_dir, profile, device).is_file() or force]
    enc = build_engine(enc_onnx, precision, cache_dir, profile, force=force, device=device,
                       encoder_profile=encoder_profile)
    dec = build_engine(dec_onnx, precision, cache_dir, profile, force=force, device=device)
    if any(fresh):
        try:
            report = check_engine_accuracy(enc, dec, onnx_dir, min_iou=min_iou, device=device)
        except EngineAccuracyError:
            for p, new in zip((enc, dec), fresh):
                if new:
                    p.unlink(missing_ok=True)
                    p.with_suffix(".json").unlink(missing_ok=True)
            raise
        for p in (enc, dec):
            meta_path = p.with_suffix(".json")
            meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
            meta["accuracy_gate"] = report
            meta_path.write_text(json.dumps(meta, indent=2) + "\n")
    return {"encoder": enc, "decoder": dec}
