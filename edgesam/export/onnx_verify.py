"""Checks an ONNX export against PyTorch: one ONNX Runtime run of the encoder and the decoder."""
from __future__ import annotations

from pathlib import Path

from ..models.edgesam import EdgeSAM


def verify_parity(model: EdgeSAM, paths: dict[str, Path]) -> str:
    """One ORT run of each graph against PyTorch; returns a one-line summary."""
    import numpy as np

    from ..inference.backends import TorchDecoder, TorchEncoder
    from ..inference.ort_backend import OrtDecoder, OrtEncoder

    s = model.img_size
    x = np.random.default_rng(0).standard_normal((1, 3, s, s)).astype(np.float32)
    emb_t = TorchEncoder(model.image_encoder, s)(x)
    emb_o = OrtEncoder(paths["encoder"])(x)
    coords = np.array([[[s * 0.3, s * 0.4], [0.0, 0.0]]], np.float32)
    labels = np.array([[1.0, -1.0]], np.float32)
    m_t, _ = TorchDecoder(model.as_prompt_decoder())(emb_t, coords, labels)
    m_o, _ = OrtDecoder(paths["decoder"])(emb_t, coords, labels)
    return (f"parity vs PyTorch: encoder max|diff| {np.abs(emb_t - emb_o).max():.2e} (max|emb| {np.abs(emb_t).max():.2f}); "
            f"decoder max|diff| {np.abs(m_t - m_o).max():.2e} (max|logit| {np.abs(m_t).max():.2f})")
