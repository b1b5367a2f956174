"""Label Studio task JSON with predictions: ``[{"data": {"image": url}, "predictions": [{"result": [...]}]}]``.

Each mask becomes one result region, either ``brushlabels`` (``value.format = "rle"``, the brush RLE of
:mod:`edgesam.formats.brush_rle`) or ``polygonlabels`` (``value.points`` in percent of the image, one region
per polygon piece). The same result builders serve the ML backend in ``serve/integrations/label_studio.py``.
The matching labelling config has an ``<Image name=to_name value="$data_key"/>`` and a ``<BrushLabels>`` (or
``<PolygonLabels>``) tag named ``from_name`` with a ``<Label value=label/>``.
"""
from __future__ import annotations

import uuid
from typing import Any, Literal

import numpy as np
from pydantic import Field

from edgesam.config import StrictModel
from edgesam.data.rle import decode_rle, decode_segmentation

from .brush_rle import mask_to_rle, rle_to_mask
from .coco_polygons import mask_to_polygons


class LabelStudioTaskCfg(StrictModel):
    """How ``label_studio_tasks.json`` refers to images and names its regions."""

    kind: Literal["brush", "polygon"] = "brush"  # predictions as brushlabels (brush RLE) or polygonlabels
    image_prefix: str = Field("/data/local-files/?d=", description="prepended to each image's relative path: "
                              "Label Studio's local-files URL by default (set LOCAL_FILES_DOCUMENT_ROOT to --input's "
                              "parent), or an http(s)/s3 prefix")
    data_key: str = "image"  # task data key: the labelling config's <Image value="$data_key">
    from_name: str = "tag"  # name of the <BrushLabels>/<PolygonLabels> tag
    to_name: str = "image"  # name of the <Image> tag
    label: str = "object"  # the <Label value> every region gets (masks are class-agnostic)
    model_version: str = "edgesam"  # predictions' model_version


def _region_id() -> str:
    return uuid.uuid4().hex[:10]


def brush_result(mask: np.ndarray, from_name: str, to_name: str, label: str, score: float | None = None) -> dict:
    """bool (H, W) mask -> one ``brushlabels`` result region."""
    h, w = mask.shape
    out = {"id": _region_id(), "from_name": from_name, "to_name": to_name, "type": "brushlabels",
           "original_width": int(w), "original_height": int(h), "image_rotation": 0, "readonly": False,
           "value": {"format": "rle", "rle": mask_to_rle(mask), "brushlabels": [label]}}
    if score is not None:
        out["score"] = float(score)
    return out


def polygon_results(mask: np.ndarray, from_name: str, to_name: str, label: str, score: float | None = None,
                    tolerance: float = 0.0) -> list[dict]:
    """bool (H, W) mask -> ``polygonlabels`` regions (points in percent), one per polygon piece."""
    h, w = mask.shape
    out = []
    for poly in mask_to_polygons(mask, tolerance):
        pts = (np.asarray(poly, np.float64).reshape(-1, 2) / [w, h] * 100.0).tolist()
        r = {"id": _region_id(), "from_name": from_name, "to_name": to_name, "type": "polygonlabels",
             "original_width": int(w), "original_height": int(h), "image_rotation": 0, "readonly": False,
             "value": {"points": pts, "closed": True, "polygonlabels": [label]}}
        if score is not None:
            r["score"] = float(score)
        out.append(r)
    return out


def result_to_mask(result: dict) -> np.ndarray:
    """A ``brushlabels`` (rle) or ``polygonlabels`` region -> bool (H, W) mask at its original size."""
    h, w = int(result["original_height"]), int(result["original_width"])
    value = result["value"]
    if result["type"] == "brushlabels":
        if value.get("format") != "rle":
            raise ValueError(f"unsupported brush format {value.get('format')!r}")
        return rle_to_mask(value["rle"], h, w)
    if result["type"] == "polygonlabels":
        xy = np.asarray(value["points"], np.float64).reshape(-1, 2) * [w / 100.0, h / 100.0]
        return decode_segmentation([xy.ravel().tolist()], h, w)
    raise ValueError(f"unsupported result type {result['type']!r}")


def task_for_image(image: dict, anns: list[dict], cfg: LabelStudioTaskCfg, tolerance: float = 0.0) -> dict[str, Any]:
    """A COCO image and its annotations (RLE segmentations) -> one Label Studio task, its masks as one prediction."""
    results = []
    for a in anns:
        m = decode_rle(a["segmentation"])
        if cfg.kind == "brush":
            results.append(brush_result(m, cfg.from_name, cfg.to_name, cfg.label, a.get("score")))
        else:
            results += polygon_results(m, cfg.from_name, cfg.to_name, cfg.label, a.get("score"), tolerance)
    score = float(np.mean([a.get("score", 0.0) for a in anns])) if anns else 0.0
    return {"data": {cfg.data_key: cfg.image_prefix + image["file_name"]},
            "meta": {"image_id": image["id"], "file_name": image["file_name"]},
            "predictions": [{"model_version": cfg.model_version, "score": score, "result": results}]}
