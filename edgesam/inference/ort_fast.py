"""ONNX Runtime decoder over the split graphs of :mod:`edgesam.export.decoder_fast`, and INT8 quantisation.

``OrtFastDecoder`` is a DecoderBackend (same call and outputs as :class:`OrtDecoder`): the image-side graph
runs once per embedding (the last one is kept, compared by value, so repeated calls with the same
embedding, e.g. chunks of one image's prompts or clicks on one image, reuse it); the prompt graph runs per
call. Calls with a ``mask_input`` go to the reference ``decoder.onnx`` (a mask prompt changes block 1).

``quantize_folder`` writes INT8 copies (``*.int8.onnx``) of the encoder / RPN / decoder graphs with
``onnxruntime.quantization.quantize_dynamic`` (weights int8 per channel, activations quantised at run
time: no calibration set needed; MatMul/Gemm through MLAS's u8s8 kernels, VNNI where the CPU has it).
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from ..export.decoder_fast import IMAGE_FILE, IMAGE_OUTPUTS, PROMPT_FILE, PROMPT_INPUTS
from .ort_backend import OrtDecoder, _as_f32, _backend_name, make_session

INT8_SUFFIX = ".int8.onnx"


def int8_name(name: str) -> str:
    """``decoder_prompt.onnx`` -> ``decoder_prompt.int8.onnx``."""
    return name[: -len(".onnx")] + INT8_SUFFIX if name.endswith(".onnx") else name + INT8_SUFFIX


class OrtFastDecoder:
    """DecoderBackend: ``decoder_image.onnx`` once per embedding + ``decoder_prompt.onnx`` per call."""

    def __init__(self, onnx_dir: str | Path, providers: Sequence[str | tuple[str, dict]] | None = None,
                 threads: int | None = None, int8: bool = False, reference: OrtDecoder | None = None) -> None:
        d = Path(onnx_dir)
        pick = (lambda f: d / int8_name(f)) if int8 else (lambda f: d / f)
        self.image_session = make_session(pick(IMAGE_FILE), providers, threads)
        self.prompt_session = make_session(pick(PROMPT_FILE), providers, threads)
        names = tuple(i.name for i in self.prompt_session.get_inputs())
        if names != PROMPT_INPUTS:
            raise ValueError(f"{pick(PROMPT_FILE)} is not an EdgeSAM prompt graph: inputs {list(names)}")
        shape = self.image_session.get_inputs()[0].shape
        self.embedding_shape = tuple(int(v) for v in shape[1:])
        self.img_size = 16 * self.embedding_shape[1]
        self.reference = reference  # for mask prompts
        self.name = _backend_name(self.prompt_session) + ("-int8" if int8 else "")  # the runtime, as OrtDecoder's
        self.flavour = "split"  # image side once per embedding
        self._emb: np.ndarray | None = None
        self._state: dict[str, np.ndarray] = {}
        self.image_runs = 0

    def image_state(self, embedding: np.ndarray) -> dict[str, np.ndarray]:
        """The image-side tensors for ``embedding`` (1,256,h,w), from the cache when it holds the same values."""
        emb = _as_f32(embedding, "embedding")
        if emb.shape != (1, *self.embedding_shape):
            raise ValueError(f"embedding must have shape (1,{','.join(map(str, self.embedding_shape))}), got {emb.shape}")
        if self._emb is None or not np.array_equal(self._emb, emb):
            outs = self.image_session.run(list(IMAGE_OUTPUTS), {"image_embeddings": emb})
            self._state = dict(zip(IMAGE_OUTPUTS, outs))
            self._emb = emb.copy()
            self.image_runs += 1
        return self._state

    def __call__(self, embedding: np.ndarray, point_coords: np.ndarray, point_labels: np.ndarray,
                 mask_input: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """-> (low-res logits (N,4,4h,4w), IoU predictions (N,4)), as :class:`OrtDecoder`."""
        if mask_input is not None or np.asarray(embedding).shape[0] != 1:
            if self.reference is None:
                raise ValueError("mask_input / per-prompt embeddings need the reference decoder.onnx")
            return self.reference(embedding, point_coords, point_labels, mask_input)
        coords = _as_f32(point_coords, "point_coords")
        labels = _as_f32(point_labels, "point_labels")
        if coords.ndim != 3 or coords.shape[-1] != 2 or coords.shape[0] < 1 or coords.shape[1] < 1:
            raise ValueError(f"point_coords must have shape (N,P,2) with N, P >= 1, got {coords.shape}")
        if labels.shape != coords.shape[:2]:
            raise ValueError(f"point_labels must have shape {coords.shape[:2]} (one label per point), got {labels.shape}")
        feeds = dict(self.image_state(embedding))
        feeds.update(point_coords=coords, point_labels=labels)
        scores, masks = self.prompt_session.run(["scores", "masks"], feeds)
        return masks, scores


def has_fast_graphs(onnx_dir: str | Path, int8: bool = False) -> bool:
    d = Path(onnx_dir)
    return all((d / (int8_name(f) if int8 else f)).is_file() for f in (IMAGE_FILE, PROMPT_FILE))


STATIC_GRAPHS = ("encoder.onnx", "rpn.onnx")  # convolutional: static QDQ (QLinearConv); dynamic ConvInteger is slow


class _Calibration:
    """``CalibrationDataReader`` over a few synthetic scenes (preprocessed like real inputs) for an image graph."""

    def __init__(self, input_name: str, img_size: int, n: int = 4, seed: int = 0) -> None:
        from ..data.synthetic import make_scene, photo_background
        from ..data.transforms import preprocess

        rng = np.random.default_rng(seed)
        self.items = []
        for _ in range(n):
            img, _ = make_scene(rng, img_size * 3 // 4, img_size, background=photo_background(rng, img_size * 3 // 4, img_size))
            self.items.append({input_name: preprocess(img, img_size)[0].numpy()})

    def get_next(self):
        return self.items.pop() if self.items else None


def quantize_folder(onnx_dir: str | Path, names: Sequence[str] | None = None, calib_images: int = 4) -> list[Path]:
    """INT8 copies ``NAME.int8.onnx`` of the graphs in ``onnx_dir``; existing copies are kept. ``names`` defaults
    to every EdgeSAM graph present. Encoder / RPN (convolutions): static QDQ, per-channel int8 weights, uint8
    activations calibrated (min/max) on ``calib_images`` synthetic scenes. Decoder graphs (GEMMs on varying
    prompt counts): dynamic quantisation (activation ranges per call)."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_dynamic, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    d = Path(onnx_dir)
    names = names or [n for n in ("encoder.onnx", "rpn.onnx", "decoder.onnx", IMAGE_FILE, PROMPT_FILE) if (d / n).is_file()]
    out = []
    for n in names:
        dst = d / int8_name(n)
        if not dst.is_file() and n in STATIC_GRAPHS:
            pre, tmp = dst.with_suffix(".pre.tmp"), dst.with_suffix(".tmp")
            quant_pre_process(str(d / n), str(pre), skip_symbolic_shape=True)
            try:
                sess = make_session(pre, threads=1)
                inp = sess.get_inputs()[0]
                del sess
                import onnx

                # the stem, the feature fusion and the neck (1x1/3x3 convs + LayerNorm2d producing the embedding)
                # stay fp32: they are cheap, and the embedding feeds every prompt's decoder
                keep_fp32 = [nd.name for nd in onnx.load(str(pre), load_external_data=False).graph.node
                             if any(k in nd.name for k in ("/neck/", "/fuse_stage", "/features.0/"))]
                quantize_static(str(pre), str(tmp), _Calibration(inp.name, int(inp.shape[2]), calib_images),
                                nodes_to_exclude=keep_fp32,
                                quant_format=QuantFormat.QDQ, per_channel=True, activation_type=QuantType.QUInt8,
                                weight_type=QuantType.QInt8, op_types_to_quantize=["Conv", "MatMul", "Gemm"],
                                calibrate_method=CalibrationMethod.MinMax)
            finally:
                pre.unlink(missing_ok=True)
            tmp.replace(dst)
        if not dst.is_file():
            pre, tmp = dst.with_suffix(".pre.tmp"), dst.with_suffix(".tmp")
            # ORT's pre-processing (shape inference + graph optimisation) folds the exporter's Identity-shared
            # weights into initializers, which the Conv quantiser needs
            quant_pre_process(str(d / n), str(pre), skip_symbolic_shape=True)
            try:
                quantize_dynamic(str(pre), str(tmp), weight_type=QuantType.QInt8, per_channel=True,
                                 op_types_to_quantize=["MatMul", "Gemm", "Conv"])
            finally:
                pre.unlink(missing_ok=True)
            tmp.replace(dst)
        out.append(dst)
    return out


def make_ort_decoder(onnx_dir: str | Path, providers=None, threads: int | None = None, flavour: str = "auto",
                     int8: bool = False):
    """The decoder backend for an export folder: ``flavour`` "fast" (split graphs; mask prompts fall back to
    ``decoder.onnx``), "reference" (``decoder.onnx`` only) or "auto" (fast when the folder has its graphs).
    ``int8`` uses (and writes on first use) the ``*.int8.onnx`` copies."""
    from ..export.onnx_export import DECODER_FILE

    if flavour not in ("auto", "fast", "reference"):
        raise ValueError(f"decoder flavour must be 'auto', 'fast' or 'reference', got {flavour!r}")
    d = Path(onnx_dir)
    fast = flavour == "fast" or (flavour == "auto" and has_fast_graphs(d))
    names = [DECODER_FILE] + ([IMAGE_FILE, PROMPT_FILE] if fast else [])
    if int8:
        quantize_folder(d, names)
    ref = OrtDecoder(d / (int8_name(DECODER_FILE) if int8 else DECODER_FILE), providers, threads)
    if not fast:
        if int8:
            ref.name += "-int8"
        return ref
    return OrtFastDecoder(d, providers, threads, int8=int8, reference=ref)
