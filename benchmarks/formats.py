"""Annotation format costs on 1024 x 1024 masks: Label Studio brush RLE, COCO RLE, COCO polygons, YOLO lines.

    python benchmarks/formats.py --out BENCHMARKS.md [--runs 5]

For three masks (a disk, a ring with a hole, 3 % speckle) it times our brush RLE encoder/decoder
(``edgesam.formats.brush_rle``) and, when ``label_studio_converter`` is importable, Label Studio's own
Python converter on the same mask, and reports each format's JSON size. Median of ``--runs`` runs; one
thread; the machine may be shared (the table says how busy it was).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import CpuContention, load_average, median, replace_section, time_runs  # noqa: E402

HEADING = "## Annotation formats: brush RLE, COCO RLE, polygons, YOLO (issue 11)"
SECTION = "formats"
S = 1024


def masks() -> dict[str, np.ndarray]:
    yy, xx = np.mgrid[:S, :S]
    r2 = (yy - 500) ** 2 + (xx - 520) ** 2
    return {"disk r=300": r2 < 300 ** 2, "ring 300/120": (r2 < 300 ** 2) & (r2 >= 120 ** 2),
            "speckle 3 %": np.random.default_rng(0).random((S, S)) < 0.03}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("BENCHMARKS.md"))
    p.add_argument("--runs", type=int, default=5)
    args = p.parse_args(argv)
    from edgesam.data.rle import encode_mask
    from edgesam.formats.brush_rle import mask_to_rle, rle_to_mask
    from edgesam.formats.coco_polygons import mask_to_polygons
    from edgesam.formats.yolo_seg import mask_to_lines

    try:
        from label_studio_converter import brush as ls_brush
    except ImportError:
        ls_brush = None
    rows = []
    with CpuContention() as busy:
        for name, m in masks().items():
            rle = mask_to_rle(m)
            assert (rle_to_mask(rle, S, S) == m).all()
            row = {"mask": name, "pixels": int(m.sum()),
                   "enc_ms": 1e3 * median(time_runs(lambda: mask_to_rle(m), args.runs)),
                   "dec_ms": 1e3 * median(time_runs(lambda: rle_to_mask(rle, S, S), args.runs)),
                   "poly_ms": 1e3 * median(time_runs(lambda: mask_to_polygons(m), args.runs)),
                   "brush_kb": len(json.dumps(rle)) / 1e3, "coco_rle_kb": len(json.dumps(encode_mask(m))) / 1e3,
                   "poly_kb": len(json.dumps(mask_to_polygons(m))) / 1e3,
                   "yolo_kb": len("\n".join(mask_to_lines(m))) / 1e3}
            if ls_brush is not None:
                u8 = m.astype(np.uint8) * 255
                row["ls_enc_ms"] = 1e3 * median(time_runs(lambda: ls_brush.mask2rle(u8.copy()), 1, warmup=0))
                row["ls_dec_ms"] = 1e3 * median(time_runs(lambda: ls_brush.decode_rle(rle), 1, warmup=0))
            rows.append(row)
    cmd = "python benchmarks/formats.py --out BENCHMARKS.md" + (f" --runs {args.runs}" if args.runs != 5 else "")
    ls = ls_brush is not None
    lines = [f"Command: `{cmd}` ({time.strftime('%Y-%m-%d %H:%M %Z')}; one thread; the 2-core machine was shared: "
             f"load average {load_average():.1f}, other processes used {busy.others_cores:.1f} cores during the run, "
             "so absolute times are inflated; ratios between columns of one row are the comparable part). "
             f"Masks {S} x {S}; medians of {args.runs} runs" + ("; Label Studio's converter (label-studio-converter "
             "0.0.59, pure Python) timed once per mask." if ls else "; label_studio_converter not installed."), "",
             "| mask | pixels | brush encode ms | brush decode ms |" + (" LS encode ms | LS decode ms |" if ls else "")
             + " polygons ms | brush RLE kB | COCO RLE kB | polygons kB | YOLO kB |",
             "|---|---|---|---|" + ("---|---|" if ls else "") + "---|---|---|---|---|"]
    for r in rows:
        lsc = f" {r['ls_enc_ms']:.0f} | {r['ls_dec_ms']:.0f} |" if ls else ""
        lines.append(f"| {r['mask']} | {r['pixels']} | {r['enc_ms']:.1f} | {r['dec_ms']:.1f} |{lsc} {r['poly_ms']:.1f} | "
                     f"{r['brush_kb']:.1f} | {r['coco_rle_kb']:.1f} | {r['poly_kb']:.1f} | {r['yolo_kb']:.1f} |")
    lines += ["", "Sizes are the JSON text of one mask (brush RLE: the `rle` int list; polygons: pixel-corner vertex "
              "lists, holes filled; YOLO: normalised 6-decimal lines). The brush decoder walks blocks in Python, so "
              "its cost grows with the number of runs (speckle), not with the image size."]
    body = "\n".join(lines)
    replace_section(args.out, SECTION, HEADING, body)
    print(body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
