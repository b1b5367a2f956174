"""TensorRT: build + inference + parity with ONNX Runtime when TensorRT and CUDA are present, else skipped.

The tests marked neither ``gpu`` nor ``trt`` run everywhere: importing our modules must not import
TensorRT, and a missing TensorRT gives one clear RuntimeError.
"""
from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from edgesam.export.trt_common import TRT_MISSING

REPO = Path(__file__).resolve().parent.parent
S = 256


def _trt_skip_reason() -> str | None:
    if importlib.util.find_spec("tensorrt") is None:
        return "TensorRT is not installed (pip install 'edgesam-ray[trt]' on a machine with an NVIDIA GPU)"
    if not torch.cuda.is_available():
        return "TensorRT is installed but no CUDA GPU is available (torch.cuda.is_available() is False)"
    return None


def test_modules_import_without_tensorrt():
    code = ("import sys; import edgesam.inference.trt_backend, edgesam.export.tensorrt_build, edgesam.export.trt_common, "
            "edgesam.export.tensorrt_gate, "
            "edgesam.inference.runtime, edgesam.export; assert 'tensorrt' not in sys.modules, 'tensorrt imported eagerly'")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert r.returncode == 0, r.stderr


def test_missing_tensorrt_raises_clear_error(monkeypatch, tmp_path):
    from edgesam.inference.runtime import make_backends
    from edgesam.inference.trt_backend import TrtDecoder, TrtEncoder, TrtRpnEncoder

    monkeypatch.setitem(sys.modules, "tensorrt", None)  # makes `import tensorrt` fail, as on a machine without it
    for ctor in (TrtEncoder, TrtDecoder, TrtRpnEncoder):
        with pytest.raises(RuntimeError) as e:
            ctor(tmp_path / "encoder.onnx")
        assert str(e.value) == TRT_MISSING
    (tmp_path / "encoder.onnx").write_bytes(b"")
    (tmp_path / "decoder.onnx").write_bytes(b"")
    with pytest.raises(RuntimeError, match="TensorRT is not installed: pip install 'edgesam-ray\\[trt\\]'"):
        make_backends("tensorrt", onnx_dir=tmp_path, device="cuda")


def test_encoder_profile_and_cache_key_without_tensorrt():
    """The encoder's batch bounds are validated and are part of the engine cache key (no TensorRT needed)."""
    from edgesam.export.tensorrt_build import DecoderProfile, EncoderProfile, engine_cache_key

    assert EncoderProfile().shapes == (1, 8, 8)
    assert EncoderProfile(max_batch=16, opt_batch=4).shapes == (1, 4, 16)
    for bad in ({"max_batch": 0}, {"max_batch": 4, "opt_batch": 5}, {"max_batch": 4, "opt_batch": 0}):
        with pytest.raises(ValueError):
            EncoderProfile(**bad)
    key = lambda prof: engine_cache_key("GPU", "10.0", "ab" * 32, "fp16", prof)  # noqa: E731
    keys = {key(None), key(EncoderProfile()), key(EncoderProfile(max_batch=4)), key(EncoderProfile(max_batch=8, opt_batch=1)),
            key(DecoderProfile())}
    assert len(keys) == 5 and all(len(k) == 16 for k in keys)
    assert key(EncoderProfile(max_batch=8)) == key(EncoderProfile(max_batch=8, opt_batch=8))  # same bounds, same engine
    assert key(EncoderProfile()) != engine_cache_key("GPU", "10.0", "ab" * 32, "fp32", EncoderProfile())


def test_graph_profile_follows_the_encoder_batch_axis(tmp_path):
    """Dynamic-batch encoder -> EncoderProfile; a fixed-batch-1 encoder (older export) -> no profile (no TensorRT needed)."""
    import onnx

    from edgesam.export import export_encoder
    from edgesam.export.tensorrt_build import EncoderProfile, graph_profile, has_dynamic_batch
    from edgesam.models import EdgeSAM

    torch.manual_seed(0)
    path = export_encoder(EdgeSAM(128).eval(), tmp_path / "encoder.onnx")
    assert has_dynamic_batch(path)
    prof = EncoderProfile(max_batch=4)
    assert graph_profile(path, encoder_profile=prof) is prof
    g = onnx.load(str(path))
    for v in list(g.graph.input) + list(g.graph.output):
        v.type.tensor_type.shape.dim[0].dim_value = 1
    fixed = tmp_path / "encoder_b1.onnx"
    onnx.save(g, str(fixed))
    assert not has_dynamic_batch(fixed) and graph_profile(fixed, encoder_profile=prof) is None


def _module_imports(path: Path) -> set[str]:
    """Absolute names of the edgesam modules ``path`` imports anywhere (module level or inside functions)."""
    import ast

    pkg = ".".join(path.relative_to(REPO).with_suffix("").parts[:-1])
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = pkg.rsplit(".", node.level - 1)[0] if node.level > 1 else pkg if node.level == 1 else ""
            mod = ".".join(x for x in (base, node.module or "") if x)
            out.add(mod)
            out.update(f"{mod}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return {m for m in out if m.startswith("edgesam.")}


def test_tensorrt_modules_have_no_import_circle():
    """trt_backend uses the builder; the builder never imports the runtime (the accuracy gate, which needs both,
    is its own module); both take the shared helpers from trt_common, which imports neither."""
    mods = {m: REPO / (m.replace(".", "/") + ".py") for m in (
        "edgesam.export.trt_common", "edgesam.export.tensorrt_build", "edgesam.inference.trt_backend",
        "edgesam.export.tensorrt_gate")}
    deps = {m: {d for d in _module_imports(p) if d in mods and d != m} for m, p in mods.items()}
    assert deps["edgesam.export.trt_common"] == set()
    assert deps["edgesam.export.tensorrt_build"] == {"edgesam.export.trt_common"}
    assert "edgesam.export.tensorrt_gate" not in deps["edgesam.inference.trt_backend"]
    for a in mods:  # no cycle of any length among them
        seen, todo = set(), list(deps[a])
        while todo:
            b = todo.pop()
            assert b != a, f"import circle through {a}"
            if b not in seen:
                seen.add(b)
                todo.extend(deps[b])


def test_decoder_profile_covers_max_proposals_in_one_execute():
    """The everything path sends max_proposals prompts per call: its profile's max covers them (opt tuned for
    them), so TrtDecoder's plan is one execute; the old fixed profile (max 64) took two for 100 proposals."""
    from edgesam.export.tensorrt_build import engine_cache_key
    from edgesam.export.trt_common import DecoderProfile, decoder_profile_for, execute_chunks

    for n in (1, 64, 100, 256):
        prof = decoder_profile_for(n)
        assert prof.max_prompts >= n and prof.opt_prompts == n and prof.max_points == 16
        assert execute_chunks(n, prof.max_prompts) == [slice(0, n)]
    assert execute_chunks(100, DecoderProfile().max_prompts) == [slice(0, 64), slice(64, 100)]
    assert execute_chunks(5, 2) == [slice(0, 2), slice(2, 4), slice(4, 5)]
    with pytest.raises(ValueError):
        decoder_profile_for(0)
    key = lambda prof: engine_cache_key("GPU", "10.0", "ab" * 32, "fp16", prof)  # noqa: E731
    assert key(decoder_profile_for(100)) != key(DecoderProfile())  # a new profile never reuses an old engine


def test_tensorrt_on_cpu_is_an_error(tmp_path):
    """backend tensorrt with device=cpu: a clear ValueError before anything is imported or built (it used to run
    on cuda:0 silently)."""
    from edgesam.inference.runtime import make_backends

    (tmp_path / "encoder.onnx").write_bytes(b"")
    (tmp_path / "decoder.onnx").write_bytes(b"")
    for device in ("cpu", "mps"):
        with pytest.raises(ValueError, match=f"runs on a CUDA device, got device='{device}'"):
            make_backends("tensorrt", onnx_dir=tmp_path, device=device)
    from edgesam.export.trt_common import require_cuda

    with pytest.raises(ValueError, match="CUDA device"):
        require_cuda("cpu")


def test_rpn_under_tensorrt_gets_its_own_engine_not_onnxruntime(monkeypatch, tmp_path):
    """Serve's everything backend under backend=tensorrt builds rpn.onnx into a TensorRT engine (TrtRpnEncoder):
    without TensorRT that is the install error, never a quiet ONNX Runtime session on the CPU."""
    from serve.config import ModelSection
    from serve.model import _rpn_backend

    monkeypatch.setitem(sys.modules, "tensorrt", None)
    (tmp_path / "rpn.onnx").write_bytes(b"")
    cfg = ModelSection(img_size=S, onnx_dir=str(tmp_path), backend="tensorrt", device="cuda")
    with pytest.raises(RuntimeError) as e:
        _rpn_backend(cfg, None, "tensorrt")
    assert str(e.value) == TRT_MISSING


BUILD_ONCE = """
import sys, time
from pathlib import Path
from edgesam.export.trt_common import file_lock
lock, out, log = sys.argv[1:4]
with file_lock(lock):
    if not Path(out).is_file():  # the check-lock-recheck of build_engine
        with open(log, "a") as f:
            f.write("built\\n")
        time.sleep(0.5)
        Path(out).write_text("engine")
"""


@pytest.mark.timeout(180)
def test_engine_build_lock_serialises_processes(tmp_path):
    """Three processes (replicas) racing to build one engine: the lock lets one build, the others find it."""
    args = [str(tmp_path / "x.engine"), str(tmp_path / "x.engine"), str(tmp_path / "log")]
    procs = [subprocess.Popen([sys.executable, "-c", BUILD_ONCE, *args], cwd=REPO) for _ in range(3)]
    assert [p.wait(150) for p in procs] == [0, 0, 0]
    assert (tmp_path / "log").read_text().splitlines() == ["built"]


# Python API names that NVIDIA's "Migrating from TensorRT 10.x to 11.x" guide lists as removed (weak typing,
# implicit quantization, algorithm selection, device-memory queries), plus the binding-index API that 10.x removed.
REMOVED_BUILDER_FLAGS = {"FP16", "BF16", "INT8", "FP8", "INT4", "FP4", "OBEY_PRECISION_CONSTRAINTS",
                         "PREFER_PRECISION_CONSTRAINTS", "DIRECT_IO"}
REMOVED_ATTRS = {"set_output_type", "reset_output_type", "get_output_type", "output_type_is_set", "reset_precision",
                 "precision_is_set", "int8_calibrator", "set_quantization_flag", "get_quantization_flag",
                 "clear_quantization_flag", "quantization_flags", "set_calibration_profile", "get_calibration_profile",
                 "algorithm_selector", "platform_has_fast_fp16", "platform_has_fast_int8", "device_memory_size",
                 "get_binding_shape", "get_binding_dtype", "get_binding_index", "binding_is_input", "num_bindings",
                 "execute_async_v2", "execute_v2", "set_binding_shape", "max_batch_size"}
TRT_SOURCES = ("edgesam/export/tensorrt_build.py", "edgesam/export/trt_common.py", "edgesam/export/tensorrt_gate.py",
               "edgesam/inference/trt_backend.py")


def _removed_api_uses(source: str) -> list[str]:
    """``BuilderFlag.<removed>``, removed attributes/methods, and ``<layer>.precision = ...`` in ``source``."""
    import ast

    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Attribute):
            base = node.value.attr if isinstance(node.value, ast.Attribute) else getattr(node.value, "id", "")
            if (base == "BuilderFlag" and node.attr in REMOVED_BUILDER_FLAGS) or node.attr in REMOVED_ATTRS:
                found.append(f"{base}.{node.attr} (line {node.lineno})")
        elif isinstance(node, (ast.Assign, ast.AugAssign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            found += [f"{t.attr} = (line {node.lineno})" for t in targets
                      if isinstance(t, ast.Attribute) and t.attr in ("precision", "compute_precision")]
    return found


def test_tensorrt_code_uses_no_api_removed_in_tensorrt_11():
    """The build and runtime paths run on TensorRT 10.x and 11.x: no weakly typed precision API, no per-layer
    precision, no binding-index API; the scanner itself catches what the old FP16 path used."""
    old = ("config.set_flag(trt.BuilderFlag.FP16)\nconfig.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)\n"
           "layer.precision = trt.float32\nlayer.set_output_type(0, trt.float32)\nctx.execute_async_v2(b, s)\n")
    assert len(_removed_api_uses(old)) == 5
    for rel in TRT_SOURCES:
        assert _removed_api_uses((REPO / rel).read_text()) == [], rel


def test_networks_are_strongly_typed():
    """Every ``create_network`` call passes ``1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)``."""
    import ast

    calls = [n for rel in TRT_SOURCES for n in ast.walk(ast.parse((REPO / rel).read_text()))
             if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and n.func.attr == "create_network"]
    assert len(calls) == 1
    flags = [a for a in ast.walk(calls[0]) if isinstance(a, ast.Attribute) and a.attr == "STRONGLY_TYPED"]
    assert flags and getattr(flags[0].value, "attr", "") == "NetworkDefinitionCreationFlag"
    assert isinstance(calls[0].args[0], ast.BinOp) and isinstance(calls[0].args[0].op, ast.LShift)


def test_trt_extra_pins_tensorrt_10_and_11():
    import tomllib

    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert extras["trt"] == ["tensorrt>=10,<12"]


def test_fp16_engine_is_keyed_by_the_fp16_graph(monkeypatch, tmp_path):
    """fp16 engines are built from (and keyed by the hash of) ``NAME.fp16.onnx``, written when missing; fp32 ones
    from ``NAME.onnx``. TensorRT and the GPU are faked: only the cache path is computed."""
    import types

    from edgesam.export import export_encoder
    from edgesam.export import tensorrt_build as tb
    from edgesam.models import EdgeSAM
    from edgesam.storage import sha256

    torch.manual_seed(0)
    enc = export_encoder(EdgeSAM(128).eval(), tmp_path / "encoder.onnx")
    monkeypatch.setitem(sys.modules, "tensorrt", types.SimpleNamespace(__version__="11.4.0"))
    monkeypatch.setattr(tb, "require_cuda", lambda device: torch.device("cuda", 0))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda dev=None: "GPU")
    prof = tb.EncoderProfile()
    path16 = tb.engine_cache_path(enc, "fp16", profile=prof)
    fp16_graph = tmp_path / "encoder.fp16.onnx"
    assert fp16_graph.is_file() and tb.built_graph(enc, "fp16") == fp16_graph and tb.built_graph(enc, "fp32") == enc
    assert path16.name == f"encoder-fp16-{tb.engine_cache_key('GPU', '11.4.0', sha256(fp16_graph), 'fp16', prof)}.engine"
    path32 = tb.engine_cache_path(enc, "fp32", profile=prof)
    assert path32.name == f"encoder-fp32-{tb.engine_cache_key('GPU', '11.4.0', sha256(enc), 'fp32', prof)}.engine"
    with pytest.raises(ValueError, match="precision must be one of"):
        tb.built_graph(enc, "int8")


@pytest.fixture(scope="module")
def onnx_dir(tmp_path_factory) -> Path:
    reason = _trt_skip_reason()
    if reason:
        pytest.skip(reason)
    from edgesam.export import export_all
    from edgesam.models import EdgeSAM

    torch.manual_seed(0)
    model = EdgeSAM(S).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # random BN stats and non-zero FFN gammas, so every branch matters
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0.0, 0.2, generator=g)
                m.running_var.uniform_(0.5, 2.0, generator=g)
                m.weight.uniform_(0.3, 1.2, generator=g)
    out = tmp_path_factory.mktemp("trt")
    export_all(model, out, checkpoint_sha256="random")
    torch.save(model.state_dict(), out / "model.pt")
    return out


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


@pytest.mark.gpu
@pytest.mark.trt
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_engine_build_cache_and_parity(onnx_dir, precision):
    from edgesam.export.tensorrt_build import engine_cache_path
    from edgesam.export.tensorrt_gate import build_engines
    from edgesam.inference.ort_backend import CPU_EP, OrtDecoder, OrtEncoder
    from edgesam.inference.trt_backend import TrtDecoder, TrtEncoder

    engines = build_engines(onnx_dir, precision=precision)
    assert engines["encoder"] == engine_cache_path(onnx_dir / "encoder.onnx", precision)
    assert engines["encoder"].is_file() and engines["decoder"].is_file()
    assert build_engines(onnx_dir, precision=precision) == engines  # second call: cache hit
    enc, dec = TrtEncoder(engines["encoder"]), TrtDecoder(engines["decoder"])
    assert enc.img_size == S and dec.max_prompts == 64 and dec.max_points == 16
    assert enc.dynamic_batch and enc.max_batch == 8  # EncoderProfile() default
    oenc = OrtEncoder(onnx_dir / "encoder.onnx", providers=[CPU_EP])
    odec = OrtDecoder(onnx_dir / "decoder.onnx", providers=[CPU_EP])
    x = np.random.default_rng(0).standard_normal((1, 3, S, S)).astype(np.float32)
    emb, emb_ref = enc(x), oenc(x)
    rel = np.linalg.norm(emb - emb_ref) / np.linalg.norm(emb_ref)
    assert rel < (1e-3 if precision == "fp32" else 2e-2)
    xb = np.random.default_rng(3).standard_normal((10, 3, S, S)).astype(np.float32)  # 10 > max_batch: 8 + 2
    runs = []
    real_run = enc.engine.run
    enc.engine.run = lambda feeds: runs.append(tuple(feeds[enc.input_name].shape)) or real_run(feeds)
    emb_b, emb_b_ref = enc(xb), oenc(xb)
    assert [r[0] for r in runs] == [8, 2]
    assert emb_b.shape == (10, 256, S // 16, S // 16)
    for i in range(10):
        rel = np.linalg.norm(emb_b[i] - emb_b_ref[i]) / np.linalg.norm(emb_b_ref[i])
        assert rel < (1e-3 if precision == "fp32" else 2e-2)
    rng = np.random.default_rng(1)
    for n, p in [(1, 1), (5, 3), (64, 16), (70, 2)]:  # 70 > profile max: chunked
        coords = rng.uniform(0, S, (n, p, 2)).astype(np.float32)
        labels = rng.integers(-1, 2, (n, p)).astype(np.float32)
        masks, scores = dec(emb_ref, coords, labels)
        ref_masks, ref_scores = odec(emb_ref, coords, labels)
        assert masks.shape == (n, 4, S // 4, S // 4) and scores.shape == (n, 4)
        assert np.isfinite(masks).all()
        assert _iou(masks > 0, ref_masks > 0) >= (0.99 if precision == "fp32" else 0.95)
    with pytest.raises(ValueError, match="exceed the engine's profile maximum of 16"):
        dec(emb_ref, np.zeros((1, 17, 2), np.float32), np.zeros((1, 17), np.float32))
    mask_in = (ref_masks[:, :1] * 10).astype(np.float32)
    m1, _ = dec(emb_ref, coords, labels, mask_in)
    m2, _ = odec(emb_ref, coords, labels, mask_in)
    assert _iou(m1 > 0, m2 > 0) >= (0.99 if precision == "fp32" else 0.95)


@pytest.mark.gpu
@pytest.mark.trt
def test_predictor_on_tensorrt(onnx_dir):
    from edgesam.inference import Predictor
    from edgesam.inference.runtime import make_backends
    from edgesam.models import EdgeSAM

    model = EdgeSAM(S)
    model.load_state_dict(torch.load(onnx_dir / "model.pt", weights_only=True))
    enc, dec = make_backends("tensorrt", onnx_dir=onnx_dir, device="cuda", precision="fp16")
    assert enc.name == "tensorrt-fp16"
    rng = np.random.default_rng(2)
    img = rng.integers(0, 80, (150, 300, 3), dtype=np.uint8)
    img[30:110, 60:200] = (200, 180, 40)
    trt_p, ref_p = Predictor(enc, dec), Predictor.from_model(model.eval())
    for p in (trt_p, ref_p):
        p.set_image(img)
    box = np.array([50, 20, 210, 120])
    a, _, _ = trt_p.predict(box=box, num_multimask_outputs=4)
    b, _, _ = ref_p.predict(box=box, num_multimask_outputs=4)
    assert _iou(a, b) >= 0.9


@pytest.mark.gpu
@pytest.mark.trt
def test_encoder_max_batch_is_its_own_engine(onnx_dir):
    from edgesam.export.tensorrt_build import EncoderProfile, build_engine, engine_cache_path
    from edgesam.inference.ort_backend import CPU_EP, OrtEncoder
    from edgesam.inference.trt_backend import TrtEncoder

    enc_onnx = onnx_dir / "encoder.onnx"
    small = EncoderProfile(max_batch=2)
    path = build_engine(enc_onnx, "fp32", encoder_profile=small)
    assert path == engine_cache_path(enc_onnx, "fp32", profile=small)
    assert path != engine_cache_path(enc_onnx, "fp32", profile=EncoderProfile())
    enc = TrtEncoder(path)
    assert enc.dynamic_batch and enc.max_batch == 2
    assert TrtEncoder(enc_onnx, precision="fp32", profile=small).engine.path == path  # built from .onnx: cache hit
    x = np.random.default_rng(4).standard_normal((3, 3, S, S)).astype(np.float32)  # chunks of 2 + 1
    out, ref = enc(x), OrtEncoder(enc_onnx, providers=[CPU_EP])(x)
    assert np.linalg.norm(out - ref) / np.linalg.norm(ref) < 1e-3
