"""Writing an assembled annotation run in the formats chosen by ``output.formats`` (pipelines/annotate.py).

The annotate driver assembles one COCO dict with RLE masks from the per-image parts; every format is written
from it, so a resumed run rewrites them all consistently:

* ``coco_rle``: ``annotations.json`` (today's output; the default);
* ``coco_polygons``: ``annotations_polygons.json`` (:mod:`.coco_polygons`; holes filled);
* ``yolo``: ``yolo/labels/<relative path>.txt`` per image plus ``yolo/data.yaml`` (:mod:`.yolo_seg`);
* ``label_studio``: ``label_studio_tasks.json`` (:mod:`.label_studio_tasks`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import AfterValidator, Field

from edgesam import storage
from edgesam.config import StrictModel
from edgesam.data.rle import decode_rle

from .label_studio_tasks import LabelStudioTaskCfg

ExportFormat = Literal["coco_rle", "coco_polygons", "yolo", "label_studio"]
FILES = {"coco_rle": "annotations.json", "coco_polygons": "annotations_polygons.json", "yolo": "yolo",
         "label_studio": "label_studio_tasks.json"}


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


def _write_json(path: str | Path, obj: object) -> None:
    storage.write_json(path, obj, indent=None)  # atomic: temp + rename locally, one PUT on s3:// / gs://


def _write_yolo(out_dir: Path, coco: dict, cfg: FormatOptionsCfg) -> None:
    from .yolo_seg import mask_to_lines

    root = storage.join(out_dir, FILES["yolo"])
    by_image: dict[int, list[dict]] = {}
    for a in coco["annotations"]:
        by_image.setdefault(a["image_id"], []).append(a)
    for im in coco["images"]:
        lines = [ln for a in by_image.get(im["id"], [])
                 for ln in mask_to_lines(decode_rle(a["segmentation"]), 0, cfg.polygon_tolerance)]
        path = storage.join(root, "labels", Path(im["file_name"]).with_suffix(".txt").as_posix())
        storage.write_text(path, "".join(ln + "\n" for ln in lines))
    storage.write_text(storage.join(root, "data.yaml"), "# YOLO segmentation labels from EdgeSAM auto-annotation (class-agnostic).\n"
                                    "# labels/<path>.txt mirror the --input tree; point 'path' at a dataset root\n"
                                    "# with images/ beside labels/ to train.\nnames:\n  0: object\n")


def write_formats(out_dir: str | Path, coco: dict, formats: list[str], cfg: FormatOptionsCfg) -> dict[str, str]:
    """Write ``coco`` (COCO dict, RLE masks) in each of ``formats`` under ``out_dir`` -> {format: path}."""
    from .coco_polygons import coco_with_polygons
    from .label_studio_tasks import tasks_from_coco

    written = {}
    for fmt in check_formats(list(formats)):
        path = storage.join(out_dir, FILES[fmt])  # local, s3:// or gs://
        if fmt == "coco_rle":
            _write_json(path, coco)
        elif fmt == "coco_polygons":
            _write_json(path, coco_with_polygons(coco, cfg.polygon_tolerance)[0])
        elif fmt == "yolo":
            _write_yolo(out_dir, coco, cfg)
        else:
            _write_json(path, tasks_from_coco(coco, cfg.label_studio, cfg.polygon_tolerance))
        written[fmt] = storage.display(path)
    return written
