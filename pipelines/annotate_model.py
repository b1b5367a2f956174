"""The annotation model: which weights (identity for resume), checks before any actor starts, and building the
segment-everything generator (torch checkpoint, ONNX folder, or random weights with a loud warning)."""
from __future__ import annotations

import sys

from edgesam import storage

from pipelines.annotate_config import AnnotateConfig


def _loud(msg: str) -> str:
    bar = "!" * 78
    return f"{bar}\n!! {msg}\n{bar}"


RANDOM_WARNING = _loud("RANDOM WEIGHTS: neither model.checkpoint nor model.onnx_dir was given. The masks are\n"
                       "!! noise; use this only to test the pipeline.")


def resolve_device(cfg: AnnotateConfig) -> str:
    import torch

    dev = cfg.model.device
    if dev == "auto":
        return "cuda" if cfg.compute.num_gpus > 0 and torch.cuda.is_available() else "cpu"
    return dev


def model_identity(cfg: AnnotateConfig) -> dict:
    """What the outputs depend on: the weights (file hashes) and the everything-mode settings."""
    m = cfg.model
    if m.checkpoint and m.onnx_dir:
        raise ValueError("give model.checkpoint or model.onnx_dir, not both")

    if m.checkpoint:
        if not storage.is_file(m.checkpoint):
            raise FileNotFoundError(f"model.checkpoint not found: {m.checkpoint}")
        weights = {"checkpoint": storage.display(m.checkpoint), "sha256": storage.sha256(m.checkpoint), "img_size": m.img_size}
    elif m.onnx_dir:
        if not storage.is_dir(m.onnx_dir):
            raise FileNotFoundError(f"model.onnx_dir not found: {m.onnx_dir}")
        weights = {"onnx_dir": storage.display(m.onnx_dir),
                   "sha256": {storage.name(f): storage.sha256(f) for f in storage.glob(m.onnx_dir, "*.onnx")}}
    else:
        weights = {"random": True, "seed": m.seed, "img_size": m.img_size, "rpn_config": m.rpn_config}
    return {"weights": weights, "everything": cfg.everything.model_dump(mode="json")}


def preflight(cfg: AnnotateConfig) -> None:
    """Fail on the driver, with a clear message, before any actor starts."""
    m, mode = cfg.model, cfg.everything.mode
    if m.onnx_dir:
        from edgesam.export.onnx_export import DECODER_FILE, ENCODER_FILE
        from edgesam.models.rpn import RPN_ONNX_FILE

        need = [ENCODER_FILE, DECODER_FILE] + ([RPN_ONNX_FILE] if mode == "rpn" else [])
        missing = [f for f in need if not storage.is_file(storage.join(m.onnx_dir, f))]
        if missing:
            hint = " (rpn.onnx: edgesam.export.rpn_onnx.export_rpn_onnx, or everything.mode=grid)" if RPN_ONNX_FILE in missing else ""
            raise FileNotFoundError(f"model.onnx_dir {m.onnx_dir} lacks {', '.join(missing)}{hint}")
    elif m.checkpoint and mode == "rpn":
        state = storage.torch_load(m.checkpoint, weights_only=True)
        if not (isinstance(state, dict) and state.get("rpn") is not None):
            raise ValueError(f"model.checkpoint {m.checkpoint} has no RPN (train distillation step 3) - "
                             "use everything.mode=grid for a point grid")


def build_generator(cfg: AnnotateConfig, device: str | None = None):
    """The :class:`EverythingGenerator` for ``cfg`` (torch checkpoint, ONNX folder or random weights)."""
    import torch

    from edgesam.inference.everything import EverythingGenerator

    m = cfg.model
    device = device or resolve_device(cfg)
    threads = m.threads or max(1, round(cfg.compute.num_cpus))
    torch.set_num_threads(threads)
    if m.checkpoint and m.onnx_dir:
        raise ValueError("give model.checkpoint or model.onnx_dir, not both")
    if m.onnx_dir and m.backend == "torch":
        raise ValueError("model.backend=torch needs model.checkpoint (or random weights), not model.onnx_dir")
    if m.int8 and (m.backend == "torch" or device != "cpu"):
        raise ValueError(f"model.int8 runs in ONNX Runtime on the CPU, got model.backend={m.backend}, device={device}")
    if m.onnx_dir:  # encoder/decoder through edgesam.inference.runtime.make_backends, plus rpn.onnx
        return EverythingGenerator.from_onnx(storage.fetch(m.onnx_dir), cfg.everything, device=device,
                                             threads=threads, int8=m.int8)
    if m.checkpoint:
        from edgesam.models import load_student

        model, _ = load_student(m.checkpoint, m.img_size)
    else:
        from edgesam.models import EdgeSAM
        from edgesam.models.rpn import build_rpn

        print(RANDOM_WARNING, file=sys.stderr, flush=True)
        torch.manual_seed(m.seed)
        model = EdgeSAM(m.img_size).eval()
        if cfg.everything.mode == "rpn":
            model.rpn = build_rpn(model.image_encoder.feature_channels, **m.rpn_config).eval()
    if m.backend == "onnxruntime" or m.int8:  # the same weights, exported once (keyed by their hash), in ORT
        from edgesam.export.cache import cached_export

        from edgesam.models.teacher import sha256_file

        sha = sha256_file(m.checkpoint) if m.checkpoint else "random"
        onnx_dir = cached_export(model, m.export_cache_dir, sha)
        return EverythingGenerator.from_onnx(onnx_dir, cfg.everything, device=device, threads=threads, int8=m.int8)
    return EverythingGenerator.from_model(model, cfg.everything, device=device, torch_options=m.torch.options(device))
