"""Annotation shards: the Parquet files that annotation workers write, one row per image, and reading them back
with one row per image, shard by shard, without holding a run in memory.

Layout: ``OUT/shards/<run id>/*.parquet``, one folder per run of the job (a resumed run adds a folder), written
by Ray Data's Parquet writer from the workers. Schema (:data:`SHARD_SCHEMA`), one row per listed image:

=====================  =============================  ==============================================================
column                 type                           meaning
=====================  =============================  ==============================================================
image_id               int64                          stable id (first 52 bits of SHA-1 of ``file_name``)
file_name              string                         path relative to ``--input`` (POSIX)
status                 string                         ``labelled``, ``skipped`` (bad input) or ``failed`` (error)
reason                 string                         why skipped or failed; empty when labelled
width, height          int32                          pixels (0 when not decoded)
seconds                float64                        wall seconds in the actor: read, decode, model, encode
model_seconds          float64                        of those, inside the model (``EverythingGenerator.generate``)
first_in_actor         bool                           the first image its actor labelled
actor_warmup_seconds   float64 (null)                 on the first row of an actor: model build + warm-up run
num_annotations        int32                          ``len(annotations)`` (read without the masks)
annotations            list<struct> (:data:`ANNOTATION`)  the masks, best score first
=====================  =============================  ==============================================================

Each annotation: ``counts`` (COCO compressed RLE string of an ``height`` x ``width`` mask), ``bbox`` XYWH,
``area`` (pixels), ``score``, ``stability_score``, ``predicted_iou``, ``point_coords`` [x, y] (grid point or
proposal centre), ``crop_box`` XYWH, ``rpn_box`` XYWH and ``rpn_score`` (RPN mode, else null), ``category_id``
(null: the class-agnostic category 1). All coordinates are original-image pixels.

An image can have several rows (a failed image retried, a skipped one retried with ``output.retry_skipped``,
a write task retried by Ray): :class:`ShardIndex` picks one per image - labelled before skipped before failed,
then the earliest shard - so no reader ever sees an image twice.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from edgesam import storage

SHARDS = "shards"
STATUSES = ("labelled", "skipped", "failed")  # also the preference order when an image has several rows

ANNOTATION = pa.struct([
    ("counts", pa.string()),
    ("bbox", pa.list_(pa.float64(), 4)),
    ("area", pa.int64()),
    ("score", pa.float64()),
    ("stability_score", pa.float64()),
    ("predicted_iou", pa.float64()),
    ("point_coords", pa.list_(pa.float64(), 2)),
    ("crop_box", pa.list_(pa.float64(), 4)),
    ("rpn_box", pa.list_(pa.float64(), 4)),
    ("rpn_score", pa.float64()),
    ("category_id", pa.int32()),
])
SHARD_SCHEMA = pa.schema([
    ("image_id", pa.int64()),
    ("file_name", pa.string()),
    ("status", pa.string()),
    ("reason", pa.string()),
    ("width", pa.int32()),
    ("height", pa.int32()),
    ("seconds", pa.float64()),
    ("model_seconds", pa.float64()),
    ("first_in_actor", pa.bool_()),
    ("actor_warmup_seconds", pa.float64()),
    ("num_annotations", pa.int32()),
    ("annotations", pa.list_(ANNOTATION)),
])
# what resume and the summary read: everything but the masks
INDEX_COLUMNS = ["image_id", "status", "num_annotations"]
STATS_COLUMNS = ["status", "seconds", "model_seconds", "first_in_actor", "actor_warmup_seconds"]


def annotation_row(rec: dict) -> dict:
    """A generator record (:meth:`EverythingGenerator.generate`) -> an :data:`ANNOTATION` value."""
    return {"counts": rec["segmentation"]["counts"], "bbox": [float(v) for v in rec["bbox"]],
            "area": int(rec["area"]), "score": float(rec["score"]),
            "stability_score": float(rec.get("stability_score", rec["score"])),
            "predicted_iou": float(rec.get("predicted_iou", 0.0)),
            "point_coords": [float(v) for v in rec["point_coords"][0]] if rec.get("point_coords") else None,
            "crop_box": [float(v) for v in rec["crop_box"]] if rec.get("crop_box") else None,
            "rpn_box": [float(v) for v in rec["rpn_box"]] if rec.get("rpn_box") is not None else None,
            "rpn_score": float(rec["rpn_score"]) if rec.get("rpn_score") is not None else None,
            "category_id": rec.get("category_id")}


def image_row(image_id: int, file_name: str, status: str, reason: str = "", width: int = 0, height: int = 0,
              seconds: float = 0.0, model_seconds: float = 0.0, first_in_actor: bool = False,
              actor_warmup_seconds: float | None = None, annotations: Sequence[dict] = ()) -> dict:
    """One :data:`SHARD_SCHEMA` row; ``annotations`` are generator records."""
    if status not in STATUSES:
        raise ValueError(f"status must be one of {STATUSES}, got {status!r}")
    return {"image_id": int(image_id), "file_name": str(file_name), "status": status, "reason": reason,
            "width": int(width), "height": int(height), "seconds": float(seconds), "model_seconds": float(model_seconds),
            "first_in_actor": bool(first_in_actor), "actor_warmup_seconds": actor_warmup_seconds,
            "num_annotations": len(annotations), "annotations": [annotation_row(r) for r in annotations]}


def rows_table(rows: list[dict]) -> pa.Table:
    """:func:`image_row` dicts -> a table with exactly :data:`SHARD_SCHEMA`."""
    return pa.Table.from_pylist(rows, schema=SHARD_SCHEMA)


def coco_annotation(ann: dict, width: int, height: int) -> dict:
    """An :data:`ANNOTATION` value -> COCO annotation fields (no ``id`` / ``image_id``): RLE segmentation of
    ``height`` x ``width``, ``category_id`` 1 unless set."""
    out = {"segmentation": {"size": [int(height), int(width)], "counts": ann["counts"]}, "bbox": list(ann["bbox"]),
           "area": int(ann["area"]), "score": ann["score"], "stability_score": ann["stability_score"],
           "predicted_iou": ann["predicted_iou"], "category_id": ann.get("category_id") or 1, "iscrowd": 0}
    if ann.get("point_coords") is not None:
        out["point_coords"] = [list(ann["point_coords"])]
    if ann.get("crop_box") is not None:
        out["crop_box"] = list(ann["crop_box"])
    if ann.get("rpn_box") is not None:
        out["rpn_box"] = list(ann["rpn_box"])
        out["rpn_score"] = ann["rpn_score"]
    return out


def shard_files(out_dir: storage.PathLike) -> list[str]:
    """Every ``*.parquet`` under ``OUT/shards`` (all runs), sorted, as paths/URIs."""
    root = storage.join(out_dir, SHARDS)
    return [storage.join(root, r) for r in storage.listdir(root, recursive=True)
            if r.endswith(".parquet") and not any(p.startswith((".", "_")) for p in r.split("/"))]


def _open(path: str) -> pq.ParquetFile:
    fs, p = storage.resolve(path)
    return pq.ParquetFile(fs.open_input_file(p))


def read_columns(path: str, columns: list[str]) -> pa.Table | Exception:
    """``columns`` of one shard, or the exception that reading it raised (the shard is unreadable)."""
    try:
        return _open(path).read(columns=columns)
    except Exception as exc:  # noqa: BLE001 - a truncated shard (writer killed mid-file) is reported, not fatal
        return exc


def read_rows(path: str, keep: np.ndarray, columns: list[str] | None = None, rows: int = 256) -> Iterator[pa.Table]:
    """The rows of one shard where ``keep`` (bool per row) is set, ``rows`` at a time."""
    if not keep.any():
        return
    start = 0
    for batch in _open(path).iter_batches(batch_size=rows, columns=columns):
        mask = keep[start:start + batch.num_rows]
        start += batch.num_rows
        if mask.any():
            yield pa.Table.from_batches([batch]).filter(pa.array(mask))


@dataclass
class ShardIndex:
    """Which row of which shard holds each image: one winner per image (labelled > skipped > failed, then the
    earliest shard and row). Holds ~40 bytes per image: ids, file and row numbers, status, mask counts."""

    files: list[str]
    unreadable: list[tuple[str, str]] = field(default_factory=list)  # (path, error) of shards that do not open
    keep: list[np.ndarray] = field(default_factory=list)  # per file: bool per row, the winning rows
    ids: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # winners' image ids, in shard order
    status: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int8))  # winners' status (index into STATUSES)
    where: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), np.int32))  # winners' (file, row)
    num_annotations: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))  # winners' mask counts

    @classmethod
    def scan(cls, out_dir: storage.PathLike, threads: int = 8) -> "ShardIndex":
        """Read the ``image_id`` and ``status`` columns of every shard (``threads`` files at a time)."""
        files = shard_files(out_dir)
        with ThreadPoolExecutor(max(1, threads)) as pool:
            tables = list(pool.map(lambda f: read_columns(f, INDEX_COLUMNS), files))
        good, bad, parts = [], [], []
        for f, t in zip(files, tables):
            if isinstance(t, Exception):
                bad.append((f, f"{type(t).__name__}: {t}"))
                continue
            k = len(good)
            good.append(f)
            rank = np.asarray(pc.index_in(t["status"], pa.array(STATUSES)).fill_null(len(STATUSES)), np.int8)
            n = t.num_rows
            parts.append((np.asarray(t["image_id"], np.int64), rank, np.full(n, k, np.int32), np.arange(n, dtype=np.int32),
                          np.asarray(t["num_annotations"], np.int32)))
        index = cls(good, bad)
        if not parts:
            index.keep = [np.zeros(0, bool) for _ in good]
            return index
        ids, rank, fidx, ridx, n_ann = (np.concatenate(x) for x in zip(*parts))
        order = np.lexsort((ridx, fidx, rank, ids))  # by id, then preference
        first = np.ones(len(order), bool)
        first[1:] = ids[order][1:] != ids[order][:-1]
        win = order[first]
        win = win[np.lexsort((ridx[win], fidx[win]))]  # winners in shard order: the order of every output
        keep = [np.zeros(len(p[0]), bool) for p in parts]
        bounds = np.searchsorted(fidx[win], np.arange(len(parts) + 1))
        for k in range(len(parts)):
            keep[k][ridx[win][bounds[k]:bounds[k + 1]]] = True
        index.keep, index.ids, index.status = keep, ids[win], rank[win]
        index.where = np.stack([fidx[win], ridx[win]], 1)
        index.num_annotations = n_ann[win]
        return index

    def restrict_to(self, image_ids: np.ndarray) -> None:
        """Forget the images not in ``image_ids`` (int64)."""
        inside = np.isin(self.ids, np.asarray(image_ids, np.int64))
        for k, r in self.where[~inside]:
            self.keep[k][r] = False
        self.ids, self.status, self.where = self.ids[inside], self.status[inside], self.where[inside]
        self.num_annotations = self.num_annotations[inside]

    def __len__(self) -> int:
        return len(self.ids)

    def count(self, status: str) -> int:
        return int((self.status == STATUSES.index(status)).sum())

    def done_ids(self, retry_skipped: bool = False) -> np.ndarray:
        """Image ids that need no more work: labelled, and skipped unless ``retry_skipped`` (failed: retried)."""
        done = self.status == 0
        if not retry_skipped:
            done |= self.status == 1
        return self.ids[done]

    def batches(self, columns: list[str] | None = None, rows: int = 256,
                files: Sequence[int] | None = None) -> Iterator[pa.Table]:
        """The winning rows, ``rows`` at a time, shard by shard (``files``: indices into :attr:`files`)."""
        for k in range(len(self.files)) if files is None else files:
            yield from read_rows(self.files[k], self.keep[k], columns, rows)

    def rows(self, columns: list[str] | None = None, rows: int = 256) -> Iterator[dict[str, Any]]:
        """The winning rows as dicts, streaming."""
        for t in self.batches(columns, rows):
            yield from t.to_pylist()

    def per_file(self) -> list[int]:
        """Number of winning rows in each shard."""
        return [int(k.sum()) for k in self.keep]
