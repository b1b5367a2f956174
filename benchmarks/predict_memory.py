"""Peak resident memory of one ``Predictor.predict_batch`` call on a large image: all outputs vs best-only.

    python benchmarks/predict_memory.py --megapixels 12 --boxes 16 --out BENCHMARKS.md
    python benchmarks/predict_memory.py ... --baseline-pythonpath /path/to/old/checkout   # adds a "before" row

Each variant runs in a fresh subprocess (so ``ru_maxrss`` is that variant's peak) on a random-weight
1024 model with a random embedding set directly (no encoder run: the decoder and upsampling are what is
measured). ``select=all`` upsamples every token of every prompt to full size; ``select=stability`` picks
the best token per prompt on the low-res logits and upsamples only that one (what Serve's
``multimask_select`` needs). The baseline row runs the checkout given, whose ``predict_batch`` always
upsampled all tokens (at once, in float) before Serve kept one.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

if "--child" not in sys.argv:  # children import from their own PYTHONPATH (the baseline row is another checkout)
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing


def _child(args: argparse.Namespace) -> None:
    import numpy as np
    import torch

    from edgesam.inference import Predictor
    from edgesam.models import EdgeSAM

    torch.set_num_threads(1)
    torch.manual_seed(0)
    predictor = Predictor.from_model(EdgeSAM(1024).eval())
    h = int(round((args.megapixels * 1e6 * 3 / 4) ** 0.5))
    w = int(round(h * 4 / 3))
    predictor.set_embedding(np.random.default_rng(0).standard_normal((1, 256, 64, 64)).astype(np.float32), (h, w))
    rng = np.random.default_rng(1)
    x0, y0 = rng.uniform(0, w / 2, args.boxes), rng.uniform(0, h / 2, args.boxes)
    boxes = np.stack([x0, y0, x0 + w / 3, y0 + h / 3], 1).astype(np.float32)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    kwargs = {} if args.child == "baseline" else {"select": args.child}
    pred = predictor.predict_batch(boxes=boxes, num_outputs=4, **kwargs)
    dt = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"variant": args.child, "hw": [h, w], "masks_shape": list(pred.masks.shape),
                      "seconds": dt, "rss_before_mb": base / 1024, "peak_rss_mb": peak / 1024}))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--megapixels", type=float, default=12.0)
    parser.add_argument("--boxes", type=int, default=16)
    parser.add_argument("--baseline-pythonpath", help="checkout whose predict_batch has no select (the 'before' row)")
    parser.add_argument("--out", help="write the table into this markdown file")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args)
        return 0
    from benchmarks.common import load_average, replace_section

    here = str(Path(__file__).resolve().parent.parent)
    runs = [("stability", here), ("all", here)]
    if args.baseline_pythonpath:
        runs.insert(0, ("baseline", args.baseline_pythonpath))
    rows = []
    for variant, path in runs:
        env = {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1"}
        cmd = [sys.executable, __file__, "--child", variant, "--megapixels", str(args.megapixels),
               "--boxes", str(args.boxes)]
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True, cwd=path)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    names = {"baseline": "before: all 4 upsampled (Serve then keeps 1)", "all": "after, `select=\"all\"` (4 kept)",
             "stability": "after, `select=\"stability\"` (1 kept)"}
    hw = rows[0]["hw"]
    lines = [f"One `predict_batch` call, {args.boxes} boxes x 4 outputs, {hw[0]}x{hw[1]} image "
             f"({hw[0] * hw[1] / 1e6:.1f} MP), random weights, 1 thread, load average {load_average():.1f} "
             "(machine shared with other jobs: seconds are noisy, memory is not).", "",
             "| variant | masks returned | peak RSS (MB) | RSS before the call (MB) | added by the call (MB) | seconds |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {names[r['variant']]} | {'x'.join(map(str, r['masks_shape']))} | {r['peak_rss_mb']:.0f} | "
                     f"{r['rss_before_mb']:.0f} | {r['peak_rss_mb'] - r['rss_before_mb']:.0f} | {r['seconds']:.2f} |")
    lines += ["", f"Command: `python benchmarks/predict_memory.py --megapixels {args.megapixels:g} --boxes {args.boxes}"
              + (" --baseline-pythonpath <checkout before the change>" if args.baseline_pythonpath else "") + "`"]
    body = "\n".join(lines)
    print(body)
    if args.out:
        replace_section(args.out, "predict-memory", "## Predictor: upsample only the returned masks", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
