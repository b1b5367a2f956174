"""ONNX export + ONNX Runtime backends against PyTorch, on a random student at img_size 256.

Tolerances (measured errors are ~1e-6 relative for the encoder and ~1e-7 absolute for decoder logits):
* fused vs unfused torch encoder, and ORT encoder vs torch: max |diff| <= 2e-5 * max |embedding|
  (float32 re-association in the folded convolutions; the embedding ends in LayerNorm, scale ~1-4).
* ORT decoder vs torch decoder: logits max |diff| <= 1e-4 + 1e-4 * max |logit|, IoU head max |diff| <= 1e-4,
  binary masks IoU >= 0.99.
* Predictor on ORT vs Predictor on torch at the original image size: mask IoU >= 0.99.
"""
from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from edgesam.export import export_all, export_encoder
from edgesam.export.onnx_export import BicubicUpsample2x
from edgesam.inference import Predictor
from edgesam.inference.backends import TorchDecoder, TorchEncoder
from edgesam.inference.ort_backend import CPU_EP, OrtDecoder, OrtEncoder, make_session
from edgesam.inference.runtime import make_backends
from edgesam.models import EdgeSAM, fuse_for_deploy

S = 256
REPO = Path(__file__).resolve().parent.parent
ENC_RTOL = 2e-5


def randomise_norms(model: nn.Module, seed: int = 1) -> nn.Module:
    """Random BN running stats and affine params (including the FFNs' zero-init gammas, so every
    residual branch is active) and random LayerNorm affine params: makes fusion/parity checks bite."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0.0, 0.2, generator=g)
                m.running_var.uniform_(0.5, 2.0, generator=g)
                m.weight.uniform_(0.3, 1.2, generator=g)
                m.bias.normal_(0.0, 0.1, generator=g)
            elif hasattr(m, "weight") and type(m).__name__ in ("LayerNorm2d", "LayerNorm"):
                m.weight.uniform_(0.5, 1.5, generator=g)
                m.bias.normal_(0.0, 0.1, generator=g)
    return model


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


@pytest.fixture(scope="module")
def model() -> EdgeSAM:
    torch.manual_seed(0)
    return randomise_norms(EdgeSAM(S)).eval()


@pytest.fixture(scope="module")
def exported(model, tmp_path_factory) -> dict[str, Path]:
    return export_all(model, tmp_path_factory.mktemp("onnx"), checkpoint_sha256="random")


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return np.random.default_rng(0).standard_normal((1, 3, S, S)).astype(np.float32)


@pytest.fixture(scope="module")
def embedding(model, image) -> np.ndarray:
    return TorchEncoder(model.image_encoder, S)(image)


@pytest.fixture(scope="module")
def ort_decoder(exported) -> OrtDecoder:
    return OrtDecoder(exported["decoder"], providers=[CPU_EP], threads=1)


@pytest.fixture(scope="module")
def torch_decoder(model) -> TorchDecoder:
    return TorchDecoder(model.as_prompt_decoder())


def test_residual_branches_are_active(model):
    gammas = [blk.channel_mixer.m[2].bn.weight for blk in model.image_encoder.features[1:]]
    assert all(float(g.detach().abs().min()) > 0.1 for g in gammas)


def test_fused_encoder_matches_unfused(model, image, embedding):
    fused = fuse_for_deploy(copy.deepcopy(model.image_encoder).eval())
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fused.modules())
    out = TorchEncoder(fused, S)(image)
    scale = np.abs(embedding).max()
    assert scale > 0.5
    assert np.abs(out - embedding).max() <= ENC_RTOL * scale


def test_ort_encoder_matches_torch(exported, image, embedding):
    enc = OrtEncoder(exported["encoder"], providers=[CPU_EP], threads=1)
    assert enc.img_size == S and enc.name == "onnxruntime-cpu"
    out = enc(image)
    assert out.shape == (1, 256, S // 16, S // 16) and out.dtype == np.float32
    assert np.abs(out - embedding).max() <= ENC_RTOL * np.abs(embedding).max()
    # batch > 1 goes through the dynamic batch axis in one run
    two = enc(np.concatenate([image, image[:, :, ::-1].copy()]))
    assert two.shape == (2, 256, S // 16, S // 16)
    np.testing.assert_allclose(two[0], out[0], rtol=0, atol=1e-5)


class _CountingSession:
    """Wraps an ``InferenceSession`` and records the batch size of every ``run``."""

    def __init__(self, session) -> None:
        self.session, self.batches = session, []

    def run(self, outputs, feeds):
        self.batches.append(next(iter(feeds.values())).shape[0])
        return self.session.run(outputs, feeds)


def test_encoder_dynamic_batch_one_run(exported, model):
    g = onnx.load(str(exported["encoder"]))
    dims = {v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
            for v in list(g.graph.input) + list(g.graph.output)}
    assert dims == {"image": ["batch", 3, S, S], "image_embeddings": ["batch", 256, S // 16, S // 16]}
    assert json.loads(exported["meta"].read_text())["encoder_io"]["dynamic_batch"] is True
    enc = OrtEncoder(exported["encoder"], providers=[CPU_EP], threads=1)
    assert isinstance(enc.session.get_inputs()[0].shape[0], str) and enc.dynamic_batch
    x = np.random.default_rng(7).standard_normal((3, 3, S, S)).astype(np.float32)
    x[1] = np.linspace(-2, 2, S, dtype=np.float32)  # a ramp: a very different image
    x[2] *= 3.0
    ref = TorchEncoder(model.image_encoder, S)(x)
    enc.session = _CountingSession(enc.session)
    batched = enc(x)
    assert enc.session.batches == [3]  # the whole batch in one session.run
    singles = np.concatenate([enc(x[i:i + 1]) for i in range(3)])
    assert enc.session.batches == [3, 1, 1, 1]
    assert batched.shape == (3, 256, S // 16, S // 16) and batched.dtype == np.float32
    scale = np.abs(ref).max()
    assert np.abs(batched - ref).max() <= ENC_RTOL * scale
    assert np.abs(batched - singles).max() <= ENC_RTOL * scale
    for i, j in ((0, 1), (0, 2), (1, 2)):  # distinct outputs: each image went through, none was broadcast
        assert np.abs(batched[i] - batched[j]).max() > 20 * ENC_RTOL * scale


def test_encoder_fixed_batch_graph_runs_image_by_image(exported, tmp_path):
    """An encoder.onnx with a fixed batch of 1 (exports before the batch axis was dynamic) still serves B > 1."""
    g = onnx.load(str(exported["encoder"]))
    for v in list(g.graph.input) + list(g.graph.output):
        v.type.tensor_type.shape.dim[0].dim_value = 1  # replaces the dim_param
    path = tmp_path / "encoder_b1.onnx"
    onnx.save(g, str(path))
    enc = OrtEncoder(path, providers=[CPU_EP], threads=1)
    assert enc.session.get_inputs()[0].shape[0] == 1 and not enc.dynamic_batch
    x = np.random.default_rng(8).standard_normal((2, 3, S, S)).astype(np.float32)
    ref = OrtEncoder(exported["encoder"], providers=[CPU_EP], threads=1)(x)
    enc.session = _CountingSession(enc.session)
    out = enc(x)
    assert enc.session.batches == [1, 1]
    assert np.abs(out - ref).max() <= ENC_RTOL * np.abs(ref).max()


def test_bicubic_conv_form_equals_torch_bicubic():
    x = torch.randn(2, 5, 7, 9) * 3
    ref = nn.functional.interpolate(x, scale_factor=2, mode="bicubic", align_corners=False)
    out = BicubicUpsample2x()(x)
    assert out.shape == ref.shape == (2, 5, 14, 18)
    assert (out - ref).abs().max() <= 1e-5


def test_encoder_graph_upsample_is_bicubic(exported, model, image, embedding, tmp_path):
    g = onnx.load(str(exported["encoder"]))
    ops = [n.op_type for n in g.graph.node]
    assert "Resize" not in ops and ops.count("DepthToSpace") == 1  # default: exact conv form of bicubic
    props = {p.key: p.value for p in g.metadata_props}
    assert json.loads(props["edgesam.fp32_scopes"]) == ["/neck/neck.1", "/neck/neck.3"]
    # The ONNX Resize form: cubic with a = -0.75 (PyTorch's), and ORT's kernel agrees with torch.
    path = export_encoder(model, tmp_path / "resize.onnx", cubic_as_conv=False)
    resize = [n for n in onnx.load(str(path)).graph.node if n.op_type == "Resize"]
    assert len(resize) == 1
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in resize[0].attribute}
    assert attrs["mode"] == b"cubic" and attrs["cubic_coeff_a"] == pytest.approx(-0.75)
    assert attrs["coordinate_transformation_mode"] == b"half_pixel"
    out = OrtEncoder(path, providers=[CPU_EP], threads=1)(image)
    assert np.abs(out - embedding).max() <= ENC_RTOL * np.abs(embedding).max()


def test_decoder_graph_io(exported):
    g = onnx.load(str(exported["decoder"]))
    dims = {v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
            for v in list(g.graph.input) + list(g.graph.output)}
    h = S // 16
    assert dims == {"image_embeddings": [1, 256, h, h], "point_coords": ["num_prompts", "num_points", 2],
                    "point_labels": ["num_prompts", "num_points"], "mask_input": ["num_prompts", 1, 4 * h, 4 * h],
                    "has_mask_input": ["num_prompts"], "scores": ["num_prompts", 4],
                    "masks": ["num_prompts", 4, 4 * h, 4 * h]}


def _prompts(case: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    if case == "points":  # two clicks + SAM's padding point
        return np.array([[[60, 70], [180, 30], [0, 0]]], np.float32), np.array([[1, 0, -1]], np.float32)
    if case == "box":
        return np.array([[[40, 50], [200, 160]]], np.float32), np.array([[2, 3]], np.float32)
    if case == "box+points":
        return (np.array([[[40, 50], [200, 160], [120, 100], [60, 150]]], np.float32),
                np.array([[2, 3, 1, 0]], np.float32))
    if case == "ignore":
        return np.array([[[60, 70], [10, 10], [0, 0]]], np.float32), np.array([[1, -2, -1]], np.float32)
    if case == "batch":  # N=5 mixed prompts, P=3 (boxes padded with "ignore" points)
        coords = rng.uniform(0, S, (5, 3, 2)).astype(np.float32)
        labels = np.array([[1, 0, -1], [2, 3, -2], [1, 1, -1], [2, 3, 1], [0, 1, -1]], np.float32)
        coords[1, :2] = np.sort(coords[1, :2], axis=0)
        coords[3, :2] = np.sort(coords[3, :2], axis=0)
        return coords, labels
    raise ValueError(case)


def _assert_decoder_close(ref: tuple[np.ndarray, np.ndarray], got: tuple[np.ndarray, np.ndarray]) -> None:
    (m_ref, s_ref), (m_got, s_got) = ref, got
    assert m_got.shape == m_ref.shape and s_got.shape == s_ref.shape
    assert np.abs(m_got - m_ref).max() <= 1e-4 + 1e-4 * np.abs(m_ref).max()
    assert np.abs(s_got - s_ref).max() <= 1e-4
    assert mask_iou(m_got > 0, m_ref > 0) >= 0.99


@pytest.mark.parametrize("case", ["points", "box", "box+points", "ignore", "batch"])
def test_ort_decoder_matches_torch(case, embedding, ort_decoder, torch_decoder):
    coords, labels = _prompts(case, np.random.default_rng(3))
    ref = torch_decoder(embedding, coords, labels)
    got = ort_decoder(embedding, coords, labels)
    assert got[0].shape == (coords.shape[0], 4, S // 4, S // 4)
    assert 0.05 < (ref[0] > 0).mean() < 0.95  # the comparison is not between two empty masks
    _assert_decoder_close(ref, got)


def test_ort_decoder_mask_input(embedding, ort_decoder, torch_decoder):
    coords, labels = _prompts("batch", np.random.default_rng(4))
    first, _ = torch_decoder(embedding, coords, labels)
    mask_input = (first[:, :1] * 20.0).astype(np.float32)  # sizeable logits so the mask path matters
    ref = torch_decoder(embedding, coords, labels, mask_input)
    got = ort_decoder(embedding, coords, labels, mask_input)
    assert np.abs(ref[0] - torch_decoder(embedding, coords, labels)[0]).max() > 1e-3  # the mask changed the output
    _assert_decoder_close(ref, got)


def test_dynamic_prompts_and_points_in_one_session(embedding, ort_decoder, torch_decoder):
    rng = np.random.default_rng(5)
    for n, p in [(1, 1), (3, 2), (7, 5), (2, 9), (1, 16)]:
        coords = rng.uniform(0, S, (n, p, 2)).astype(np.float32)
        labels = rng.integers(-1, 2, (n, p)).astype(np.float32)
        got = ort_decoder(embedding, coords, labels)
        assert got[0].shape == (n, 4, S // 4, S // 4) and got[1].shape == (n, 4)
        _assert_decoder_close(torch_decoder(embedding, coords, labels), got)


def test_predictor_on_ort_matches_torch(model, exported):
    rng = np.random.default_rng(6)
    img = rng.integers(0, 80, (150, 300, 3), dtype=np.uint8)
    img[30:110, 60:200] = (200, 180, 40)
    ref = Predictor.from_model(model)
    ort = Predictor(OrtEncoder(exported["encoder"], threads=1), OrtDecoder(exported["decoder"], threads=1))
    for p in (ref, ort):
        p.set_image(img)
    a = ref.predict_batch(point_coords=np.array([[[100, 70]], [[250, 20]]]), point_labels=np.array([[1], [1]]),
                          num_outputs=3)
    b = ort.predict_batch(point_coords=np.array([[[100, 70]], [[250, 20]]]), point_labels=np.array([[1], [1]]),
                          num_outputs=3)
    assert a.masks.shape == b.masks.shape == (2, 3, 150, 300)
    assert mask_iou(a.masks, b.masks) >= 0.99
    boxes = np.array([[50, 20, 210, 120], [0, 0, 299, 149]])
    a = ref.predict_batch(boxes=boxes, point_coords=np.array([[120, 60]]), point_labels=np.array([1]))
    b = ort.predict_batch(boxes=boxes, point_coords=np.array([[120, 60]]), point_labels=np.array([1]))
    assert mask_iou(a.masks, b.masks) >= 0.99
    m_a, _, low = ref.predict(box=boxes[0], multimask_output=False)
    m_b, _, _ = ort.predict(box=boxes[0], mask_input=low, multimask_output=False)
    m_c, _, _ = ref.predict(box=boxes[0], mask_input=low, multimask_output=False)
    assert mask_iou(m_b, m_c) >= 0.99
    for k in range(a.masks.shape[0]):
        assert mask_iou(a.masks[k], b.masks[k]) >= 0.99


def test_export_meta(exported):
    meta = json.loads(exported["meta"].read_text())
    assert meta["img_size"] == S and meta["opset"] == 17 and meta["fused"] is True
    assert meta["checkpoint_sha256"] == "random" and meta["random_weights"] is True
    assert set(meta["files"].values()) == {"encoder.onnx", "decoder.onnx", "decoder_image.onnx", "decoder_prompt.onnx"}


def test_encoder_export_1024_shape(tmp_path):
    torch.manual_seed(0)
    path = export_encoder(EdgeSAM(1024).eval(), tmp_path / "enc1024.onnx")
    enc = OrtEncoder(path, providers=[CPU_EP], threads=1)
    assert enc.img_size == 1024
    out = enc(np.zeros((1, 3, 1024, 1024), np.float32))
    assert out.shape == (1, 256, 64, 64) and np.isfinite(out).all()


def test_make_backends(model, exported):
    enc, dec = make_backends("onnxruntime", onnx_dir=exported["encoder"].parent, threads=1)
    assert (enc.name, dec.name, enc.img_size) == ("onnxruntime-cpu", "onnxruntime-cpu", S)
    tenc, tdec = make_backends("torch", model=model)
    assert tenc.name == "torch-cpu" and tenc.img_size == S
    with pytest.raises(ValueError, match="unknown backend 'tflite'"):
        make_backends("tflite", model=model)
    with pytest.raises(ValueError, match="needs model="):
        make_backends("torch")
    with pytest.raises(ValueError, match="needs onnx_dir"):
        make_backends("onnxruntime")
    with pytest.raises(FileNotFoundError, match="encoder.onnx"):
        make_backends("onnxruntime", onnx_dir=REPO / "no-such-dir")
    with pytest.raises(RuntimeError, match="lacks execution provider"):
        make_session(exported["encoder"], providers=["NoSuchExecutionProvider"])


def test_bad_inputs_raise_clear_errors(exported, embedding, ort_decoder):
    enc = OrtEncoder(exported["encoder"], threads=1)
    with pytest.raises(ValueError, match=r"images must have shape \(B,3,256,256\)"):
        enc(np.zeros((1, 3, 128, 128), np.float32))
    with pytest.raises(ValueError, match="numeric"):
        enc(np.array([["a"]]))
    coords = np.zeros((2, 3, 2), np.float32)
    with pytest.raises(ValueError, match="one label per point"):
        ort_decoder(embedding, coords, np.zeros((2, 2), np.float32))
    with pytest.raises(ValueError, match=r"point_coords must have shape \(N,P,2\)"):
        ort_decoder(embedding, np.zeros((3, 2), np.float32), np.zeros((3,), np.float32))
    with pytest.raises(ValueError, match="mask_input must have shape"):
        ort_decoder(embedding, coords, np.zeros((2, 3), np.float32), np.zeros((2, 1, 32, 32), np.float32))
    with pytest.raises(ValueError, match="embedding must have shape"):
        ort_decoder(embedding[:, :128], coords, np.zeros((2, 3), np.float32))
    with pytest.raises(FileNotFoundError, match="python -m edgesam.export"):
        OrtEncoder(exported["encoder"].parent / "missing.onnx")
    with pytest.raises(ValueError, match="not an EdgeSAM decoder graph"):
        OrtDecoder(exported["encoder"])


def test_cli_random_export(tmp_path):
    out = tmp_path / "cli"
    r = subprocess.run([sys.executable, "-m", "edgesam.export", "--random", "--img-size", "128", "--out", str(out)],
                       capture_output=True, text=True, cwd=REPO, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "RANDOM WEIGHTS" in r.stderr
    assert "parity vs PyTorch" in r.stdout
    assert "export onnx: 100%" in r.stderr and "4/4" in r.stderr  # one bar over the graphs written
    meta = json.loads((out / "export_meta.json").read_text())
    assert meta["img_size"] == 128 and meta["checkpoint_sha256"] == "random"
    assert OrtEncoder(out / "encoder.onnx").img_size == 128
    bad = subprocess.run([sys.executable, "-m", "edgesam.export", "--random", "--img-size", "100", "--out", str(out)],
                         capture_output=True, text=True, cwd=REPO, timeout=120)
    assert bad.returncode == 2 and "multiple of 64" in bad.stderr


def test_cached_export_is_keyed_by_weights_and_made_once(tmp_path):
    """Two racing callers get one export; changed weights get another folder; the key ignores nothing."""
    import threading

    from edgesam.export.cache import cached_export, weights_key

    torch.manual_seed(0)
    model = EdgeSAM(256).eval()
    torch.manual_seed(0)
    twin = EdgeSAM(256).eval()
    assert weights_key(model, 256) == weights_key(twin, 256) != weights_key(model, 512)
    with torch.no_grad():
        twin.mask_decoder.iou_prediction_head.layers[0].bias[0] += 1e-3
    assert weights_key(model, 256) != weights_key(twin, 256)

    got: list = []
    threads = [threading.Thread(target=lambda: got.append(cached_export(model, tmp_path, "random"))) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(got) == 2 and got[0] == got[1]
    meta = json.loads((got[0] / "export_meta.json").read_text())
    assert meta["random_weights"] is True and meta["img_size"] == 256
    other = cached_export(twin, tmp_path, "random")
    assert other != got[0]
    folders = sorted(p.name for p in tmp_path.iterdir() if p.is_dir())
    assert folders == sorted([got[0].name, other.name])  # no temporary folders left behind
