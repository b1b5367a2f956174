"""SA-1B per-image JSON (``{"image": {...}, "annotations": [...]}``): validation and pairing with its image.

Shared by the tar reader (:mod:`edgesam.data.sa1b_tar`) and the extracted-folder reader
(:mod:`edgesam.data.folders`); COCO annotations are checked with the same number rules.
"""
from __future__ import annotations

import json
import math
from typing import Any, Iterable, Iterator

from .dataset_files import short_error
from .records import Item, RawRecord, Skipped

__all__ = ["finite_numbers", "validate_annotations", "parse_sa1b_json", "int_or_none", "pair_record"]


def finite_numbers(values: Any, n: int | None = None) -> list[float]:
    """``values`` as floats; ``ValueError`` unless it is a list/tuple of finite numbers (of length ``n``)."""
    if isinstance(values, (str, bytes, dict)) or not isinstance(values, (list, tuple)):
        raise ValueError(f"expected a list of numbers, got {values!r:.60}")
    out = [float(v) for v in values]
    if n is not None and len(out) != n:
        raise ValueError(f"expected {n} numbers, got {len(out)}")
    if not all(math.isfinite(v) for v in out):
        raise ValueError(f"non-finite number in {values!r:.80}")
    return out


def validate_annotations(anns: Iterable[Any], where: str) -> tuple[list[dict], list[Skipped]]:
    """Split SA-1B-style annotations into usable ones and a ``Skipped`` per bad one.

    Bad: not a dict, no ``bbox``, a ``bbox`` that is not 4 finite numbers or has ``w <= 0`` or ``h <= 0``,
    or a ``point_coords`` present but not a list of finite ``[x, y]`` pairs. The ``Skipped`` source is
    ``f"{where}#ann{id}"`` (the list index when the annotation has no id).
    """
    good: list[dict] = []
    bad: list[Skipped] = []
    for i, a in enumerate(anns):
        ident = a.get("id", i) if isinstance(a, dict) else i
        try:
            if not isinstance(a, dict):
                raise ValueError(f"annotation is a {type(a).__name__}, not an object")
            if "bbox" not in a:
                raise ValueError("no bbox")
            try:
                x, y, w, h = finite_numbers(a["bbox"], 4)
            except (TypeError, ValueError) as exc:
                raise ValueError(f"degenerate bbox {a['bbox']!r:.80}: {exc}") from None
            if w <= 0 or h <= 0:
                raise ValueError(f"degenerate bbox {a['bbox']!r:.80}: width and height must be > 0")
            pts = a.get("point_coords")
            if pts is not None:
                if not isinstance(pts, (list, tuple)) or not pts:
                    raise ValueError(f"bad point_coords {pts!r:.80}")
                for p in pts:
                    finite_numbers(p, 2)
            good.append(a)
        except (TypeError, ValueError) as exc:
            bad.append(Skipped(f"{where}#ann{ident}", f"bad annotation: {short_error(exc)}"))
    return good, bad


def parse_sa1b_json(data: bytes, where: str) -> tuple[dict | None, list[Skipped], str]:
    """-> (doc with only valid annotations or None, per-annotation skips, error reason when doc is None)."""
    try:
        doc = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        return None, [], f"bad JSON: {short_error(exc)}"
    except RecursionError:
        return None, [], "bad JSON: nested too deeply"
    if not isinstance(doc, dict):
        return None, [], f"bad JSON: top level is a {type(doc).__name__}, expected an object"
    anns = doc.get("annotations", [])
    if not isinstance(anns, list):
        return None, [], "bad JSON: 'annotations' is not a list"
    good, bad = validate_annotations(anns, where)
    info = doc.get("image") if isinstance(doc.get("image"), dict) else {}
    return {"image": info, "annotations": good}, bad, ""


def int_or_none(v: Any) -> int | None:
    """``int(v)`` when that is a positive integer, else None (image sizes from untrusted JSON)."""
    try:
        iv = int(v)
    except (TypeError, ValueError, OverflowError):
        return None
    return iv if iv > 0 else None


def pair_record(stem: str, image: bytes, image_where: str, ann_json: bytes, json_where: str) -> Iterator[Item]:
    """An image and its SA-1B JSON -> the per-annotation skips, then one ``RawRecord`` (or one ``Skipped``
    naming the JSON when it does not parse: the image is skipped with it)."""
    doc, bad, error = parse_sa1b_json(ann_json, json_where)
    if doc is None:
        yield Skipped(json_where, f"{error} (image skipped)")
        return
    yield from bad
    info = doc["image"]
    yield RawRecord(stem, image, doc["annotations"], image_where, int_or_none(info.get("width")),
                    int_or_none(info.get("height")))
