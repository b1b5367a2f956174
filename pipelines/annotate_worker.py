"""The annotation actor: reads, validates and labels one image at a time and returns its shard row (a Ray Data
``map_batches`` callable class; the generator is built and warmed up once per actor)."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from edgesam import storage
from edgesam.formats.shards import image_row, rows_table

from pipelines.annotate_config import AnnotateConfig, AnnotateInputCfg, AnnotateOutputCfg
from pipelines.annotate_model import build_generator


def read_image(path: str, cfg: AnnotateInputCfg) -> np.ndarray:
    """File -> uint8 (H,W,3) RGB; raises ValueError (ImageDecodeError) / OSError with the reason."""
    from edgesam.data.images import decode_image

    size = storage.size(path)
    if size > cfg.max_file_bytes:
        raise ValueError(f"file too large: {size} bytes > input.max_file_bytes {cfg.max_file_bytes}")
    data = storage.read_bytes(path)
    return decode_image(data, source=path, min_side=cfg.min_side, max_pixels=cfg.max_pixels)


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


def write_overlay(out_dir: str | Path, cfg: AnnotateOutputCfg, item: dict, image: np.ndarray, records: list[dict]) -> None:
    """``OUT/overlays/<relative path>.png``: the masks over the image (needs the pixels, so the worker draws it)."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(render_overlay(image, records, cfg.overlay_max_side, item["image_id"] % 2**32)).save(buf, "PNG")
    stem = Path(item["file_name"]).with_suffix(".png").as_posix()
    storage.write_bytes(storage.join(out_dir, "overlays", stem), buf.getvalue())


class AnnotateWorker:
    """Ray Data actor: builds the generator once and warms it up; each call labels listed files and returns their
    shard rows (:data:`edgesam.formats.shards.SHARD_SCHEMA`) for Ray Data's Parquet writer."""

    def __init__(self, cfg: dict, input_dir: str, out_dir: str, progress: Any = None) -> None:
        t0 = time.perf_counter()
        self.progress = progress  # a pipelines.run_output.ProgressCounter actor, or None
        self.cfg = AnnotateConfig.model_validate(cfg)
        self.input_dir = input_dir  # local path or s3:// / gs:// URI
        self.out_dir = out_dir
        self.gen = build_generator(self.cfg)
        self.warm_up()
        self.warmup_seconds: float | None = time.perf_counter() - t0  # reported on the actor's first row
        self.labelled = 0  # images labelled by this actor; the first one is flagged ``first_in_actor``

    def warm_up(self) -> None:
        """One synthetic scene through the whole path - the input's filesystem client, JPEG decoding and the
        generator - so the first real image does not pay for first-call set-up (the object-store client and
        connection, PIL's codec plugins, ONNX Runtime's arena and kernel choice, torch's allocator)."""
        import io

        from PIL import Image

        from edgesam.data.images import decode_image
        from edgesam.data.synthetic import make_scene

        storage.exists(self.input_dir)
        s = self.cfg.model.img_size
        scene, _ = make_scene(np.random.default_rng(0), s * 3 // 4, s)
        buf = io.BytesIO()
        Image.fromarray(scene).save(buf, "JPEG")
        image = decode_image(buf.getvalue(), source="warm-up scene", min_side=1, max_pixels=self.cfg.input.max_pixels)
        self.gen.generate(image)

    def label(self, item: dict) -> dict:
        """One listed file (``file_name``, ``image_id``) -> its shard row; bad input is a ``skipped`` row, an
        error a ``failed`` row (retried by the next run), never an exception."""
        t0 = time.perf_counter()
        warmup, self.warmup_seconds = self.warmup_seconds, None
        base = {"image_id": item["image_id"], "file_name": item["file_name"], "actor_warmup_seconds": warmup}
        try:
            image = read_image(storage.join(self.input_dir, item["file_name"]), self.cfg.input)
        except (ValueError, OSError) as exc:  # ImageDecodeError is a ValueError
            return image_row(**base, status="skipped", reason=str(exc), seconds=time.perf_counter() - t0)
        h, w = image.shape[:2]
        try:
            t1 = time.perf_counter()
            records = self.gen.generate(image)
            model_seconds = time.perf_counter() - t1
            if self.cfg.output.overlays:
                write_overlay(self.out_dir, self.cfg.output, item, image, records)
            self.labelled += 1
            return image_row(**base, status="labelled", width=w, height=h, seconds=time.perf_counter() - t0,
                             model_seconds=model_seconds, first_in_actor=self.labelled == 1, annotations=records)
        except Exception as exc:  # noqa: BLE001 - one bad image must not lose the others; a rerun retries it
            return image_row(**base, status="failed", reason=f"{type(exc).__name__}: {exc}", width=w, height=h,
                             seconds=time.perf_counter() - t0)

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = [self.label(it) for it in batch.select(["file_name", "image_id"]).to_pylist()]
        if self.progress is not None:
            self.progress.add.remote(len(rows), sum(len(r["annotations"]) for r in rows))
        return rows_table(rows)
