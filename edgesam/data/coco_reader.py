"""COCO instance sets, local or in a bucket: finding the instances files, parsing them, reading the images.

A set is a root (local folder or ``s3://bucket/prefix``) with ``annotations/<name>.json`` (a COCO instances
file) and its images in ``images/<split>/``, ``images/``, ``<split>/`` (``instances_val2017.json`` ->
``val2017/``) or the root itself; or one instances JSON file, whose root is the folder above its
``annotations/`` folder (or its own folder).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from .. import storage
from .dataset_files import is_image, read_head, short_error, walk
from .records import Item, RawRecord, Skipped
from .sa1b_json import finite_numbers, int_or_none

__all__ = ["COCO_ERRORS", "mask_center_point", "load_coco", "iter_coco", "coco_instance_files", "coco_images_dir",
           "coco_root", "looks_like_coco", "iter_coco_source"]

# what parsing a malformed or unreadable instances file raises (iter_coco turns them into one Skipped)
COCO_ERRORS = (OSError, ValueError, TypeError, RecursionError, UnicodeDecodeError)
_HEAD_BYTES = 65536


def mask_center_point(mask: np.ndarray) -> list[float]:
    """``[x, y]`` of the mask's centre click (:func:`edgesam.data.points.centre_click`) as floats."""
    from .points import centre_click

    x, y = centre_click(mask)
    return [float(x), float(y)]


def _coco_annotation(a: dict, height: int, width: int) -> dict:
    from .rle import decode_segmentation, encode_mask, mask_to_bbox

    if "segmentation" not in a:
        raise ValueError("no segmentation")
    mask = decode_segmentation(a["segmentation"], height, width)
    if mask.shape != (height, width) and height > 0 and width > 0:
        raise ValueError(f"mask shape {mask.shape} does not match the image {height}x{width}")
    area = int(mask.sum())
    if area == 0:
        raise ValueError("empty mask")
    bbox = mask_to_bbox(mask)
    try:  # keep the dataset's own box (COCO eval prompts use it) when it is sane
        x, y, w, h = finite_numbers(a.get("bbox"), 4)
        if w > 0 and h > 0:
            bbox = [x, y, w, h]
    except (TypeError, ValueError):
        pass
    out = {"id": a.get("id"), "bbox": bbox, "area": area, "segmentation": encode_mask(mask),
           "point_coords": [mask_center_point(mask)]}
    if "category_id" in a:
        out["category_id"] = a["category_id"]
    return out


def _read_image(images_dir: str, file_name: str) -> tuple[str, bytes | None, str]:
    """-> (path, bytes or None, reason). ``file_name`` is looked up under ``images_dir``, then by its base name."""
    first = storage.join(images_dir, file_name)
    for cand in dict.fromkeys([first, storage.join(images_dir, os.path.basename(file_name))]):
        try:
            return cand, storage.read_bytes(cand), ""
        except FileNotFoundError:
            continue
        except OSError as exc:
            return cand, None, f"unreadable: {short_error(exc)}"
    return first, None, "image file missing"


def load_coco(instances_json: str | Path) -> tuple[list[dict], dict[Any, list[dict]]]:
    """Parse a COCO instances file (local or URI) -> (image entries with an ``id``, annotations grouped by
    ``image_id``). Raises one of ``COCO_ERRORS`` for an unreadable or malformed file."""
    doc = json.loads(storage.read_bytes(instances_json))
    if not isinstance(doc, dict) or not isinstance(doc.get("images"), list):
        raise ValueError("no 'images' list at the top level")
    images = [im for im in doc["images"] if isinstance(im, dict) and "id" in im]
    anns_by_image: dict[Any, list[dict]] = {}
    anns = doc.get("annotations", [])
    if not isinstance(anns, list):
        raise ValueError("'annotations' is not a list")
    for a in anns:
        if isinstance(a, dict) and "image_id" in a:
            anns_by_image.setdefault(a["image_id"], []).append(a)
    return images, anns_by_image


def iter_coco(images_dir: str | Path, instances_json: str | Path,
              parsed: tuple[list[dict], dict[Any, list[dict]]] | None = None) -> Iterator[Item]:
    """COCO instances (``images``, ``annotations`` with polygon, uncompressed-RLE or compressed-RLE
    segmentations) -> one :class:`RawRecord` per image with SA-1B-style annotations.

    Each non-crowd annotation becomes ``{"id", "bbox" (the file's XYWH box, or the mask's when that one is
    unusable), "area" (mask pixels), "segmentation" (compressed RLE, str counts), "point_coords" ([[x, y]]
    of the distance-transform peak), "category_id"}``; crowd annotations are left out silently. image_id is
    the file stem. Skips: an unreadable or malformed JSON (one ``Skipped`` for the whole set), a missing or
    unreadable image file, an annotation whose segmentation cannot be decoded or is empty (the image is
    kept). ``parsed``: a chunk of :func:`load_coco`'s output to read instead of parsing ``instances_json``.
    Both paths may be local or URIs.
    """
    images_dir, js = str(images_dir), str(instances_json)
    if parsed is None:
        try:
            parsed = load_coco(instances_json)
        except COCO_ERRORS as exc:
            yield Skipped(js, f"bad COCO JSON: {short_error(exc)}")
            return
    images, anns_by_image = parsed
    for im in images:
        file_name = str(im.get("file_name", ""))
        path, data, reason = _read_image(images_dir, file_name) if file_name else (images_dir, None, "image file missing")
        if data is None:
            yield Skipped(path, reason)
            continue
        h, w = int_or_none(im.get("height")) or 0, int_or_none(im.get("width")) or 0
        out = []
        for a in anns_by_image.get(im["id"], []):
            if a.get("iscrowd"):
                continue
            try:
                out.append(_coco_annotation(a, h, w))
            except Exception as exc:  # noqa: BLE001 - pycocotools raises bare Exception for odd input
                yield Skipped(f"{js}#ann{a.get('id')}", f"bad annotation: {short_error(exc)}")
        yield RawRecord(os.path.splitext(storage.name(path))[0], data, out, path, w or None, h or None)


def looks_like_coco(path: str) -> bool:
    """An instances file mentions ``"images"`` or ``"categories"`` in its first 64 KiB."""
    try:
        head = read_head(path, _HEAD_BYTES)
    except OSError:
        return False
    return b'"images"' in head or b'"categories"' in head


def coco_instance_files(root: str | Path, listing: list[str] | None = None) -> list[str]:
    """COCO instances files directly under ``root/annotations`` (local or URI; ``listing`` = ``walk(root)``
    if known): ``.json`` files that :func:`looks_like_coco` and whose stem is not the stem of an image of
    the set (that would be an extracted SA-1B JSON). Files whose name contains ``instances`` come first;
    when there are such files, only they are returned."""
    rels = walk(root) if listing is None else listing
    candidates = [r for r in rels if r.startswith("annotations/") and r.count("/") == 1 and r.lower().endswith(".json")]
    if not candidates:
        return []
    stems = {os.path.splitext(r.rsplit("/", 1)[-1])[0] for r in rels if is_image(r)}
    found = [storage.join(str(root), r) for r in candidates
             if os.path.splitext(r[len("annotations/"):])[0] not in stems and looks_like_coco(storage.join(str(root), r))]
    named = [j for j in found if "instances" in storage.name(j).lower()]
    return named or found


def coco_root(instances_json: str) -> str:
    """The set's root for one instances file: above its ``annotations/`` folder, else its own folder."""
    folder = storage.parent(instances_json)
    return storage.parent(folder) if storage.name(folder) == "annotations" else folder


def coco_images_dir(root: str | Path, instances_json: str | Path) -> str:
    """Where the images of ``instances_json`` are: ``images/<split>``, ``images``, ``<split>`` or ``root``."""
    root = str(root)
    split = os.path.splitext(storage.name(str(instances_json)))[0].rsplit("_", 1)[-1]
    for cand in (storage.join(root, "images", split), storage.join(root, "images"), storage.join(root, split)):
        if storage.is_dir(cand):
            return cand
    return root


def iter_coco_source(source: str) -> Iterator[Item]:
    """A COCO set's root (every instances file under ``annotations/``) or one instances file."""
    if storage.is_file(source):
        yield from iter_coco(coco_images_dir(coco_root(source), source), source)
        return
    files = coco_instance_files(source)
    if not files:
        yield Skipped(source, "no COCO instances JSON under annotations/")
        return
    for js in files:
        yield from iter_coco(coco_images_dir(source, js), js)
