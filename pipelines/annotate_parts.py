"""Annotation output on disk: image ids, per-image part files, resume, the run identity, and merging the parts
into one COCO dict. Local folders or ``s3://`` / ``gs://`` prefixes (:mod:`edgesam.storage`)."""
from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path
from typing import Any

from edgesam import storage

PARTS = "parts"
COCO_FILE = "annotations.json"
SKIPPED_FILE = "skipped.json"
SUMMARY_FILE = "summary.json"
RUN_FILE = "run.json"
CATEGORY = {"id": 1, "name": "object", "supercategory": "object"}


class RunMismatchError(RuntimeError):
    """OUT holds parts made with another model or other everything-mode settings."""


# -- listing and ids --------------------------------------------------------------------------------------
def image_id_for(file_name: str) -> int:
    """Stable positive integer id (< 2**52, JSON-safe) of a relative POSIX path."""
    return int(hashlib.sha1(file_name.encode("utf-8")).hexdigest()[:13], 16) or 1


def list_images(root: str | Path, extensions: list[str], limit: int | None = None) -> list[dict]:
    """-> [{"path", "file_name", "image_id"}] for every file under ``root`` (local or s3://) with an image extension, sorted."""
    exts = {e.lower() if e.startswith(".") else f".{e.lower()}" for e in extensions}
    files = [r for r in storage.listdir(root, recursive=True) if os.path.splitext(r)[1].lower() in exts]
    if limit:
        files = files[:limit]
    items, seen = [], {}
    for rel in files:
        p = storage.display(storage.join(root, rel))
        iid = image_id_for(rel)
        if iid in seen:
            raise RuntimeError(f"image id collision between {seen[iid]!r} and {rel!r}; rename one of them")
        seen[iid] = rel
        items.append({"path": p, "file_name": rel, "image_id": iid})
    return items


def part_path(out_dir: str | Path, image_id: int) -> str | Path:
    """A Path under a local ``out_dir``, a URI under an s3:// / gs:// one."""
    p = storage.join(out_dir, PARTS, f"{image_id}.json")
    return p if storage.is_uri(p) else Path(p)


def write_json_atomic(path: str | Path, obj: Any, indent: int | None = None) -> None:
    storage.write_json(path, obj, indent=indent)  # temp + rename locally, one PUT on object stores


def check_run(out_dir: str | Path, identity: dict, input_dir: str | Path) -> None:
    """Refuse to mix parts made with another model / settings; record the identity on the first run."""
    run = storage.join(out_dir, RUN_FILE)
    if storage.is_file(run):
        previous = storage.read_json(run)
        if previous.get("identity") != identity:
            raise RunMismatchError(
                f"{out_dir} holds results made with other model weights or everything-mode settings "
                f"(see {run}); use another --output, or delete {storage.join(out_dir, PARTS)} and {run} to start over")
        return
    write_json_atomic(run, {"identity": identity, "input": storage.display(input_dir),
                            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}, indent=2)


def pending_items(items: list[dict], out_dir: str | Path, retry_skipped: bool) -> tuple[list[dict], int]:
    """Items without a finished part -> (pending, number resumed)."""
    pending, resumed = [], 0
    parts = set(storage.listdir(storage.join(out_dir, PARTS)))  # one listing, not a request per image
    for it in items:
        p = part_path(out_dir, it["image_id"])
        if storage.name(p) in parts:
            if retry_skipped and storage.read_json(p).get("status") == "skipped":
                pending.append(it)
                continue
            resumed += 1
        else:
            pending.append(it)
    return pending, resumed


def assemble(items: list[dict], out_dir: str | Path, identity: dict) -> tuple[dict, list[dict]]:
    """COCO dict from the parts of ``items`` (in listing order) and the skipped list."""
    images, annotations, skipped = [], [], []
    parts = set(storage.listdir(storage.join(out_dir, PARTS)))
    for it in items:
        p = part_path(out_dir, it["image_id"])
        if storage.name(p) not in parts:
            continue
        part = storage.read_json(p)
        if part["status"] == "skipped":
            skipped.append({"file_name": it["file_name"], "image_id": it["image_id"], "status": "skipped",
                            "reason": part["reason"]})
            continue
        images.append(part["image"])
        for r in part["annotations"]:
            annotations.append({"id": len(annotations) + 1, "image_id": it["image_id"], "category_id": CATEGORY["id"],
                                "iscrowd": 0, **r})
    info = {"description": "EdgeSAM segment-everything auto-annotation (class-agnostic)",
            "mode": identity["everything"]["mode"], "random_weights": bool(identity["weights"].get("random")),
            "weights": identity["weights"], "date_created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    return {"info": info, "images": images, "annotations": annotations, "categories": [CATEGORY]}, skipped
