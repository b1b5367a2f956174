"""ONNX export of the EdgeSAM image encoder and prompt decoder (legacy TorchScript exporter, opset 17).

Encoder graph (``encoder.onnx``), dynamic batch B ("batch"), static S
    input  ``image``            float32 (B, 3, S, S): resized (longest side S), normalised with SAM's
                                pixel mean/std and zero-padded bottom/right (see ``edgesam.data.transforms``).
    output ``image_embeddings`` float32 (B, 256, S/16, S/16).
    One call encodes B images (ONNX Runtime CPU: batch 8 agrees with 8 single calls to ~3e-6). Graphs
    exported before the batch axis was dynamic have a fixed batch of 1; ``OrtEncoder`` and ``TrtEncoder``
    still run those, image by image.
    The RepVGG branches are fused first (``fuse_for_deploy``, exact in eval mode). The neck's x2 upsample
    stays bicubic, which is what the weights were trained with (the official export switched to
    bilinear). By default it is written as an exactly equivalent replicate-pad + depthwise 5x5 conv +
    DepthToSpace (:class:`BicubicUpsample2x`) because ONNX Runtime's CPU cubic ``Resize`` kernel costs
    ~70 ms of a ~0.2 s encoder run; ``cubic_as_conv=False`` writes ONNX ``Resize`` (mode ``cubic``,
    ``cubic_coeff_a`` -0.75, ``half_pixel``) instead. Both match PyTorch to ~1e-6.

Decoder graph (``decoder.onnx``), SAM's ONNX convention with a prompt batch axis
    inputs
        ``image_embeddings`` float32 (1, 256, h, w), h = w = S/16, from the encoder.
        ``point_coords``     float32 (N, P, 2): x-y pixels in the padded S x S input frame
                             (original coordinates scaled by S / longest side, no offset).
        ``point_labels``     float32 (N, P): -2 ignore, -1 padding, 0 negative, 1 positive,
                             2 box top-left, 3 box bottom-right (a box is two points).
        ``mask_input``       float32 (N, 1, 4h, 4w): low-res mask logits from an earlier call.
        ``has_mask_input``   float32 (N,): 1 uses ``mask_input``, 0 uses the learnt no-mask embedding
                             (blended inside the graph, so one graph serves both; pass zeros for
                             ``mask_input`` when it is 0).
    outputs
        ``scores``           float32 (N, 4): IoU-head predictions for the 4 mask tokens. EdgeSAM's IoU
                             head is not distilled; rank with the stability score of ``masks`` instead.
        ``masks``            float32 (N, 4, 4h, 4w): low-res mask logits (threshold 0). Token 0 is the
                             single-mask output, tokens 1-3 the multimask outputs.
    Dynamic axes: N = "num_prompts", P = "num_points". The (N, P) batch lets one call decode many
    prompts against one embedding; N = 1 is exactly SAM's ``(1, P, 2)`` layout. Unlike SAM's exported
    decoder there is no ``orig_im_size`` input and no upscaled-mask output: upsample ``masks`` outside
    (``edgesam.data.transforms.postprocess_masks``).
    Point-only prompts should carry one padding point (0, 0) labelled -1, as the PyTorch predictor and
    SAM do (box prompts need none); without it the logits differ slightly from PyTorch.

Every exported graph (these two, the split decoder, ``rpn.onnx``) records ``edgesam.fp32_scopes`` in its metadata:
the ONNX name scopes (or single nodes) of LayerNorm/GroupNorm, attention softmax, the positional encodings and
the RPN box decoding (:func:`edgesam.export.onnx_common.fp32_scope_groups`), which the FP16 copies
(:mod:`edgesam.export.fp16`, ``--precision fp16``) keep in FP32.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from ..models.bicubic import BicubicUpsample2x, bicubic_as_conv  # noqa: F401  (re-exported)
from ..models.edgesam import EdgeSAM
from ..models.teacher import sha256_file
from .onnx_common import (  # noqa: F401  (re-exported: the export contract's names)
    DECODER_FILE, DECODER_INPUTS, DECODER_OUTPUTS, DEFAULT_OPSET, ENCODER_BATCH_AXIS, ENCODER_FILE, ENCODER_INPUTS,
    ENCODER_OUTPUTS, FP32_SCOPES_KEY, META_FILE,
    _export, _finalise)
from .onnx_native import OnnxPromptDecoder, export_decoder, export_encoder  # noqa: F401  (re-exported)


def export_all(model: EdgeSAM, out_dir: str | Path, fuse: bool = True, opset: int = DEFAULT_OPSET,
               checkpoint_sha256: str | None = None, cubic_as_conv: bool = True,
               progress: bool = False) -> dict[str, Path]:
    """Write ``encoder.onnx``, ``decoder.onnx`` (plus the split decoder, and ``rpn.onnx`` for a model with an
    RPN) and ``export_meta.json`` into ``out_dir``.

    ``checkpoint_sha256``: the source checkpoint's hash, ``"random"`` for random weights, or None
    (recorded as unknown). ``progress``: one bar over the graphs written (commands; off for library use).
    Returns ``{"encoder", "decoder", "decoder_image", "decoder_prompt", ["rpn",] "meta"}`` paths.
    """
    from ..progress import progress_bar

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    has_rpn = getattr(model, "rpn", None) is not None
    with progress_bar(desc="export onnx", total=4 + has_rpn, unit="graph", disable=not progress) as bar:
        files = _export_graphs(model, out, fuse, opset, cubic_as_conv, has_rpn, bar)
    enc, dec = files["encoder"], files["decoder"]
    meta = {
        "img_size": int(model.img_size),
        "opset": int(opset),
        "fused": bool(fuse),
        "cubic_as_conv": bool(cubic_as_conv),
        "checkpoint_sha256": checkpoint_sha256 or "unknown (in-memory model)",
        "random_weights": checkpoint_sha256 == "random",
        "files": {"encoder": enc.name, "decoder": dec.name},
        "sha256": {"encoder": sha256_file(enc), "decoder": sha256_file(dec)},
        "rpn": None,
        "encoder_io": {"inputs": {"image": ["B", 3, model.img_size, model.img_size]},
                       "outputs": {"image_embeddings": ["B", 256, model.img_size // 16, model.img_size // 16]},
                       "dynamic_batch": True},
        "decoder_io": {"inputs": {"image_embeddings": [1, 256, "h", "w"], "point_coords": ["N", "P", 2],
                                  "point_labels": ["N", "P"], "mask_input": ["N", 1, "4h", "4w"],
                                  "has_mask_input": ["N"]},
                       "outputs": {"scores": ["N", 4], "masks": ["N", 4, "4h", "4w"]},
                       "point_labels": {"-2": "ignore", "-1": "padding", "0": "negative", "1": "positive",
                                        "2": "box top-left", "3": "box bottom-right"},
                       "coords_frame": "x-y pixels in the padded input frame (S x S)"},
        "torch_version": torch.__version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    meta["files"].update({k: files[k].name for k in ("decoder_image", "decoder_prompt")})
    if has_rpn:
        meta["files"]["rpn"] = files["rpn"].name
        meta["rpn"] = {"outputs": ["image_embeddings", "rpn_boxes", "rpn_scores"]}
    meta_path = out / META_FILE
    meta_path.write_text(json.dumps(meta, indent=2) + "\n")
    return {**files, "meta": meta_path}


def _export_graphs(model: EdgeSAM, out: Path, fuse: bool, opset: int, cubic_as_conv: bool, has_rpn: bool,
                   bar) -> dict[str, Path]:
    """Every graph of :func:`export_all`, one ``bar`` step per graph -> {name: path}."""
    from .decoder_fast import export_fast_decoder  # split decoder (image side once per image), see its module doc

    files = {"encoder": export_encoder(model, out / ENCODER_FILE, fuse=fuse, opset=opset, cubic_as_conv=cubic_as_conv)}
    bar.update(1)
    files["decoder"] = export_decoder(model, out / DECODER_FILE, opset=opset)
    bar.update(1)
    files.update(export_fast_decoder(model, out, opset=opset))
    bar.update(2)
    if has_rpn:  # encoder + RPN graph for RPN-driven segment-everything
        from .rpn_onnx import export_rpn_onnx

        files["rpn"] = export_rpn_onnx(model, out / "rpn.onnx", opset=opset, fuse=fuse)
        bar.update(1)
    return files
