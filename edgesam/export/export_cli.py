"""``python -m edgesam.export`` / ``edgesam export``: a student (checkpoint or random) -> ONNX graphs (see
:mod:`edgesam.export.onnx_export` for the I/O; ``--flavor`` / ``--encoder-input``: :mod:`edgesam.export.flavors`)."""
from __future__ import annotations

import argparse
import sys

import torch

from ..models.edgesam import EdgeSAM
from ..models.teacher import sha256_file
from .onnx_common import DEFAULT_OPSET
from .onnx_export import export_all
from .onnx_verify import verify_parity


def _random_warning() -> str:
    bar = "!" * 78
    return (f"{bar}\n!! RANDOM WEIGHTS: no checkpoint given. These ONNX graphs have the right shapes but\n"
            f"!! segment nothing meaningful. Pass --checkpoint edge_sam.pth for a usable export.\n{bar}")


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
    parser.add_argument("--precision", choices=("fp32", "fp16"), default="fp32",
                        help="fp16: also write NAME.fp16.onnx beside each graph (mixed precision: normalisations, "
                             "softmax, positional encodings and RPN box decoding stay fp32; I/O stays fp32), the "
                             "input of strongly typed TensorRT 10/11 builds")
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
            args.no_verify = True  # verify_parity drives the native graphs; tests/test_onnx_flavors.py drives the flavours
        else:
            paths = export_all(model, out, fuse=not args.no_fuse, opset=args.opset, checkpoint_sha256=digest,
                               cubic_as_conv=not args.cubic_resize, progress=True)
        if not args.no_verify:
            print(verify_parity(model, paths))
        if args.precision == "fp16":  # after verify_parity, which reads the fp32 graphs by name
            from .fp16 import export_fp16

            paths.update({f"{k}_fp16": p for k, p in export_fp16(out).items()})
        for k, p in paths.items():
            print(f"{k}: {storage.relocate(p, out, args.out)} ({p.stat().st_size / 1e6:.1f} MB)")
    if args.random:
        print(_random_warning(), file=sys.stderr, flush=True)
    return 0
