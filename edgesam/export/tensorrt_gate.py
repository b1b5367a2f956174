"""The accuracy gate for TensorRT engines: build encoder + decoder engines (``tensorrt_build``), run them beside
ONNX Runtime (CPU) on random input, and refuse (delete) fresh engines that disagree.

The gate stays on for the strongly typed builds of TensorRT 10/11 (FP16 engines come from ``NAME.fp16.onnx``,
compared here against the float32 graphs): TensorRT 11.1 has an open report of silently wrong results from
strongly typed engines (NVIDIA/TensorRT#4813), so an engine is trusted only after it matched ONNX Runtime.

A module of its own because it needs both the builder and the runtime (``inference.trt_backend``), which itself
uses the builder: keeping the gate here keeps ``tensorrt_build`` free of runtime imports (no import circle).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..inference.ort_backend import CPU_EP, OrtDecoder, OrtEncoder
from ..inference.trt_backend import TrtDecoder, TrtEncoder
from .onnx_export import DECODER_FILE, ENCODER_FILE
from .tensorrt_build import build_engine, engine_cache_path, graph_profile
from .trt_common import DecoderProfile, EncoderProfile


class EngineAccuracyError(RuntimeError):
    """A built engine disagrees with ONNX Runtime beyond the gate; the engine file was deleted."""


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
