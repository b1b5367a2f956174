"""Synthetic SA-1B-format scenes with exact instance masks: the project's embedded default dataset and test data.

    python -m edgesam.data.synthetic --out data/sample --num-images 48 [--images-per-shard 16] [--seed 0]
    python -m edgesam.data.synthetic --dense --out data/dense --num-images 16   # SA-1B-like, see synthetic_dense

A scene is a stack of shapes (ellipses, rotated rectangles, rotated triangles/polygons, elliptical rings),
each filled with its own colour (chosen far from the colours already used and from the background under
it) plus mild texture, over a smooth gradient, smooth noise, or a crop of one of the photos bundled with
scikit-image. Masks are the *visible* parts after occlusion (instances with fewer than 64 visible pixels
are dropped), so the RLEs written to the JSON are exact ground truth: decoding them gives back the
generator's masks bit for bit (JPEG only touches the pixels, never the masks).

Every image ``k`` is generated from its own generator ``np.random.default_rng([seed, k])``, so its content
does not depend on how images are grouped into shards, and the tar bytes are identical for a given seed.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import tempfile
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from .rle import encode_masks, mask_to_bbox, to_uncompressed_rle
from .sa1b_tar import _json_bytes, write_shards
from .scene_paint import (JPEG_QUALITY, MIN_VISIBLE_AREA, PHOTO_FILES, _fit, _paint, _pick_colour, _shape_mask,
                          _synthetic_background, available_photos, photo_background)

__all__ = ["MIN_VISIBLE_AREA", "PHOTO_FILES", "available_photos", "photo_background", "make_scene",
           "scene_for_index", "sa1b_record", "write_sa1b_shards", "write_shards", "write_sa1b_folder", "write_coco_set",
           "ensure_sample_dataset", "main"]

def make_scene(rng: np.random.Generator, height: int, width: int, max_objects: int = 8,
               background: np.ndarray | None = None) -> tuple[np.ndarray, list[np.ndarray]]:
    """-> (uint8 ``(H, W, 3)`` RGB image, list of bool ``(H, W)`` visible instance masks).

    Objects are drawn back to front; each mask is the part of its shape left visible by the shapes above
    it, and instances with fewer than ``MIN_VISIBLE_AREA`` (64) visible pixels are dropped. ``background``
    (any ``(h, w, 3)`` photo, e.g. :func:`photo_background`) is cropped or scaled to the image size; without
    one, a gradient or smooth-noise background is drawn. Masks never overlap.
    """
    height, width = int(height), int(width)
    if height < 1 or width < 1:
        raise ValueError(f"bad scene size {height}x{width}")
    if background is not None:
        bg = np.asarray(background)
        if bg.shape[:2] != (height, width):
            bg = _fit(bg, rng, height, width)
        img = bg[..., :3].astype(np.float32) if bg.ndim == 3 else np.repeat(bg[..., None], 3, 2).astype(np.float32)
    else:
        img = _synthetic_background(rng, height, width).astype(np.float32)
    owner = np.full((height, width), -1, np.int32)
    max_objects = max(1, int(max_objects))
    n = int(rng.integers(min(3, max_objects), max_objects + 1))
    used: list[np.ndarray] = []
    for k in range(n):
        m = _shape_mask(rng, height, width)
        if not m.any():
            continue
        local_bg = img[m].mean(axis=0)
        colour = _pick_colour(rng, used + [local_bg])
        used.append(colour)
        _paint(rng, img, m, colour)
        owner[m] = k
    masks = [owner == k for k in range(n)]
    masks = [m for m in masks if int(m.sum()) >= MIN_VISIBLE_AREA]
    return np.clip(np.rint(img), 0, 255).astype(np.uint8), masks


# ---------------------------------------------------------------------------------------------------
# SA-1B records
def _image_size(rng: np.random.Generator, index: int, size_range: tuple[int, int]) -> tuple[int, int]:
    lo, hi = int(size_range[0]), int(size_range[1])
    if not 8 <= lo <= hi:
        raise ValueError(f"bad size_range {size_range}")
    long_side = int(rng.integers(lo, hi + 1))
    short_side = int(rng.integers(lo, long_side + 1))
    # alternate landscape / portrait so any few images cover both
    return (short_side, long_side) if index % 2 == 0 else (long_side, short_side)


def scene_for_index(seed: int, index: int, size_range: tuple[int, int] = (192, 320),
                    photo_backgrounds: bool = True, max_objects: int = 8) -> tuple[np.ndarray, list[np.ndarray]]:
    """The scene of image ``index`` of the dataset with this seed (what the writers write): (image, masks)."""
    rng = np.random.default_rng([int(seed), int(index)])
    h, w = _image_size(rng, index, size_range)
    bg = photo_background(rng, h, w) if photo_backgrounds and rng.random() < 0.5 else None
    return make_scene(rng, h, w, max_objects=max_objects, background=bg)


def sa1b_record(seed: int, index: int, size_range: tuple[int, int] = (192, 320), photo_backgrounds: bool = True
                ) -> tuple[bytes, dict, list[np.ndarray]]:
    """Image ``index`` as SA-1B files: (JPEG bytes, the ``sa_<index>.json`` document, the exact masks)."""
    image, masks = scene_for_index(seed, index, size_range, photo_backgrounds)
    h, w = image.shape[:2]
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=JPEG_QUALITY)
    rles = encode_masks(np.stack(masks)) if masks else []
    prng = np.random.default_rng([int(seed), int(index), 1])  # point sampling, independent of the scene
    anns = []
    for i, (m, rle) in enumerate(zip(masks, rles)):
        ys, xs = np.nonzero(m)
        j = int(prng.integers(xs.size))
        anns.append({
            "bbox": mask_to_bbox(m),
            "area": int(xs.size),
            "segmentation": rle,
            "predicted_iou": 1.0,
            "point_coords": [[float(xs[j]), float(ys[j])]],
            "crop_box": [0, 0, w, h],
            "id": int(index) * 1000 + i,
            "stability_score": 1.0,
        })
    doc = {"image": {"image_id": int(index), "width": int(w), "height": int(h), "file_name": f"sa_{index}.jpg"},
           "annotations": anns}
    return buf.getvalue(), doc, masks


def write_sa1b_shards(out_dir: str | Path, num_images: int, images_per_shard: int = 16, seed: int = 0,
                      size_range: tuple[int, int] = (192, 320), photo_backgrounds: bool = True) -> list[Path]:
    """Write ``sa_000000.tar``, ``sa_000001.tar``, ... into ``out_dir``; each holds ``sa_<k>.jpg`` (JPEG q95) +
    ``sa_<k>.json`` (SA-1B JSON) for ``images_per_shard`` consecutive images. Same seed, same bytes.
    Returns the shard paths in order."""
    return write_shards(out_dir, num_images, images_per_shard,
                        lambda k: sa1b_record(seed, k, size_range, photo_backgrounds)[:2])


def write_sa1b_folder(out_dir: str | Path, num_images: int, seed: int = 0, size_range: tuple[int, int] = (192, 320),
                      photo_backgrounds: bool = True, layout: str = "flat", split: str = "train") -> Path:
    """The same images as :func:`write_sa1b_shards`, extracted.

    ``layout="flat"``: ``out_dir/sa_<k>.jpg`` beside ``out_dir/sa_<k>.json``;
    ``layout="edgesam"``: ``out_dir/images/<split>/sa_<k>.jpg`` + ``out_dir/annotations/<split>/sa_<k>.json``.
    Returns ``out_dir``.
    """
    out = Path(out_dir)
    if layout == "flat":
        img_dir = ann_dir = out
    elif layout == "edgesam":
        img_dir, ann_dir = out / "images" / split, out / "annotations" / split
    else:
        raise ValueError(f"layout must be 'flat' or 'edgesam', got {layout!r}")
    img_dir.mkdir(parents=True, exist_ok=True)
    ann_dir.mkdir(parents=True, exist_ok=True)
    for k in range(num_images):
        jpg, doc, _ = sa1b_record(seed, k, size_range, photo_backgrounds)
        (img_dir / f"sa_{k}.jpg").write_bytes(jpg)
        (ann_dir / f"sa_{k}.json").write_bytes(_json_bytes(doc))
    return out


def _mask_polygons(mask: np.ndarray, upsample: int = 4) -> list[list[float]] | None:
    """COCO polygons (pixel-corner coordinates) tracing ``mask``, or None when it has holes.

    Contours are traced on a ``upsample``x nearest-neighbour copy, so the vertices sit just inside the
    pixel boundary and pycocotools' rasteriser gives back (nearly) the same pixels.
    """
    big = np.kron(mask.astype(np.uint8), np.ones((upsample, upsample), np.uint8))
    contours, hierarchy = cv2.findContours(big, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    if hierarchy is None:
        return None
    if (hierarchy[0][:, 3] >= 0).any():
        return None  # a hole: COCO polygons cannot express it
    polys = []
    for c in contours:
        pts = (c.reshape(-1, 2).astype(np.float64) + 0.5) / upsample
        if len(pts) >= 3:
            polys.append([round(float(v), 3) for v in pts.reshape(-1)])
    return polys or None


def write_coco_set(out_dir: str | Path, num_images: int, seed: int = 0, size_range: tuple[int, int] = (160, 240)
                   ) -> tuple[Path, Path, list[list[np.ndarray]]]:
    """A small COCO instances set: ``out_dir/images/<k:012d>.jpg`` + ``out_dir/annotations/instances.json``.

    Segmentations cycle through the three COCO forms by annotation: polygon (when the mask has no hole;
    otherwise compressed RLE), compressed RLE (str counts) and uncompressed RLE (list counts). ``bbox`` is the
    mask's XYWH box, ``area`` its pixel count, ``iscrowd`` 0, one category. Returns
    ``(images_dir, instances_json, masks)`` where ``masks[i]`` are the exact masks of ``images[i]``.
    """
    out = Path(out_dir)
    img_dir, ann_dir = out / "images", out / "annotations"
    img_dir.mkdir(parents=True, exist_ok=True)
    ann_dir.mkdir(parents=True, exist_ok=True)
    images, anns, all_masks = [], [], []
    for k in range(num_images):
        rng = np.random.default_rng([int(seed), int(k), 2])
        h, w = _image_size(rng, k, size_range)
        image, masks = make_scene(rng, h, w)
        name = f"{k + 1:012d}.jpg"
        Image.fromarray(image).save(img_dir / name, format="JPEG", quality=JPEG_QUALITY)
        images.append({"id": k + 1, "file_name": name, "height": int(h), "width": int(w)})
        all_masks.append(masks)
        for m in masks:
            aid = len(anns) + 1
            form = aid % 3
            seg: object = None
            if form == 1:
                seg = _mask_polygons(m)
            if seg is None and form == 0:
                seg = to_uncompressed_rle(m)
            if seg is None:
                seg = encode_masks(m[None])[0]
            anns.append({"id": aid, "image_id": k + 1, "category_id": 1, "iscrowd": 0, "segmentation": seg,
                         "bbox": mask_to_bbox(m), "area": int(m.sum())})
    doc = {"info": {"description": "edgesam synthetic COCO set", "version": "1.0"}, "licenses": [],
           "images": images, "annotations": anns, "categories": [{"id": 1, "name": "object", "supercategory": "object"}]}
    path = ann_dir / "instances.json"
    path.write_bytes(_json_bytes(doc))
    return img_dir, path, all_masks


# ---------------------------------------------------------------------------------------------------
# the embedded default dataset
def ensure_sample_dataset(root: str | Path, num_images: int = 48, images_per_shard: int = 16, seed: int = 0,
                          size_range: tuple[int, int] = (192, 320), photo_backgrounds: bool = True) -> Path:
    """The embedded default dataset: SA-1B shards in ``root``, generated on first use. Returns ``root``.

    Idempotent: when ``root`` already holds ``sa_*.tar`` shards they are used as they are. Generation writes
    into a temporary sibling folder that is renamed to ``root`` at the end, so an interrupted run never leaves
    a half dataset, and two concurrent callers end up with one complete copy. An existing ``root`` that is
    not empty and holds no shards is refused (``FileExistsError``) rather than overwritten.
    """
    root = Path(root)
    if root.is_dir() and any(root.glob("sa_*.tar")):
        return root
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise FileExistsError(f"{root} exists and holds no sa_*.tar shards; refusing to generate into it")
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.tmp-", dir=root.parent))
    try:
        write_sa1b_shards(tmp, num_images, images_per_shard, seed, size_range, photo_backgrounds)
        (tmp / "SAMPLE.json").write_text(json.dumps(
            {"generator": "edgesam.data.synthetic", "num_images": num_images, "images_per_shard": images_per_shard,
             "seed": seed, "size_range": list(size_range), "photo_backgrounds": photo_backgrounds}, indent=1))
        try:
            if root.is_dir():
                root.rmdir()  # empty (checked above); fails harmlessly if someone filled it meanwhile
            os.replace(tmp, root)
        except OSError:
            if not (root.is_dir() and any(root.glob("sa_*.tar"))):  # not a concurrent winner: a real error
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return root


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m edgesam.data.synthetic", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--num-images", type=int, default=48)
    p.add_argument("--images-per-shard", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--min-size", type=int, default=192, help="shortest allowed image side")
    p.add_argument("--max-size", type=int, default=320, help="longest allowed image side")
    p.add_argument("--no-photos", action="store_true", help="only synthetic backgrounds")
    p.add_argument("--layout", choices=("tar", "flat", "edgesam", "coco"), default="tar",
                   help="tar: SA-1B shards (default); flat/edgesam: extracted SA-1B; coco: a COCO instances set")
    p.add_argument("--dense", action="store_true",
                   help="SA-1B-like tars instead: 1500x2250 images with >= 100 masks each (edgesam.data.synthetic_dense)")
    a = p.parse_args(argv)
    size_range = (a.min_size, a.max_size)
    if a.dense:
        from .synthetic_dense import write_dense_shards

        shards = write_dense_shards(a.out, a.num_images, a.images_per_shard, a.seed, photo_backgrounds=not a.no_photos)
        print(f"wrote {a.num_images} dense synthetic images in {len(shards)} shard(s) to {Path(a.out).resolve()}")
    elif a.layout == "tar":
        shards = write_sa1b_shards(a.out, a.num_images, a.images_per_shard, a.seed, size_range, not a.no_photos)
        print(f"wrote {a.num_images} synthetic images in {len(shards)} shard(s) to {Path(a.out).resolve()}")
    elif a.layout == "coco":
        _, js, _ = write_coco_set(a.out, a.num_images, a.seed, size_range)
        print(f"wrote a COCO set of {a.num_images} images to {Path(a.out).resolve()} ({js.name})")
    else:
        write_sa1b_folder(a.out, a.num_images, a.seed, size_range, not a.no_photos, layout=a.layout)
        print(f"wrote {a.num_images} synthetic images ({a.layout} layout) to {Path(a.out).resolve()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
