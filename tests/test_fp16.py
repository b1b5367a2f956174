"""FP16 graphs (edgesam.export.fp16): the fp32 scopes stay float32, the bulk runs in float16, I/O stays float32,
and on photos the FP16 graphs agree with the float32 ones (ONNX Runtime on the CPU).

Weights are random (seeded): no trained student is available to the tests. The compared masks are checked to be
non-trivial (1 % to 99 % of the low-res mask) so that an IoU is meaningful.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from edgesam.export.fp16 import (FP16_GRAPHS, PRECISION_KEY, SOURCE_KEY, export_fp16, fp16_path,
                                 fp16_report)
from edgesam.export.onnx_common import FP32_SCOPES_KEY, META_FILE, fp32_scope_groups, in_fp32_scope

S = 256
PHOTOS = Path(__file__).resolve().parent.parent.parent / "shared" / "images"  # ../shared beside the checkout
FLOAT, FLOAT16 = 1, 10
HEAVY = ("Conv", "MatMul", "Gemm", "ConvTranspose")


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """A random-weight EdgeSAM (with an RPN) exported at S = 256, plus its FP16 copies."""
    from edgesam.export import export_all
    from edgesam.models import EdgeSAM
    from edgesam.models.rpn import build_rpn

    torch.manual_seed(0)
    model = EdgeSAM(S).eval()
    model.rpn = build_rpn(model.image_encoder.feature_channels).eval()
    out = tmp_path_factory.mktemp("fp16")
    export_all(model, out, checkpoint_sha256="random")
    export_fp16(out)
    return out


def _typed(path: Path):
    m = onnx.shape_inference.infer_shapes(onnx.load(str(path)))
    g = m.graph
    types = {v.name: v.type.tensor_type.elem_type for v in (*g.value_info, *g.input, *g.output)}
    types.update({t.name: t.data_type for t in g.initializer})
    return m, types


def test_every_graph_names_its_fp32_scopes(folder):
    """Metadata on all five graphs; each kind of scope is found where it exists."""
    scopes = {}
    for key, name in FP16_GRAPHS.items():
        props = {p.key: p.value for p in onnx.load(str(folder / name), load_external_data=False).metadata_props}
        scopes[key] = json.loads(props[FP32_SCOPES_KEY])
    assert scopes["encoder"] == ["/neck/neck.1", "/neck/neck.3"]  # LayerNorm2d x 2; the encoder has no attention
    for key in ("decoder", "decoder_prompt"):
        assert "/prompt_pe" in scopes[key]
        assert sum(s.endswith("Softmax") or "/Softmax" in s for s in scopes[key]) == 7  # 2 blocks x 3 + final
    assert "/pe_layer" in scopes["decoder"]  # the dense PE is computed in decoder.onnx (a constant elsewhere)
    groups = fp32_scope_groups(onnx.load(str(folder / "rpn.onnx"), load_external_data=False))
    decode_ops = {n.op_type for n in onnx.load(str(folder / "rpn.onnx")).graph.node
                  if n.name in set(groups["rpn_box_decode"])}
    assert {"Exp", "Sub", "Add", "Sigmoid", "Sqrt"} <= decode_ops and "Conv" not in decode_ops
    assert set(groups["rpn_box_decode"]) <= set(scopes["rpn"])
    assert any(s.startswith("/rpn/") for s in groups["norm"])  # GroupNorm of the RPN towers


@pytest.mark.parametrize("key", list(FP16_GRAPHS))
def test_fp16_graph_types_per_scope(folder, key):
    """Nodes of the fp32 scopes read and write float32 (no fp16 round trip between them); most Conv/MatMul/Gemm
    outside read float16; graph inputs/outputs stay float32; the copy records its precision and source."""
    src = folder / FP16_GRAPHS[key]
    m32 = onnx.load(str(src), load_external_data=False)
    scopes = json.loads({p.key: p.value for p in m32.metadata_props}[FP32_SCOPES_KEY])
    original = {n.name for n in m32.graph.node}
    m16, types = _typed(fp16_path(src))
    props = {p.key: p.value for p in m16.metadata_props}
    assert props[PRECISION_KEY] == "fp16" and json.loads(props[FP32_SCOPES_KEY]) == scopes
    from edgesam.storage import sha256

    assert props[SOURCE_KEY] == sha256(src)
    assert all(v.type.tensor_type.elem_type != FLOAT16 for v in (*m16.graph.input, *m16.graph.output))
    assert [v.name for v in m16.graph.input] == [v.name for v in m32.graph.input]
    producer = {o: n for n in m16.graph.node for o in n.output}

    def round_trip(name: str) -> bool:
        up = producer.get(name)
        if up is None or up.op_type != "Cast" or up.attribute[0].i != FLOAT:
            return False
        down = producer.get(up.input[0])
        return down is not None and down.op_type == "Cast" and down.attribute[0].i == FLOAT16

    in_scope = [n for n in m16.graph.node if n.name in original and in_fp32_scope(n.name, scopes)]
    assert len(in_scope) >= len(scopes)
    for n in in_scope:
        floats = [t for t in (*n.input, *n.output) if types.get(t) in (FLOAT, FLOAT16)]
        assert all(types[t] == FLOAT for t in floats), (n.name, [(t, types[t]) for t in floats])
        assert not any(round_trip(t) for t in n.input), n.name
    heavy = [n for n in m16.graph.node if n.op_type in HEAVY and not in_fp32_scope(n.name, scopes)]
    fp16 = [n for n in heavy if types.get(n.input[0]) == FLOAT16]
    assert heavy and len(fp16) >= 0.9 * len(heavy), (len(fp16), len(heavy))
    report = fp16_report(fp16_path(src))
    print(key, {k: dict(v) for k, v in report.items()})
    assert all(op.endswith("/fp32") for kind, c in report.items() if kind not in ("rest", "casts") for op in c)


def _photos() -> list[tuple[str, np.ndarray]]:
    from PIL import Image

    names = ["dog.jpg", "truck.jpg", "groceries.jpg"]
    if all((PHOTOS / n).is_file() for n in names):
        return [(n, np.asarray(Image.open(PHOTOS / n).convert("RGB"))) for n in names]
    import skimage.data as d

    return [("astronaut", d.astronaut()), ("coffee", d.coffee()), ("chelsea", d.chelsea())]


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def test_fp16_graphs_match_fp32_on_photos(folder):
    """Random weights, S = 256, three photos, one box and one point prompt each: FP16 encoder embeddings within
    1 % (relative L2); FP16 reference decoder and FP16 split decoder (image + prompt) masks at IoU >= 0.98 against
    float32 (end to end: FP16 encoder feeding the FP16 decoders); the RPN graph's boxes within a pixel."""
    import onnxruntime as ort

    from edgesam.data.transforms import ResizeLongestSide, preprocess

    def sess(name: str, fp16: bool):
        p = folder / name
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        return ort.InferenceSession(str(fp16_path(p) if fp16 else p), opts, providers=["CPUExecutionProvider"])

    graphs = {prec: {k: sess(n, prec == "fp16") for k, n in FP16_GRAPHS.items()} for prec in ("fp32", "fp16")}

    def masks(prec: str, x: np.ndarray, coords: np.ndarray, labels: np.ndarray) -> dict[str, np.ndarray]:
        g = graphs[prec]
        emb = g["encoder"].run(None, {"image": x})[0]
        n = coords.shape[0]
        ref = g["decoder"].run(["masks"], {"image_embeddings": emb, "point_coords": coords, "point_labels": labels,
                                           "mask_input": np.zeros((n, 1, S // 4, S // 4), np.float32),
                                           "has_mask_input": np.zeros(n, np.float32)})[0]
        side = dict(zip(("keys0", "k1", "v1", "q1"), g["decoder_image"].run(None, {"image_embeddings": emb})))
        split = g["decoder_prompt"].run(["masks"], {**side, "point_coords": coords, "point_labels": labels})[0]
        return {"emb": emb, "decoder": ref[:, 0] > 0, "split": split[:, 0] > 0}

    tf = ResizeLongestSide(S)
    rows = []
    for name, img in _photos():
        h, w = img.shape[:2]
        x = preprocess(img, S)[0].numpy()
        box = tf.apply_coords(np.array([[0.25 * w, 0.2 * h], [0.75 * w, 0.8 * h]], np.float32), (h, w))
        point = tf.apply_coords(np.array([[0.5 * w, 0.45 * h], [0.0, 0.0]], np.float32), (h, w))
        point[1] = 0.0  # the padding point sits at (0, 0) in the S frame
        for kind, coords, labels in (("box", box, [2.0, 3.0]), ("point", point, [1.0, -1.0])):
            c, lab = coords[None].astype(np.float32), np.array([labels], np.float32)
            a, b = masks("fp32", x, c, lab), masks("fp16", x, c, lab)
            rel = float(np.linalg.norm(b["emb"] - a["emb"]) / np.linalg.norm(a["emb"]))
            assert rel < 1e-2, (name, rel)
            for dec in ("decoder", "split"):
                area = float(a[dec].mean())
                assert 0.01 < area < 0.99, (name, kind, dec, area)
                iou = _iou(a[dec], b[dec])
                rows.append((name, kind, dec, round(iou, 4), round(area, 3), round(rel, 5)))
                assert iou >= 0.98, rows[-1]
        r32 = graphs["fp32"]["rpn"].run(None, {"image": x})
        r16 = graphs["fp16"]["rpn"].run(None, {"image": x})
        assert all(o.dtype == np.float32 for o in r16)
        assert np.abs(r16[1] - r32[1]).max() < 1.0, np.abs(r16[1] - r32[1]).max()  # XYXY boxes, S-frame pixels
    print("\nphoto kind decoder IoU(fp16,fp32) fp32-mask-area embedding-rel-err")
    for r in rows:
        print(*r)


def test_export_fp16_reuses_up_to_date_copies(folder, tmp_path):
    """A second call rewrites nothing; a changed source is converted again; export_meta.json lists the copies."""
    import shutil

    d = tmp_path / "copy"
    d.mkdir()
    for name in ("encoder.onnx", "encoder.fp16.onnx", META_FILE):
        shutil.copy(folder / name, d / name)
    before = (d / "encoder.fp16.onnx").stat().st_mtime_ns
    out = export_fp16(d)
    assert out == {"encoder": d / "encoder.fp16.onnx"}
    assert (d / "encoder.fp16.onnx").stat().st_mtime_ns == before
    meta = json.loads((d / META_FILE).read_text())
    assert meta["fp16"]["files"] == {"encoder": "encoder.fp16.onnx"}
    m = onnx.load(str(d / "encoder.onnx"))
    m.metadata_props.add(key="edgesam.note", value="changed")
    onnx.save(m, str(d / "encoder.onnx"))
    export_fp16(d)
    props = {p.key: p.value for p in onnx.load(str(d / "encoder.fp16.onnx"), load_external_data=False).metadata_props}
    from edgesam.storage import sha256

    assert props[SOURCE_KEY] == sha256(d / "encoder.onnx") and props["edgesam.note"] == "changed"


def test_cli_precision_fp16_writes_the_copies(tmp_path):
    from edgesam.export.export_cli import main

    out = tmp_path / "cli"
    assert main(["--random", "--img-size", "128", "--out", str(out), "--precision", "fp16", "--no-verify"]) == 0
    meta = json.loads((out / META_FILE).read_text())
    assert set(meta["fp16"]["files"]) == {"encoder", "decoder", "decoder_image", "decoder_prompt"}
    for name in meta["fp16"]["files"].values():
        assert (out / name).is_file()
    with pytest.raises(SystemExit):
        main(["--random", "--out", str(out), "--precision", "bf16"])
