"""The annotation actor: reads, validates and labels one image at a time and writes its part (Ray Data
``map_batches`` callable class; the generator is built once per actor)."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from edgesam import storage

from pipelines.annotate_config import AnnotateConfig, AnnotateInputCfg, AnnotateOutputCfg
from pipelines.annotate_model import build_generator
from pipelines.annotate_parts import part_path, write_json_atomic

RECORD_FIELDS = ("segmentation", "bbox", "area", "score", "stability_score", "predicted_iou", "point_coords",
                 "crop_box", "rpn_box", "rpn_score")


def read_image(path: str, cfg: AnnotateInputCfg) -> np.ndarray:
    """File -> uint8 (H,W,3) RGB; raises ValueError (ImageDecodeError) / OSError with the reason."""
    from edgesam.data.images import decode_image

    size = storage.size(path)
    if size > cfg.max_file_bytes:
        raise ValueError(f"file too large: {size} bytes > input.max_file_bytes {cfg.max_file_bytes}")
    data = storage.read_bytes(path)
    return decode_image(data, source=path, min_side=cfg.min_side, max_pixels=cfg.max_pixels)


def coco_records(records: list[dict]) -> list[dict]:
    return [{k: r[k] for k in RECORD_FIELDS if k in r} for r in records]


def render_overlay(image: np.ndarray, records: list[dict], max_side: int, seed: int = 0) -> np.ndarray:
    """Masks blended over the image in random colours, downscaled to ``max_side`` -> uint8 (h,w,3)."""
    from PIL import Image

    from edgesam.data.rle import decode_rle

    h, w = image.shape[:2]
    scale = min(1.0, max_side / max(h, w))
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    base = np.asarray(Image.fromarray(image).resize(size, Image.BILINEAR), np.float32)
    rng = np.random.default_rng(seed)
    for r in sorted(records, key=lambda r: -r["area"]):  # small masks on top
        m = decode_rle(r["segmentation"])
        if scale < 1.0:
            m = np.asarray(Image.fromarray(m.astype(np.uint8) * 255).resize(size, Image.NEAREST)) > 127
        base[m] = 0.5 * base[m] + 0.5 * rng.integers(0, 256, 3)
    return base.astype(np.uint8)


def _write_extras(out_dir: str | Path, cfg: AnnotateOutputCfg, item: dict, image: np.ndarray, records: list[dict]) -> None:
    stem = Path(item["file_name"]).with_suffix("")
    if cfg.sa1b_json:
        h, w = image.shape[:2]
        doc = {"image": {"image_id": item["image_id"], "width": w, "height": h, "file_name": item["file_name"]},
               "annotations": [{"id": i + 1, **r} for i, r in enumerate(records)]}
        write_json_atomic(storage.join(out_dir, "sa1b", stem.with_suffix(".json").as_posix()), doc)
    if cfg.overlays:
        import io

        from PIL import Image

        buf = io.BytesIO()
        Image.fromarray(render_overlay(image, records, cfg.overlay_max_side, item["image_id"] % 2**32)).save(buf, "PNG")
        storage.write_bytes(storage.join(out_dir, "overlays", stem.with_suffix(".png").as_posix()), buf.getvalue())


class AnnotateWorker:
    """Ray Data actor: loads the generator once; each call labels a batch of listed files and writes their parts."""

    def __init__(self, cfg: dict, out_dir: str) -> None:
        self.cfg = AnnotateConfig.model_validate(cfg)
        self.out_dir = out_dir  # local path or s3:// / gs:// URI
        self.gen = build_generator(self.cfg)

    def label(self, item: dict) -> dict:
        """One listed file -> a summary row; writes its part (labelled or skipped)."""
        t0 = time.perf_counter()
        row = {"image_id": int(item["image_id"]), "file_name": str(item["file_name"]), "status": "labelled",
               "reason": "", "num_annotations": 0, "seconds": 0.0}
        try:
            image = read_image(item["path"], self.cfg.input)
        except (ValueError, OSError) as exc:  # ImageDecodeError is a ValueError
            row.update(status="skipped", reason=str(exc))
            write_json_atomic(part_path(self.out_dir, row["image_id"]),
                              {"status": "skipped", "image": {"id": row["image_id"], "file_name": row["file_name"]},
                               "reason": row["reason"]})
            return row
        try:
            records = coco_records(self.gen.generate(image))
            _write_extras(self.out_dir, self.cfg.output, item, image, records)
        except Exception as exc:  # noqa: BLE001 - one bad image must not lose the others; no part: a rerun retries
            row.update(status="failed", reason=f"{type(exc).__name__}: {exc}", seconds=time.perf_counter() - t0)
            return row
        h, w = image.shape[:2]
        row.update(num_annotations=len(records), seconds=time.perf_counter() - t0)
        write_json_atomic(part_path(self.out_dir, row["image_id"]),
                          {"status": "labelled", "image": {"id": row["image_id"], "file_name": row["file_name"],
                                                           "width": int(w), "height": int(h)},
                           "annotations": records, "seconds": row["seconds"]})
        return row

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list]:
        rows = [self.label({"path": str(batch["path"][i]), "file_name": str(batch["file_name"][i]),
                            "image_id": int(batch["image_id"][i])}) for i in range(len(batch["path"]))]
        return {k: [r[k] for r in rows] for k in rows[0]} if rows else {}
