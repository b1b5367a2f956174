"""Teacher cache: one Parquet row per image, plus ``manifest.json``. The public names, in one place.

The cache is built from modules with one job each (none needs Ray):

- :mod:`.cache_schema`: row schema (``CACHE_SCHEMA``, documented there), ``Preprocessing`` (part of the
  cache identity), JPEG / mask codecs, ``model_input``.
- :mod:`.cache_preprocess`: stages 1-2, reader records -> raw rows -> resized rows with GT prompts.
- :mod:`.cache_teacher_batch`: stage 3, ``TeacherBatch`` (the teacher on one actor).
- :mod:`.cache_writer`: stage 4, ``write_shard`` (atomic Parquet shards).
- :mod:`.cache_manifest`: ``manifest.json``, identity checks, resume scan, ``load_manifest``.
- :mod:`.cache_reader`: ``decode_row`` and ``TeacherCacheDataset`` for training and evaluation.

Callers may import from here (``from edgesam.data import cache as C``) or from the module itself.
"""
from __future__ import annotations

from .cache_manifest import (CacheMismatchError, cache_identity, check_identity, load_manifest, scan_done_ids,
                             shard_files, write_manifest)
from .cache_preprocess import preprocess_row, preprocess_table, raw_rows, sample_prompt_index, stable_seed
from .cache_reader import TeacherCacheDataset, decode_row
from .cache_schema import (CACHE_FORMAT_VERSION, CACHE_SCHEMA, MANIFEST, PRE_SCHEMA, RAW_SCHEMA, Preprocessing,
                           decode_jpeg, encode_jpeg, model_input, pack_masks, schema_metadata, unpack_masks)
from .cache_teacher_batch import TeacherBatch
from .cache_writer import write_shard

__all__ = [
    "CACHE_FORMAT_VERSION", "CACHE_SCHEMA", "MANIFEST", "PRE_SCHEMA", "RAW_SCHEMA", "CacheMismatchError", "Preprocessing",
    "TeacherBatch", "TeacherCacheDataset", "cache_identity", "check_identity", "decode_jpeg", "decode_row",
    "encode_jpeg", "load_manifest", "model_input", "pack_masks", "preprocess_row", "preprocess_table", "raw_rows",
    "sample_prompt_index", "scan_done_ids", "schema_metadata", "shard_files", "stable_seed", "unpack_masks",
    "write_manifest", "write_shard",
]
