"""Bulk auto-annotation end to end: the real Ray Data pipeline on a held-out folder with exact GT, speed and quality.

    python benchmarks/annotate.py [--images 24] [--seed 3] [--checkpoint runs/synthetic-gt/student.pt] \
        [--modes rpn,grid,rpn-ort] [--timeout 900] [--work DIR] [--out BENCHMARKS.md] [--json PATH] [key=value ...]

1. Writes ``--images`` images of the synthetic SA-1B-format set (``sa1b_record(seed, i, (192, 320))``; the
   training set uses seed 0, so with the default seed 3 none was trained on) as ``WORK/imgs/sa_<i>.jpg`` and a
   COCO JSON of their exact instance masks (``WORK/gt.json``).
2. For each mode runs, as a subprocess with a timeout, ``python pipelines/annotate.py --input WORK/imgs
   --output WORK/out_<mode> model.checkpoint=CKPT model.img_size=256 everything.stability_score_thresh=0.8
   everything.rpn_score_thresh=0.3 compute.num_cpus=0.5 ray_address=local everything.mode=<mode> [key=value ...]``
   (trailing ``key=value`` arguments of this script are appended for every mode; ``ray_address=local`` gives
   each run a private Ray cluster) and times it.
3. Scores ``WORK/out_<mode>/annotations.json`` against the GT (images matched by ``file_name``): COCOeval segm
   AP, AP50, AR@100, and instance recall at mask IoU >= 0.5 / 0.75 (best prediction per GT instance).

Writes the section between ``<!-- annotate:begin -->`` and ``<!-- annotate:end -->`` of ``--out`` and prints it.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run from a checkout without installing

from benchmarks.common import load_average, machine_info, replace_section  # noqa: E402
from edgesam.data.rle import encode_mask, mask_to_bbox  # noqa: E402
from edgesam.data.synthetic import sa1b_record  # noqa: E402
from edgesam.eval.everything_eval import CATEGORY, evaluate_everything  # noqa: E402

HEADING = "## Bulk auto-annotation (issue: RPN-driven segment everything)"
SECTION = "annotate"
SIZE_RANGE = (192, 320)
# --student: which synthetic student (checkpoint, img_size, description); "kd" is distilled from the trained
# small SAM teacher (configs/synthetic-kd.yaml), "gt" trained its decoder on GT masks (configs/synthetic-gt.yaml)
STUDENTS = {
    "gt": ("runs/synthetic-gt/student.pt", 256, "the synthetic-gt student (`python pipelines/distill.py --config "
           "synthetic-gt`: step 1 against a RANDOM tiny teacher, step 2 trained on the GT masks, step 3 the RPN; 256 px)"),
    "kd": ("runs/synthetic-kd/student.pt", 128, "the synthetic-kd student (`python pipelines/distill.py --config "
           "synthetic-kd`: steps 1 and 2 distilled from the trained small SAM teacher, no GT masks; step 3 the RPN; 128 px)"),
}
BASE_OVERRIDES = ("model.img_size=256", "everything.stability_score_thresh=0.8", "everything.rpn_score_thresh=0.3",
                  "compute.num_cpus=0.5", "ray_address=local")


def make_heldout(root: Path, n: int, seed: int, size_range: tuple[int, int] = SIZE_RANGE) -> Path:
    """``root/imgs/sa_<i>.jpg`` for i < n and ``root/gt.json`` (COCO, exact masks as RLE) -> the GT path."""
    imgs = root / "imgs"
    imgs.mkdir(parents=True, exist_ok=True)
    images, anns = [], []
    for i in range(n):
        jpeg, doc, masks = sa1b_record(seed, i, size_range)
        name = f"sa_{i}.jpg"
        (imgs / name).write_bytes(jpeg)
        images.append({"id": i + 1, "file_name": name, "width": doc["image"]["width"], "height": doc["image"]["height"]})
        for m in masks:
            anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": CATEGORY["id"], "iscrowd": 0,
                         "segmentation": encode_mask(m), "bbox": mask_to_bbox(m), "area": int(m.sum())})
    gt = root / "gt.json"
    gt.write_text(json.dumps({"images": images, "annotations": anns, "categories": [CATEGORY]}))
    return gt


def evaluate(gt_json: Path, pred_json: Path) -> dict:
    """Predictions (COCO, any image ids) vs GT, images matched by ``file_name`` -> recall@0.5/0.75, AP, AP50, AR
    (COCOeval segm, maxDets 100), num_gt, num_pred, images matched."""
    gt, pred = json.loads(gt_json.read_text()), json.loads(pred_json.read_text())
    gt_id = {im["file_name"]: im["id"] for im in gt["images"]}
    to_gt = {im["id"]: gt_id[im["file_name"]] for im in pred["images"] if im["file_name"] in gt_id}
    evals = {im["id"]: {"id": im["id"], "height": im["height"], "width": im["width"], "gt": [], "pred": []}
             for im in gt["images"]}
    for a in gt["annotations"]:
        evals[a["image_id"]]["gt"].append(a)
    for p in pred["annotations"]:
        if p["image_id"] in to_gt:
            evals[to_gt[p["image_id"]]]["pred"].append(p)
    out = evaluate_everything(list(evals.values()), max_dets=100)
    out["images_matched"] = len(to_gt)
    return out


def run_pipeline(imgs: Path, out: Path, checkpoint: Path, overrides: list[str], timeout: float) -> dict:
    """One fresh run of ``pipelines/annotate.py`` -> {"wall_s", "rc", "cmd", "summary", "loads"}."""
    if out.exists():
        shutil.rmtree(out)  # a leftover output folder would be resumed, not relabelled
    cmd = [sys.executable, "pipelines/annotate.py", "--input", str(imgs), "--output", str(out),
           f"model.checkpoint={checkpoint}", *BASE_OVERRIDES, *overrides]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    load0 = load_average()
    t0 = time.perf_counter()
    # own session: on timeout the whole group (driver and the Ray processes it started) is killed
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        text, _ = proc.communicate(timeout=timeout)
        rc: int | None = proc.returncode
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        text, _ = proc.communicate()
        rc = None
    tail = (text or "")[-3000:]
    wall = time.perf_counter() - t0
    summary_path = out / "summary.json"
    summary = json.loads(summary_path.read_text()) if rc is not None and summary_path.is_file() else None
    if rc != 0 or summary is None:
        print(f"[bench] pipeline failed (rc={rc}):\n{tail}", file=sys.stderr, flush=True)
    return {"cmd": shlex.join(cmd[1:]), "rc": rc, "wall_s": wall, "summary": summary,
            "loads": (load0, load_average())}


def _f(v: float | None, fmt: str = ".3f") -> str:
    return "n/a" if v is None else format(v, fmt)


def render(cmd: str, info: dict, n: int, seed: int, checkpoint: Path, results: list[dict], extra: list[str],
           student: str = "gt") -> str:
    loads = [x for r in results for x in r["loads"]]
    lines = [f"Command: `{cmd}`", "",
             f"Machine: {info['cpu']}, {info['logical_cpus']} logical CPUs (shared); one actor with 1 torch thread "
             f"(`compute.num_cpus=0.5`{', unless the extra overrides change it' if extra else ''}); torch {info['torch']}, Python {info['python']}; {info['date']}; 1-min load "
             f"average {min(loads):.2f}-{max(loads):.2f} before/after the runs.", "",
             f"Model: `{checkpoint}`, {STUDENTS[student][2]}, torch "
             f"eager on CPU (`-ort` rows: ONNX Runtime via `model.backend=onnxruntime`, the checkpoint exported once), S = {STUDENTS[student][1]}. Images: {n} held-out images of the synthetic SA-1B-format set (seed {seed}, long "
             f"side {SIZE_RANGE[0]}-{SIZE_RANGE[1]} px, JPEG; training used seed 0), GT = their exact instance masks.", "",
             "Each mode runs `python pipelines/annotate.py --input imgs --output out_<mode> model.checkpoint=... "
             + " ".join(BASE_OVERRIDES) + " everything.mode=<mode>" + (" " + " ".join(extra) if extra else "")
             + "` as a subprocess (fresh output folder, private local Ray cluster).", "",
             "| mode | images | wall s | images/s (pipeline, from summary) | masks/image | recall@0.5 | recall@0.75 "
             "| AP | AP50 | AR@100 |", "|---|---|---|---|---|---|---|---|---|---|"]
    notes = []
    for r in results:
        s, e = r["summary"], r.get("eval")
        if s is None or e is None:
            lines.append(f"| {r['mode']} | {n} | {r['wall_s']:.1f} | "
                         f"{'timed out' if r['rc'] is None else 'failed, rc ' + str(r['rc'])} | | | | | | |")
            continue
        spi = s["seconds_per_image"]
        lines.append(f"| {r['mode']} | {s['labelled']} | {r['wall_s']:.1f} | {_f(1 / spi if spi else None, '.2f')} | "
                     f"{e['num_pred'] / max(1, s['labelled']):.1f} | {_f(e['recall@0.5'])} | {_f(e['recall@0.75'])} | "
                     f"{_f(e['AP'])} | {_f(e['AP50'])} | {_f(e['AR'])} |")
        notes.append(f"{r['mode']}: {s['labelled']} labelled, {s['skipped']} skipped, {s['failed']} failed, "
                     f"{s['annotations']} annotations; {_f(spi, '.2f')} s/image in the actor; pipeline wall "
                     f"{s['wall_seconds']:.1f} s, end to end {s['labelled'] / r['wall_s']:.2f} images/s")
    lines += ["", "wall s: the whole subprocess (Python and torch imports, Ray cluster startup, actor start and model "
                  "load, labelling, COCO assembly), so it includes the Ray startup. images/s (pipeline): 1 / the "
                  "mean per-image labelling time the pipeline reports in `summary.json` (`seconds_per_image`: read, "
                  "decode, encoder, RPN/grid, decoder, post-processing, part write inside the actor; no Ray startup). "
                  "AP, AP50, AR@100: COCOeval segm (class-agnostic, maxDets 100); recall@t: fraction of GT instances "
                  "whose best predicted mask has IoU >= t.", "", "Per mode: " + "; ".join(notes) + "."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=24)
    p.add_argument("--seed", type=int, default=3, help="synthetic set seed (training used 0)")
    p.add_argument("--student", choices=sorted(STUDENTS), default="gt",
                   help="kd: the teacher-distilled student (its own section, S=128); gt: the GT-trained one")
    p.add_argument("--checkpoint", type=Path, default=None, help="default: the --student's checkpoint")
    p.add_argument("--modes", default="rpn,grid,rpn-ort",
                   help="comma list; each run gets everything.mode=<mode> (torch); <mode>-ort adds model.backend=onnxruntime")
    p.add_argument("--timeout", type=float, default=900, help="seconds per pipeline run")
    p.add_argument("--work", type=Path, default=None, help="folder for images, GT and outputs (default: a temp dir)")
    p.add_argument("--out", type=Path, default=Path("BENCHMARKS.md"))
    p.add_argument("--json", type=Path, default=None, help="also write the raw numbers here")
    p.add_argument("overrides", nargs="*", help="extra pipeline overrides (key=value), appended for every mode")
    args = p.parse_args(argv)
    args.checkpoint = args.checkpoint or Path(STUDENTS[args.student][0])
    if args.student != "gt":  # its own img_size (later overrides win) and its own section beside the gt one
        args.overrides = [f"model.img_size={STUDENTS[args.student][1]}", *args.overrides]
    section, heading = (SECTION, HEADING) if args.student == "gt" else (f"{SECTION}-{args.student}", f"{HEADING} ({args.student} student)")
    cmd = "python benchmarks/annotate.py " + shlex.join(argv if argv is not None else sys.argv[1:])
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if not modes or any(m.split("-")[0] not in ("rpn", "grid") or m.split("-")[1:] not in ([], ["ort"]) for m in modes):
        p.error("--modes must list rpn, grid, rpn-ort and/or grid-ort (-ort: model.backend=onnxruntime)")
    if not args.checkpoint.is_file():
        p.error(f"checkpoint not found: {args.checkpoint}")
    work = args.work or Path(tempfile.mkdtemp(prefix="annotate-bench-"))
    checkpoint = args.checkpoint.resolve()

    t0 = time.perf_counter()
    gt = make_heldout(work, args.images, args.seed)
    print(f"[bench] {args.images} held-out images and GT in {work}", flush=True)
    info = machine_info(1)
    results = []
    for mode in modes:
        backend = ["model.backend=onnxruntime"] if mode.endswith("-ort") else []
        r = run_pipeline(work / "imgs", work / f"out_{mode}", checkpoint,
                         [f"everything.mode={mode.split('-')[0]}", *backend, *args.overrides],
                         args.timeout)
        r["mode"] = mode
        if r["summary"] is not None:
            r["eval"] = evaluate(gt, work / f"out_{mode}" / "annotations.json")
        print(f"[bench] {mode}: {r['wall_s']:.1f} s, summary {r['summary']}, eval {r.get('eval')}", flush=True)
        results.append(r)
    body = render(cmd, info, args.images, args.seed, args.checkpoint, results, args.overrides, args.student)
    replace_section(args.out, section, heading, body)
    if args.json:
        args.json.write_text(json.dumps({"info": info, "command": cmd, "work": str(work), "results": results}, indent=2))
    print(body)
    print(f"wrote section '{section}' of {args.out}; total {time.perf_counter() - t0:.1f} s")
    return 0 if all(r["summary"] is not None and r["summary"]["failed"] == 0 for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
