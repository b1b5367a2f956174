"""Annotation warm-up at 12 MP: actor start (model build + warm-up scene), first image and steady state, as the
real job reports them in ``summary.json``.

    python -m benchmarks.annotate_warmup [--images 6] [--mode rpn] [--backend onnxruntime] [--work DIR]
        [--out BENCHMARKS.md] [--smoke]

Writes ``--images`` photos (the bundled test photos, resized to 4000 x 3000 JPEGs) and runs
``python -m pipelines.annotate`` twice with one 1-CPU actor at S = 1024 with RANDOM weights (speed does not
depend on the weight values; ``everything.rpn_score_thresh=0`` so that the random RPN yields its full
``max_proposals`` = 100 box prompts, as a trained one does on a busy photo): first with an empty export cache, then with the cache the first run filled, on a
fresh output folder. Reports per run the actor's warm-up, the first image, the steady-state median and the ratio
first / steady (goal: <= 2 with a warm cache), plus the 1-minute load average.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks.common import load_average, replace_section

REPO = Path(__file__).resolve().parent.parent
PHOTOS = REPO.parent / "shared" / "images"
SECTION = "annotate-warmup"
HEADING = "## Annotation warm-up at 12 MP"


def make_photos(folder: Path, n: int, size: tuple[int, int]) -> None:
    from PIL import Image

    photos = sorted(p for p in PHOTOS.iterdir() if p.suffix.lower() in (".jpg", ".jpeg"))
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.open(photos[i % len(photos)]).convert("RGB").resize(size, Image.BICUBIC).save(folder / f"p{i:02d}.jpg",
                                                                                             quality=90)


def run(inp: Path, out: Path, overrides: list[str], timeout: float) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    load0 = load_average()
    r = subprocess.run([sys.executable, "-m", "pipelines.annotate", "--input", str(inp), "--output", str(out),
                        *overrides], cwd=REPO, capture_output=True, text=True, timeout=timeout,
                       env={**os.environ, "PYTHONPATH": str(REPO)})
    if r.returncode:
        raise RuntimeError(r.stdout[-3000:] + r.stderr[-3000:])
    s = json.loads((out / "summary.json").read_text())
    w = s["warmup"]
    return {"actor_warmup_s": w["actor_warmup_seconds"], "first_image_s": w["first_image_seconds"],
            "steady_s": s["steady_seconds_per_image"], "ratio": round(w["first_image_seconds"] / s["steady_seconds_per_image"], 2),
            "overhead_ms": round(1e3 * s["overhead_seconds_per_image"], 1), "masks": s["annotations"],
            "images": s["labelled"], "load": f"{load0:.2f} / {load_average():.2f}"}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=6)
    p.add_argument("--mode", default="rpn")
    p.add_argument("--backend", default="onnxruntime")
    p.add_argument("--work", type=Path, default=None)
    p.add_argument("--timeout", type=float, default=1800)
    p.add_argument("--out", default=None)
    p.add_argument("--smoke", action="store_true", help="3 small photos at S = 256: a check, not a measurement")
    args = p.parse_args(argv)
    work = args.work or Path(tempfile.mkdtemp(prefix="edgesam-warmup-"))
    size, s = ((320, 240), 256) if args.smoke else ((4000, 3000), 1024)
    n = 3 if args.smoke else args.images
    make_photos(work / "imgs", n, size)
    cache = work / "onnx-cache"
    shutil.rmtree(cache, ignore_errors=True)
    over = [f"model.img_size={s}", f"model.backend={args.backend}", f"model.export_cache_dir={cache}",
            f"everything.mode={args.mode}", "everything.rpn_score_thresh=0.0", "compute.num_actors=1", "compute.num_cpus=1", "model.threads=1",
            "ray_address=local"]
    rows = {"empty export cache": run(work / "imgs", work / "out_cold", over, args.timeout),
            "warm export cache": run(work / "imgs", work / "out_warm", over, args.timeout)}
    cmd = "python -m benchmarks.annotate_warmup " + " ".join(argv if argv is not None else sys.argv[1:])
    lines = [f"Command: `{cmd}`: {n} photos at {size[0]} x {size[1]}, S = {s}, mode {args.mode} (100 prompts), backend "
             f"{args.backend}, one actor with 1 CPU and 1 thread, RANDOM weights. Times from `summary.json`.", "",
             "| export cache | actor warm-up s | first image s | steady s/image (median) | first / steady | "
             "overhead ms/image | masks | load 1-min before / after |", "|---|---|---|---|---|---|---|---|"]
    for name, r in rows.items():
        lines.append(f"| {name} | {r['actor_warmup_s']} | {r['first_image_s']} | {r['steady_s']} | {r['ratio']} | "
                     f"{r['overhead_ms']} | {r['masks']} | {r['load']} |")
    body = "\n".join(lines)
    print(body)
    if args.out:
        replace_section(args.out, SECTION, HEADING, body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
