"""Bulk auto-annotation with Ray Data: a folder tree of images -> segment everything -> Parquet shards written by
the workers -> COCO JSON (and other formats) streamed from the shards.

    python -m pipelines.annotate --input DIR --output OUT [--config annotate] [key=value ...]
    ray job submit --working-dir . -- python pipelines/annotate.py --input s3://bucket/imgs --output s3://bucket/labels \\
        model.checkpoint=s3://bucket/student.pt compute.num_actors=4 compute.num_gpus=1

Flow. The driver lists image files by extension (jpg, jpeg, png, webp, bmp, tif, tiff; no bytes are read) into
an Arrow table of names and ids, and drops the images the shards already hold (resume). Ray Data feeds the rest
to a fixed actor pool (``ActorPoolStrategy(size=compute.num_actors)``, fractional ``compute.num_cpus``,
``compute.num_gpus``); each actor builds the model once, warms it up on a synthetic scene, then reads, decodes
(EXIF orientation, grayscale, RGBA), validates and labels one image at a time with
:class:`edgesam.inference.everything.EverythingGenerator`, returning one row per image. Ray Data's Parquet
writer writes those rows from the workers as shards of ``output.shard_images`` images under
``OUT/shards/<run id>/`` (schema: :mod:`edgesam.formats.shards`). The driver never holds the masks: after the
job it scans two columns of the shards, then streams them into ``OUT/annotations.json`` (COCO: ``images``,
``annotations`` with RLE str counts, bbox XYWH, area, score, stability_score; one class-agnostic category
"object"; split into numbered files past ``output.coco_max_images`` images) and the other ``output.formats``
(``coco_polygons``, ``yolo``, ``label_studio``, ``sa1b``), writes ``OUT/skipped.json`` (file, status, reason)
and ``OUT/summary.json``, and prints a summary line. Optional: overlay PNGs drawn by the workers
(``output.overlays``, under ``OUT/overlays/``).

Resume: rerunning the same command labels only what the shards do not hold (failed images are retried;
skipped ones too with ``output.retry_skipped=true``). A shard cut short by a killed writer is moved to
``OUT/shards/_unreadable/`` and its images are labelled again; an image with rows in two shards is read once
(:class:`edgesam.formats.shards.ShardIndex`). ``OUT/run.json`` records the model and everything-mode settings;
a rerun with different ones is refused rather than mixing outputs.

Image ids are stable integers (the first 52 bits of SHA-1 of the path relative to ``--input``), so adding files
does not renumber old ones; ``file_name`` is that relative path. Workers read files by ``--input`` + name: on a
multi-node cluster ``--input`` and ``--output`` must be on shared storage (a bucket or NFS).

Weights: ``model.checkpoint`` (a student checkpoint, via ``load_student``; RPN mode needs one trained with
step 3) or ``model.onnx_dir`` (``encoder.onnx``/``decoder.onnx``, plus ``rpn.onnx`` for RPN mode). With neither,
the model is RANDOMLY initialised and the output is meaningless (a loud warning says so).

Modules: :mod:`pipelines.annotate_config` (typed config), :mod:`pipelines.annotate_model` (weights, preflight,
generator), :mod:`pipelines.annotate_worker` (the actor), :mod:`pipelines.annotate_run` (listing, resume,
run identity), :mod:`edgesam.formats.shards` (the shard schema) and :mod:`edgesam.formats.export` (converters).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # `python pipelines/annotate.py` and `ray job submit -- python ...`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
import pyarrow as pa

from edgesam import storage
from edgesam.config import add_config_args, dump_config, load_config
from edgesam.formats.export import write_formats, write_skipped
from edgesam.formats.shards import SHARD_SCHEMA, STATS_COLUMNS, ShardIndex, read_columns, shard_files

from pipelines.annotate_config import AnnotateConfig
from pipelines.annotate_model import RANDOM_WARNING, model_identity, preflight
from pipelines.annotate_run import (SKIPPED_FILE, SUMMARY_FILE, RunMismatchError, check_run, list_images,
                                    new_run_folder, pending, quarantine)
from pipelines.annotate_worker import AnnotateWorker

# images per input block and per actor call: small enough that the last blocks spread over the actors, large
# enough that Ray Data tracks one block per 16 images rather than one per image
BLOCK_IMAGES = 16


def ensure_ray(cfg: AnnotateConfig) -> None:
    import ray

    if not ray.is_initialized():
        ray.init(address=cfg.ray_address, ignore_reinit_error=True)


def run_actors(cfg: AnnotateConfig, todo: pa.Table, input_dir: str, out_dir: str, run_dir: str) -> None:
    """The Ray Data job over ``todo`` (file_name, image_id): the actor pool labels, the writer tasks write
    ``run_dir/*.parquet``; nothing but progress comes back to the driver."""
    from pipelines.run_output import counted_progress

    ensure_ray(cfg)

    comp = cfg.compute
    # take() copies each block: a slice would carry (and pickle) the whole listing's buffers, so the object
    # store would hold the listing once per block, quadratic in the number of images
    blocks = [todo.take(pa.array(np.arange(i, min(i + BLOCK_IMAGES, todo.num_rows))))
              for i in range(0, todo.num_rows, BLOCK_IMAGES)]
    import ray

    ds = ray.data.from_arrow(blocks)
    fs, path = storage.resolve(run_dir)
    with counted_progress("annotate", "img", todo.num_rows, "masks/s") as progress:
        ds = ds.map_batches(
            AnnotateWorker, batch_size=BLOCK_IMAGES, batch_format="pyarrow",
            fn_constructor_kwargs={"cfg": cfg.model_dump(mode="json"), "input_dir": input_dir, "out_dir": out_dir,
                                   "progress": progress},
            compute=ray.data.ActorPoolStrategy(size=comp.num_actors,
                                               max_tasks_in_flight_per_actor=comp.max_tasks_in_flight_per_actor),
            num_cpus=comp.num_cpus, num_gpus=comp.num_gpus)
        ds.context.enable_progress_bars = False  # this dataset's own copy: the counted bar replaces Ray's
        ds.write_parquet(path, filesystem=fs, min_rows_per_file=cfg.output.shard_images, schema=SHARD_SCHEMA,
                         ray_remote_args={"num_cpus": min(0.25, comp.num_cpus)})


def run_stats(files: list[str]) -> dict:
    """Per-image times of one run's shards: warm-up per actor, first image per actor, steady state (the
    median of the other labelled images), and the overhead outside the model."""
    tables = [t for t in (read_columns(f, STATS_COLUMNS) for f in files) if isinstance(t, pa.Table)]
    if not tables:
        return {"labelled": 0}
    t = pa.concat_tables(tables)
    st = np.asarray(t["status"].to_pylist())
    sec = np.asarray(t["seconds"], np.float64)
    model = np.asarray(t["model_seconds"], np.float64)
    first = np.asarray(t["first_in_actor"], bool)
    warm = np.asarray(t["actor_warmup_seconds"].drop_null(), np.float64)
    lab = st == "labelled"
    steady = sec[lab & ~first]
    r = lambda v: round(float(v), 4)  # noqa: E731
    return {"labelled": int(lab.sum()), "actors": len(warm),
            "actor_warmup_seconds": r(warm.mean()) if len(warm) else None,
            "first_image_seconds": r(sec[lab & first].mean()) if (lab & first).any() else None,
            "steady_seconds_per_image": r(np.median(steady)) if len(steady) else None,
            "mean_seconds_per_image": r(sec[lab].mean()) if lab.any() else None,
            "overhead_seconds_per_image": r((sec[lab] - model[lab]).mean()) if lab.any() else None}


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
    listing = list_images(input_dir, cfg.input.extensions, cfg.input.limit)
    index = ShardIndex.scan(out_dir)
    moved = quarantine(out_dir, index.unreadable)
    for path in moved:
        print(f"[annotate] unreadable shard moved to {path}; its images are labelled again", file=sys.stderr)
    todo, resumed = pending(listing, index, cfg.output.retry_skipped)
    del index
    print(f"[annotate] {listing.num_rows} image file(s) under {input_dir}: {resumed} already done, "
          f"{todo.num_rows} to label", flush=True)
    run_dir = new_run_folder(out_dir)
    if todo.num_rows:
        run_actors(cfg, todo, input_dir, out_dir, run_dir)
    t_label = time.time()
    this_run = [f for f in shard_files(out_dir) if f.startswith(run_dir.rstrip("/") + "/")]
    index = ShardIndex.scan(out_dir)
    index.restrict_to(listing["image_id"].to_numpy())  # files deleted since, or beyond input.limit, stay out
    info = {"description": "EdgeSAM segment-everything auto-annotation (class-agnostic)",
            "mode": identity["everything"]["mode"], "random_weights": bool(identity["weights"].get("random")),
            "weights": identity["weights"], "date_created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    parallel = index.count("labelled") > cfg.output.coco_max_images  # several parts: Ray tasks write them
    if parallel:
        ensure_ray(cfg)
    t_convert = time.time()
    written = write_formats(out_dir, index, cfg.output.formats, cfg.output.export, info, cfg.output.coco_max_images,
                            ray_cpus=cfg.compute.num_cpus if parallel else None)
    t_convert = time.time() - t_convert
    bad = write_skipped(storage.join(out_dir, SKIPPED_FILE), index)
    stats = run_stats(this_run)
    outputs = written["files"]
    summary = {
        "images_listed": listing.num_rows, "labelled": index.count("labelled"), "skipped": index.count("skipped"),
        "failed": index.count("failed"), "annotations": written["annotations"], "resumed": resumed,
        "processed_this_run": int(todo.num_rows), "labelled_this_run": stats["labelled"],
        "warmup": {k: stats.get(k) for k in ("actors", "actor_warmup_seconds", "first_image_seconds")},
        "steady_seconds_per_image": stats.get("steady_seconds_per_image"),
        "seconds_per_image": stats.get("mean_seconds_per_image"),
        "overhead_seconds_per_image": stats.get("overhead_seconds_per_image"),
        "label_wall_seconds": round(t_label - t0, 2), "convert_seconds": round(t_convert, 2),
        "convert_parts": written["parts"], "wall_seconds": round(time.time() - t0, 2),
        "random_weights": bool(identity["weights"].get("random")),
        "coco_json": outputs.get("coco_rle"), "outputs": outputs, "shards": len(index.files),
        "unreadable_shards_moved": moved, "skipped_json": storage.display(storage.join(out_dir, SKIPPED_FILE))}
    storage.write_json(storage.join(out_dir, SUMMARY_FILE), summary, indent=2)
    for s in bad:
        print(f"[annotate] {s['status']} {s['file_name']}: {s['reason']}")
    if summary["skipped"] + summary["failed"] > len(bad):
        print(f"[annotate] ... {summary['skipped'] + summary['failed'] - len(bad)} more in {summary['skipped_json']}")
    spi = summary["steady_seconds_per_image"]
    spi = f"{spi:.2f} s/image steady" if spi is not None else "n/a s/image"
    print(f"[annotate] done: {summary['labelled']} images labelled ({summary['labelled_this_run']} this run, "
          f"{resumed} resumed), {summary['skipped']} skipped, {summary['failed']} failed, "
          f"{summary['annotations']} annotations, {spi}, {summary['wall_seconds']} s -> "
          f"{', '.join(p for ps in outputs.values() for p in ps[:2])}", flush=True)
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
