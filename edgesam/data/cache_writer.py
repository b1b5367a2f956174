"""Caching stage 4: the atomic Parquet shard writer (local folders and object storage)."""
from __future__ import annotations

import uuid

import pyarrow as pa
import pyarrow.parquet as pq

from .. import storage
from .cache_schema import CACHE_SCHEMA, Preprocessing, schema_metadata


def write_shard(batch: pa.Table, out_dir: str, pre: Preprocessing, row_group_size: int = 16) -> pa.Table:
    """Write the good rows of a batch to one Parquet shard (tmp file + rename: never a partial shard).

    Returns a summary table: one row per written image (kind "written") or skipped record (kind "skipped").
    """
    import pyarrow.fs as pafs

    rows = batch.to_pylist()
    good = [r for r in rows if not r["skip_reason"]]
    summary = [{"kind": "skipped", "image_id": r["image_id"], "source": r["source"], "reason": r["skip_reason"], "file": ""}
               for r in rows if r["skip_reason"]]
    if good:
        fs, base = storage.resolve(out_dir)
        name = f"part-{uuid.uuid4().hex}.parquet"
        table = pa.Table.from_pylist([{k: r[k] for k in CACHE_SCHEMA.names} for r in good], schema=CACHE_SCHEMA)
        table = table.replace_schema_metadata(schema_metadata(pre))
        # Object stores: one upload is already atomic, and a rename would copy the whole shard.
        tmp = f"{base}/.tmp-{name}" if isinstance(fs, pafs.LocalFileSystem) else f"{base}/{name}"
        with fs.open_output_stream(tmp) as sink:
            # fp16 embeddings and JPEG bytes do not compress: skip the codec for them.
            codecs = {n: ("NONE" if n in ("embedding", "image_jpeg") else "ZSTD") for n in CACHE_SCHEMA.names}
            pq.write_table(table, sink, row_group_size=row_group_size, compression=codecs,
                           use_dictionary=["image_id", "source"])
        if tmp != f"{base}/{name}":
            fs.move(tmp, f"{base}/{name}")
        summary += [{"kind": "written", "image_id": r["image_id"], "source": r["source"], "reason": "", "file": name}
                    for r in good]
    return pa.Table.from_pylist(summary, schema=pa.schema([("kind", pa.string()), ("image_id", pa.string()),
                                                            ("source", pa.string()), ("reason", pa.string()),
                                                            ("file", pa.string())]))
