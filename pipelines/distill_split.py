"""Train / held-out split of a teacher cache and the per-step step counts."""
from __future__ import annotations

import zlib
from pathlib import Path

import pyarrow.parquet as pq

from edgesam import storage
from edgesam.data.cache import load_manifest, shard_files


def is_holdout(image_id: str, fraction: float, seed: int = 0) -> bool:
    """Deterministic by id, so the split survives resume and re-caching."""
    return (zlib.crc32(f"{seed}:{image_id}".encode()) % 10_000) < fraction * 10_000


def make_split(cfg) -> dict:
    """-> {"train_files", "holdout_files", "holdout_ids", "num_train", "steps_per_epoch": {kind: n}}."""
    cache_dir = cfg.cache.output.dir  # local or s3:// / gs://
    load_manifest(cache_dir, {"img_size": cfg.cache.preprocessing.img_size})
    files = [storage.display(f) for f in shard_files(cache_dir)]
    holdout_ids: list[str] = []
    holdout_files: set[str] = set()
    num_train = 0
    for f in files:
        for image_id in pq.read_table(f, columns=["image_id"]).column("image_id").to_pylist():
            if is_holdout(image_id, cfg.eval.holdout_fraction, cfg.eval.seed) and len(holdout_ids) < cfg.eval.max_images:
                holdout_ids.append(image_id)
                holdout_files.add(f)
            else:
                num_train += 1
    workers = cfg.train.scaling.num_workers
    steps = {}
    for step in cfg.steps():
        per_worker = num_train // workers  # Ray Train splits the dataset equally across workers
        n = per_worker // step.batch_size
        if step.max_steps is not None:
            n = min(n, step.max_steps)
        if n < 1:
            raise ValueError(f"{step.kind}: {num_train} training images are too few for {workers} worker(s) x "
                             f"batch {step.batch_size}")
        steps[step.kind] = n
    return {"train_files": files, "holdout_files": sorted(holdout_files), "holdout_ids": holdout_ids,
            "num_train": num_train, "steps_per_epoch": steps}
