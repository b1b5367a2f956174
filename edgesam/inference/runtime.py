"""Pick an encoder/decoder backend pair by name: ``torch``, ``onnxruntime`` or ``tensorrt``.

``make_backends("torch", model=m)`` wraps an in-memory model; ``"onnxruntime"`` and ``"tensorrt"`` read
``encoder.onnx`` / ``decoder.onnx`` from ``onnx_dir`` (written by ``python -m edgesam.export``); TensorRT
engines are built from them once and cached under ``onnx_dir/trt_cache``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch

from .backends import DecoderBackend, EncoderBackend, TorchDecoder, TorchEncoder
from .torch_options import TorchOptions

BACKENDS = ("torch", "onnxruntime", "tensorrt")
BackendKind = Literal["torch", "onnxruntime", "tensorrt"]


def _onnx_files(kind: str, onnx_dir: str | Path | None) -> tuple[Path, Path]:
    from ..export.onnx_export import DECODER_FILE, ENCODER_FILE

    if onnx_dir is None:
        raise ValueError(f"backend {kind!r} needs onnx_dir (a folder with {ENCODER_FILE} and {DECODER_FILE}; "
                         "create it with `python -m edgesam.export --checkpoint CKPT --out DIR`)")
    d = Path(onnx_dir)
    enc, dec = d / ENCODER_FILE, d / DECODER_FILE
    missing = [str(p) for p in (enc, dec) if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"backend {kind!r}: missing {', '.join(missing)} "
                                "(create them with `python -m edgesam.export --checkpoint CKPT --out DIR`)")
    return enc, dec


def _check_pair(encoder: EncoderBackend, decoder: DecoderBackend) -> None:
    dec_size = getattr(decoder, "img_size", encoder.img_size)
    if dec_size != encoder.img_size:
        raise ValueError(f"encoder img_size {encoder.img_size} does not match decoder img_size {dec_size}")


def make_backends(kind: BackendKind, *, model: torch.nn.Module | None = None, onnx_dir: str | Path | None = None,
                  device: str = "cpu", threads: int | None = None,
                  precision: str = "fp16", max_batch: int = 8, ort_decoder: str = "auto",
                  int8: bool | Literal["decoder"] = False,
                  max_prompts: int = 64,
                  torch_options: TorchOptions | None = None) -> tuple[EncoderBackend, DecoderBackend]:
    """Build ``(encoder, decoder)`` backends.

    kind: ``torch`` (needs ``model``: an EdgeSAM or SamTeacher), ``onnxruntime`` (needs ``onnx_dir``;
    ``device`` "cpu" or "cuda"), ``tensorrt`` (needs ``onnx_dir``, TensorRT and a CUDA ``device``;
    ``precision`` "fp16" (strongly typed engines from the mixed-precision ``NAME.fp16.onnx`` graphs, written
    on first use) or "fp32"; ``max_batch`` images per encoder engine execute; ``max_prompts`` the most
    prompts the caller sends per decoder call, e.g. ``max_proposals``: the decoder engine's profile covers it
    in one execute and is tuned for it). ``threads``: intra-op
    CPU threads for onnxruntime and torch (None: leave the library default). onnxruntime only:
    ``ort_decoder`` "auto" / "fast" / "reference" (:func:`edgesam.inference.ort_fast.make_ort_decoder`),
    ``int8`` True: INT8 encoder and prompt decoder, "decoder": the decoder only; the INT8 graphs are written
    beside the fp32 ones on first use (recipe and accuracy: :mod:`edgesam.inference.quantize`). torch only:
    ``torch_options`` (None: :meth:`TorchOptions.for_device`, i.e. float32 eager on the CPU and half precision,
    channels_last and the split decoder on CUDA; see :mod:`edgesam.inference.torch_options`).
    """
    if kind not in BACKENDS:
        raise ValueError(f"unknown backend {kind!r}; expected one of {BACKENDS}")
    if torch_options is not None and kind != "torch":
        raise ValueError(f"torch_options apply to backend 'torch', got backend {kind!r}")
    if int8 not in (False, True, "decoder"):
        raise ValueError(f"int8 must be False, True or 'decoder', got {int8!r}")
    if int8 and (kind != "onnxruntime" or device != "cpu"):
        raise ValueError(f"int8 graphs run in onnxruntime on the CPU, got backend {kind!r} on {device!r}")
    if kind == "torch":
        if model is None:
            raise ValueError("backend 'torch' needs model= (an EdgeSAM, e.g. from edgesam.models.load_student)")
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise RuntimeError(f"device {device!r} requested but torch.cuda.is_available() is False")
        if threads is not None:
            torch.set_num_threads(threads)
        pd = model.prompt_decoder if isinstance(getattr(model, "prompt_decoder", None), torch.nn.Module) \
            else model.as_prompt_decoder()
        opts = torch_options or TorchOptions.for_device(device)
        return TorchEncoder(model.image_encoder, model.img_size, device, opts), TorchDecoder(pd, device, opts)
    enc_path, dec_path = _onnx_files(kind, onnx_dir)
    if kind == "onnxruntime":
        from .ort_backend import CPU_EP, CUDA_EP, OrtDecoder, OrtEncoder

        if device == "cpu":
            providers = [CPU_EP]
        elif device.startswith("cuda"):
            idx = int(device.split(":", 1)[1]) if ":" in device else 0
            providers = [(CUDA_EP, {"device_id": idx}), CPU_EP]
        else:
            raise ValueError(f"device must be 'cpu' or 'cuda[:i]' for onnxruntime, got {device!r}")
        from .ort_fast import make_ort_decoder
        from .quantize import int8_name, quantize_folder

        if int8 is True:
            quantize_folder(enc_path.parent, [enc_path.name])
        enc = OrtEncoder(enc_path.with_name(int8_name(enc_path.name)) if int8 is True else enc_path, providers, threads)
        dec = make_ort_decoder(dec_path.parent, providers, threads, ort_decoder, bool(int8))
    else:
        if not device.startswith("cuda"):  # never a silent switch to a GPU the caller did not ask for
            raise ValueError(f"backend 'tensorrt' runs on a CUDA device, got device={device!r}: pass device='cuda' "
                             "(or 'cuda:N'), or use backend 'onnxruntime' / 'torch' on the CPU")
        from ..export.tensorrt_gate import build_engines
        from ..export.trt_common import EncoderProfile, decoder_profile_for, import_tensorrt, require_cuda
        from .trt_backend import TrtDecoder, TrtEncoder

        import_tensorrt()
        dev = require_cuda(device)
        engines = build_engines(Path(onnx_dir), precision=precision, device=dev.index or 0,
                                profile=decoder_profile_for(max_prompts),
                                encoder_profile=EncoderProfile(max_batch=max_batch))
        enc = TrtEncoder(engines["encoder"], device=dev.index or 0)
        dec = TrtDecoder(engines["decoder"], device=dev.index or 0)
        enc.name = dec.name = f"tensorrt-{precision}"
    _check_pair(enc, dec)
    return enc, dec
