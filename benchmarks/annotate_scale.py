"""Annotation at scale: does the driver stay flat, and what does the pipeline cost per image outside the model?

    python -m benchmarks.annotate_scale [--sizes 1000,10000,50000] [--where local,s3] [--actors 2]
        [--eval-size 10000] [--work DIR] [--out BENCHMARKS.md] [--json PATH] [--smoke]

For each N and each place (a local folder, or a bucket on a moto S3 server on 127.0.0.1 started and stopped
here), N small synthetic JPEGs (``make_scene``, 48 x 64, 1,000 per folder) are labelled by the real job,
``python -m pipelines.annotate``, in a subprocess with a private local Ray cluster, in a fast setting that still
makes ~100 masks per image: S = 64, grid mode 6 x 6 points, SAM's three masks per point, no stability or NMS filter,
one decoder call per image, ONNX Runtime, RANDOM weights (the masks are noise; their number and size are what
load the pipeline). Reported per run:

- driver peak RSS (``ru_maxrss`` of the driver process; the Ray processes it starts are not in it);
- the listing's cost in a fresh process: peak RSS growth while listing N keys, per key;
- wall time, labelling wall time (listing + Ray job) and conversion time (shards -> COCO JSON);
- in-actor overhead per image (``summary.json``: read + decode + row building, outside the model) and
  end-to-end overhead per image per actor (labelling wall x actors / N - model seconds per image; it includes
  Ray's start, the actors' warm-up and the writers);
- warm-up (model build + warm-up scene per actor), first image and steady-state seconds (``summary.json``);
- for ``--eval-size``: ``annotations.json`` loaded by pycocotools and evaluated (COCOeval segm of the masks
  against themselves, AP must be 1.0).

Writes the section between ``<!-- annotate-scale:begin -->`` and ``<!-- annotate-scale:end -->`` of ``--out``.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from benchmarks.common import CpuContention, load_average, replace_section

REPO = Path(__file__).resolve().parent.parent
SECTION = "annotate-scale"
HEADING = "## Annotation at scale: driver memory, overhead per image, warm-up"
IMAGE_HW = (48, 64)
PER_FOLDER = 1000
FAST = ["model.img_size=64", "model.backend=onnxruntime", "model.threads=1", "everything.mode=grid",
        "everything.points_per_side=6", "everything.num_outputs=3", "everything.stability_score_thresh=0",
        "everything.mask_nms_iou=1.0", "everything.decoder_chunk={cpu: 128}", "ray_address=local"]
DRIVER = ("import json, resource, sys, time; from pipelines.annotate import main; t = time.time(); "
          "rc = main(sys.argv[1:]); print('DRIVER ' + json.dumps({'rc': rc, 'seconds': time.time() - t, "
          "'maxrss_kb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))")
# the listing's peak RSS growth: /proc/self/clear_refs "5" resets the peak (VmHWM) to the current RSS
LISTER = """
import json, sys
from edgesam.data.images import IMAGE_EXTENSIONS
from pipelines.annotate_run import list_images

def status(key):
    return next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith(key + ':'))

list_images(sys.argv[1] + '/0000', list(IMAGE_EXTENSIONS))  # warm the filesystem client and the imports
with open('/proc/self/clear_refs', 'w') as f:
    f.write('5')
before = status('VmRSS')
t = list_images(sys.argv[1], list(IMAGE_EXTENSIONS))
print('LIST ' + json.dumps({'keys': t.num_rows, 'growth_kb': status('VmHWM') - before}))
"""


def make_images(root: Path, n: int) -> Path:
    """``root/imgs_<n>/<folder>/<i>.jpg`` (reused when complete) -> the folder."""
    import numpy as np
    from PIL import Image

    from edgesam.data.synthetic import make_scene

    folder = root / f"imgs_{n}"
    done = folder / "COMPLETE"
    if done.is_file():
        return folder
    rng = np.random.default_rng(n)
    for i in range(n):
        d = folder / f"{i // PER_FOLDER:04d}"
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(make_scene(rng, *IMAGE_HW, max_objects=4)[0]).save(d / f"{i:07d}.jpg", quality=85)
    done.write_text("ok")
    return folder


def upload(folder: Path, dest: str) -> None:
    from edgesam import storage

    files = sorted(p for p in folder.rglob("*.jpg"))
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda p: storage.write_bytes(f"{dest}/{p.relative_to(folder).as_posix()}", p.read_bytes()), files))


def _tagged(stdout: str, tag: str) -> dict:
    for line in stdout.splitlines():
        if line.startswith(tag + " "):
            return json.loads(line[len(tag) + 1:])
    raise RuntimeError(f"no {tag} line in:\n{stdout[-3000:]}")


def _python(code: str, args: list[str], timeout: float) -> subprocess.CompletedProcess:
    """Run ``python -c code args`` in its own session; on a timeout or an interrupt, kill that whole session
    (the driver and the Ray cluster it started), nothing else."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-c", code, *args], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except BaseException:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def coco_check(path: str, work: Path, sample: int = 1000) -> dict:
    """Load ``path`` whole with pycocotools and evaluate its masks against themselves (AP must be 1.0) on the
    first ``sample`` images (COCOeval's Python matching takes ~0.2 s per image of ~100 masks)."""
    import contextlib

    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    from edgesam import storage

    local = work / "eval.json"
    local.write_bytes(storage.read_bytes(path))
    t0 = time.time()
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(local))
        load_s = time.time() - t0
        dets = gt.loadRes([{k: a[k] for k in ("image_id", "category_id", "segmentation", "score")}
                           for a in gt.dataset["annotations"]])
        ev = COCOeval(gt, dets, "segm")
        ev.params.imgIds = sorted(gt.getImgIds())[:sample]
        ev.params.maxDets = [1, 10, 1000]  # ~108 masks per image: COCO's default 100 would cap the recall
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    local.unlink()
    prec = ev.eval["precision"][:, :, :, 0, -1]  # IoU 0.50:0.95, all areas, 1000 detections per image
    return {"images": len(gt.imgs), "annotations": len(gt.anns), "AP": round(float(prec[prec > -1].mean()), 4),
            "evaluated_images": len(ev.params.imgIds), "load_seconds": round(load_s, 1),
            "seconds": round(time.time() - t0, 1), "mb": round(storage.size(path) / 2**20, 1)}


def run_one(where: str, n: int, inp: str, out: str, actors: int, work: Path, eval_size: int, timeout: float,
            extra: list[str] = ()) -> dict:
    from edgesam import storage

    lst = _python(LISTER, [inp], timeout)
    if lst.returncode:
        raise RuntimeError(lst.stderr[-3000:])
    listing = _tagged(lst.stdout, "LIST")
    assert listing["keys"] == n, listing
    load0 = load_average()
    over = [*FAST, *extra, f"compute.num_actors={actors}", f"compute.num_cpus={round(1.6 / actors, 2)}",
            f"model.export_cache_dir={work / 'onnx-cache'}"]
    with CpuContention() as cpu:
        proc = _python(DRIVER, ["--input", inp, "--output", out, *over], timeout)
    if proc.returncode:
        raise RuntimeError(proc.stdout[-3000:] + proc.stderr[-3000:])
    drv = _tagged(proc.stdout, "DRIVER")
    s = storage.read_json(f"{out}/summary.json")
    assert s["labelled"] == n and s["failed"] == 0, s
    model_s = s["seconds_per_image"] - s["overhead_seconds_per_image"]
    row = {"where": where, "images": n, "actors": actors, "masks": s["annotations"],
           "masks_per_image": round(s["annotations"] / n, 1), "driver_peak_mb": round(drv["maxrss_kb"] / 1024, 1),
           "listing_bytes_per_key": round(listing["growth_kb"] * 1024 / n, 1),
           "wall_s": round(drv["seconds"], 1), "label_wall_s": s["label_wall_seconds"],
           "convert_s": round(s["wall_seconds"] - s["label_wall_seconds"], 1),
           "model_ms": round(1e3 * model_s, 2), "actor_overhead_ms": round(1e3 * s["overhead_seconds_per_image"], 2),
           "e2e_overhead_ms": round(1e3 * (s["label_wall_seconds"] * actors / n - model_s), 2),
           "warmup_s": s["warmup"]["actor_warmup_seconds"], "first_image_ms": round(1e3 * s["warmup"]["first_image_seconds"], 1),
           "steady_ms": round(1e3 * s["steady_seconds_per_image"], 1), "shards": s["shards"],
           "coco_files": len(s["coco_json"]), "load_before": round(load0, 2), "load_after": round(load_average(), 2),
           "other_cores": round(cpu.others_cores, 2)}
    if n == eval_size:
        row["coco_eval"] = coco_check(s["coco_json"][0], work)
    print(json.dumps(row), flush=True)
    return row


def listing_rows(sizes: list[int], wheres: list[str], work: Path, timeout: float) -> list[dict]:
    """Peak RSS growth per key of :func:`pipelines.annotate_run.list_images` over N empty ``.jpg`` keys (1,000 per
    folder; listing reads no bytes), locally and on the S3 server."""
    from edgesam import storage

    rows = []
    for where in wheres:
        ctx = contextlib.nullcontext()
        if where == "s3":
            from tests.s3server import s3_server

            ctx = s3_server(work)
        with ctx:
            for n in sizes:
                if where == "local":
                    root = work / f"keys_{n}"
                    if not (root / "COMPLETE").is_file():
                        for i in range(n):
                            d = root / f"{i // PER_FOLDER:04d}"
                            d.mkdir(parents=True, exist_ok=True)
                            (d / f"{i:07d}.jpg").touch()
                        (root / "COMPLETE").write_text("ok")
                    uri = str(root)
                else:
                    from tests.s3server import make_bucket

                    uri = f"{make_bucket(f'keys-{n}')}/keys"
                    with ThreadPoolExecutor(32) as pool:
                        list(pool.map(lambda i: storage.write_bytes(f"{uri}/{i // PER_FOLDER:04d}/{i:07d}.jpg", b""),
                                      range(n)))
                lst = _python(LISTER, [uri], timeout)
                if lst.returncode:
                    raise RuntimeError(lst.stderr[-3000:])
                r = _tagged(lst.stdout, "LIST")
                assert r["keys"] == n, r
                rows.append({"where": where, "keys": n, "growth_mb": round(r["growth_kb"] / 1024, 2),
                             "bytes_per_key": round(r["growth_kb"] * 1024 / n, 1)})
                print(json.dumps(rows[-1]), flush=True)
    return rows


def listing_table(rows: list[dict], cmd: str) -> str:
    lines = [f"Command: `{cmd}`: `list_images` in a fresh process over N empty `.jpg` keys, 1,000 per folder; "
             "peak RSS growth while listing (`VmHWM` after resetting it).", "",
             "| where | keys | peak growth MB | bytes per key |", "|---|---|---|---|"]
    lines += [f"| {r['where']} | {r['keys']:,} | {r['growth_mb']} | {r['bytes_per_key']} |" for r in rows]
    return "\n".join(lines)


def table(rows: list[dict], cmd: str) -> str:
    head = ("| where | images | masks/img | driver peak MB | listing B/key | wall s | label s | convert s | model ms/img "
            "| in-actor overhead ms/img | end-to-end overhead ms/img/actor | warm-up s | first img ms | steady ms | load 1-min | other cores |")
    lines = [f"Command: `{cmd}` (RANDOM weights; fast setting: S = 64, 6 x 6 grid, 3 masks per point, no filters, "
             f"{rows[0]['actors']} actors sharing the 2 cores, ONNX Runtime).", "", head,
             "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        lines.append(f"| {r['where']} | {r['images']:,} | {r['masks_per_image']} | {r['driver_peak_mb']} | "
                     f"{r['listing_bytes_per_key']} | {r['wall_s']} | {r['label_wall_s']} | {r['convert_s']} | "
                     f"{r['model_ms']} | {r['actor_overhead_ms']} | {r['e2e_overhead_ms']} | {r['warmup_s']} | "
                     f"{r['first_image_ms']} | {r['steady_ms']} | {r['load_before']} / {r['load_after']} | {r['other_cores']} |")
    for where in dict.fromkeys(r["where"] for r in rows):
        rs = [r for r in rows if r["where"] == where]
        lo, hi = rs[0], rs[-1]
        lines.append("")
        lines.append(f"- {where}: driver peak RSS at {hi['images']:,} images is "
                     f"{hi['driver_peak_mb'] / lo['driver_peak_mb']:.2f}x its value at {lo['images']:,} "
                     f"({hi['driver_peak_mb']} vs {lo['driver_peak_mb']} MB; goal <= 1.2x).")
    for r in rows:
        if "coco_eval" in r:
            e = r["coco_eval"]
            lines.append(f"- {r['where']}, {r['images']:,} images: `annotations.json` ({e['mb']} MB, {e['images']:,} images, "
                         f"{e['annotations']:,} masks) loads whole in pycocotools in {e['load_seconds']} s; COCOeval "
                         f"segm of the masks against themselves, on its first {e['evaluated_images']:,} images, gives "
                         f"AP@[.50:.95] {e['AP']} at 1,000 detections per image ({e['seconds']} s in all).")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="1000,10000,50000")
    p.add_argument("--where", default="local,s3")
    p.add_argument("--actors", type=int, default=2)
    p.add_argument("--eval-size", type=int, default=10000)
    p.add_argument("--work", type=Path, default=None)
    p.add_argument("--timeout", type=float, default=5400)
    p.add_argument("--out", default=None)
    p.add_argument("--json", default=None)
    p.add_argument("--smoke", action="store_true", help="sizes 40,120 and eval at 120: a check, not a measurement")
    p.add_argument("overrides", nargs="*", help="key=value appended to the fast setting (e.g. everything.points_per_side=1)")
    p.add_argument("--listing", action="store_true", help="only the listing's memory per key (no model), "
                   "--sizes keys per place (default 1000,10000,100000)")
    p.add_argument("--from-json", default=None, help="write the table from the rows a run saved with --json")
    p.add_argument("--command", default=None, help="with --from-json: the command that produced the rows")
    args = p.parse_args(argv)
    if args.from_json:
        body = table(json.loads(Path(args.from_json).read_text()), args.command or "python -m benchmarks.annotate_scale")
        print(body)
        if args.out:
            replace_section(args.out, SECTION, HEADING, body)
        return 0
    if args.listing:
        sizes = [int(v) for v in (args.sizes if args.sizes != p.get_default("sizes") else "1000,10000,100000").split(",")]
        work = args.work or Path(tempfile.mkdtemp(prefix="edgesam-listing-"))
        work.mkdir(parents=True, exist_ok=True)
        rows = listing_rows(sizes, args.where.split(","), work, args.timeout)
        body = listing_table(rows, "python -m benchmarks.annotate_scale " + " ".join(argv if argv is not None else sys.argv[1:]))
        print(body)
        if args.json:
            Path(args.json).write_text(json.dumps(rows, indent=2))
        if args.out:
            replace_section(args.out, "annotate-listing", "## Listing millions of keys: driver memory per key", body)
        return 0
    if args.smoke:
        args.sizes, args.eval_size = "40,120", 120
    sizes = [int(v) for v in args.sizes.split(",")]
    wheres = args.where.split(",")
    work = args.work or Path(tempfile.mkdtemp(prefix="edgesam-annotate-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    folders = {n: make_images(work, n) for n in sizes}
    rows = []
    for where in wheres:
        if where == "local":
            for n in sizes:
                out = work / f"out_local_{n}"
                shutil.rmtree(out, ignore_errors=True)
                rows.append(run_one(where, n, str(folders[n]), str(out), args.actors, work, args.eval_size, args.timeout,
                                    args.overrides))
        elif where == "s3":
            from tests.s3server import make_bucket, s3_server

            with s3_server(work) as _:
                bucket = make_bucket("annotate-scale")
                for n in sizes:
                    t0 = time.time()
                    upload(folders[n], f"{bucket}/imgs_{n}")
                    print(f"[scale] uploaded {n} images in {time.time() - t0:.0f} s", flush=True)
                    rows.append(run_one(where, n, f"{bucket}/imgs_{n}", f"{bucket}/out_{n}", args.actors, work,
                                        args.eval_size, args.timeout, args.overrides))
        else:
            raise SystemExit(f"--where: local or s3, got {where!r}")
    cmd = "python -m benchmarks.annotate_scale" + ("" if argv is None else " " + " ".join(argv))
    body = table(rows, cmd if argv is not None else "python -m benchmarks.annotate_scale " + " ".join(sys.argv[1:]))
    print(body)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    if args.out:
        replace_section(args.out, SECTION, HEADING, body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
