"""Node-type counts of the FP16 ONNX graphs per fp32 scope kind (edgesam.export.fp16.fp16_report).

    python -m benchmarks.fp16_graphs --out BENCHMARKS.md

Exports a seeded random-weight EdgeSAM with an RPN at ``--img-size`` (the default export's 1024; node types do
not depend on the weights or on S) and its FP16 copies, or reads an existing export (``--onnx-dir``), and writes
one row per graph and scope kind: how many compute nodes run in float32 / float16 and which op types they are
(Constant, Shape and integer-valued nodes are left out; Casts are counted on their own row). With ``--out`` the
table replaces the ``fp16`` section of that markdown file, else it is printed.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from collections import Counter
from pathlib import Path

from benchmarks.common import replace_section
from edgesam.export.fp16 import FP16_GRAPHS, export_fp16, fp16_report

HEADING = "## FP16 ONNX graphs (mixed precision)"


def _ops(counts: Counter, dtype: str) -> str:
    ops = Counter({op.split("/")[0]: n for op, n in counts.items() if op.endswith("/" + dtype)})
    return ", ".join(f"{op} {n}" for op, n in ops.most_common())


def table(folder: Path) -> str:
    """The markdown table for the FP16 copies in ``folder`` (written by :func:`export_fp16` if missing)."""
    rows = ["| graph | scope kind | fp32 nodes | fp16 nodes | fp32 node types | fp16 node types |",
            "|---|---|---|---|---|---|"]
    for key, path in export_fp16(folder).items():
        for kind, counts in fp16_report(path).items():
            if kind == "casts":
                casts = ", ".join(f"{op.split('/')[1]} {n}" for op, n in sorted(counts.items()))
                rows.append(f"| {key} | casts | | | {casts} | |")
                continue
            n32 = sum(n for op, n in counts.items() if op.endswith("/fp32"))
            n16 = sum(n for op, n in counts.items() if op.endswith("/fp16"))
            rows.append(f"| {key} | {kind} | {n32} | {n16} | {_ops(counts, 'fp32')} | {_ops(counts, 'fp16')} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--img-size", type=int, default=1024)
    p.add_argument("--onnx-dir", type=Path, default=None, help="an existing export folder (default: export one)")
    p.add_argument("--out", type=Path, default=None, help="markdown file whose fp16 section is replaced")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.onnx_dir
        if folder is None:
            import torch

            from edgesam.export import export_all
            from edgesam.models import EdgeSAM
            from edgesam.models.rpn import build_rpn

            torch.manual_seed(0)
            model = EdgeSAM(args.img_size).eval()
            model.rpn = build_rpn(model.image_encoder.feature_channels).eval()
            folder = Path(tmp)
            export_all(model, folder, checkpoint_sha256="random")
        body = (f"Command: `python -m benchmarks.fp16_graphs --out BENCHMARKS.md` (random-weight EdgeSAM with an RPN, "
                f"S = {args.img_size}; graphs: {', '.join(FP16_GRAPHS.values())} -> `NAME.fp16.onnx`).\n\n"
                "Scope kinds are those of `edgesam.fp32_scopes` (`edgesam.export.onnx_common.fp32_scope_groups`): "
                "norm = LayerNorm / LayerNorm2d / GroupNorm, softmax = attention softmax, positional_encoding = the "
                "prompt PE (`/prompt_pe`) and the dense PE computed in `decoder.onnx` (`/pe_layer`), rpn_box_decode = "
                "the nodes after the RPN head's convolutions; rest = every other compute node. Types are those of "
                "each node's first float output. Graph inputs and outputs are float32 in every graph.\n\n"
                + table(folder))
    if args.out:
        replace_section(args.out, "fp16", HEADING, body)
    else:
        print(body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
