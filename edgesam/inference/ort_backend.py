"""ONNX Runtime backends for the graphs written by :mod:`edgesam.export.onnx_export`.

``OrtEncoder``: images (B,3,S,S) float32 -> embeddings (B,256,S/16,S/16) in one ``session.run`` when the
graph's batch axis is dynamic (current exports); graphs with a fixed batch of 1 (older exports) run image by
image. ``OrtDecoder``: (embedding (1,256,h,w), point_coords (N,P,2), point_labels (N,P),
mask_input (N,1,4h,4w) or None) -> (masks (N,4,4h,4w) logits, iou (N,4)); ``mask_input=None`` feeds zeros
with ``has_mask_input`` 0. All numpy float32, matching :mod:`edgesam.inference.backends`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

CUDA_EP = "CUDAExecutionProvider"
CPU_EP = "CPUExecutionProvider"


def default_providers() -> list[str]:
    """CUDA (with CPU fallback) when the installed onnxruntime has it, else CPU."""
    import onnxruntime as ort

    return [CUDA_EP, CPU_EP] if CUDA_EP in ort.get_available_providers() else [CPU_EP]


def make_session(path: str | Path, providers: Sequence[str | tuple[str, dict]] | None = None,
                 threads: int | None = None):
    """An ``InferenceSession`` with graph optimisation ALL and ``threads`` intra-op threads (None: ORT's default)."""
    import onnxruntime as ort

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"ONNX file not found: {path} (create it with `python -m edgesam.export`)")
    providers = list(providers) if providers else default_providers()
    available = ort.get_available_providers()
    # entries are names or (name, options) pairs, as InferenceSession takes them
    missing = [p for p in (q[0] if isinstance(q, tuple) else q for q in providers) if p not in available]
    if missing:
        hint = " (install onnxruntime-gpu for CUDA)" if CUDA_EP in missing else ""
        raise RuntimeError(f"onnxruntime {ort.__version__} lacks execution provider(s) {missing}; "
                           f"available: {available}{hint}")
    if threads is not None and threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    if threads is not None:
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), sess_options=so, providers=providers)


def _backend_name(session, path: str | Path | None = None) -> str:
    """``onnxruntime-cpu`` / ``onnxruntime-cuda`` by the session's first provider, ``-int8`` added when ``path``
    is an INT8 copy (:mod:`edgesam.inference.quantize`)."""
    from .quantize import INT8_SUFFIX

    name = "onnxruntime-cuda" if session.get_providers()[0] == CUDA_EP else "onnxruntime-cpu"
    return name + ("-int8" if path is not None and Path(path).name.endswith(INT8_SUFFIX) else "")


def _as_f32(a: np.ndarray, what: str) -> np.ndarray:
    arr = np.asarray(a)
    if not np.issubdtype(arr.dtype, np.number):
        raise ValueError(f"{what} must be numeric, got dtype {arr.dtype}")
    return np.ascontiguousarray(arr, dtype=np.float32)


class OrtEncoder:
    """EncoderBackend over ``encoder.onnx``; ``img_size`` is read from the graph's input shape.

    ``dynamic_batch`` is True when the graph's batch axis is symbolic (a dim_param such as ``"batch"``, or
    unnamed): a whole (B,3,S,S) batch is then one ``session.run``. A graph with a fixed batch of 1 (exported
    before the axis was made dynamic) is run image by image.
    """

    def __init__(self, path: str | Path, providers: Sequence[str | tuple[str, dict]] | None = None,
                 threads: int | None = None) -> None:
        self.path = Path(path)
        self.session = make_session(self.path, providers, threads)
        inp = self.session.get_inputs()[0]
        shape = inp.shape
        if len(shape) != 4 or not all(isinstance(d, int) for d in shape[1:]) or shape[2] != shape[3]:
            raise ValueError(f"{self.path} is not an EdgeSAM encoder graph: input {inp.name} has shape {shape}")
        self.dynamic_batch = shape[0] is None or isinstance(shape[0], str)
        if not self.dynamic_batch and shape[0] != 1:
            raise ValueError(f"{self.path}: encoder input {inp.name} has a fixed batch of {shape[0]}; "
                             "expected a dynamic batch axis or a batch of 1 (re-export with `python -m edgesam.export`)")
        self.input_name = inp.name
        self.img_size = int(shape[2])
        self.name = _backend_name(self.session, self.path)

    def __call__(self, images: np.ndarray) -> np.ndarray:
        """(B,3,S,S) float32 normalised padded -> (B,256,S/16,S/16) float32."""
        x = _as_f32(images, "images")
        s = self.img_size
        if x.ndim != 4 or x.shape[1:] != (3, s, s) or x.shape[0] < 1:
            raise ValueError(f"images must have shape (B,3,{s},{s}), got {x.shape}")
        if self.dynamic_batch or x.shape[0] == 1:
            return self.session.run(None, {self.input_name: x})[0]
        outs = [self.session.run(None, {self.input_name: x[i:i + 1]})[0] for i in range(x.shape[0])]
        return np.concatenate(outs, axis=0)


class OrtDecoder:
    """DecoderBackend over ``decoder.onnx`` (dynamic prompts N and points P)."""

    def __init__(self, path: str | Path, providers: Sequence[str | tuple[str, dict]] | None = None,
                 threads: int | None = None) -> None:
        self.path = Path(path)
        self.session = make_session(self.path, providers, threads)
        inputs = {i.name: i.shape for i in self.session.get_inputs()}
        expected = ("image_embeddings", "point_coords", "point_labels", "mask_input", "has_mask_input")
        if tuple(inputs) != expected:
            raise ValueError(f"{self.path} is not an EdgeSAM decoder graph: inputs {list(inputs)}, expected {list(expected)}")
        self.embedding_shape = tuple(int(d) for d in inputs["image_embeddings"][1:])  # (256, h, w)
        self.mask_hw = tuple(int(d) for d in inputs["mask_input"][2:])  # (4h, 4w)
        self.img_size = 16 * self.embedding_shape[1]
        self.name = _backend_name(self.session, self.path)

    def _check(self, emb: np.ndarray, coords: np.ndarray, labels: np.ndarray, mask: np.ndarray | None) -> None:
        if emb.ndim != 4 or emb.shape[1:] != self.embedding_shape:
            raise ValueError(f"embedding must have shape (1,{','.join(map(str, self.embedding_shape))}), got {emb.shape}")
        if coords.ndim != 3 or coords.shape[-1] != 2 or coords.shape[0] < 1 or coords.shape[1] < 1:
            raise ValueError(f"point_coords must have shape (N,P,2) with N, P >= 1, got {coords.shape}")
        if labels.shape != coords.shape[:2]:
            raise ValueError(f"point_labels must have shape {coords.shape[:2]} (one label per point), got {labels.shape}")
        if emb.shape[0] not in (1, coords.shape[0]):
            raise ValueError(f"embedding batch must be 1 or N={coords.shape[0]}, got {emb.shape[0]}")
        if mask is not None and mask.shape != (coords.shape[0], 1, *self.mask_hw):
            raise ValueError(f"mask_input must have shape ({coords.shape[0]},1,{self.mask_hw[0]},{self.mask_hw[1]}), got {mask.shape}")

    def __call__(self, embedding: np.ndarray, point_coords: np.ndarray, point_labels: np.ndarray,
                 mask_input: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """-> (low-res logits (N,4,4h,4w), IoU predictions (N,4))."""
        emb = _as_f32(embedding, "embedding")
        coords = _as_f32(point_coords, "point_coords")
        labels = _as_f32(point_labels, "point_labels")
        mask = None if mask_input is None else _as_f32(mask_input, "mask_input")
        self._check(emb, coords, labels, mask)
        n = coords.shape[0]
        if emb.shape[0] != 1:  # one embedding per prompt: the graph takes one, so decode prompt by prompt
            parts = [self(emb[i:i + 1], coords[i:i + 1], labels[i:i + 1], None if mask is None else mask[i:i + 1])
                     for i in range(n)]
            return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
        feeds = {"image_embeddings": emb, "point_coords": coords, "point_labels": labels,
                 "mask_input": mask if mask is not None else np.zeros((n, 1, *self.mask_hw), np.float32),
                 "has_mask_input": np.full((n,), 0.0 if mask is None else 1.0, np.float32)}
        scores, masks = self.session.run(["scores", "masks"], feeds)
        return masks, scores
