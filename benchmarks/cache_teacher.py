"""Teacher-caching throughput: the whole Ray Data pipeline against a plain loop over the same teacher.

    python benchmarks/cache_teacher.py --teacher vit_b --images 8 --threads 2 --out BENCHMARKS.md

Both sides run the same SAM image encoder (random weights: speed only) on the same synthetic images
at 1024 px with the same torch thread count. The plain loop decodes, resizes, normalises and encodes
one image at a time. The pipeline time runs from submitting the dataset to the final manifest (the
local Ray cluster is started beforehand and not counted). Bytes per image come from the shards.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from benchmarks.common import load_average, machine_info, replace_section  # noqa: E402


def plain_loop(src: Path, teacher_name: str, img_size: int, threads: int) -> tuple[float, int]:
    from edgesam.data.images import decode_image
    from edgesam.data.readers import iter_any
    from edgesam.data.records import RawRecord
    from edgesam.data.transforms import preprocess
    from edgesam.models import build_teacher

    torch.set_num_threads(threads)
    teacher = build_teacher(teacher_name, None, img_size)
    records = [r for r in iter_any(src) if isinstance(r, RawRecord)]
    t0 = time.perf_counter()
    with torch.inference_mode():
        for r in records:
            x, _ = preprocess(decode_image(r.image_bytes), img_size)
            teacher.embed(x).to(torch.float16)
    return time.perf_counter() - t0, len(records)


def pipeline(src: Path, out: Path, teacher_name: str, img_size: int, threads: int) -> tuple[float, dict]:
    from edgesam.config import load_config
    from pipelines.cache_teacher import CacheConfig, run_cache

    cfg = load_config(CacheConfig, None, [
        f"data.source={src}", f"output.dir={out}", f"teacher.name={teacher_name}",
        f"preprocessing.img_size={img_size}", "compute.batch_size=1", "compute.num_cpus_per_actor=0.5",
        f"compute.torch_threads={threads}", "output.rows_per_file=4"])
    t0 = time.perf_counter()
    manifest = run_cache(cfg)
    return time.perf_counter() - t0, manifest


def main(argv: list[str] | None = None) -> int:
    import ray

    from edgesam.data.synthetic import write_sa1b_shards

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--teacher", default="vit_b", choices=["vit_b", "vit_l", "vit_h"])
    p.add_argument("--images", type=int, default=8)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=None, help="BENCHMARKS.md to update")
    a = p.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="cachebench-"))
    try:
        src = tmp / "sa1b"
        write_sa1b_shards(src, a.images, images_per_shard=4, seed=0, size_range=(768, 1500))
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
        load0 = load_average()
        loop_s, n = plain_loop(src, a.teacher, 1024, a.threads)
        pipe_s, manifest = pipeline(src, tmp / "cache", a.teacher, 1024, a.threads)
        load1 = load_average()
        ray.shutdown()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    per_image = manifest["bytes_per_image"]
    emb_bytes = 256 * 64 * 64 * 2
    info = machine_info(a.threads)
    rows = [
        ("plain loop (decode, resize, encode, fp16)", n / loop_s, loop_s),
        ("Ray Data pipeline (read, preprocess tasks, teacher actor, Parquet writer)", n / pipe_s, pipe_s),
    ]
    table = ["| path | images/s | seconds for %d images |" % n, "|---|---|---|"]
    table += [f"| {name} | {ips:.4f} | {s:.1f} |" for name, ips, s in rows]
    body = "\n".join([
        f"Command: `python benchmarks/cache_teacher.py --teacher {a.teacher} --images {a.images} --threads {a.threads}"
        f" --out BENCHMARKS.md` ({info['date']}, {info['cpu']}, {a.threads} threads, torch {info['torch']}, "
        f"load average {load0:.1f} -> {load1:.1f}). Teacher: SAM {a.teacher} image encoder with RANDOM weights, "
        "1024 px; synthetic images 768-1500 px.", "", *table, "",
        f"**Pipeline / plain loop throughput: {loop_s / pipe_s:.2f}x.**", "",
        f"Disk: {per_image / 2**20:.3f} MiB per cached image ({per_image:.0f} B): the float16 embedding is "
        f"{emb_bytes} B ({emb_bytes / 2**20:.2f} MiB); the rest is the resized JPEG, prompts, GT RLEs and "
        f"bit-packed teacher masks ({manifest['counts']['images']} images, {manifest['counts']['shards']} shards)."])
    print(body)
    if a.out:
        replace_section(a.out, "cache", "## Teacher caching (issue 3)", body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
