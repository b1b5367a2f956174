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


def _fp32_scopes(onnx_path: Path) -> list[str]:
    """Name scopes holding a normalisation: ``LayerNormalization`` nodes and LayerNorm2d's
    ReduceMean/Pow/Sqrt pattern (the exporter names nodes ``/module/path/OpType``)."""
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    ops_by_scope: dict[str, set[str]] = {}
    for node in model.graph.node:
        scope = node.name.rsplit("/", 1)[0] if "/" in node.name else ""
        ops_by_scope.setdefault(scope, set()).add(node.op_type)
    return sorted(s for s, ops in ops_by_scope.items() if s and (
        "LayerNormalization" in ops or {"ReduceMean", "Pow", "Sqrt"} <= ops))


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


