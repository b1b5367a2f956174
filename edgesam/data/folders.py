"""Folder readers: extracted SA-1B (``X.jpg`` + ``X.json``) and plain image folders, local or in a bucket.

A root is a local folder or an object-store prefix (``s3://bucket/prefix``); see
:mod:`edgesam.data.dataset_files`. Both readers take an optional list of files (a chunk of
:func:`sa1b_folder_images`) so a pipeline reads a large folder in bounded units.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Iterator

from .. import storage
from .dataset_files import annotation_candidates, is_image, relative, short_error, walk
from .records import Item, RawRecord, Skipped
from .sa1b_json import pair_record

__all__ = ["sa1b_folder_images", "has_sa1b_pairs", "iter_sa1b_folder", "iter_image_folder"]


def sa1b_folder_images(root: str | Path, listing: list[str] | None = None) -> list[str]:
    """Every image under ``root`` (local path or URI), sorted, as paths joined onto ``root`` (what
    :func:`iter_sa1b_folder` and :func:`iter_image_folder` read). ``listing``: ``walk(root)`` if known."""
    return [storage.join(str(root), r) for r in (walk(root) if listing is None else listing) if is_image(r)]


def has_sa1b_pairs(listing: list[str]) -> bool:
    """True when some image of ``listing`` (relative paths) has its SA-1B JSON where
    :func:`~edgesam.data.dataset_files.annotation_candidates` looks."""
    names = set(listing)
    return any(is_image(r) and any(c in names for c in annotation_candidates(r)) for r in listing)


def _annotation_for(image: str, root: str) -> str | None:
    for cand in annotation_candidates(relative(image, root)):
        path = storage.join(root, cand)
        if storage.is_file(path):
            return path
    return None


def iter_sa1b_folder(root: str | Path, images: Iterable[str | Path] | None = None) -> Iterator[Item]:
    """Extracted SA-1B under ``root`` (recursive): ``X.jpg`` paired with ``X.json`` in the same folder, or
    the EdgeSAM layout ``images/<split>/X.jpg`` + ``annotations/<split>/X.json``. image_id is the stem.
    ``images``: read only these image files under ``root`` (a chunk of :func:`sa1b_folder_images`).

    Skips: an image without JSON, an unparsable JSON (pair skipped), degenerate annotations (image kept).
    """
    root = str(root)
    if not storage.is_dir(root):
        yield Skipped(root, "folder not found")
        return
    for img in (sa1b_folder_images(root) if images is None else [str(p) for p in images]):
        js = _annotation_for(img, root)
        if js is None:
            yield Skipped(img, "missing annotation JSON")
            continue
        try:
            image_bytes, ann_bytes = storage.read_bytes(img), storage.read_bytes(js)
        except OSError as exc:
            yield Skipped(img, f"unreadable: {short_error(exc)}")
            continue
        stem = os.path.splitext(storage.name(img))[0]
        yield from pair_record(stem, image_bytes, img, ann_bytes, js)


def iter_image_folder(root: str | Path, files: Iterable[str | Path] | None = None) -> Iterator[Item]:
    """Every image under ``root`` (recursive, extensions from ``IMAGE_EXTENSIONS``, any case), no annotations.

    ``root`` may be a local folder, an object-store prefix, or one image file. image_id is the path relative
    to ``root`` without extension, ``/`` replaced by ``__`` (``a/b/c.jpg`` -> ``"a__b__c"``), so ids stay
    unique across subfolders. ``files``: read only these image files under ``root`` (a chunk of
    :func:`sa1b_folder_images`, which lists the same files).
    """
    root = str(root)
    if storage.is_file(root):
        paths, base = [root], storage.parent(root)
    elif storage.is_dir(root):
        paths, base = (sa1b_folder_images(root) if files is None else [str(p) for p in files]), root
    else:
        yield Skipped(root, "folder not found")
        return
    for p in paths:
        image_id = os.path.splitext(relative(p, base))[0].replace("/", "__")
        try:
            data = storage.read_bytes(p)
        except OSError as exc:
            yield Skipped(p, f"unreadable: {short_error(exc)}")
            continue
        yield RawRecord(image_id, data, [], p)
