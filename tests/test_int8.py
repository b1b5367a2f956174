"""INT8 graphs (edgesam.inference.quantize): what is quantised, SmoothQuant's fp32 equivalence, closeness to fp32
and the lock that lets concurrent callers share one copy. The accuracy gate on trained weights and photos is
measured in benchmarks/decoder_fast.py (BENCHMARKS.md, section int8)."""
from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

from edgesam.export.decoder_fast import export_fast_decoder  # noqa: E402
from edgesam.export.onnx_export import export_decoder  # noqa: E402
from edgesam.export.onnx_native import export_encoder  # noqa: E402
from edgesam.inference.ort_backend import OrtEncoder  # noqa: E402
from edgesam.inference.ort_fast import make_ort_decoder  # noqa: E402
from edgesam.inference.quantize import (CHANNEL_MIXER, MIXER_IN, calibration_photos, channel_absmax,  # noqa: E402
                                        int8_name, quantize_folder, smooth_conv_inputs)
from edgesam.models import EdgeSAM  # noqa: E402

S = 128


@pytest.fixture(scope="module")
def model() -> EdgeSAM:
    torch.manual_seed(0)
    return EdgeSAM(S).eval()


@pytest.fixture(scope="module")
def encoder_dir(model, tmp_path_factory):
    d = tmp_path_factory.mktemp("int8-enc")
    export_encoder(model, d / "encoder.onnx")
    return d


def _image(seed: int = 0) -> np.ndarray:
    from edgesam.data.transforms import preprocess

    img = calibration_photos()[seed]
    return preprocess(img, S)[0].numpy()


def _weight_source(graph) -> dict[str, str]:
    """Conv name -> op type producing its weight input ("" for an initializer)."""
    producer = {o: n.op_type for n in graph.node for o in n.output}
    return {n.name: producer.get(n.input[1], "") for n in graph.node if n.op_type == "Conv"}


def test_smoothing_keeps_the_fp32_function(encoder_dir):
    import onnxruntime as ort

    m = onnx.load(str(encoder_dir / "encoder.onnx"))
    convs = [n for n in m.graph.node if n.op_type == "Conv" and MIXER_IN in n.name]
    assert len(convs) >= 20  # one per RepViT block
    x = _image()
    absmax = channel_absmax(m, [n.input[0] for n in convs], [{"image": x}])
    assert all(v.shape == (int(v.shape[0]),) and (v > 0).all() for v in absmax.values())
    ref = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"image": x})[0]
    smooth_conv_inputs(m, [n.name for n in convs], absmax)
    assert sum(n.op_type == "Mul" and n.name.endswith("/smooth") for n in m.graph.node) == len(convs)
    out = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"image": x})[0]
    assert np.linalg.norm(out - ref) / np.linalg.norm(ref) < 1e-5


def test_int8_encoder_quantises_the_channel_mixers_only(encoder_dir):
    (dst,) = quantize_folder(encoder_dir, ["encoder.onnx"])
    assert dst.name == int8_name("encoder.onnx") == "encoder.int8.onnx"
    src = _weight_source(onnx.load(str(encoder_dir / "encoder.onnx")).graph)
    got = _weight_source(onnx.load(str(dst)).graph)
    quantised = {n for n, op in got.items() if op == "DequantizeLinear"}
    mixers = {n for n in src if CHANNEL_MIXER in n}
    assert quantised == mixers and len(got) == len(src)
    x = _image(1)
    e32 = OrtEncoder(encoder_dir / "encoder.onnx", threads=1)(x)
    e8 = OrtEncoder(dst, threads=1)(x)
    assert not np.array_equal(e32, e8)
    assert np.linalg.norm(e8 - e32) / np.linalg.norm(e32) < 0.03  # random weights; trained: 0.24 % (BENCHMARKS.md)


def test_concurrent_callers_share_one_copy(model, tmp_path):
    export_fast_decoder(model, tmp_path)
    results, errors = [], []

    def work():
        try:
            results.append(quantize_folder(tmp_path, ["decoder_prompt.onnx"])[0])
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=work) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors and len(results) == 3 and len(set(results)) == 1
    assert sorted(p.name for p in tmp_path.glob("*.tmp")) == []
    onnx.checker.check_model(str(results[0]))


@pytest.mark.slow
def test_int8_decoder_quantises_the_upscaling_and_tracks_fp32(model, tmp_path):
    export_decoder(model, tmp_path / "decoder.onnx")
    export_fast_decoder(model, tmp_path)
    fp32 = make_ort_decoder(tmp_path, threads=1)
    int8 = make_ort_decoder(tmp_path, threads=1, int8=True)
    assert "int8" in int8.name
    g = onnx.load(str(tmp_path / "decoder_prompt.int8.onnx")).graph
    integer = sorted(n.name for n in g.node if n.op_type == "MatMulInteger")
    assert len(integer) == 2 and all("/up1/" in n or "/up2/" in n for n in integer)
    assert any(n.op_type == "MatMul" and n.name == "/MatMul" for n in g.node)  # the prompt PE stays fp32
    emb = np.random.default_rng(0).standard_normal((1, 256, S // 16, S // 16)).astype(np.float32)
    rng = np.random.default_rng(1)
    c = np.sort(rng.uniform(0, S, (6, 2, 2)), axis=1).astype(np.float32)
    l = np.tile(np.array([[2.0, 3.0]], np.float32), (6, 1))
    m, _ = fp32(emb, c, l)
    q, _ = int8(emb, c, l)
    assert not np.array_equal(m, q)
    assert np.corrcoef(m.ravel(), q.ravel())[0, 1] >= 0.99
    with pytest.raises(ValueError, match="split prompt graph"):
        make_ort_decoder(tmp_path, threads=1, flavour="reference", int8=True)


def test_int8_is_an_onnxruntime_cpu_option(tmp_path):
    from edgesam.inference.runtime import make_backends

    with pytest.raises(ValueError, match="onnxruntime on the CPU"):
        make_backends("torch", model=EdgeSAM(S), int8=True)
    with pytest.raises(ValueError, match="onnxruntime on the CPU"):
        make_backends("onnxruntime", onnx_dir=tmp_path, device="cuda", int8="decoder")
    with pytest.raises(ValueError, match="False, True or 'decoder'"):
        make_backends("onnxruntime", onnx_dir=tmp_path, int8="encoder")
    with pytest.raises(ValueError, match="no INT8 recipe"):
        quantize_folder(tmp_path, ["decoder.onnx"])
