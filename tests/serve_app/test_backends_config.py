"""Serve backends and config without a running app: backend selection and weight reporting, the RPN export,
``serve/serve_config.yaml`` against Ray's schema and the default app built from the config file."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

requests = pytest.importorskip("requests")
pytest.importorskip("ray.serve")

from edgesam.models import EdgeSAM  # noqa: E402

from .helpers import IMG, REPO  # noqa: E402

pytestmark = [pytest.mark.ray,
              # pycocotools under numpy 2 (inside edgesam.data.rle.decode_rle), not ours
              pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")]


@pytest.mark.timeout(120)
def test_backend_selection_and_weight_reporting(tmp_path, checkpoint):
    """No Ray. auto on CPU -> onnxruntime: onnx_dir as given, a checkpoint or random model through a cached
    export (made once, reused); torch on request; random weights always flagged."""
    from edgesam.export.onnx_export import export_all
    from serve.config import ModelSection
    from serve.model import load_backends

    torch.manual_seed(0)
    export_all(EdgeSAM(IMG).eval(), tmp_path / "onnx", checkpoint_sha256="random")
    x = np.random.default_rng(0).standard_normal((1, 3, IMG, IMG)).astype(np.float32)
    cache = tmp_path / "cache"
    ort = load_backends(ModelSection(img_size=IMG, onnx_dir=str(tmp_path / "onnx"), threads=1), with_rpn=True)
    rnd = load_backends(ModelSection(img_size=IMG, seed=0, threads=1, export_cache_dir=str(cache)), with_rpn=True)
    tch = load_backends(ModelSection(img_size=IMG, seed=0, threads=1, backend="torch"), with_rpn=True)
    ckpt = load_backends(ModelSection(img_size=IMG, checkpoint=str(checkpoint), threads=1, export_cache_dir=str(cache)))
    assert ort.rpn is None and rnd.rpn is None and tch.rpn is None  # no RPN here -> everything mode "auto" is the grid
    assert ort.info.backend == "onnxruntime-cpu/onnxruntime-cpu" and ort.info.weights == "random" and ort.info.warning
    assert rnd.info.backend == "onnxruntime-cpu/onnxruntime-cpu" and rnd.info.weights == "random" and rnd.info.warning
    assert tch.info.backend == "torch-cpu/torch-cpu" and tch.info.weights == "random" and tch.info.warning
    assert ckpt.info.backend.startswith("onnxruntime-cpu") and ckpt.info.weights == "checkpoint"
    assert ckpt.info.warning is None and checkpoint.name in ckpt.info.identity
    exported = sorted(p for p in cache.iterdir() if p.is_dir() and not p.name.startswith("."))
    assert len(exported) == 2 and {ckpt.info.meta["onnx_dir"], rnd.info.meta["onnx_dir"]} == {str(p) for p in exported}
    np.testing.assert_allclose(ort.encoder(x), tch.encoder(x), atol=1e-3)  # same seed, two runtimes
    np.testing.assert_allclose(rnd.encoder(x), tch.encoder(x), atol=1e-3)
    assert np.abs(ckpt.encoder(x) - rnd.encoder(x)).max() > 1e-2  # a different (seed 123) model
    # the export is made once: a second load reuses the folder untouched
    stamp = {p: p.stat().st_mtime_ns for p in exported[0].iterdir()}
    again = load_backends(ModelSection(img_size=IMG, checkpoint=str(checkpoint), threads=1, export_cache_dir=str(cache)))
    assert again.info.meta["onnx_dir"] == ckpt.info.meta["onnx_dir"]
    assert {p: p.stat().st_mtime_ns for p in exported[0].iterdir()} == stamp
    with pytest.raises(ValueError, match="takes 256px inputs"):
        load_backends(ModelSection(img_size=512, onnx_dir=str(tmp_path / "onnx")))
    # model.int8: INT8 copies written beside the fp32 graphs, the runtime named so in /v1/model
    i8 = load_backends(ModelSection(img_size=IMG, onnx_dir=str(tmp_path / "onnx"), threads=1, int8=True))
    assert i8.info.backend == "onnxruntime-cpu-int8/onnxruntime-cpu-int8"
    assert {"encoder.int8.onnx", "decoder_prompt.int8.onnx"} <= {p.name for p in (tmp_path / "onnx").iterdir()}
    e8, e32 = i8.encoder(x), ort.encoder(x)
    assert 0 < np.linalg.norm(e8 - e32) / np.linalg.norm(e32) < 0.03
    with pytest.raises(ValueError, match="model.int8 runs on backend onnxruntime"):
        ModelSection(img_size=IMG, backend="torch", int8=True)


@pytest.mark.timeout(120)
def test_auto_backend_exports_the_rpn_with_the_checkpoint(tmp_path):
    """A checkpoint with an RPN served by ONNX Runtime (auto): rpn.onnx comes with the cached export and its
    proposals equal the torch RPN's."""
    from edgesam.inference.everything import OrtRpnEncoder, TorchRpnEncoder
    from edgesam.models import save_student
    from edgesam.models.rpn import build_rpn
    from serve.config import ModelSection
    from serve.model import load_backends

    torch.manual_seed(7)
    model = EdgeSAM(IMG).eval()
    model.rpn = build_rpn(model.image_encoder.feature_channels, width=32, num_convs=1).eval()
    ckpt = save_student(model, tmp_path / "rpn_student.pt")
    ort = load_backends(ModelSection(img_size=IMG, checkpoint=str(ckpt), threads=1,
                                     export_cache_dir=str(tmp_path / "cache")), with_rpn=True)
    tch = load_backends(ModelSection(img_size=IMG, checkpoint=str(ckpt), threads=1, backend="torch"), with_rpn=True)
    assert isinstance(ort.rpn, OrtRpnEncoder) and isinstance(tch.rpn, TorchRpnEncoder)
    assert (Path(ort.info.meta["onnx_dir"]) / "rpn.onnx").is_file() and ort.info.weights == "checkpoint"
    x = np.random.default_rng(1).standard_normal((1, 3, IMG, IMG)).astype(np.float32)
    (e1, b1, s1), (e2, b2, s2) = ort.rpn(x), tch.rpn(x)
    np.testing.assert_allclose(e1, e2, atol=1e-3)
    np.testing.assert_allclose(s1, s2, atol=1e-3)
    top = np.argsort(-s2[0])[:50]  # the proposals that matter; boxes are in pixels
    np.testing.assert_allclose(b1[0][top], b2[0][top], atol=0.5)


@pytest.mark.timeout(30)
def test_serve_config_yaml_matches_ray_schema_and_app():
    from ray.serve.schema import ServeDeploySchema

    raw = yaml.safe_load((REPO / "serve" / "serve_config.yaml").read_text())
    schema = ServeDeploySchema.model_validate(raw)
    (app,) = schema.applications
    assert app.import_path == "serve.app:edgesam" and app.route_prefix == "/"
    names = {d.name: d for d in app.deployments}
    assert set(names) == {"ImageEncoder", "MaskDecoder", "Everything", "EmbeddingStore", "EdgeSamIngress"}
    assert names["EmbeddingStore"].num_replicas == 1  # the shared state: never more than one
    for name in ("ImageEncoder", "MaskDecoder"):
        d = names[name]
        assert d.max_ongoing_requests >= 2 * d.user_config["max_batch_size"]
        assert d.autoscaling_config["min_replicas"] >= 1


@pytest.mark.timeout(30)
def test_default_app_builds_from_config_file(monkeypatch, tmp_path):
    import serve.app as app_module
    from serve.config import load_serve_config

    cfg = load_serve_config()
    assert cfg.model.img_size == 1024 and cfg.encoder.options()["max_ongoing_requests"] >= 2 * cfg.encoder.max_batch_size
    custom = tmp_path / "serve_small.yaml"
    custom.write_text(yaml.safe_dump({"model": {"img_size": 256}, "encoder": {"max_batch_size": 2}}))
    monkeypatch.setenv("EDGESAM_SERVE_CONFIG", str(custom))
    assert load_serve_config().model.img_size == 256
    assert app_module.edgesam is not None  # builds the Application graph without starting anything
    custom.write_text(yaml.safe_dump({"model": {"img_size": 100}}))
    with pytest.raises(ValueError, match="multiple of 64"):
        app_module.__getattr__("edgesam")
