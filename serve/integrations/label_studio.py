"""Label Studio ML backend protocol: ``GET /label-studio/health``, ``POST /label-studio/setup``,
``POST /label-studio/predict`` (connect Label Studio to ``http://<host>:8000/label-studio``).

Interactive ("smart") labelling sends ``params.context.result``: ``keypointlabels`` clicks (``value.x/y`` in
percent of the image, ``is_positive``) and ``rectanglelabels`` boxes (``value.x/y/width/height`` in percent).
All clicks form one prompt; each rectangle is one prompt with the clicks added. The answer is one prediction
for the task with a ``brushlabels`` region (brush RLE) per prompt, or ``polygonlabels`` regions when the
labelling config has a ``<PolygonLabels>`` but no ``<BrushLabels>`` tag. Tasks without a context (batch
pre-annotation) get no prediction: prompts are what this model needs.
"""
from __future__ import annotations

import asyncio
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Depends
from pydantic import BaseModel, ConfigDict, Field

from edgesam.formats.label_studio_tasks import brush_result, polygon_results

from ..codec import RequestError
from .common import current_ingress, require_key, decode_masks, embedding
from .fetch import image_bytes

router = APIRouter(prefix="/label-studio", tags=["label-studio"])
MAX_CONFIG_CHARS = 256_000
MAX_CONTEXT_ITEMS = 256


class _Loose(BaseModel):
    model_config = ConfigDict(extra="allow")  # Label Studio sends more fields than we read


class SetupRequest(_Loose):
    project: str | int | None = None
    schema_: str | None = Field(None, alias="schema", max_length=MAX_CONFIG_CHARS)


class PredictRequest(_Loose):
    tasks: list[dict[str, Any]] = Field(..., max_length=1024)
    label_config: str | None = Field(None, max_length=MAX_CONFIG_CHARS)
    params: dict[str, Any] | None = None
    project: str | int | None = None


@dataclass
class LabelConfig:
    """What the labelling config tells the backend: the output tag and the task field holding the image."""

    kind: str = "brush"  # brush | polygon
    from_name: str = "tag"
    to_name: str = "image"
    image_key: str = "image"
    labels: tuple[str, ...] = ()


def parse_label_config(text: str | None) -> LabelConfig:
    """``<View>`` XML -> :class:`LabelConfig`: the first ``BrushLabels`` (else ``PolygonLabels``) tag and the
    ``Image`` tag it labels. No config: the defaults (``tag`` -> ``image``, task key ``image``)."""
    if not text:
        return LabelConfig()
    if re.search(r"<!(DOCTYPE|ENTITY)", text, re.IGNORECASE):
        raise RequestError("label_config must not contain DOCTYPE or ENTITY declarations", 422)
    try:
        root = ET.fromstring(text)
    except ET.ParseError as e:
        raise RequestError(f"label_config is not valid XML: {e}", 422) from None
    tags = {el.tag.lower(): el for el in reversed(list(root.iter()))}  # first occurrence wins
    out = tags.get("brushlabels")
    kind = "brush"
    if out is None:
        out, kind = tags.get("polygonlabels"), "polygon"
    if out is None:
        raise RequestError("label_config has no <BrushLabels> or <PolygonLabels> tag to put masks in", 422)
    to_name = out.get("toName") or out.get("toname") or "image"
    image = next((el for el in root.iter() if el.tag.lower() == "image" and el.get("name") == to_name), None)
    if image is None or not (image.get("value") or "").startswith("$"):
        raise RequestError(f"label_config has no <Image name=\"{to_name}\" value=\"$...\"> for the masks", 422)
    labels = tuple(el.get("value") for el in out if el.tag.lower() == "label" and el.get("value"))
    return LabelConfig(kind, out.get("name") or "tag", to_name, image.get("value")[1:], labels)


def _prompts(context: dict, width: int, height: int) -> tuple[list, list, list, str | None]:
    """context.result -> (points px, labels, boxes px XYXY, the label chosen by the last prompt)."""
    items = context.get("result")
    if not isinstance(items, list) or len(items) > MAX_CONTEXT_ITEMS:
        raise RequestError(f"params.context.result must be a list of at most {MAX_CONTEXT_ITEMS} regions", 422)
    points, labels, boxes, label = [], [], [], None
    for i, r in enumerate(items):
        if not isinstance(r, dict) or not isinstance(r.get("value"), dict):
            raise RequestError(f"context.result[{i}] must be a region object with a 'value'", 422)
        kind, v = r.get("type"), r["value"]
        try:
            x, y = float(v["x"]) * width / 100.0, float(v["y"]) * height / 100.0
            if kind == "keypointlabels":
                points.append([x, y])
                labels.append(1 if r.get("is_positive", True) in (True, 1, "true") else 0)
            elif kind == "rectanglelabels":
                boxes.append([x, y, x + float(v["width"]) * width / 100.0, y + float(v["height"]) * height / 100.0])
            else:
                raise RequestError(f"context.result[{i}] has type {kind!r}; use keypointlabels or rectanglelabels", 422)
        except (KeyError, TypeError, ValueError) as e:
            if isinstance(e, RequestError):
                raise
            raise RequestError(f"context.result[{i}].value needs numeric x, y (and width, height for a "
                               f"rectangle) in percent: {type(e).__name__} {e}", 422) from None
        names = v.get(kind)
        if isinstance(names, list) and names and isinstance(names[0], str):
            label = names[0]
    return points, labels, boxes, label


@router.get("/health")
async def health() -> dict[str, Any]:
    return {"status": "UP", "model_class": "EdgeSAM"}


@router.post("/setup", dependencies=[Depends(require_key)])
async def setup(req: SetupRequest, ingress: Any = Depends(current_ingress)) -> dict[str, Any]:
    parse_label_config(req.schema_)  # a config the backend cannot serve is refused at connection time
    return {"model_version": await _model_version(ingress)}


async def _model_version(ingress: Any) -> str:
    info = await ingress.encoder.info.remote()
    return f"edgesam:{info['identity']}"[:200]


@router.post("/predict", dependencies=[Depends(require_key)])
async def predict(req: PredictRequest, ingress: Any = Depends(current_ingress)) -> dict[str, Any]:
    lcfg = parse_label_config(req.label_config)
    cfg = ingress.cfg.integrations.label_studio
    if len(req.tasks) > cfg.max_tasks:
        raise RequestError(f"{len(req.tasks)} tasks exceed the limit of {cfg.max_tasks} per request", 413)
    context = (req.params or {}).get("context")
    if not context or not isinstance(context, dict) or not context.get("result"):
        return {"results": [], "model_version": await _model_version(ingress)}
    task = req.tasks[0] if req.tasks else None
    data = task.get("data") if isinstance(task, dict) else None
    if not isinstance(data, dict) or lcfg.image_key not in data:
        raise RequestError(f"the task needs data.{lcfg.image_key} (the <Image> value of the label config)", 422)
    key, entry = await embedding(ingress, await image_bytes(data[lcfg.image_key], ingress.limits, cfg))
    h, w = entry.original_hw
    points, labels, boxes, label = _prompts(context, w, h)
    label = label or (lcfg.labels[0] if lcfg.labels else "object")
    masks = await decode_masks(ingress, key, entry, points, labels, boxes)

    def regions() -> list[dict]:
        out = []
        for mask, score in masks:
            if lcfg.kind == "brush":
                out.append(brush_result(mask, lcfg.from_name, lcfg.to_name, label, score))
            else:
                out += polygon_results(mask, lcfg.from_name, lcfg.to_name, label, score)
        return out

    result = await asyncio.to_thread(regions)
    version = await _model_version(ingress)
    score = sum(s for _, s in masks) / max(len(masks), 1)
    return {"results": [{"result": result, "score": score, "model_version": version}], "model_version": version}
