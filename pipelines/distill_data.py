"""The training Dataset of a distillation step: the teacher cache minus the held-out images.

A small cache (the quickstart's is ~7 MB; local or in a bucket) is read ONCE per run and materialized in the object store,
then shared by every step and epoch: otherwise Ray Data re-lists and re-reads the Parquet files each
epoch of each step (5 reads in the quickstart, tens of seconds each on 2 loaded cores). Its blocks go to
the workers by reference (``BlockShard``): Ray Data's streaming split would start a coordinator and a
streaming execution per epoch, seconds each, to hand out a few MB. A large cache streams from storage
as before (lazy, exactly the step's columns).
"""
from __future__ import annotations

BASE_COLUMNS = ["image_id", "image_jpeg", "embedding", "input_height", "input_width", "gt_boxes", "gt_points"]
GT_COLUMNS = ["gt_rles", "orig_height", "orig_width"]  # prompt_kd with GT mask targets

_SHARED: dict[tuple, object] = {}


def step_columns(kind: str, mask_target: str) -> list[str]:
    return BASE_COLUMNS + (GT_COLUMNS if kind == "prompt_kd" and mask_target != "teacher" else [])


def _small_files(files: list[str], max_bytes: float) -> tuple | None:
    """((path, size, mtime_ns), ...) when ``files`` (local or s3:// / gs://) total at most ``max_bytes``, else None.
    Stops at the first file past the limit: a paper-scale cache has thousands of shards."""
    from edgesam import storage

    stats, total = [], 0
    for f in files:
        size, mtime = storage.stat(f)
        total += size
        if total > max_bytes:
            return None
        stats.append((f, size, mtime))
    return tuple(stats)


def train_dataset(split: dict, columns: list[str], cpus: float, materialize_max_mib: float):
    """A Ray Dataset of the training rows with at least ``columns`` (extra columns are ignored by the loop);
    materialized when the split's Parquet files total at most ``materialize_max_mib`` MiB."""
    import ray
    from ray.data.expressions import col

    files, holdout = split["train_files"], sorted(set(split["holdout_ids"]))
    stats = _small_files(files, materialize_max_mib * 2**20) if materialize_max_mib > 0 else None
    small = stats is not None
    wanted = BASE_COLUMNS + GT_COLUMNS if small else columns
    # Same files with the same contents, in the same Ray job (object refs die with the job).
    rt = ray.get_runtime_context()
    key = (rt.gcs_address, rt.get_job_id(), tuple(holdout), stats)
    if small and key in _SHARED:
        return _SHARED[key]
    ds = ray.data.read_parquet(files, num_cpus=cpus).select_columns(wanted)
    if holdout:
        ds = ds.filter(expr=col("image_id").not_in(holdout), num_cpus=cpus)
    if small:
        _SHARED.clear()  # one run's split at a time
        ds = _SHARED[key] = ds.materialize()
    return ds


def materialized_blocks(ds) -> list | None:
    """Object refs of a materialized dataset's Arrow blocks, or None for a streaming one."""
    from ray.data.dataset import MaterializedDataset

    return ds.to_arrow_refs() if isinstance(ds, MaterializedDataset) else None


class BlockShard:
    """One worker's equal share of a small materialized split, iterated like a Ray Data shard.

    ``tables``: the split's Arrow blocks. Worker ``rank`` of ``world`` takes rows rank, rank + world, ...
    up to ``num_rows // world`` rows, so the shards are disjoint and equal in size, as
    ``streaming_split(equal=True)`` makes them."""

    def __init__(self, tables: list, rank: int, world: int) -> None:
        import pyarrow as pa

        rows = pa.concat_tables(tables, promote_options="default") if tables else pa.table({})
        per_worker = rows.num_rows // world
        self.rows = rows.take(list(range(rank, rank + per_worker * world, world)))

    def iter_batches(self, batch_size: int, batch_format: str = "pyarrow", drop_last: bool = True):
        """Yields ``pyarrow.Table`` slices of ``batch_size`` rows, in the same order every epoch."""
        if batch_format != "pyarrow":
            raise ValueError("BlockShard yields pyarrow tables only")
        n = self.rows.num_rows
        end = n - n % batch_size if drop_last else n
        for start in range(0, end, batch_size):
            yield self.rows.slice(start, batch_size)
