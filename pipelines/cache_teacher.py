"""Teacher caching with Ray Data: images (+ SA-1B/COCO annotations) -> SAM teacher -> Parquet shards.

    python pipelines/cache_teacher.py [--config quickstart-cache] [key=value ...]
    ray job submit --working-dir . -- python pipelines/cache_teacher.py --config sa1b-1pct-cache

Stages: read (one streaming task per tar shard, per chunk of a COCO set or folder; bounded blocks) -> decode + resize + prompts (tasks) -> teacher
(stateful actor pool, GPUs from config) -> shard writer (tasks, atomic files) -> manifest.json.
Rerunning the same command resumes: images already in complete shards are not recomputed. A cache
made with another teacher or other preprocessing is refused.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import json
import sys
import time
from pathlib import Path
from typing import Iterator, Literal

if __package__ in (None, ""):  # `python pipelines/cache_teacher.py` and `ray job submit -- python ...`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


from edgesam.config import StrictModel, add_config_args, dump_config, load_config
from edgesam import storage
from edgesam.data import cache as C

DEFAULT_SAMPLE = "data/sample"


class CacheDataCfg(StrictModel):
    source: str = DEFAULT_SAMPLE  # tar shard, folder of shards, SA-1B folder, COCO set or image folder
    format: Literal["auto", "sa1b-tar", "sa1b-folder", "coco", "images"] = "auto"
    synthetic_if_missing: bool = True  # generate the synthetic sample set at `source` if it does not exist
    sample_images: int = 48
    limit_sources: int | None = None
    images_per_read_task: int = 64  # COCO sets and folders are cut into read tasks of this many images


class CacheTeacherCfg(StrictModel):
    name: str = "tiny"  # tiny | vit_b | vit_l | vit_h | sam_micro_128 | sam_small_256 (pipelines/train_teacher.py)
    checkpoint: str | None = None  # e.g. /models/sam_vit_h_4b8939.pth
    tiny_seed: int = 0


class CacheComputeCfg(StrictModel):
    min_actors: int = 1
    max_actors: int = 1  # > min_actors lets the pool (and an autoscaling cluster) grow
    num_cpus_per_actor: float = 0.5  # fractional on small machines: whole-CPU actors can starve readers
    num_gpus_per_actor: float = 0.0
    num_cpus_per_task: float = 1.0  # read, preprocess and write tasks; below 1 lets them run beside the teacher actor
    teacher_resources: dict[str, float] = {}  # e.g. {"teacher": 1} to pin actors to a node type
    batch_size: int = 4
    preprocess_batch_size: int = 8
    device: str = "auto"
    torch_threads: int | None = None  # intra-op threads per teacher actor on CPU (default: Ray's choice)
    # Memory bounds of the streaming read: Ray Data blocks of at most this many MiB (a read task holds one
    # block plus one image pair), and at most this many MiB of blocks in flight in the object store for the
    # whole job (readers pause when the teacher falls behind). Neither grows with the size of a tar.
    read_block_mib: int = 32  # largest Ray Data block (MiB): what one read task holds at a time
    max_inflight_mib: int | None = 2048  # object-store MiB the job may fill before readers pause (None: Ray's default)


class CacheOutputCfg(StrictModel):
    dir: str = "runs/quickstart/cache"
    rows_per_file: int = 32
    row_group_size: int = 16


class CacheConfig(StrictModel):
    data: CacheDataCfg = CacheDataCfg()
    teacher: CacheTeacherCfg = CacheTeacherCfg()
    preprocessing: C.Preprocessing = C.Preprocessing(img_size=256)
    compute: CacheComputeCfg = CacheComputeCfg()
    output: CacheOutputCfg = CacheOutputCfg()
    ray_address: str | None = None


def _read_unit(item: dict, done_ids: frozenset[str]) -> Iterator[dict]:
    """One read unit -> raw rows, lazily: Ray Data cuts the stream into blocks as it goes."""
    from edgesam.data.read_units import iter_unit

    yield from C.raw_rows(iter_unit(json.loads(item["unit"])), done_ids)


def resolve_units(cfg: CacheConfig) -> tuple[list[dict], str]:
    """-> (the read units of :func:`edgesam.data.read_units.plan_units`, the format). Generates the synthetic
    sample set at ``data.source`` first when it is missing and ``data.synthetic_if_missing`` is set."""
    from edgesam.data.read_units import plan_units
    from edgesam.data.readers import detect_format
    from edgesam.data.synthetic import ensure_sample_dataset

    src = cfg.data.source
    if cfg.data.synthetic_if_missing and "://" not in src and not Path(src).exists():
        print(f"[cache] {src} does not exist: generating {cfg.data.sample_images} synthetic SA-1B-format images "
              "there (data.synthetic_if_missing=true)", flush=True)
        src = str(ensure_sample_dataset(src, num_images=cfg.data.sample_images))
    if not Path(src).exists() and "://" not in src:
        raise FileNotFoundError(f"data.source not found: {src}")
    fmt = detect_format(src) if cfg.data.format == "auto" else cfg.data.format
    return plan_units(src, fmt, cfg.data.images_per_read_task, cfg.data.limit_sources), fmt


@contextlib.contextmanager
def _bounded_memory(comp: CacheComputeCfg) -> Iterator[None]:
    """Block size and in-flight bytes for the datasets built inside (see CacheComputeCfg.read_block_mib).

    A Dataset copies the current DataContext when it is created, so the global one is restored afterwards.
    """
    import ray

    saved = ray.data.DataContext.get_current()
    ctx = copy.deepcopy(saved)
    ctx.target_max_block_size = comp.read_block_mib * 2**20
    if comp.max_inflight_mib:
        ctx.execution_options.resource_limits = ctx.execution_options.resource_limits.copy(
            object_store_memory=comp.max_inflight_mib * 2**20)
    ray.data.DataContext._set_current(ctx)
    try:
        yield
    finally:
        ray.data.DataContext._set_current(saved)


def build_dataset(cfg: CacheConfig, units: list[dict], done_ids: frozenset[str]):
    """The lazy Ray Dataset of summary rows; executing it writes the shards. One read task per unit."""
    with _bounded_memory(cfg.compute):
        return _build_dataset(cfg, units, done_ids)


def _build_dataset(cfg: CacheConfig, units: list[dict], done_ids: frozenset[str]):
    import ray

    pre = cfg.preprocessing
    comp = cfg.compute
    # a unit travels as a JSON string: COCO annotations are too irregular for an Arrow struct column
    ds = ray.data.from_items([{"unit": json.dumps(u)} for u in units], override_num_blocks=max(1, len(units)))
    ds = ds.flat_map(_read_unit, fn_kwargs={"done_ids": done_ids}, num_cpus=comp.num_cpus_per_task)
    ds = ds.map_batches(C.preprocess_table, batch_format="pyarrow", batch_size=comp.preprocess_batch_size,
                        fn_kwargs={"pre": pre}, num_cpus=comp.num_cpus_per_task)
    remote_args = {"resources": comp.teacher_resources} if comp.teacher_resources else {}
    ds = ds.map_batches(
        C.TeacherBatch, batch_format="pyarrow", batch_size=comp.batch_size,
        fn_constructor_kwargs={"teacher_name": cfg.teacher.name, "checkpoint": cfg.teacher.checkpoint, "pre": pre,
                               "device": comp.device, "tiny_seed": cfg.teacher.tiny_seed,
                               "torch_threads": comp.torch_threads},
        compute=ray.data.ActorPoolStrategy(min_size=comp.min_actors, max_size=comp.max_actors),
        num_cpus=comp.num_cpus_per_actor, num_gpus=comp.num_gpus_per_actor, **remote_args)
    return ds.map_batches(C.write_shard, batch_format="pyarrow", batch_size=cfg.output.rows_per_file,
                          fn_kwargs={"out_dir": cfg.output.dir, "pre": pre, "row_group_size": cfg.output.row_group_size},
                          num_cpus=comp.num_cpus_per_task)


def teacher_identity(cfg: CacheConfig) -> dict:
    """Identity without building the model on the driver (ViT-H is 2.5 GB)."""
    from edgesam.models.teacher import REGISTRY_NAMES, SMALL_CONFIGS, TinyViTConfig, sha256_file

    t = cfg.teacher
    digest = sha256_file(t.checkpoint) if t.checkpoint else None
    if t.name in REGISTRY_NAMES:
        return {"name": t.name, "img_size": 1024, "checkpoint_sha256": digest}
    if t.name in SMALL_CONFIGS:  # the small registry-style teachers (pipelines/train_teacher.py)
        return {"name": t.name, "img_size": SMALL_CONFIGS[t.name].img_size, "checkpoint_sha256": digest}
    tiny = TinyViTConfig()
    return {"name": f"tiny-d{tiny.depth}-w{tiny.embed_dim}-seed{t.tiny_seed}", "img_size": cfg.preprocessing.img_size,
            "checkpoint_sha256": digest}


def finalize(out_dir: str | Path, manifest: dict, summary: list[dict], elapsed: float) -> dict:
    """Recount from the shards themselves (authoritative) and mark the cache complete."""
    import pyarrow.parquet as pq

    ids: list[str] = []
    total_bytes = 0
    for f in C.shard_files(out_dir):
        ids += pq.read_table(f, columns=["image_id"]).column("image_id").to_pylist()
        total_bytes += storage.size(f)
    dupes = sorted({i for i in ids if ids.count(i) > 1}) if len(ids) != len(set(ids)) else []
    skipped = [{"source": r["source"], "image_id": r["image_id"], "reason": r["reason"]} for r in summary if r["kind"] == "skipped"]
    manifest.update(
        status="complete" if not dupes else "error",
        counts={"images": len(ids), "written_this_run": sum(r["kind"] == "written" for r in summary),
                "skipped": len(skipped), "shards": len(C.shard_files(out_dir)), "duplicates": len(dupes)},
        bytes_on_disk=total_bytes, bytes_per_image=total_bytes / max(1, len(ids)),
        skipped=skipped, duplicates=dupes[:100], last_run_seconds=round(elapsed, 2),
        finished_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    C.write_manifest(out_dir, manifest)
    return manifest


def run_cache(cfg: CacheConfig) -> dict:
    """Run (or resume) the caching job; returns the final manifest."""
    from pipelines.ray_init import init_ray
    from pipelines.run_output import collect_rows

    import edgesam

    t0 = time.time()
    out_dir = cfg.output.dir  # a local path or an s3:// / gs:// URI
    storage.makedirs(out_dir)
    identity = C.cache_identity(teacher_identity(cfg), cfg.preprocessing)
    previous = C.check_identity(out_dir, identity)
    done, removed = C.scan_done_ids(out_dir)
    for msg in removed:
        print(f"[cache] resume: {msg}")
    units, fmt = resolve_units(cfg)
    sources = sorted({u["source"] for u in units})
    if identity["teacher"]["checkpoint_sha256"] is None:
        print("[cache] WARNING: the teacher has RANDOM weights (no checkpoint given): the cache is for "
              "pipeline testing only, not for real distillation.", flush=True)
    manifest = {"status": "in_progress", "identity": identity, "data": {"source": cfg.data.source, "format": fmt,
                "num_sources": len(sources), "num_read_units": len(units)}, "schema": C.CACHE_SCHEMA.to_string(), "code_version": edgesam.__version__,
                "config": json.loads(json.dumps(cfg.model_dump(mode="json"))),
                "started_at": (previous or {}).get("started_at") or time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    C.write_manifest(out_dir, manifest)
    print(f"[cache] {len(sources)} source(s) of format {fmt}; {len(done)} image(s) already cached, resuming after them"
          if done else f"[cache] {len(sources)} source(s) of format {fmt}", flush=True)
    init_ray(cfg.ray_address)
    summary = collect_rows(build_dataset(cfg, units, frozenset(done)), desc="cache teacher", unit="img")
    manifest = finalize(out_dir, manifest, summary, time.time() - t0)
    for s in manifest["skipped"]:
        print(f"[cache] skipped {s['source']}: {s['reason']}")
    print(f"[cache] done: {manifest['counts']['images']} images in {manifest['counts']['shards']} shards "
          f"({manifest['bytes_per_image'] / 2**20:.2f} MiB/image), {manifest['counts']['skipped']} skipped, "
          f"written to {storage.display(out_dir)}", flush=True)
    return manifest


def main(argv: list[str] | None = None) -> int:
    from pipelines.run_output import RunOutput, add_verbose_arg, is_verbose

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_args(parser)
    add_verbose_arg(parser)
    args = parser.parse_args(argv)
    cfg = load_config(CacheConfig, args.config, args.overrides)
    out = RunOutput(Path(cfg.output.dir) if "://" not in cfg.output.dir else Path("runs/cache"),
                    is_verbose(args.verbose), tag="cache")
    out.activate()  # init_ray takes its Ray logging settings from here
    print(f"[cache] config {out.write_config(dump_config(cfg))} (-v prints it and Ray's logs)", flush=True)
    try:
        with out.stage("cache"):
            manifest = run_cache(cfg)
    except C.CacheMismatchError as exc:
        print(f"[cache] ERROR: {exc}", file=sys.stderr)
        return 2
    out.summary({"cache": storage.display(cfg.output.dir)})
    return 0 if manifest["status"] == "complete" else 1


if __name__ == "__main__":
    sys.exit(main())
