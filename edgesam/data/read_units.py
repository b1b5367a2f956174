"""Bounded units of reading work: a dataset path -> small, JSON-able work items, each read as a stream.

A pipeline maps :func:`iter_unit` over the output of :func:`plan_units`, one unit per task, so no task
ever holds a whole dataset:

* ``sa1b-tar``: one unit per tar shard. The tar is streamed member by member
  (:func:`edgesam.data.sa1b_tar.iter_sa1b_tar`), so a unit of an 11 GB shard holds one image pair at a time.
* ``sa1b-folder`` / ``images``: the folder's image list (one listing; a LIST on object stores), cut into
  units of ``images_per_unit`` files.
* ``coco``: the instances JSON is parsed once here (the planner needs the image list anyway) and cut into
  units of ``images_per_unit`` images, each carrying its own images' COCO annotations. A JSON that does
  not parse becomes one unit that reports it (``{"skip": ...}``).

A unit is a plain dict (``{"format", "source", ...}``) so it travels as a Ray Data row. Paths in it are local
paths or URIs (``s3://...``) as given: a read task on any node opens them itself.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

from .. import storage
from . import readers as R
from .coco_reader import COCO_ERRORS, coco_images_dir, coco_instance_files, coco_root, load_coco
from .dataset_files import short_error
from .folders import sa1b_folder_images
from .records import Item, Skipped

__all__ = ["DEFAULT_IMAGES_PER_UNIT", "plan_units", "iter_unit"]

DEFAULT_IMAGES_PER_UNIT = 64


def _chunks(items: list, n: int) -> list[list]:
    return [items[i:i + n] for i in range(0, len(items), n)]


def _coco_units(root: str, js: str, n: int) -> list[dict]:
    try:
        images, anns_by_image = load_coco(js)
    except COCO_ERRORS as exc:
        return [{"format": "coco", "source": js, "skip": f"bad COCO JSON: {short_error(exc)}"}]
    images_dir = coco_images_dir(root, js)
    units = []
    for chunk in _chunks(images, n):
        # JSON object keys must be strings: carry the annotations as a list aligned with ``images``
        units.append({"format": "coco", "source": js, "images_dir": images_dir, "images": chunk,
                      "annotations": [anns_by_image.get(im["id"], []) for im in chunk]})
    return units


def plan_units(path: str | Path, fmt: str | None = None, images_per_unit: int = DEFAULT_IMAGES_PER_UNIT,
               limit_sources: int | None = None) -> list[dict]:
    """The units of ``path`` in reading order (``fmt`` defaults to :func:`~edgesam.data.readers.detect_format`).

    ``limit_sources`` keeps the first N sources (tar shards; COCO instances files; for folders, the first N
    units). Raises ``ValueError`` for an unknown format or ``images_per_unit < 1``.
    """
    if images_per_unit < 1:
        raise ValueError(f"images_per_unit must be >= 1, got {images_per_unit}")
    fmt = fmt or R.detect_format(path)
    sources = R.list_sources(path, fmt)  # validates fmt
    if limit_sources:
        sources = sources[: int(limit_sources)]
    units: list[dict] = []
    for src in sources:
        if fmt == "sa1b-tar":
            units.append({"format": fmt, "source": src})
        elif fmt in ("sa1b-folder", "images") and storage.is_dir(src):
            files = sa1b_folder_images(src)
            units += [{"format": fmt, "source": src, "files": c} for c in _chunks(files, images_per_unit)]
        elif fmt == "coco" and storage.is_dir(src):
            files = coco_instance_files(src)
            if not files:
                units.append({"format": fmt, "source": src, "skip": "no COCO instances JSON under annotations/"})
            for js in files:
                units += _coco_units(src, js, images_per_unit)
        elif fmt == "coco" and storage.is_file(src):  # one instances file
            units += _coco_units(coco_root(src), src, images_per_unit)
        else:  # one image file, or a folder that does not exist: the reader reports it
            units.append({"format": fmt, "source": src})
    if limit_sources and fmt in ("sa1b-folder", "images"):
        units = units[: int(limit_sources)]
    return units


def iter_unit(unit: dict[str, Any], filesystem: Any = None) -> Iterator[Item]:
    """Read one unit of :func:`plan_units`: ``RawRecord`` / ``Skipped`` items, never raising for bad data.

    ``filesystem``: a ``pyarrow.fs.FileSystem`` to open tar shards with; None = from the path (local or URI).
    """
    fmt, source = unit["format"], unit["source"]
    if unit.get("skip"):
        yield Skipped(source, unit["skip"])
    elif fmt == "sa1b-tar":
        yield from R.iter_sa1b_tar(source, filesystem)
    elif fmt == "sa1b-folder":
        yield from R.iter_sa1b_folder(source, unit.get("files"))
    elif fmt == "images":
        yield from R.iter_image_folder(source, unit.get("files"))
    elif fmt == "coco" and "images" in unit:
        anns = {im["id"]: a for im, a in zip(unit["images"], unit["annotations"])}
        yield from R.iter_coco(unit["images_dir"], source, parsed=(unit["images"], anns))
    else:
        yield from R.iter_source(source, fmt)
