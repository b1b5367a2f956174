"""Peak memory of one annotation actor labelling 12 MP photos in segment-everything grid mode.

    python -m benchmarks.everything_memory --out BENCHMARKS.md

Each setting runs in a fresh subprocess (so ``ru_maxrss`` is that setting's peak) that does exactly what an
annotation actor does: ``pipelines.annotate_worker.AnnotateWorker`` built from an ``AnnotateConfig``
(img_size 1024, ``everything.mode=grid``, ``points_per_batch=64``, ``compute.num_cpus=1``, random weights,
backend ONNX Runtime or torch), then ``worker.label(item)`` per photo. The photos are ``--images`` photos of
``/work/shared/images`` upscaled to ``--width`` x ``--height`` and written as JPEGs into a temporary folder.
The ONNX export of the random weights is made once, before the measured children, in its own process.

Rows with ``decoder_chunk={"cpu": 64}`` reproduce the old behaviour (grid calls of ``points_per_batch`` = 64
prompts); the default ``decoder_chunk`` caps every decoder call at 8 prompts on the CPU.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PHOTOS = Path("/work/shared/images")
DEFAULT_PHOTOS = ("truck.jpg", "dog.jpg", "groceries.jpg", "demo_1.jpeg")
HEADING = "## Segment everything: memory of one annotation actor (grid mode, 12 MP)"


def _annotate_cfg(backend: str, points_per_side: int, chunk: int | None, cache_dir: str) -> dict:
    """The actor's configuration (an ``AnnotateConfig`` as JSON); ``chunk`` None: the default decoder_chunk."""
    everything: dict = {"mode": "grid", "points_per_side": points_per_side, "points_per_batch": 64}
    if chunk is not None:
        everything["decoder_chunk"] = {"cpu": chunk, "cuda": 256}
    return {"model": {"img_size": 1024, "backend": backend, "device": "cpu", "export_cache_dir": cache_dir},
            "everything": everything, "compute": {"num_cpus": 1}}


def _child(spec: dict) -> None:
    """Build the actor, label every photo, print one JSON line with the peak RSS and per-image figures."""
    from benchmarks.common import load_average
    from pipelines.annotate_config import AnnotateConfig
    from pipelines.annotate_worker import AnnotateWorker

    load0 = load_average()
    cfg = AnnotateConfig.model_validate(spec["cfg"])
    worker = AnnotateWorker(cfg.model_dump(mode="json"), spec["input_dir"], spec["out_dir"])
    rss_loaded = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # after loading and the actor's warm-up
    rows = []
    for i, name in enumerate(spec["photos"]):
        t0 = time.perf_counter()
        row = worker.label({"file_name": name, "image_id": i + 1})
        if row["status"] != "labelled":
            raise RuntimeError(f"{name}: {row['status']} {row['reason']}")
        rows.append({"seconds": time.perf_counter() - t0, "masks": len(row["annotations"])})
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    gen = worker.gen
    print(json.dumps({"peak_rss_mb": peak / 1024, "rss_loaded_mb": rss_loaded / 1024, "images": rows,
                      "stats": gen.stats, "timings": gen.timings, "decoder": gen.decoder.name,
                      "chunk": gen.prompts_per_call(), "load_start": load0, "load_end": load_average()}))


def _write_photos(folder: Path, names: list[str], size: tuple[int, int]) -> list[str]:
    """Photos upscaled (bicubic) to ``size`` (w, h) as JPEGs (quality 90) in ``folder`` -> their file names."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for name in names:
        im = Image.open(PHOTOS / name).convert("RGB").resize(size, Image.BICUBIC)
        out.append(f"{Path(name).stem}_{size[0]}x{size[1]}.jpg")
        im.save(folder / out[-1], quality=90)
    return out


def _run_child(spec: dict, timeout_s: float) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-m", "benchmarks.everything_memory", "--child", json.dumps(spec)],
                         env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout_s)
    if out.returncode != 0:
        raise RuntimeError(f"child failed (rc {out.returncode}):\n{out.stderr[-4000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _table(results: list[tuple[dict, dict]]) -> list[str]:
    lines = ["| backend | points | prompts per decoder call | peak RSS (MB) | vs 64 per call "
             "| RSS after loading + warm-up (MB) | s / image | masks / image | load (1 min) start -> end |",
             "|---|---|---|---|---|---|---|---|---|"]
    old = {(s["backend"], s["points_per_side"]): r["peak_rss_mb"] for s, r in results if s["chunk"] == 64}
    for s, r in results:
        n = len(r["images"])
        base = old.get((s["backend"], s["points_per_side"]))
        ratio = f"{r['peak_rss_mb'] / base:.2f}x" if base else "n/a"
        label = f"{r['chunk']}" + (" (old: `decoder_chunk={\"cpu\": 64}`)" if s["chunk"] == 64 else " (default)")
        seconds, masks = (sum(i[k] for i in r["images"]) / n for k in ("seconds", "masks"))
        lines.append(f"| {s['backend']} ({r['decoder']}) | {s['points_per_side']}x{s['points_per_side']} | {label} | "
                     f"{r['peak_rss_mb']:.0f} | {ratio} | {r['rss_loaded_mb']:.0f} | {seconds:.1f} | {masks:.1f} | "
                     f"{r['load_start']:.2f} -> {r['load_end']:.2f} |")
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=4)
    p.add_argument("--width", type=int, default=4000)
    p.add_argument("--height", type=int, default=3000)
    p.add_argument("--points", type=int, nargs="+", default=[10, 32], help="points_per_side values")
    p.add_argument("--backends", nargs="+", default=["onnxruntime", "torch"])
    p.add_argument("--timeout", type=float, default=1800, help="seconds per child")
    p.add_argument("--out", help="write the table into this markdown file (section everything-memory)")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        _child(json.loads(args.child))
        return 0
    from benchmarks.common import load_average, machine_info, replace_section

    tmp = Path(tempfile.mkdtemp(prefix="everything-memory-"))
    try:
        photos = _write_photos(tmp / "in", list(DEFAULT_PHOTOS[: args.images]), (args.width, args.height))
        cache = str(tmp / "onnx-cache")
        if "onnxruntime" in args.backends:  # the export of the random weights, once, outside the measured runs
            _run_child({"cfg": _annotate_cfg("onnxruntime", 1, None, cache), "input_dir": str(tmp / "in"),
                        "out_dir": str(tmp / "warm"), "photos": photos[:1]}, args.timeout)
        results = []
        for backend in args.backends:
            for pps in args.points:
                for chunk in (None, 64):
                    spec = {"cfg": _annotate_cfg(backend, pps, chunk, cache), "input_dir": str(tmp / "in"),
                            "out_dir": str(tmp / f"out{len(results)}"), "photos": photos}
                    r = _run_child(spec, args.timeout)
                    results.append(({"backend": backend, "points_per_side": pps, "chunk": chunk}, r))
                    print(json.dumps(results[-1]), flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    info = machine_info(1)
    cmd = "python -m benchmarks.everything_memory" + (f" --images {args.images}" if args.images != 4 else "") + \
          (f" --width {args.width} --height {args.height}" if (args.width, args.height) != (4000, 3000) else "") + \
          " --out BENCHMARKS.md"
    body = "\n".join([
        f"Command: `{cmd}` ({info['date']}, {info['cpu']}, torch {info['torch']}, onnxruntime "
        f"{info['onnxruntime']}; 1 thread per actor; 1-min load average {load_average():.2f} at the end, per row "
        "below). One fresh process per row runs what an annotation actor runs: `AnnotateWorker` from an "
        "`AnnotateConfig` (img_size 1024, `everything.mode=grid`, `points_per_batch=64`, `compute.num_cpus=1`; "
        f"its constructor's warm-up included), then `worker.label(...)` on {len(photos)} photos upscaled to "
        f"{args.width}x{args.height} ({args.width * args.height / 1e6:.1f} MP JPEGs). Peak RSS = `ru_maxrss` of "
        "that process. RANDOM weights: the peak comes from the decoder calls (ONNX Runtime's arena holds the "
        "largest call) and the image, not from the weight values; with random weights almost no mask passes the "
        "stability filter, so the candidate pool (packed low-res masks, ~6 KB per candidate at S = 1024, at most "
        "3 x points^2) and the logit cache (`logit_cache_mb`, 64 MB) stay nearly empty: a trained student adds at "
        "most ~85 MB at 32x32 points.", "",
        *_table(results), "",
        "Goal: <= 2 GB with `points_per_batch=64` at the default `decoder_chunk`."])
    print(body)
    if args.out:
        replace_section(args.out, "everything-memory", HEADING, body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
