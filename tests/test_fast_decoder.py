"""Split decoder (image side once per image): equivalence with the reference decoder."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from edgesam.export.decoder_fast import FastPromptDecoder, export_fast_decoder
from edgesam.export.onnx_export import export_decoder
from edgesam.inference.backends import TorchDecoder
from edgesam.models import EdgeSAM

S = 256


@pytest.fixture(scope="module")
def model() -> EdgeSAM:
    torch.manual_seed(0)
    return EdgeSAM(S).eval()


def _prompts(n: int, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """n prompts: boxes, box+centre, and point+padding, mixed (P = 3, labels -2 ignore used as filler)."""
    rng = np.random.default_rng(seed)
    xy = np.sort(rng.uniform(0, S, (n, 2, 2)), axis=1).astype(np.float32)
    centre = xy.mean(axis=1, keepdims=True)
    coords = np.concatenate([centre, xy], axis=1)
    labels = np.tile(np.array([[1.0, 2.0, 3.0]], np.float32), (n, 1))
    labels[::3, 0] = -2.0  # box only
    labels[1::3, 1:] = [[0.0, -1.0]]  # positive + negative point... then padding
    return coords, labels


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a > 0, b > 0
    return (a & b).sum((-1, -2)) / np.maximum((a | b).sum((-1, -2)), 1)


def test_torch_fast_decoder_equals_reference(model):
    pd = model.as_prompt_decoder()
    fast = FastPromptDecoder(pd).eval()
    emb = torch.randn(1, 256, S // 16, S // 16)
    c, l = (torch.from_numpy(a) for a in _prompts(7))
    with torch.no_grad():
        m_ref, i_ref = pd(emb, c, l)
        m, i = fast(emb, c, l)
    assert m.shape == m_ref.shape == (7, 4, S // 4, S // 4) and i.shape == (7, 4)
    assert (m - m_ref).abs().max() < 1e-4 * max(1.0, float(m_ref.abs().max()))
    assert (i - i_ref).abs().max() < 1e-5
    with pytest.raises(ValueError, match="mask"):
        fast(emb, c, l, torch.zeros(7, 1, S // 4, S // 4))


def test_ort_fast_decoder_matches_torch_and_caches_image_side(model, tmp_path):
    pytest.importorskip("onnxruntime")
    from edgesam.inference.ort_fast import OrtFastDecoder, make_ort_decoder

    export_decoder(model, tmp_path / "decoder.onnx")
    paths = export_fast_decoder(model, tmp_path)
    assert all(p.is_file() for p in paths.values())
    dec = make_ort_decoder(tmp_path, threads=1)
    assert isinstance(dec, OrtFastDecoder) and dec.flavour == "split" and dec.name == "onnxruntime-cpu"
    emb = np.random.default_rng(0).standard_normal((1, 256, S // 16, S // 16)).astype(np.float32)
    c, l = _prompts(9)
    m_ref, i_ref = TorchDecoder(model.as_prompt_decoder())(emb, c, l)
    m1, i1 = dec(emb, c[:5], l[:5])
    m2, i2 = dec(emb.copy(), c[5:], l[5:])  # same values, new buffer: the image side is reused
    assert dec.image_runs == 1
    m, i = np.concatenate([m1, m2]), np.concatenate([i1, i2])
    assert np.abs(m - m_ref).max() < 1e-3 and np.abs(i - i_ref).max() < 1e-4
    assert _iou(m, m_ref).min() >= 0.99
    dec(emb + 1.0, c[:1], l[:1])
    assert dec.image_runs == 2
    # a mask prompt goes to the reference graph, with the reference's answer
    mask = m_ref[:2, :1]
    m3, _ = dec(emb, c[:2], l[:2], mask)
    m3_ref, _ = TorchDecoder(model.as_prompt_decoder())(emb, c[:2], l[:2], mask)
    assert np.abs(m3 - m3_ref).max() < 1e-3
    assert make_ort_decoder(tmp_path, threads=1, flavour="reference").name == "onnxruntime-cpu"
    with pytest.raises(ValueError, match="flavour"):
        make_ort_decoder(tmp_path, flavour="turbo")
