"""ONNX Runtime decoder over the split graphs of :mod:`edgesam.export.decoder_fast`, and INT8 quantisation.

``OrtFastDecoder`` is a DecoderBackend (same call and outputs as :class:`OrtDecoder`): the image-side graph
runs once per embedding (the last one is kept, compared by value, so repeated calls with the same
embedding, e.g. chunks of one image's prompts or clicks on one image, reuse it); the prompt graph runs per
call. Calls with a ``mask_input`` go to the reference ``decoder.onnx`` (a mask prompt changes block 1).

With ``int8`` the prompt graph is its INT8 copy (:mod:`edgesam.inference.quantize`); the image side runs
once per image and stays fp32.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from ..export.decoder_fast import IMAGE_FILE, IMAGE_OUTPUTS, PROMPT_FILE, PROMPT_INPUTS
from .ort_backend import OrtDecoder, _as_f32, _backend_name, make_session
from .quantize import int8_name, quantize_folder


class OrtFastDecoder:
    """DecoderBackend: ``decoder_image.onnx`` once per embedding + ``decoder_prompt.onnx`` per call."""

    def __init__(self, onnx_dir: str | Path, providers: Sequence[str | tuple[str, dict]] | None = None,
                 threads: int | None = None, int8: bool = False, reference: OrtDecoder | None = None) -> None:
        d = Path(onnx_dir)
        prompt = d / (int8_name(PROMPT_FILE) if int8 else PROMPT_FILE)
        self.image_session = make_session(d / IMAGE_FILE, providers, threads)
        self.prompt_session = make_session(prompt, providers, threads)
        names = tuple(i.name for i in self.prompt_session.get_inputs())
        if names != PROMPT_INPUTS:
            raise ValueError(f"{prompt} is not an EdgeSAM prompt graph: inputs {list(names)}")
        shape = self.image_session.get_inputs()[0].shape
        self.embedding_shape = tuple(int(v) for v in shape[1:])
        self.img_size = 16 * self.embedding_shape[1]
        self.reference = reference  # for mask prompts
        self.name = _backend_name(self.prompt_session, prompt)  # the runtime, as OrtDecoder's
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


def has_fast_graphs(onnx_dir: str | Path) -> bool:
    d = Path(onnx_dir)
    return all((d / f).is_file() for f in (IMAGE_FILE, PROMPT_FILE))


def make_ort_decoder(onnx_dir: str | Path, providers=None, threads: int | None = None, flavour: str = "auto",
                     int8: bool = False):
    """The decoder backend for an export folder: ``flavour`` "fast" (split graphs; mask prompts fall back to
    ``decoder.onnx``), "reference" (``decoder.onnx`` only) or "auto" (fast when the folder has its graphs).
    ``int8`` uses (and writes on first use) ``decoder_prompt.int8.onnx``; it needs the split graphs."""
    from ..export.onnx_export import DECODER_FILE

    if flavour not in ("auto", "fast", "reference"):
        raise ValueError(f"decoder flavour must be 'auto', 'fast' or 'reference', got {flavour!r}")
    d = Path(onnx_dir)
    fast = flavour == "fast" or (flavour == "auto" and has_fast_graphs(d))
    ref = OrtDecoder(d / DECODER_FILE, providers, threads)
    if int8 and not fast:
        raise ValueError(f"the INT8 decoder is the split prompt graph ({PROMPT_FILE}), which {d} lacks or flavour "
                         f"{flavour!r} excludes: export again (edgesam export) and use flavour 'auto' or 'fast'")
    if not fast:
        return ref
    if int8:
        quantize_folder(d, [PROMPT_FILE])
    return OrtFastDecoder(d, providers, threads, int8=int8, reference=ref)
