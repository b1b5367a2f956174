"""Peak memory of the teacher-caching job against the size of an SA-1B tar (issue 10).

    python benchmarks/cache_memory.py --images 96 --out BENCHMARKS.md [--before /work/main]

Two tars of dense SA-1B-like images (``edgesam.data.synthetic_dense``: ~1500x2250 JPEGs, >= 100 RLE masks
each): 1x = ``--images`` images, 4x = four times as many with the same per-image content (the images are
cycled under new ids). Each tar is cached by a fresh job in a child process (its own local Ray cluster,
2 CPUs, no dashboard) with the tiny RANDOM-weight teacher at 256 px: the reader is what is measured, not
the teacher. While the job runs, every ~0.2 s the RSS (and PSS: shared object-store pages counted once)
of the child's whole process tree (driver, GCS, raylet with the object store, every worker) is summed;
the table gives the peaks. ``--before DIR`` also runs the same jobs with the code checked out at DIR
(e.g. a checkout of the commit before the streaming readers) for comparison.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.common import load_average, replace_section  # noqa: E402

CHILD = textwrap.dedent("""
    import json, sys
    import ray
    from edgesam.config import load_config
    from pipelines.cache_teacher import CacheConfig, run_cache
    overrides, extra = json.loads(sys.argv[1]), json.loads(sys.argv[2])
    try:
        cfg = load_config(CacheConfig, None, overrides + extra)
    except Exception:  # older code without the memory options
        cfg = load_config(CacheConfig, None, overrides)
    import psutil
    for attempt in range(8):  # Ray gives the raylet a fixed 30 s to register: retry on a loaded machine
        try:
            ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
            break
        except Exception as exc:
            print("ray.init failed, retrying:", exc, flush=True)
            ray.shutdown()
            for p in psutil.Process().children(recursive=True):  # this attempt's half-started cluster
                p.kill()
    m = run_cache(cfg)
    print("RESULT", json.dumps({"images": m["counts"]["images"], "skipped": m["counts"]["skipped"]}))
""")


def _tree_memory(root) -> tuple[int, int, int]:
    """-> (sum RSS, sum PSS, number of processes) over ``root`` and all its descendants, bytes."""
    import psutil

    procs = [root]
    try:
        procs += root.children(recursive=True)
    except psutil.Error:
        pass
    rss = pss = n = 0
    for p in procs:
        try:
            info = p.memory_full_info()
        except psutil.Error:
            continue
        rss += info.rss
        pss += getattr(info, "pss", info.rss)
        n += 1
    return rss, pss, n


def run_job(code: Path, src: Path, out: Path, extra: list[str], interval: float = 0.2) -> dict:
    """Cache ``src`` into ``out`` with the code at ``code`` in a child process; sample its tree's memory."""
    import psutil

    overrides = [f"data.source={src}", f"output.dir={out}", "teacher.name=tiny", "preprocessing.img_size=256",
                 "compute.batch_size=8", "compute.num_cpus_per_actor=0.5", "compute.torch_threads=1",
                 "output.rows_per_file=64"]
    env = {**os.environ, "PYTHONPATH": str(code), "RAY_DEDUP_LOGS": "0", "RAY_raylet_start_wait_time_s": "300"}
    t0 = time.perf_counter()
    child = subprocess.Popen([sys.executable, "-c", CHILD, json.dumps(overrides), json.dumps(extra)], cwd=code,
                             env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    root = psutil.Process(child.pid)
    peak_rss = peak_pss = max_procs = 0
    lines: list[str] = []
    import threading

    reader = threading.Thread(target=lambda: lines.extend(child.stdout), daemon=True)
    reader.start()
    while child.poll() is None:
        rss, pss, n = _tree_memory(root)
        peak_rss, peak_pss, max_procs = max(peak_rss, rss), max(peak_pss, pss), max(max_procs, n)
        time.sleep(interval)
    reader.join(timeout=10)
    wall = time.perf_counter() - t0
    result = next((json.loads(ln.split(" ", 1)[1]) for ln in lines if ln.startswith("RESULT ")), None)
    if child.returncode != 0 or result is None:
        raise RuntimeError(f"caching job failed (rc {child.returncode}):\n" + "".join(lines[-40:]))
    return {"peak_rss": peak_rss, "peak_pss": peak_pss, "processes": max_procs, "wall_s": wall, **result}


def main(argv: list[str] | None = None) -> int:
    from edgesam.data.synthetic_dense import write_dense_shards

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=96, help="images in the 1x tar (the 4x tar has four times as many)")
    p.add_argument("--unique", type=int, default=8, help="distinct images generated (cycled under new ids)")
    p.add_argument("--inflight-mib", type=int, default=256, help="compute.max_inflight_mib of the job")
    p.add_argument("--block-mib", type=int, default=32, help="compute.read_block_mib of the job")
    p.add_argument("--before", default=None, help="also run the code checked out at this folder")
    p.add_argument("--out", default=None, help="BENCHMARKS.md to update")
    a = p.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="cachemem-"))
    extra = [f"compute.max_inflight_mib={a.inflight_mib}", f"compute.read_block_mib={a.block_mib}"]
    rows = []
    try:
        tars = {}
        for mult in (1, 4):
            [tar] = write_dense_shards(tmp / f"x{mult}", a.images * mult, images_per_shard=a.images * mult,
                                       seed=0, unique_images=a.unique)
            tars[mult] = tar
        codes = [("this branch (streaming readers)", REPO)]
        if a.before:
            codes.append((f"before ({a.before})", Path(a.before).resolve()))
        load0 = load_average()
        for label, code in codes:
            res = {}
            for mult, tar in tars.items():
                out = tmp / f"cache-{len(rows)}"
                res[mult] = run_job(code, tar, out, extra)
                shutil.rmtree(out, ignore_errors=True)
                r = res[mult]
                rows.append((label, mult, a.images * mult, tar.stat().st_size, r))
                print(label, mult, json.dumps(r), flush=True)
        load1 = load_average()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    mib = 2 ** 20
    table = ["| code | tar | images | tar MiB | peak RSS sum MiB | peak PSS sum MiB | processes | wall s |",
             "|---|---|---|---|---|---|---|---|"]
    for label, mult, n, size, r in rows:
        table.append(f"| {label} | {mult}x | {n} | {size / mib:.0f} | {r['peak_rss'] / mib:.0f} | "
                     f"{r['peak_pss'] / mib:.0f} | {r['processes']} | {r['wall_s']:.0f} |")
    ratios = []
    for label in dict.fromkeys(r[0] for r in rows):
        by = {m: r for lab, m, _, _, r in rows if lab == label}
        ratios.append(f"{label}: 4x/1x peak RSS {by[4]['peak_rss'] / by[1]['peak_rss']:.2f}, "
                      f"PSS {by[4]['peak_pss'] / by[1]['peak_pss']:.2f}")
    cmd = f"python benchmarks/cache_memory.py --images {a.images} --unique {a.unique} --inflight-mib {a.inflight_mib}" \
          + (f" --before {a.before}" if a.before else "") + " --out BENCHMARKS.md"
    body = "\n".join([
        f"Command: `{cmd}` ({time.strftime('%Y-%m-%d %H:%M %Z')}, 2 CPUs shared with other jobs, load average "
        f"{load0:.1f} -> {load1:.1f}). Dense synthetic SA-1B-like tars (~1500x2250 JPEG q95, >= 100 RLE masks per "
        f"image; the 4x tar repeats the {a.unique} distinct images of the 1x tar under new ids); tiny RANDOM-weight "
        f"teacher at 256 px; `compute.max_inflight_mib={a.inflight_mib}`, `compute.read_block_mib={a.block_mib}`. "
        "Peaks of the memory summed over the job's whole process tree (driver, GCS, raylet + object store, "
        "workers), sampled every 0.2 s. RSS counts shared object-store pages once per process that maps them; "
        "PSS splits them.", "", *table, "", "**" + "; ".join(ratios) + "** (goal: 4x/1x < 1.25)."])
    print(body)
    if a.out:
        replace_section(a.out, "cache-memory", "## Caching memory against tar size (issue 10)", body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
