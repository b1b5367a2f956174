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
import json
import sys
import time
from pathlib import Path

import torch

from ..models.bicubic import BicubicUpsample2x, bicubic_as_conv  # noqa: F401  (re-exported)
from ..models.edgesam import EdgeSAM
from ..models.teacher import sha256_file
from .onnx_common import (  # noqa: F401  (re-exported: the export contract's names)
    DECODER_FILE, DECODER_INPUTS, DECODER_OUTPUTS, DEFAULT_OPSET, ENCODER_BATCH_AXIS, ENCODER_FILE, ENCODER_INPUTS,
    ENCODER_OUTPUTS, FP32_SCOPES_KEY, META_FILE,
    _export, _finalise, _fp32_scopes)
from .onnx_native import OnnxPromptDecoder, export_decoder, export_encoder  # noqa: F401  (re-exported)


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
    src.add_argument("--checkpoint", help="official edge_sam.pth or a checkpoint written by save_student")
    src.add_argument("--random", action="store_true", help="random weights (shape/speed testing only)")
    parser.add_argument("--img-size", type=int, default=1024, help="padded square input side S (multiple of 64)")
    parser.add_argument("--out", required=True, help="output directory (local, s3:// or gs://)")
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
    from .. import storage

    with storage.staged_dir(args.out) as out:  # written locally, uploaded at the end for s3:// / gs://
        if wants_flavor(args):
            paths = export_flavor(model, out, args.flavor, args.encoder_input, fuse=not args.no_fuse, opset=args.opset,
                                  checkpoint_sha256=digest, sam_single_mask=not args.sam_multimask,
                                  cubic_as_conv=not args.cubic_resize)
            args.no_verify = True  # _verify drives the native graphs; tests/test_onnx_flavors.py drives the flavours
        else:
            paths = export_all(model, out, fuse=not args.no_fuse, opset=args.opset, checkpoint_sha256=digest,
                               cubic_as_conv=not args.cubic_resize)
        for k, p in paths.items():
            print(f"{k}: {storage.relocate(p, out, args.out)} ({p.stat().st_size / 1e6:.1f} MB)")
        if not args.no_verify:
            print(_verify(model, paths))
    if args.random:
        print(_random_warning(), file=sys.stderr, flush=True)
    return 0
