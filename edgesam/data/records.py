"""Records that flow out of the dataset readers (:mod:`edgesam.data.readers`)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Union


@dataclass
class RawRecord:
    """One image with its annotations, not yet decoded (decode later with :func:`edgesam.data.images.decode_image`).

    image_id: stable unique id, the file stem (``"sa_123"``); for plain image folders the path relative to the
        root without extension, with ``/`` replaced by ``__``.
    image_bytes: the encoded image file as stored (JPEG/PNG/...).
    annotations: SA-1B-style dicts ``{"bbox": [x, y, w, h] (XYWH, original pixels), "area": int,
        "segmentation": {"size": [h, w], "counts": str} (compressed RLE), "point_coords": [[x, y]], "id": int}``
        (SA-1B files may carry more keys, e.g. ``predicted_iou``); ``[]`` for plain image folders.
    source: where it came from, for error messages: ``"path/to/sa_000.tar::sa_12.jpg"`` or a file path.
    width, height: from the annotation JSON when known.
    """

    image_id: str
    image_bytes: bytes
    annotations: list[dict] = field(default_factory=list)
    source: str = ""
    width: int | None = None
    height: int | None = None


@dataclass
class Skipped:
    """A record (or one annotation of a record) that was reported and left out.

    source: what was skipped (``"shard.tar::sa_3.json"``, ``"shard.tar::sa_3.json#ann42"``, a file path).
    reason: short human-readable reason, e.g. ``"bad JSON: Expecting value: line 1 column 1 (char 0)"``.
    """

    source: str
    reason: str


Item = Union[RawRecord, Skipped]
