"""FP16 copies of the exported graphs (``NAME.fp16.onnx`` beside ``NAME.onnx``), the input of strongly typed
TensorRT builds (TensorRT 11 takes precision only from the graph's tensor types; 10.x builds them too).

The conversion is ``onnxconverter_common.float16.convert_float_to_float16`` with

* ``keep_io_types=True``: graph inputs and outputs stay float32, so callers and engines keep their I/O;
* ``node_block_list``: every node inside the graph's ``edgesam.fp32_scopes`` (:func:`~.onnx_common.fp32_scope_groups`:
  LayerNorm / GroupNorm, attention softmax, the prompt and dense positional encodings, the RPN box decoding),
  plus the ``Constant`` nodes only they read, so their constants (LayerNorm eps, ``2 pi``, strides) keep
  float32 values, plus the graph's own ``Cast(to=FLOAT)`` nodes: a cast of integer shape arithmetic (the RPN's
  location grid, shape-derived scales) would otherwise keep emitting float32 into a tensor the converter has
  retyped float16, which ONNX Runtime and TensorRT reject. (They are blocked by name: blocking the ``Cast`` op
  type makes the converter bracket its own inserted casts again, without end.)
* ``op_block_list``: the converter's default list (Resize, Range, TopK, ...).

Graph shapes the converter mishandles are normalised on the float32 model first (the converter does the
conversion itself; nothing is retyped by hand):

* an ``Identity`` that re-exports an initializer (the legacy exporter writes one per reused or equal-valued
  parameter) is dropped and its readers read the initializer;
* a float initializer read by FP32 and FP16 nodes alike gets a second copy for the FP32 readers: the converter
  keeps every initializer a blocked node reads in float32, for all its readers, and the FP16 ones then fail;
* a graph output that other nodes also read (``keys0`` of ``decoder_image.onnx``) gets its own ``Identity``,
  so the float32 output cast of ``keep_io_types`` does not change the type those readers see.

After conversion two kinds of casts the converter leaves behind are repaired:

* ``Cast(to=FLOAT16) -> Cast(to=FLOAT)`` chains on a float32 tensor are bypassed: the converter brackets every
  blocked node with casts and removes the pair between two blocked nodes only when the fp16 cast has one
  reader, so a float32 tensor read by several FP32 nodes would otherwise be rounded to fp16 between them;
* a graph output written by a blocked node (the encoder's last LayerNorm2d, the RPN's boxes) is cast to fp16
  and the output retyped float16 despite ``keep_io_types``; that cast becomes a float32 one (a no-op) and the
  output float32 again, so it is not rounded either.

Every copy records ``edgesam.precision`` = ``fp16`` and ``edgesam.fp16_source_sha256`` (the float32 file's hash),
keeps the source's metadata (``edgesam.fp32_scopes`` ...), passes ``onnx.checker`` and runs in ONNX Runtime on
the CPU. :func:`export_fp16` converts a folder and reuses copies whose source hash matches.
"""
from __future__ import annotations

import json
import warnings
from collections import Counter
from pathlib import Path

from ..storage import sha256 as sha256_file
from ..models.rpn import RPN_ONNX_FILE
from .decoder_fast import IMAGE_FILE, PROMPT_FILE
from .onnx_common import DECODER_FILE, ENCODER_FILE, FP32_SCOPES_KEY, META_FILE, fp32_scope_groups, in_fp32_scope
from .trt_common import file_lock

FP16_SUFFIX = ".fp16.onnx"
PRECISION_KEY = "edgesam.precision"
SOURCE_KEY = "edgesam.fp16_source_sha256"
FP16_GRAPHS = {"encoder": ENCODER_FILE, "decoder": DECODER_FILE, "decoder_image": IMAGE_FILE,
               "decoder_prompt": PROMPT_FILE, "rpn": RPN_ONNX_FILE}
FLOAT, FLOAT16 = 1, 10  # onnx.TensorProto data types


def fp16_name(name: str) -> str:
    """``encoder.onnx`` -> ``encoder.fp16.onnx``."""
    return name[: -len(".onnx")] + FP16_SUFFIX if name.endswith(".onnx") else name + FP16_SUFFIX


def fp16_path(onnx_path: str | Path) -> Path:
    """Where the FP16 copy of ``onnx_path`` lives (beside it); an ``.fp16.onnx`` path is its own copy."""
    p = Path(onnx_path)
    return p if p.name.endswith(FP16_SUFFIX) else p.with_name(fp16_name(p.name))


def _scopes(model) -> list[str]:
    """The model's ``edgesam.fp32_scopes`` metadata, or a fresh scan for graphs exported without it."""
    props = {p.key: p.value for p in model.metadata_props}
    if FP32_SCOPES_KEY in props:
        return json.loads(props[FP32_SCOPES_KEY])
    return sorted({s for group in fp32_scope_groups(model).values() for s in group})


def block_list(model, scopes: list[str]) -> list[str]:
    """Names of the nodes kept in FP32: those in ``scopes``, the ``Constant`` nodes read only by them and the
    graph's ``Cast(to=FLOAT)`` nodes (see the module doc)."""
    blocked = {n.name for n in model.graph.node if in_fp32_scope(n.name, scopes)
               or (n.op_type == "Cast" and n.attribute[0].i == FLOAT)}
    readers: dict[str, set[str]] = {}
    for n in model.graph.node:
        for i in n.input:
            readers.setdefault(i, set()).add(n.name)
    for n in model.graph.node:
        if n.op_type == "Constant" and n.name not in blocked:
            users = set().union(*(readers.get(o, set()) for o in n.output))
            if users and users <= blocked:
                blocked.add(n.name)
    return sorted(blocked)


def _normalise(model, scopes: list[str]) -> None:
    """The float32-graph rewrites of the module doc, in place (same function, node for node)."""
    from onnx import helper

    g = model.graph
    inits = {t.name: t for t in g.initializer}
    outputs = {o.name for o in g.output}
    alias: dict[str, str] = {}
    for node in [n for n in g.node if n.op_type == "Identity" and n.output[0] not in outputs]:
        src = alias.get(node.input[0], node.input[0])
        if src in inits:  # nodes are in topological order, so a chain resolves link by link
            alias[node.output[0]] = src
            g.node.remove(node)
    for node in g.node:
        node.input[:] = [alias.get(i, i) for i in node.input]
    blocked = set(block_list(model, scopes))
    readers: dict[str, list] = {}
    for node in g.node:
        for i in set(node.input) & inits.keys():
            readers.setdefault(i, []).append(node)
    for name, nodes in readers.items():
        fp32 = [n for n in nodes if n.name in blocked]
        if inits[name].data_type == FLOAT and fp32 and len(fp32) < len(nodes):
            copy = g.initializer.add()
            copy.CopyFrom(inits[name])
            copy.name = f"{name}__fp32"
            for n in fp32:
                n.input[:] = [copy.name if i == name else i for i in n.input]
    read = {i for n in g.node for i in n.input}
    for out in [o for o in outputs if o in read]:
        inner = f"{out}__graph_internal"
        for node in g.node:
            node.output[:] = [inner if o == out else o for o in node.output]
            node.input[:] = [inner if i == out else i for i in node.input]
        g.node.append(helper.make_node("Identity", [inner], [out], name=f"{out}__graph_output"))


def _repair_casts(model) -> int:
    """The post-conversion cast repairs of the module doc, in place. Returns how many readers were rewired."""
    g = model.graph
    producer = {o: n for n in g.node for o in n.output}
    types = {v.name: v.type.tensor_type.elem_type for v in (*g.value_info, *g.input, *g.output)}
    types.update({t.name: t.data_type for t in g.initializer})

    def cast_to(node, to: int) -> bool:
        return node is not None and node.op_type == "Cast" and node.attribute[0].i == to

    for out in g.output:  # a blocked node's graph output: the converter casts it to fp16 and retypes the output
        cast = producer.get(out.name)
        if (out.type.tensor_type.elem_type == FLOAT16 and cast_to(cast, FLOAT16)
                and types.get(cast.input[0]) == FLOAT):
            cast.attribute[0].i = FLOAT
            out.type.tensor_type.elem_type = FLOAT
    rewired = 0
    for node in g.node:
        for j, name in enumerate(node.input):
            up = producer.get(name)
            if cast_to(up, FLOAT):
                down = producer.get(up.input[0])
                if cast_to(down, FLOAT16) and types.get(down.input[0]) == FLOAT:
                    node.input[j] = down.input[0]
                    rewired += 1
    graph_outputs = {o.name for o in g.output}
    while True:
        read = {i for n in g.node for i in n.input} | graph_outputs
        dead = [n for n in g.node if n.op_type == "Cast" and not any(o in read for o in n.output)]
        if not dead:
            return rewired
        for n in dead:
            g.node.remove(n)


def convert_graph(src: str | Path, dst: str | Path | None = None) -> Path:
    """Write the FP16 copy of the float32 graph ``src`` to ``dst`` (default :func:`fp16_path`) and check it
    (``onnx.checker``, an ONNX Runtime CPU session). Returns ``dst``."""
    import onnx
    import onnxruntime as ort
    from onnxconverter_common import float16

    src = Path(src)
    dst = Path(dst) if dst else fp16_path(src)
    model = onnx.load(str(src))
    scopes = _scopes(model)
    _normalise(model, scopes)
    blocked = block_list(model, scopes)
    with warnings.catch_warnings():  # one warning per weight below fp16's range, clamped to +-1e-7 as documented
        warnings.filterwarnings("ignore", category=UserWarning, module="onnxconverter_common")
        model = float16.convert_float_to_float16(model, keep_io_types=True, node_block_list=blocked)
    _repair_casts(model)
    props = {p.key: p.value for p in model.metadata_props}
    props.update({FP32_SCOPES_KEY: json.dumps(scopes), PRECISION_KEY: "fp16", SOURCE_KEY: sha256_file(src)})
    del model.metadata_props[:]
    for k, v in props.items():
        prop = model.metadata_props.add()
        prop.key, prop.value = k, v
    onnx.checker.check_model(model)
    ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    tmp = dst.with_name(dst.name + ".tmp")
    onnx.save(model, str(tmp))
    tmp.replace(dst)  # readers never see a partial graph
    return dst


def ensure_fp16(onnx_path: str | Path) -> Path:
    """The FP16 copy of ``onnx_path``, written if missing or made from another version of it (its
    ``edgesam.fp16_source_sha256`` differs). Concurrent callers queue on a per-file lock (:func:`~.trt_common.file_lock`)."""
    src = Path(onnx_path)
    dst = fp16_path(src)
    if dst == src:
        return src
    with file_lock(dst):
        if not (dst.is_file() and _source_sha256(dst) == sha256_file(src)):
            convert_graph(src, dst)
    return dst


def _source_sha256(path: Path) -> str | None:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return {p.key: p.value for p in model.metadata_props}.get(SOURCE_KEY)


def export_fp16(folder: str | Path) -> dict[str, Path]:
    """FP16 copies of the exported graphs in ``folder`` (encoder, reference decoder, split decoder, ``rpn.onnx``
    where present), reusing up-to-date ones; records them in ``export_meta.json`` (``fp16``: files and hashes)
    when the folder has one. Returns ``{graph name: fp16 path}``."""
    d = Path(folder)
    out = {k: ensure_fp16(d / name) for k, name in FP16_GRAPHS.items() if (d / name).is_file()}
    meta_path = d / META_FILE
    if meta_path.is_file():
        with file_lock(d / META_FILE):
            meta = json.loads(meta_path.read_text())
            meta["fp16"] = {"files": {k: p.name for k, p in out.items()},
                            "sha256": {k: sha256_file(p) for k, p in out.items()},
                            "converter": "onnxconverter_common.float16 (keep_io_types, fp32 scopes blocked)"}
            meta_path.write_text(json.dumps(meta, indent=2) + "\n")
    return out


def fp16_report(path: str | Path) -> dict[str, Counter]:
    """Node-type counts of an FP16 graph by kind: each ``fp32_scope_groups`` kind (nodes in those scopes,
    tagged ``op/fp32`` or ``op/fp16`` by their first float output), ``rest`` (the other compute nodes, same
    tags) and ``casts`` (``Cast/to_fp16``, ``Cast/to_fp32``). Shape-only nodes (Constant, Shape, int outputs)
    are left out."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    g = model.graph
    types = {v.name: v.type.tensor_type.elem_type for v in (*g.value_info, *g.input, *g.output)}
    groups = {k: v for k, v in fp32_scope_groups(model).items() if v}
    report: dict[str, Counter] = {k: Counter() for k in (*groups, "rest", "casts")}
    for n in g.node:
        if n.op_type == "Cast":
            to = n.attribute[0].i
            if to in (FLOAT, FLOAT16):
                report["casts"][f"Cast/to_{'fp16' if to == FLOAT16 else 'fp32'}"] += 1
            continue
        dtype = next((types[o] for o in n.output if types.get(o) in (FLOAT, FLOAT16)), None)
        if n.op_type == "Constant" or dtype is None:
            continue
        kind = next((k for k, scopes in groups.items() if in_fp32_scope(n.name, scopes)), "rest")
        report[kind][f"{n.op_type}/{'fp16' if dtype == FLOAT16 else 'fp32'}"] += 1
    return report
