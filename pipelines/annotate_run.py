"""One annotation run's bookkeeping: image ids, the listing (an Arrow table, not Python objects), resume from
the shards, and the run identity. Local folders or ``s3://`` / ``gs://`` prefixes (:mod:`edgesam.storage`)."""
from __future__ import annotations

import hashlib
import os
import time
import uuid

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from edgesam import storage
from edgesam.formats.shards import SHARDS, ShardIndex

SKIPPED_FILE = "skipped.json"
SUMMARY_FILE = "summary.json"
RUN_FILE = "run.json"
LISTING_CHUNK = 4096  # names hashed and converted to Arrow at a time while listing
LISTING_SCHEMA = pa.schema([("file_name", pa.string()), ("image_id", pa.int64())])


class RunMismatchError(RuntimeError):
    """OUT holds shards made with another model or other everything-mode settings."""


def image_id_for(file_name: str) -> int:
    """Stable positive integer id (< 2**52, JSON-safe) of a relative POSIX path."""
    return int(hashlib.sha1(file_name.encode("utf-8")).hexdigest()[:13], 16) or 1


def list_images(root: storage.PathLike, extensions: list[str], limit: int | None = None) -> pa.Table:
    """Every file under ``root`` (local or s3://) with an image extension -> a table (``file_name`` relative
    POSIX path, ``image_id``) sorted by name; the first ``limit`` of them when given.

    Names are streamed folder by folder and turned into Arrow arrays (names and ids) ``LISTING_CHUNK`` at a
    time, so the driver holds ~(name + 12) bytes per file rather than a Python object per file (measured in
    ``benchmarks/annotate_scale.py``). Raises RuntimeError on an id collision (two names, one id)."""
    exts = tuple({e.lower() if e.startswith(".") else f".{e.lower()}" for e in extensions})
    names: list[pa.Array] = []
    ids: list[np.ndarray] = []
    buf: list[str] = []

    def flush() -> None:
        names.append(pa.array(buf, pa.string()))
        ids.append(np.fromiter((image_id_for(n) for n in buf), np.int64, len(buf)))
        buf.clear()

    for rel in storage.iter_files(root):
        if os.path.splitext(rel)[1].lower() in exts:
            buf.append(rel)
            if len(buf) >= LISTING_CHUNK:
                flush()
    flush()
    table = pa.table([pa.chunked_array(names, pa.string()), pa.chunked_array([pa.array(i) for i in ids], pa.int64())],
                     schema=LISTING_SCHEMA)
    del names, ids
    table = table.take(pc.sort_indices(table["file_name"]))
    if limit:
        table = table.slice(0, limit)
    table = table.combine_chunks()
    uniq, counts = np.unique(table["image_id"].to_numpy(), return_counts=True)
    if (counts > 1).any():
        clash = table.filter(pc.equal(table["image_id"], pa.scalar(int(uniq[counts > 1][0]), pa.int64())))
        a, b = clash["file_name"].to_pylist()[:2]
        raise RuntimeError(f"image id collision between {a!r} and {b!r}; rename one of them")
    return table


def pending(listing: pa.Table, index: ShardIndex, retry_skipped: bool) -> tuple[pa.Table, int]:
    """The listed images the shards do not hold yet (failed ones, and skipped ones with ``retry_skipped``, are
    retried) -> (pending rows of ``listing``, number already done)."""
    done = pc.is_in(listing["image_id"], value_set=pa.array(index.done_ids(retry_skipped), pa.int64()))
    todo = listing.filter(pc.invert(done))
    return todo, listing.num_rows - todo.num_rows


def new_run_folder(out_dir: storage.PathLike) -> str:
    """``OUT/shards/<UTC time>-<8 hex>``: this run's shards, beside earlier runs'."""
    return storage.join(out_dir, SHARDS, time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + uuid.uuid4().hex[:8])


def check_run(out_dir: storage.PathLike, identity: dict, input_dir: storage.PathLike) -> None:
    """Refuse to mix shards made with another model / settings; record the identity on the first run."""
    run = storage.join(out_dir, RUN_FILE)
    if storage.is_file(run):
        previous = storage.read_json(run)
        if previous.get("identity") != identity:
            raise RunMismatchError(
                f"{out_dir} holds results made with other model weights or everything-mode settings "
                f"(see {run}); use another --output, or delete {storage.join(out_dir, SHARDS)} and {run} to start over")
        return
    storage.write_json(run, {"identity": identity, "input": storage.display(input_dir),
                             "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}, indent=2)


def quarantine(out_dir: storage.PathLike, unreadable: list[tuple[str, str]]) -> list[str]:
    """Move shards that do not open (a writer killed mid-file) to ``OUT/shards/_unreadable/``; their images are
    pending again. -> the moved paths."""
    moved = []
    for path, _ in unreadable:
        dest = storage.join(out_dir, SHARDS, "_unreadable", uuid.uuid4().hex[:8] + "-" + storage.name(path))
        storage.move(path, dest)
        moved.append(dest)
    return moved
