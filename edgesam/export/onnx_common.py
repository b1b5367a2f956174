"""Shared pieces of the ONNX exports: file names, I/O names, the legacy-exporter call and metadata.

Every graph writer (``onnx_native``, ``flavors``, ``uint8_encoder``, ``decoder_fast``, ``rpn_onnx``) uses
these; ``onnx_export`` assembles them into ``export_all``; ``export_cli`` is the ``python -m edgesam.export`` command.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import nn

ENCODER_FILE = "encoder.onnx"
DECODER_FILE = "decoder.onnx"
META_FILE = "export_meta.json"
DEFAULT_OPSET = 17
ENCODER_INPUTS = ("image",)
ENCODER_OUTPUTS = ("image_embeddings",)
ENCODER_BATCH_AXIS = "batch"  # dim_param of the encoder's dynamic batch axis (input and output)
DECODER_INPUTS = ("image_embeddings", "point_coords", "point_labels", "mask_input", "has_mask_input")
DECODER_OUTPUTS = ("scores", "masks")
FP32_SCOPES_KEY = "edgesam.fp32_scopes"


PE_MODULES = ("prompt_pe", "pe_layer")  # modules holding a random-Fourier positional encoding (coords @ G)
RPN_BOX_OUTPUTS = ("rpn_boxes", "rpn_scores")  # rpn.onnx outputs decoded from the head's last convolutions


class PointPromptEmbedding(nn.Module):
    """``EdgePromptEncoder.embed_points`` as a module of its own: (N,P,2) x-y pixels, (N,P) labels -> (N,P,256).

    Exporters hold it as ``prompt_pe`` so that its ONNX nodes (``sin/cos(2 pi (coords @ G))`` and the label
    embeddings) carry the ``/prompt_pe/`` scope, by which the FP16 graphs keep them in FP32: the phase
    ``2 pi (coords @ G)`` reaches tens of radians, where fp16 keeps about two decimals, so the encoding of a
    point would move with the rounding."""

    def __init__(self, prompt_encoder: nn.Module) -> None:
        super().__init__()
        self.pe = prompt_encoder

    def forward(self, point_coords: torch.Tensor, point_labels: torch.Tensor) -> torch.Tensor:
        return self.pe.embed_points(point_coords, point_labels)


def in_fp32_scope(node_name: str, scopes: list[str] | tuple[str, ...]) -> bool:
    """True when a node named ``node_name`` lies in one of ``scopes``: an entry is a name scope (covers every
    node below it, ``/neck/neck.1`` covers ``/neck/neck.1/Sqrt``) or one node's full name (``/Softmax_2``)."""
    return any(node_name == s or node_name.startswith(s + "/") for s in scopes)


def _scope(node_name: str) -> str:
    return node_name.rsplit("/", 1)[0] if "/" in node_name else ""


def _box_decode_nodes(graph) -> list[str]:
    """Names of the nodes between the RPN head's last convolutions and ``rpn_boxes`` / ``rpn_scores``:
    exp of the regressed log-distances, the location grid and the XYXY boxes (values up to S pixels)."""
    producer = {o: n for n in graph.node for o in n.output}
    seen: set[str] = set()
    todo = [o.name for o in graph.output if o.name in RPN_BOX_OUTPUTS]
    while todo:
        node = producer.get(todo.pop())
        if node is None or node.name in seen or node.op_type == "Conv":
            continue
        seen.add(node.name)
        todo.extend(node.input)
    return sorted(seen)


def fp32_scope_groups(model) -> dict[str, list[str]]:
    """The scopes of an exported graph (an ``onnx.ModelProto``) that FP16 copies keep in FP32, by kind:

    ``norm``  LayerNorm (``LayerNormalization`` nodes, LayerNorm2d's ReduceMean/Pow/Sqrt pattern) and GroupNorm
              (``InstanceNormalization``) scopes; a node at the root scope is named by itself.
    ``softmax``  every ``Softmax`` node (attention weights), by node name.
    ``positional_encoding``  the prompt PE (``/prompt_pe``, :class:`PointPromptEmbedding`) and a dense PE
              computed in the graph (``pe_layer``).
    ``rpn_box_decode``  the nodes after the RPN head's convolutions (``rpn.onnx`` only).

    Entries follow :func:`in_fp32_scope`; each list is sorted."""
    nodes = model.graph.node
    ops_by_scope: dict[str, set[str]] = {}
    for node in nodes:
        ops_by_scope.setdefault(_scope(node.name), set()).add(node.op_type)
    norm = {_scope(n.name) or n.name for n in nodes if n.op_type in ("LayerNormalization", "InstanceNormalization")}
    norm |= {s for s, ops in ops_by_scope.items() if s and {"ReduceMean", "Pow", "Sqrt"} <= ops}
    return {"norm": sorted(norm),
            "softmax": sorted(n.name for n in nodes if n.op_type == "Softmax"),
            "positional_encoding": sorted(s for s in ops_by_scope if s and s.rsplit("/", 1)[-1] in PE_MODULES),
            "rpn_box_decode": _box_decode_nodes(model.graph)}


def _fp32_scopes(onnx_path: Path) -> list[str]:
    """Every entry of :func:`fp32_scope_groups` for the graph at ``onnx_path``, sorted: the value of the
    ``edgesam.fp32_scopes`` metadata."""
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    return sorted({s for group in fp32_scope_groups(model).values() for s in group})


def _finalise(onnx_path: Path, entries: dict[str, str], output_shapes: dict[str, tuple] | None = None) -> None:
    """Add metadata and state output shapes the tracer left symbolic (ints static, strs named axes)."""
    import onnx

    model = onnx.load(str(onnx_path))
    for out in model.graph.output:
        for dim, want in zip(out.type.tensor_type.shape.dim, (output_shapes or {}).get(out.name, ())):
            if isinstance(want, int):
                dim.dim_value = want
            else:
                dim.dim_param = want
    for k, v in entries.items():
        prop = model.metadata_props.add()
        prop.key, prop.value = k, v
    onnx.save(model, str(onnx_path))


def _export(module: nn.Module, args: tuple, path: Path, input_names, output_names, opset: int,
            dynamic_axes: dict | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        # The encoder's shape check and tensor->int conversions are constant for a traced static shape.
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=UserWarning, module="torch.onnx")
        torch.onnx.export(module, args, str(path), input_names=list(input_names), output_names=list(output_names),
                          opset_version=opset, do_constant_folding=True, dynamic_axes=dynamic_axes, dynamo=False)


