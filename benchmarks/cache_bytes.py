"""Bytes per cached image on SA-1B-like input, by column: the figure the README's Scaling section builds on.

    python benchmarks/cache_bytes.py --images 6 --out BENCHMARKS.md

Input: the photos in ../shared/images (else scikit-image's), resized so the SHORT side is 1500 px (SA-1B's
published size), each with about 100 instance masks (SLIC superpixels of the photo: real, irregular
boundaries, so the RLE strings are as long as SA-1B's are, unlike synthetic shapes) written as an SA-1B
folder (X.jpg + X.json, compressed RLE, bbox, point_coords). The caching job runs as configured for the
paper (img_size 1024, 16 prompts, JPEG 95) with the tiny RANDOM-weight teacher: the embedding is 256x64x64
float16 whatever the teacher, but random-teacher masks compress differently from a real teacher's.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
SHORT_SIDE = 1500


def _photos(n: int) -> list[np.ndarray]:
    from PIL import Image

    files = sorted((REPO.parent / "shared" / "images").glob("*.jp*g"))
    if files:
        return [np.asarray(Image.open(f).convert("RGB")) for f in files[:n]]
    import skimage.data

    return [skimage.data.astronaut(), skimage.data.coffee(), skimage.data.chelsea()][:n]


def write_dense_folder(root: Path, n: int, segments: int) -> dict:
    """-> {"images", "masks_per_image", "json_bytes_per_image", "jpeg_bytes_per_image"} of what it wrote."""
    from PIL import Image
    from skimage.segmentation import slic

    from edgesam.data.readers import mask_center_point
    from edgesam.data.rle import encode_masks, mask_to_bbox

    root.mkdir(parents=True, exist_ok=True)
    counts, json_bytes, jpeg_bytes = [], [], []
    for k, photo in enumerate(_photos(n)):
        h, w = photo.shape[:2]
        s = SHORT_SIDE / min(h, w)
        img = Image.fromarray(photo).resize((round(w * s), round(h * s)), Image.BILINEAR)
        arr = np.asarray(img)
        labels = slic(arr, n_segments=segments, compactness=10, start_label=0)
        masks = np.stack([labels == i for i in np.unique(labels)])
        rles = encode_masks(masks)
        anns = [{"id": i, "segmentation": r, "bbox": mask_to_bbox(m), "area": int(m.sum()),
                 "point_coords": [mask_center_point(m)], "predicted_iou": 0.9, "stability_score": 0.95,
                 "crop_box": [0, 0, arr.shape[1], arr.shape[0]]} for i, (r, m) in enumerate(zip(rles, masks))]
        rec = {"image": {"image_id": k, "width": arr.shape[1], "height": arr.shape[0], "file_name": f"sa_{k}.jpg"},
               "annotations": anns}
        img.save(root / f"sa_{k}.jpg", quality=95)
        (root / f"sa_{k}.json").write_text(json.dumps(rec))
        counts.append(len(anns))
        json_bytes.append((root / f"sa_{k}.json").stat().st_size)
        jpeg_bytes.append((root / f"sa_{k}.jpg").stat().st_size)
    return {"images": len(counts), "masks_per_image": float(np.mean(counts)),
            "json_bytes_per_image": float(np.mean(json_bytes)), "jpeg_bytes_per_image": float(np.mean(jpeg_bytes)),
            "size": f"{arr.shape[1]}x{arr.shape[0]} (last)"}


def column_bytes(cache_dir: Path) -> tuple[dict[str, int], int, int]:
    """Compressed bytes per column summed over every shard, total file bytes, rows."""
    import pyarrow.parquet as pq

    from edgesam.data.cache import shard_files

    cols: dict[str, int] = {}
    total = rows = 0
    for f in shard_files(cache_dir):
        md = pq.ParquetFile(f).metadata
        rows += md.num_rows
        total += f.stat().st_size
        for g in range(md.num_row_groups):
            rg = md.row_group(g)
            for c in range(rg.num_columns):
                col = rg.column(c)
                name = col.path_in_schema.split(".")[0]
                cols[name] = cols.get(name, 0) + col.total_compressed_size
    return cols, total, rows


def decode_cost(cache_dir: Path) -> float:
    """Median ms to turn one cached row into training tensors (what ``decode_batch`` does per image)."""
    import pyarrow.parquet as pq
    import torch

    from edgesam.data.cache import decode_row, shard_files

    torch.set_num_threads(1)
    rows = pq.read_table(shard_files(cache_dir)[0]).to_pylist()
    times = []
    for r in rows * 2:
        t = time.perf_counter()
        decode_row(r, 1024)
        times.append(time.perf_counter() - t)
    return 1000 * float(np.median(times[len(rows):]))


def main(argv: list[str] | None = None) -> int:
    from benchmarks.common import machine_info, replace_section
    from edgesam.config import load_config
    from pipelines.cache_teacher import CacheConfig, run_cache

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=6)
    ap.add_argument("--segments", type=int, default=110, help="SLIC superpixels per image (about the masks)")
    ap.add_argument("--work", default=None)
    ap.add_argument("--out", default=None, help="write the table into this BENCHMARKS.md")
    args = ap.parse_args(argv)
    work = Path(args.work or tempfile.mkdtemp(prefix="cache-bytes-"))
    src_file = work / "source.json"
    if not src_file.is_file():  # a rerun on the same --work reuses the input and the cache
        src_file.parent.mkdir(parents=True, exist_ok=True)
        src_file.write_text(json.dumps(write_dense_folder(work / "sa1b", args.images, args.segments)))
    src = json.loads(src_file.read_text())
    cfg = load_config(CacheConfig, None, [
        f"data.source={work / 'sa1b'}", "data.format=sa1b-folder", "data.synthetic_if_missing=false",
        "preprocessing.img_size=1024", "preprocessing.num_prompts=16", f"output.dir={work / 'cache'}",
        "output.rows_per_file=64", "compute.num_cpus_per_actor=0.5", "compute.batch_size=2", "ray_address=local"])
    t0 = time.time()
    done = work / "cache" / "manifest.json"
    manifest = json.loads(done.read_text()) if done.is_file() else {}
    if manifest.get("status") != "complete":
        manifest = run_cache(cfg)
    elapsed = time.time() - t0
    cols, total, rows = column_bytes(work / "cache")
    decode_ms = decode_cost(work / "cache")
    per = {k: v / rows for k, v in sorted(cols.items(), key=lambda kv: -kv[1])}
    info = machine_info(2)
    lines = [
        f"Command: `python benchmarks/cache_bytes.py --images {args.images} --segments {args.segments}"
        f"{' --out ' + args.out if args.out else ''}` ({info['date']}, {info['cpu']}, torch {info['torch']}; "
        f"caching {elapsed:.0f} s on a shared machine).",
        "",
        f"Input: {src['images']} photos resized to a {SHORT_SIDE} px short side ({src['size']}), "
        f"{src['masks_per_image']:.0f} SLIC-superpixel masks per image written as SA-1B JSON "
        f"({src['json_bytes_per_image'] / 2**10:.0f} KiB JSON, {src['jpeg_bytes_per_image'] / 2**10:.0f} KiB JPEG per "
        "image). Cache: img_size 1024, 16 prompts, JPEG 95, tiny RANDOM-weight teacher (the embedding size does "
        "not depend on the teacher; its bit-packed masks compress differently from a real teacher's).",
        "",
        "| column | bytes / image | MiB / image | share |", "|---|---:|---:|---:|",
    ]
    for k, v in per.items():
        lines.append(f"| {k} | {v:,.0f} | {v / 2**20:.3f} | {100 * v / (total / rows):.1f} % |")
    lines.append(f"| **file total** (incl. Parquet footer) | {total / rows:,.0f} | {total / rows / 2**20:.3f} | 100 % |")
    lines += ["", f"Training-side CPU cost of one row (`decode_row` at 1024: JPEG decode, normalise, pad, embedding "
              f"to float32; 1 torch thread, median over rows): **{decode_ms:.0f} ms**, done in the train worker's "
              "loop before each step.",
              "", f"{rows} rows in {manifest['counts']['shards']} shard(s). For 1 % of SA-1B (~110k images): "
              f"{total / rows * 110_000 / 1e9:.0f} GB."]
    body = "\n".join(lines)
    print(body)
    if args.out:
        replace_section(args.out, "cache-bytes", "## Bytes per cached image on SA-1B-like input (issue 10)", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
