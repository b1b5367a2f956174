"""Dataset readers: SA-1B tar shards, extracted SA-1B folders, COCO instance sets and plain image folders,
each from a local path or from object storage (``s3://bucket/prefix``, ``gs://...``; :mod:`edgesam.storage`).

Every reader is a generator that never raises for a bad record: it yields :class:`RawRecord` for each usable
image and :class:`Skipped` (source + short reason) for each thing it left out, so a pipeline can count and
report skips. Readers keep the encoded image bytes; they do not decode pixels (see
:func:`edgesam.data.images.decode_image`). The readers live in :mod:`edgesam.data.sa1b_tar`,
:mod:`edgesam.data.folders` and :mod:`edgesam.data.coco_reader`; this module detects the format and
dispatches, and re-exports their names.

Format names (``FORMATS``) and the auto-detection rules of :func:`detect_format`, checked in this order:

1. ``"sa1b-tar"``: ``path`` is a ``.tar`` file, or a folder whose top level holds ``*.tar`` files
   (SA-1B shards ``sa_000000.tar``, ...). Each shard holds ``sa_N.jpg`` + ``sa_N.json`` pairs.
2. ``"coco"``: ``path`` is a COCO instances ``.json`` file, or a folder with ``annotations/<name>.json`` that
   is one: its stem is not the stem of an image in the folder and its first 64 KiB mention ``"images"`` or
   ``"categories"``. Images are looked up in ``images/<split>/``, ``images/``, ``<split>/``
   (``instances_val2017.json`` -> ``val2017/``), or in the folder.
3. ``"sa1b-folder"``: extracted SA-1B: some image ``X.jpg`` has ``X.json`` beside it, or the EdgeSAM layout
   ``images/<split>/X.jpg`` + ``annotations/<split>/X.json`` exists.
4. ``"images"``: anything else: every image file under the folder, without annotations.

A folder in a bucket is a prefix; it is detected from one listing of its objects.

:func:`list_sources` turns a path into independent units of work (one per tar shard; the folder itself
for the other formats) and :func:`iter_source` reads one unit, so a Ray pipeline can parallelise over
shards. :func:`iter_any` chains both. :mod:`edgesam.data.read_units` cuts folders and COCO sets finer.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

from .. import storage
from .coco_reader import (COCO_ERRORS, coco_images_dir, coco_instance_files, iter_coco, iter_coco_source,
                          load_coco, looks_like_coco, mask_center_point)
from .dataset_files import is_image, walk
from .folders import has_sa1b_pairs, iter_image_folder, iter_sa1b_folder, sa1b_folder_images
from .records import Item
from .sa1b_json import validate_annotations
from .sa1b_tar import iter_sa1b_tar

__all__ = ["FORMATS", "detect_format", "list_sources", "iter_source", "iter_any", "iter_sa1b_tar",
           "iter_sa1b_folder", "iter_coco", "iter_image_folder", "validate_annotations", "mask_center_point",
           "sa1b_folder_images", "load_coco", "coco_instance_files", "coco_images_dir", "COCO_ERRORS"]

FORMATS = ("sa1b-tar", "sa1b-folder", "coco", "images")
_TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz")


def _top_level_tars(listing: list[str]) -> list[str]:
    return [r for r in listing if "/" not in r and r.lower().endswith(".tar")]


def detect_format(path: str | Path) -> str:
    """One of ``FORMATS`` for ``path`` (local or URI), by the rules in this module's docstring (tar, coco,
    sa1b-folder, images, checked in that order). Raises ``FileNotFoundError`` when ``path`` does not exist and
    ``ValueError`` for a single file of no known kind."""
    path = str(path)
    if storage.is_file(path):
        low = storage.name(path).lower()
        if low.endswith(_TAR_SUFFIXES):
            return "sa1b-tar"
        if is_image(low):
            return "images"
        if low.endswith(".json") and looks_like_coco(path):
            return "coco"
        raise ValueError(f"cannot tell the dataset format of the file {path} (expected a .tar shard, an image, "
                         "a COCO instances .json or a folder / prefix of them)")
    if not storage.is_dir(path):
        raise FileNotFoundError(f"dataset path not found: {path}")
    listing = walk(path)  # one listing (one paginated LIST on object stores) for every rule
    if _top_level_tars(listing):
        return "sa1b-tar"
    if coco_instance_files(path, listing):
        return "coco"
    if has_sa1b_pairs(listing):
        return "sa1b-folder"
    return "images"


def list_sources(path: str | Path, fmt: str | None = None) -> list[str]:
    """The independent units of work under ``path``: each tar shard (sorted) for ``sa1b-tar``; the folder
    itself for the other formats. ``fmt`` defaults to :func:`detect_format`."""
    fmt = fmt or detect_format(path)
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; expected one of {FORMATS}")
    path = str(path)
    if fmt == "sa1b-tar" and storage.is_dir(path):
        return [storage.join(path, t) for t in _top_level_tars(walk(path))]
    return [path]


def iter_source(source: str | Path, fmt: str) -> Iterator[Item]:
    """Read one unit from :func:`list_sources` in format ``fmt``.

    For ``coco`` the source may be the set's folder (every instances file under ``annotations/`` is read)
    or one instances JSON file (images are then looked up next to its ``annotations/`` folder).
    """
    if fmt == "sa1b-tar":
        return iter_sa1b_tar(source)
    if fmt == "sa1b-folder":
        return iter_sa1b_folder(source)
    if fmt == "images":
        return iter_image_folder(source)
    if fmt == "coco":
        return iter_coco_source(str(source))
    raise ValueError(f"unknown format {fmt!r}; expected one of {FORMATS}")


def iter_any(path: str | Path, fmt: str | None = None, **kw: Any) -> Iterator[Item]:
    """Auto-detect the format of ``path`` (or use ``fmt``) and read every source under it.

    Keyword arguments: ``limit_sources`` (read only the first N sources)."""
    fmt = fmt or detect_format(path)
    sources = list_sources(path, fmt)
    limit = kw.pop("limit_sources", None)
    if kw:
        raise TypeError(f"iter_any got unexpected keyword arguments {sorted(kw)}")
    if limit:
        sources = sources[: int(limit)]
    for source in sources:
        yield from iter_source(source, fmt)
