"""Annotation shards -> the formats chosen by ``output.formats``, streaming (pipelines/annotate.py).

One pass over the shards (:class:`edgesam.formats.shards.ShardIndex`: one winning row per image, a few hundred
rows in memory at a time) feeds every chosen format, so a resumed run rewrites them all consistently and the
memory does not grow with the number of images:

* ``coco_rle``: ``annotations.json`` (COCO, RLE masks; the default);
* ``coco_polygons``: ``annotations_polygons.json`` (:mod:`.coco_polygons`; holes filled, empty outlines dropped);
* ``label_studio``: ``label_studio_tasks.json`` (:mod:`.label_studio_tasks`);
* ``yolo``: ``yolo/labels/<relative path>.txt`` per image plus ``yolo/data.yaml`` (:mod:`.yolo_seg`);
* ``sa1b``: ``sa1b/<relative path>.json`` per image, SA-1B's layout (``image`` + ``annotations``).

The JSON formats hold at most ``max_images`` images per file: more, and they are split into
``annotations-00000-of-00004.json`` ... (same stem), images in shard order, annotation ids unique and
consecutive across the files. Each part (one file of each JSON format, and the per-image files of its images)
is written on its own, by a Ray task when the caller asks (parts in parallel, none on the driver). Each file is
assembled in a local temp folder (images and annotations streamed to two files, then joined) and moved or
uploaded whole, so readers never see half a file.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Callable, Literal

import numpy as np
from pydantic import AfterValidator, Field

from edgesam import storage
from edgesam.config import StrictModel

from .label_studio_tasks import LabelStudioTaskCfg
from .shards import STATUSES, ShardIndex, coco_annotation, read_rows

ExportFormat = Literal["coco_rle", "coco_polygons", "yolo", "label_studio", "sa1b"]
FILES = {"coco_rle": "annotations.json", "coco_polygons": "annotations_polygons.json", "yolo": "yolo",
         "label_studio": "label_studio_tasks.json", "sa1b": "sa1b"}
CATEGORY = {"id": 1, "name": "object", "supercategory": "object"}
WRITE_THREADS = 16  # per-image files: object-store PUTs overlap
ROWS_PER_READ = 256  # shard rows decoded at a time


class FormatOptionsCfg(StrictModel):
    """Options of the non-default formats."""

    polygon_tolerance: float = Field(0.0, ge=0, description="cv2.approxPolyDP epsilon in pixels for polygons; "
                                                             "0 keeps the pixel-exact outline")
    label_studio: LabelStudioTaskCfg = LabelStudioTaskCfg()


def check_formats(formats: list[str]) -> list[str]:
    if not formats:
        raise ValueError("output.formats must name at least one format")
    if len(set(formats)) != len(formats):
        raise ValueError(f"output.formats has duplicates: {formats}")
    return formats


# ``output.formats`` in a config class: ``formats: Formats = Field(default_factory=lambda: ["coco_rle"])``
Formats = Annotated[list[ExportFormat], AfterValidator(check_formats)]


def split_name(file_name: str, number: int, of: int) -> str:
    """``annotations.json`` when the output is one file, else ``annotations-00003-of-00012.json``."""
    if of == 1:
        return file_name
    stem, ext = os.path.splitext(file_name)
    return f"{stem}-{number:05d}-of-{of:05d}{ext}"


class JsonFileWriter:
    """Streams one JSON file, written whole on :meth:`close` (a local temp folder, then a move or an upload).

    ``layout="coco"``: ``{"info", "images", "annotations", "categories"}`` (:meth:`add` an image and its
    annotations); ``layout="list"``: a JSON array (:meth:`add` one item)."""

    def __init__(self, dest: storage.PathLike, layout: Literal["coco", "list"], head: dict | None = None) -> None:
        self.dest, self.layout, self.head = dest, layout, head or {}
        self.tmp = Path(tempfile.mkdtemp(prefix="edgesam-export-"))
        self._items_f = open(self.tmp / "items", "w", encoding="utf-8")
        self._anns_f = open(self.tmp / "anns", "w", encoding="utf-8")
        self._n = self._n_ann = 0

    def add(self, item: dict, anns: list[dict] | None = None) -> None:
        self._items_f.write(("," if self._n else "") + json.dumps(item, separators=(",", ":")))
        self._n += 1
        for a in anns or ():
            self._anns_f.write(("," if self._n_ann else "") + json.dumps(a, separators=(",", ":")))
            self._n_ann += 1

    def close(self) -> str:
        """Write the file -> its path / URI."""
        self._items_f.close()
        self._anns_f.close()
        final = self.tmp / "final.json"
        with open(final, "w", encoding="utf-8") as out:
            if self.layout == "list":
                out.write("[")
                _copy(self.tmp / "items", out)
                out.write("]")
            else:
                head = {k: v for k, v in self.head.items() if k != "categories"}
                out.write(json.dumps(head, separators=(",", ":"))[:-1] + ("," if head else "") + '"images":[')
                _copy(self.tmp / "items", out)
                out.write('],"annotations":[')
                _copy(self.tmp / "anns", out)
                out.write('],"categories":' + json.dumps(self.head.get("categories", [CATEGORY])) + "}")
        if storage.is_uri(self.dest):
            storage.upload(final, self.dest)
        else:
            os.makedirs(os.path.dirname(os.path.abspath(self.dest)), exist_ok=True)
            shutil.move(str(final), self.dest)
        shutil.rmtree(self.tmp, ignore_errors=True)
        return storage.display(self.dest)


def _copy(src: Path, out) -> None:
    with open(src, encoding="utf-8") as f:
        shutil.copyfileobj(f, out, 1 << 20)


class _PerImageWriter:
    """Writes one small file per image through a thread pool, at most ``2 * WRITE_THREADS`` writes in flight."""

    def __init__(self) -> None:
        self.pool = ThreadPoolExecutor(WRITE_THREADS)
        self.pending: list[Future] = []

    def put(self, path: str, text: str) -> None:
        if len(self.pending) >= 2 * WRITE_THREADS:
            self.pending.pop(0).result()
        self.pending.append(self.pool.submit(storage.write_text, path, text))

    def close(self) -> None:
        for f in self.pending:
            f.result()
        self.pool.shutdown()


def _yolo_text(image: dict, anns: list[dict], tolerance: float) -> str:
    from edgesam.data.rle import decode_rle

    from .yolo_seg import mask_to_lines

    lines = [ln for a in anns for ln in mask_to_lines(decode_rle(a["segmentation"]), a["category_id"] - 1, tolerance)]
    return "".join(ln + "\n" for ln in lines)


def _sa1b_text(image: dict, anns: list[dict]) -> str:
    return json.dumps({"image": {"image_id": image["id"], "width": image["width"], "height": image["height"],
                                 "file_name": image["file_name"]},
                       "annotations": [{**a, "id": k + 1} for k, a in enumerate(anns)]}, separators=(",", ":"))


YOLO_DATA = ("# YOLO segmentation labels from EdgeSAM auto-annotation (class-agnostic).\n"
             "# labels/<path>.txt mirror the --input tree; point 'path' at a dataset root\n"
             "# with images/ beside labels/ to train.\nnames:\n  0: object\n")


@dataclass
class OutputPart:
    """One slice of the labelled images (``max_images`` of them, in shard order): file ``number`` of ``of``
    of every JSON format, and the per-image files of its images."""

    number: int
    of: int
    shards: list[tuple[str, np.ndarray]]  # (shard path, bool per row: the rows of this part)
    first_annotation_id: int  # this part's annotation ids start after it
    images: int


def plan_parts(index: ShardIndex, max_images: int) -> list[OutputPart]:
    """Split the labelled winners of ``index`` into parts of at most ``max_images`` images (at least one part)."""
    labelled = np.flatnonzero(index.status == STATUSES.index("labelled"))
    of = max(1, math.ceil(len(labelled) / max_images))
    ann_start = np.concatenate([[0], np.cumsum(index.num_annotations[labelled], dtype=np.int64)])
    parts = []
    for j in range(of):
        sel = labelled[j * max_images:(j + 1) * max_images]
        where = index.where[sel]
        shards = []
        for f in np.unique(where[:, 0]):
            mask = np.zeros(len(index.keep[f]), bool)
            mask[where[where[:, 0] == f, 1]] = True
            shards.append((index.files[f], mask))
        parts.append(OutputPart(j, of, shards, int(ann_start[j * max_images]), len(sel)))
    return parts


def write_part(out_dir: storage.PathLike, part: OutputPart, formats: list[str], cfg: FormatOptionsCfg,
               info: dict[str, Any]) -> dict[str, Any]:
    """Write one part in each of ``formats`` (its JSON files and its per-image files), streaming its shard rows.

    Returns {"files": {format: path} (JSON formats), "images", "annotations", "dropped_empty_polygons"}."""
    from .coco_polygons import polygon_annotation
    from .label_studio_tasks import task_for_image

    head = {"info": info, "categories": [CATEGORY]}
    json_files = {fmt: JsonFileWriter(storage.join(out_dir, split_name(FILES[fmt], part.number, part.of)),
                                      "list" if fmt == "label_studio" else "coco", head)
                  for fmt in ("coco_rle", "coco_polygons", "label_studio") if fmt in formats}
    per_image: list[tuple[str, Callable[[dict, list[dict]], str]]] = []
    if "yolo" in formats:
        per_image.append((storage.join(out_dir, FILES["yolo"], "labels", "{stem}.txt"),
                          lambda im, anns: _yolo_text(im, anns, cfg.polygon_tolerance)))
    if "sa1b" in formats:
        per_image.append((storage.join(out_dir, FILES["sa1b"], "{stem}.json"), _sa1b_text))
    files_writer = _PerImageWriter() if per_image else None
    ann_id, dropped, images = part.first_annotation_id, 0, 0
    for path, keep in part.shards:
        for t in read_rows(path, keep, rows=ROWS_PER_READ):
            for row in t.to_pylist():
                image = {"id": row["image_id"], "file_name": row["file_name"], "width": row["width"],
                         "height": row["height"]}
                anns = []
                for a in row["annotations"]:
                    ann_id += 1
                    anns.append({"id": ann_id, "image_id": row["image_id"],
                                 **coco_annotation(a, row["width"], row["height"])})
                images += 1
                if "coco_rle" in json_files:
                    json_files["coco_rle"].add(image, anns)
                if "coco_polygons" in json_files:
                    polys = [p for p in (polygon_annotation(a, row["height"], row["width"], cfg.polygon_tolerance)
                                         for a in anns) if p is not None]
                    dropped += len(anns) - len(polys)
                    json_files["coco_polygons"].add(image, polys)
                if "label_studio" in json_files:
                    json_files["label_studio"].add(task_for_image(image, anns, cfg.label_studio, cfg.polygon_tolerance))
                stem = Path(row["file_name"]).with_suffix("").as_posix()
                for pattern, render in per_image:
                    files_writer.put(pattern.format(stem=stem), render(image, anns))  # type: ignore[union-attr]
    if files_writer is not None:
        files_writer.close()
    return {"files": {fmt: w.close() for fmt, w in json_files.items()}, "images": images,
            "annotations": ann_id - part.first_annotation_id, "dropped_empty_polygons": dropped}


def write_formats(out_dir: storage.PathLike, index: ShardIndex, formats: list[str], cfg: FormatOptionsCfg,
                  info: dict[str, Any], max_images: int, ray_cpus: float | None = None) -> dict[str, Any]:
    """Write the labelled images of ``index`` in each of ``formats`` under ``out_dir`` (local, s3://, gs://).

    The images are cut into parts of at most ``max_images`` (:func:`plan_parts`); with ``ray_cpus`` (Ray
    initialised by the caller) each part is written by a Ray task with that many CPUs, in parallel, else one
    after another in this process. Returns {"files": {format: [paths]}, "images", "annotations" (COCO RLE
    count), "dropped_empty_polygons" (masks without an outline), "parts"}."""
    formats = check_formats(list(formats))
    parts = plan_parts(index, max_images)
    if ray_cpus is not None and len(parts) > 1:
        import ray

        task = ray.remote(num_cpus=ray_cpus, max_retries=2)(write_part)
        results = ray.get([task.remote(out_dir, p, formats, cfg, info) for p in parts])
    else:
        results = [write_part(out_dir, p, formats, cfg, info) for p in parts]
    files: dict[str, list[str]] = {fmt: [r["files"][fmt] for r in results] for fmt in results[0]["files"]}
    for fmt in ("yolo", "sa1b"):
        if fmt in formats:
            files[fmt] = [storage.display(storage.join(out_dir, FILES[fmt]))]
    if "yolo" in formats:
        storage.write_text(storage.join(out_dir, FILES["yolo"], "data.yaml"), YOLO_DATA)
    return {"files": {fmt: files[fmt] for fmt in formats}, "parts": len(parts),
            **{k: sum(r[k] for r in results) for k in ("images", "annotations", "dropped_empty_polygons")}}


def write_skipped(path: storage.PathLike, index: ShardIndex) -> list[dict]:
    """``skipped.json``: every image whose row is skipped or failed ({file_name, image_id, status, reason}),
    streamed; -> the first 20 of them (for the console)."""
    w = JsonFileWriter(path, "list")
    first: list[dict] = []
    for t in index.batches(columns=["image_id", "file_name", "status", "reason"], rows=4096):
        for row in t.to_pylist():
            if row["status"] != "labelled":
                w.add(row)
                if len(first) < 20:
                    first.append(row)
    w.close()
    return first
