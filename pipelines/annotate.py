"""Bulk auto-annotation with Ray Data: a folder tree of images -> segment everything -> one COCO JSON.

    python pipelines/annotate.py --input DIR --output OUT [--config annotate] [key=value ...]
    ray job submit --working-dir . -- python pipelines/annotate.py --input /data/imgs --output /data/labels \\
        model.checkpoint=/models/student.pt compute.num_actors=4 compute.num_gpus=1

Flow. The driver lists image files by extension (jpg, jpeg, png, webp, bmp, tif, tiff; sorted; no bytes are
read) and drops those that already have a part file (resume). Ray Data feeds the rest to a fixed actor pool
(``ActorPoolStrategy(size=compute.num_actors)``, fractional ``compute.num_cpus``, ``compute.num_gpus``) whose
actors load the model once, then read, decode (EXIF orientation, grayscale, RGBA), validate and label each
image with :class:`edgesam.inference.everything.EverythingGenerator` (encoder, RPN, decoder), writing
``OUT/parts/<image_id>.json`` atomically as each image completes. The driver then assembles
``OUT/annotations.json`` (COCO: ``images``, ``annotations`` with RLE str counts, bbox XYWH, area, score,
stability_score; one class-agnostic category "object") from all parts, writes ``OUT/skipped.json``
(file, reason) and ``OUT/summary.json``, and prints a summary line. Optional: SA-1B-style per-image JSON
(``output.sa1b_json``, under ``OUT/sa1b/``) and overlay PNGs (``output.overlays``, under ``OUT/overlays/``).

Resume: rerunning the same command skips every image with a part (labelled or skipped; set
``output.retry_skipped=true`` to retry skipped files). ``OUT/run.json`` records the model and everything-mode
settings; a rerun with different ones is refused rather than mixing outputs.

Image ids are stable integers (the first 52 bits of SHA-1 of the path relative to ``--input``), so adding files
does not renumber old ones; ``file_name`` is that relative path. Workers read files by absolute path: on a
multi-node cluster ``--input`` and ``--output`` must be on shared storage.

Weights: ``model.checkpoint`` (a student checkpoint, via ``load_student``; RPN mode needs one trained with
step 3) or ``model.onnx_dir`` (``encoder.onnx``/``decoder.onnx``, plus ``rpn.onnx`` for RPN mode). With neither,
the model is RANDOMLY initialised and the output is meaningless (a loud warning says so). ``model.backend``:

Modules: :mod:`pipelines.annotate_config` (typed config), :mod:`pipelines.annotate_model` (weights, preflight,
generator), :mod:`pipelines.annotate_worker` (the actor), :mod:`pipelines.annotate_parts` (parts, resume, COCO merge).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # `python pipelines/annotate.py` and `ray job submit -- python ...`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np

from edgesam import storage
from edgesam.config import add_config_args, dump_config, load_config
from edgesam.formats.export import write_formats

from pipelines.annotate_config import AnnotateConfig
from pipelines.annotate_model import RANDOM_WARNING, model_identity, preflight
from pipelines.annotate_parts import (SKIPPED_FILE, SUMMARY_FILE, RunMismatchError, assemble, check_run, list_images,
                                      pending_items, write_json_atomic)
from pipelines.annotate_worker import AnnotateWorker
from pipelines.run_output import collect_rows


def run_actors(cfg: AnnotateConfig, pending: list[dict], out_dir: str | Path) -> list[dict]:
    """The Ray Data job over ``pending``; returns one summary row per image."""
    import ray

    if not ray.is_initialized():
        ray.init(address=cfg.ray_address, ignore_reinit_error=True)
    comp = cfg.compute
    ds = ray.data.from_items(pending, override_num_blocks=max(1, min(len(pending), 64 * comp.num_actors)))
    ds = ds.map_batches(
        AnnotateWorker, batch_size=1, fn_constructor_kwargs={"cfg": cfg.model_dump(mode="json"), "out_dir": str(out_dir)},
        compute=ray.data.ActorPoolStrategy(size=comp.num_actors, max_tasks_in_flight_per_actor=comp.max_tasks_in_flight_per_actor),
        num_cpus=comp.num_cpus, num_gpus=comp.num_gpus)
    ds.context.enable_progress_bars = False  # this dataset's own copy: our one bar below replaces Ray's operator bars
    return collect_rows(ds, desc="annotate", unit="img", total=len(pending), rate_of="num_annotations", rate_unit="masks/s")


def run_annotate(cfg: AnnotateConfig, input_dir: str | Path, output_dir: str | Path) -> dict:
    """Label (or resume labelling) every image under ``input_dir``; returns the summary."""
    t0 = time.time()
    input_dir, out_dir = str(input_dir), str(output_dir)  # local paths or s3:// / gs:// URIs
    if not storage.is_dir(input_dir):
        raise FileNotFoundError(f"--input is not a directory: {input_dir}")
    storage.makedirs(out_dir)
    identity = model_identity(cfg)
    preflight(cfg)
    if identity["weights"].get("random"):
        print(RANDOM_WARNING, file=sys.stderr, flush=True)
    check_run(out_dir, identity, input_dir)
    items = list_images(input_dir, cfg.input.extensions, cfg.input.limit)
    pending, resumed = pending_items(items, out_dir, cfg.output.retry_skipped)
    print(f"[annotate] {len(items)} image file(s) under {input_dir}: {resumed} already done, {len(pending)} to label",
          flush=True)
    rows = run_actors(cfg, pending, out_dir) if pending else []
    coco, skipped = assemble(items, out_dir, identity)
    failed = [{"file_name": r["file_name"], "image_id": int(r["image_id"]), "status": "failed", "reason": r["reason"]}
              for r in rows if r["status"] == "failed"]
    outputs = write_formats(out_dir, coco, cfg.output.formats, cfg.output.export)
    write_json_atomic(storage.join(out_dir, SKIPPED_FILE), skipped + failed, indent=2)
    labelled_now = [r for r in rows if r["status"] == "labelled"]
    summary = {
        "images_listed": len(items), "labelled": len(coco["images"]), "skipped": len(skipped), "failed": len(failed),
        "annotations": len(coco["annotations"]), "resumed": resumed, "processed_this_run": len(rows),
        "labelled_this_run": len(labelled_now),
        "seconds_per_image": (float(np.mean([r["seconds"] for r in labelled_now])) if labelled_now else None),
        "wall_seconds": round(time.time() - t0, 2), "random_weights": bool(identity["weights"].get("random")),
        "coco_json": outputs.get("coco_rle"), "outputs": outputs,
        "skipped_json": storage.display(storage.join(out_dir, SKIPPED_FILE))}
    write_json_atomic(storage.join(out_dir, SUMMARY_FILE), summary, indent=2)
    for s in skipped + failed:
        print(f"[annotate] {s['status']} {s['file_name']}: {s['reason']}")
    spi = f"{summary['seconds_per_image']:.2f} s/image" if summary["seconds_per_image"] is not None else "n/a s/image"
    print(f"[annotate] done: {summary['labelled']} images labelled ({summary['labelled_this_run']} this run, "
          f"{resumed} resumed), {summary['skipped']} skipped, {summary['failed']} failed, "
          f"{summary['annotations']} annotations, {spi}, {summary['wall_seconds']} s -> {', '.join(outputs.values())}", flush=True)
    if summary["random_weights"]:
        print(RANDOM_WARNING, file=sys.stderr, flush=True)
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", required=True, help="folder tree of images")
    parser.add_argument("--output", required=True, help="output folder (COCO JSON, parts, skipped.json)")
    add_config_args(parser, default="annotate")
    args = parser.parse_args(argv)
    try:
        cfg = load_config(AnnotateConfig, args.config, args.overrides)
    except (ValueError, FileNotFoundError) as exc:
        print(f"[annotate] ERROR: bad configuration: {exc}", file=sys.stderr)
        return 2
    print(dump_config(cfg))
    try:
        summary = run_annotate(cfg, args.input, args.output)
    except (RunMismatchError, FileNotFoundError, ValueError) as exc:
        print(f"[annotate] ERROR: {exc}", file=sys.stderr)
        return 2
    return 0 if summary["failed"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
