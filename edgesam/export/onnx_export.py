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

Both graphs record ``edgesam.fp32_scopes`` in their metadata: ONNX name scopes of the normalisation
layers, which the TensorRT builder keeps in FP32.
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
import time
import warnings
from pathlib import Path

import torch
from torch import nn

from ..models.teacher import sha256_file
from ..models.edgesam import EdgeSAM
from ..models.layers import fuse_for_deploy
from ..models.bicubic import BicubicUpsample2x, bicubic_as_conv
from ..models.prompt_decoder import PromptDecoder

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


class OnnxPromptDecoder(nn.Module):
    """Wraps a :class:`PromptDecoder` with SAM's ONNX inputs (mask prompt blended by ``has_mask_input``)."""

    def __init__(self, prompt_decoder: PromptDecoder) -> None:
        super().__init__()
        self.prompt_encoder = prompt_decoder.prompt_encoder
        self.mask_decoder = prompt_decoder.mask_decoder

    def forward(self, image_embeddings: torch.Tensor, point_coords: torch.Tensor, point_labels: torch.Tensor,
                mask_input: torch.Tensor, has_mask_input: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(1,256,h,w), (N,P,2), (N,P), (N,1,4h,4w), (N,) -> scores (N,4), masks (N,4,4h,4w)."""
        pe = self.prompt_encoder
        sparse = pe.embed_points(point_coords, point_labels)
        has = has_mask_input.reshape(-1, 1, 1, 1)
        no_mask = pe.no_mask_embed.weight.reshape(1, -1, 1, 1)
        dense = has * pe._embed_masks(mask_input) + (1.0 - has) * no_mask  # (N,256,h,w)
        masks, scores = self.mask_decoder.predict_all(image_embeddings, pe.get_dense_pe(), sparse, dense)
        return scores, masks


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


def export_encoder(model: EdgeSAM, path: str | Path, fuse: bool = True, opset: int = DEFAULT_OPSET,
                   cubic_as_conv: bool = True) -> Path:
    """Export ``model.image_encoder``: ``image`` (B,3,S,S) -> ``image_embeddings`` (B,256,S/16,S/16).

    The batch axis B is dynamic (ONNX dim_param ``"batch"`` on input and output); S is fixed at
    ``model.img_size``. The graph is traced with B = 2 so that the tracer cannot bake a batch of 1 into
    a reshape or broadcast. ``fuse`` folds BatchNorms and RepVGG branches on a deep copy first (``model`` is left untouched).
    ``cubic_as_conv`` writes the neck's x2 bicubic upsample as the exactly equivalent pad + depthwise conv +
    DepthToSpace (:class:`BicubicUpsample2x`); False keeps ONNX ``Resize`` (cubic, a = -0.75, half_pixel).
    Both match PyTorch's bicubic to float rounding; the conv form is much faster in ONNX Runtime.
    """
    path = Path(path)
    encoder = copy.deepcopy(model.image_encoder).cpu().float().eval()
    if fuse:
        fuse_for_deploy(encoder)
    if cubic_as_conv:
        bicubic_as_conv(encoder)
    s = model.img_size
    dynamic_axes = {"image": {0: ENCODER_BATCH_AXIS}, "image_embeddings": {0: ENCODER_BATCH_AXIS}}
    with torch.no_grad():  # batch 2, not 1: see the docstring
        _export(encoder, (torch.zeros(2, 3, s, s),), path, ENCODER_INPUTS, ENCODER_OUTPUTS, opset, dynamic_axes)
    _finalise(path, {FP32_SCOPES_KEY: json.dumps(_fp32_scopes(path)), "edgesam.img_size": str(s),
                     "edgesam.fused": str(bool(fuse)), "edgesam.cubic_as_conv": str(bool(cubic_as_conv))},
              {"image_embeddings": (ENCODER_BATCH_AXIS, 256, s // 16, s // 16)})
    return path


def export_decoder(model: EdgeSAM, path: str | Path, opset: int = DEFAULT_OPSET) -> Path:
    """Export the prompt encoder + mask decoder with dynamic N (prompts) and P (points); see module doc."""
    path = Path(path)
    pd = model.prompt_decoder if isinstance(getattr(model, "prompt_decoder", None), nn.Module) \
        else model.as_prompt_decoder()
    wrapper = OnnxPromptDecoder(copy.deepcopy(pd).cpu().float().eval()).eval()
    s = model.img_size
    h = s // 16
    n, p = 2, 3  # not 1, so that the tracer cannot specialise a broadcast on these axes
    args = (torch.randn(1, 256, h, h), torch.rand(n, p, 2) * s, torch.tensor([[1.0, 0.0, -1.0], [2.0, 3.0, 1.0]]),
            torch.zeros(n, 1, 4 * h, 4 * h), torch.zeros(n))
    prompts = {0: "num_prompts"}
    points = {0: "num_prompts", 1: "num_points"}
    dynamic_axes = {"point_coords": points, "point_labels": points, "mask_input": prompts,
                    "has_mask_input": prompts, "scores": prompts, "masks": prompts}
    with torch.no_grad():
        _export(wrapper, args, path, DECODER_INPUTS, DECODER_OUTPUTS, opset, dynamic_axes)
    _finalise(path, {FP32_SCOPES_KEY: json.dumps(_fp32_scopes(path)), "edgesam.img_size": str(s)},
              {"scores": ("num_prompts", 4), "masks": ("num_prompts", 4, 4 * h, 4 * h)})
    return path


def export_all(model: EdgeSAM, out_dir: str | Path, fuse: bool = True, opset: int = DEFAULT_OPSET,
               checkpoint_sha256: str | None = None, cubic_as_conv: bool = True) -> dict[str, Path]:
    """Write ``encoder.onnx``, ``decoder.onnx`` and ``export_meta.json`` into ``out_dir``.

    ``checkpoint_sha256``: the source checkpoint's hash, ``"random"`` for random weights, or None
    (recorded as unknown). Returns ``{"encoder", "decoder", "meta"}`` paths.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    enc = export_encoder(model, out / ENCODER_FILE, fuse=fuse, opset=opset, cubic_as_conv=cubic_as_conv)
    dec = export_decoder(model, out / DECODER_FILE, opset=opset)
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
    files = {"encoder": enc, "decoder": dec}
    from .decoder_fast import export_fast_decoder  # split decoder (image side once per image), see its module doc

    files.update(export_fast_decoder(model, out, opset=opset))
    meta["files"].update({k: files[k].name for k in ("decoder_image", "decoder_prompt")})
    if getattr(model, "rpn", None) is not None:  # encoder + RPN graph for RPN-driven segment-everything
        from .rpn_onnx import export_rpn_onnx

        files["rpn"] = export_rpn_onnx(model, out / "rpn.onnx", opset=opset, fuse=fuse)
        meta["files"]["rpn"] = files["rpn"].name
        meta["rpn"] = {"outputs": ["image_embeddings", "rpn_boxes", "rpn_scores"]}
    meta_path = out / META_FILE
    meta_path.write_text(json.dumps(meta, indent=2) + "\n")
    return {**files, "meta": meta_path}


def _random_warning() -> str:
    bar = "!" * 78
    return (f"{bar}\n!! RANDOM WEIGHTS: no checkpoint given. These ONNX graphs have the right shapes but\n"
            f"!! segment nothing meaningful. Pass --checkpoint edge_sam.pth for a usable export.\n{bar}")


def _verify(model: EdgeSAM, paths: dict[str, Path]) -> str:
    """One ORT run of each graph against PyTorch; returns a one-line summary."""
    import numpy as np

    from ..inference.backends import TorchDecoder, TorchEncoder
    from ..inference.ort_backend import OrtDecoder, OrtEncoder

    s = model.img_size
    x = np.random.default_rng(0).standard_normal((1, 3, s, s)).astype(np.float32)
    emb_t = TorchEncoder(model.image_encoder, s)(x)
    emb_o = OrtEncoder(paths["encoder"])(x)
    coords = np.array([[[s * 0.3, s * 0.4], [0.0, 0.0]]], np.float32)
    labels = np.array([[1.0, -1.0]], np.float32)
    m_t, _ = TorchDecoder(model.as_prompt_decoder())(emb_t, coords, labels)
    m_o, _ = OrtDecoder(paths["decoder"])(emb_t, coords, labels)
    return (f"parity vs PyTorch: encoder max|diff| {np.abs(emb_t - emb_o).max():.2e} (max|emb| {np.abs(emb_t).max():.2f}); "
            f"decoder max|diff| {np.abs(m_t - m_o).max():.2e} (max|logit| {np.abs(m_t).max():.2f})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m edgesam.export",
                                     description="Export EdgeSAM's encoder and decoder to ONNX (see edgesam/export/onnx_export.py for the I/O).")
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", type=Path, help="official edge_sam.pth or a checkpoint written by save_student")
    src.add_argument("--random", action="store_true", help="random weights (shape/speed testing only)")
    parser.add_argument("--img-size", type=int, default=1024, help="padded square input side S (multiple of 64)")
    parser.add_argument("--out", type=Path, required=True, help="output directory")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET)
    parser.add_argument("--no-fuse", action="store_true", help="export the encoder without RepVGG/BN fusion")
    parser.add_argument("--cubic-resize", action="store_true",
                        help="write the bicubic upsample as ONNX Resize (slower in ORT) instead of its exact conv form")
    parser.add_argument("--seed", type=int, default=0, help="seed for --random")
    parser.add_argument("--no-verify", action="store_true", help="skip the ONNX Runtime vs PyTorch check")
    from .flavors import add_flavor_args, export_flavor, wants_flavor  # client contracts (--flavor, --encoder-input)

    add_flavor_args(parser)
    args = parser.parse_args(argv)
    if args.img_size <= 0 or args.img_size % 64:
        parser.error(f"--img-size must be a positive multiple of 64, got {args.img_size}")

    if args.random:
        print(_random_warning(), file=sys.stderr, flush=True)
        torch.manual_seed(args.seed)
        model = EdgeSAM(args.img_size).eval()
        digest = "random"
    else:
        from ..models.checkpoint import load_student

        model, _ = load_student(args.checkpoint, args.img_size)
        digest = sha256_file(args.checkpoint)
    if wants_flavor(args):
        paths = export_flavor(model, args.out, args.flavor, args.encoder_input, fuse=not args.no_fuse, opset=args.opset,
                              checkpoint_sha256=digest, sam_single_mask=not args.sam_multimask,
                              cubic_as_conv=not args.cubic_resize)
        args.no_verify = True  # _verify drives the native graphs; tests/test_onnx_flavors.py drives the flavours
    else:
        paths = export_all(model, args.out, fuse=not args.no_fuse, opset=args.opset, checkpoint_sha256=digest,
                           cubic_as_conv=not args.cubic_resize)
    for k, p in paths.items():
        print(f"{k}: {p} ({p.stat().st_size / 1e6:.1f} MB)")
    if not args.no_verify:
        print(_verify(model, paths))
    if args.random:
        print(_random_warning(), file=sys.stderr, flush=True)
    return 0
