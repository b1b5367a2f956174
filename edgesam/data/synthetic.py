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
import functools
import io
import json
import os
import shutil
import tarfile
import tempfile
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
from PIL import Image

from .rle import encode_masks, mask_to_bbox, to_uncompressed_rle

__all__ = ["MIN_VISIBLE_AREA", "PHOTO_FILES", "available_photos", "photo_background", "make_scene",
           "scene_for_index", "sa1b_record", "write_sa1b_shards", "write_shards", "write_sa1b_folder", "write_coco_set",
           "ensure_sample_dataset", "main"]

MIN_VISIBLE_AREA = 64
JPEG_QUALITY = 95
# photos shipped inside the scikit-image wheel (no download needed)
PHOTO_FILES = ("astronaut.png", "coffee.png", "chelsea.png", "rocket.jpg", "motorcycle_left.png",
               "hubble_deep_field.jpg", "ihc.png", "retina.jpg")
SHAPES = ("ellipse", "rectangle", "polygon", "ring")


# ---------------------------------------------------------------------------------------------------
# backgrounds
@functools.lru_cache(maxsize=None)
def _photo_dir() -> Path | None:
    try:
        import skimage.data
    except ImportError:
        return None
    return Path(skimage.data.__file__).resolve().parent


def available_photos() -> tuple[str, ...]:
    """The bundled scikit-image photos found in the installed package (file names)."""
    root = _photo_dir()
    if root is None:
        return ()
    return tuple(name for name in PHOTO_FILES if (root / name).is_file())


@functools.lru_cache(maxsize=len(PHOTO_FILES))
def _load_photo(name: str) -> np.ndarray | None:
    root = _photo_dir()
    try:
        with Image.open(root / name) as im:  # type: ignore[operator]
            arr = np.asarray(im.convert("RGB"))
    except Exception:  # noqa: BLE001 - a damaged or missing file only removes one background choice
        return None
    arr.setflags(write=False)
    return arr


def _fit(img: np.ndarray, rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A random crop of ``img`` of size (height, width), after upscaling when it is too small."""
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    img = img[..., :3]
    h0, w0 = img.shape[:2]
    # random zoom so crops of the same photo differ in scale too
    scale = max(height / h0, width / w0) * float(rng.uniform(1.0, 1.6))
    nh, nw = max(height, int(np.ceil(h0 * scale))), max(width, int(np.ceil(w0 * scale)))
    if (nh, nw) != (h0, w0):
        img = cv2.resize(np.ascontiguousarray(img), (nw, nh), interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    y = int(rng.integers(0, nh - height + 1))
    x = int(rng.integers(0, nw - width + 1))
    return np.ascontiguousarray(img[y:y + height, x:x + width]).astype(np.uint8)


def photo_background(rng: np.random.Generator, height: int, width: int) -> np.ndarray | None:
    """A (height, width, 3) uint8 crop of a random bundled photo, or None when none is available."""
    names = available_photos()
    if not names:
        return None
    photo = _load_photo(names[int(rng.integers(len(names)))])
    return None if photo is None else _fit(photo, rng, height, width)


def _synthetic_background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    if rng.random() < 0.5:  # linear gradient between two colours in a random direction
        a, b = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
        theta = rng.uniform(0, 2 * np.pi)
        yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
        t = xx * np.cos(theta) + yy * np.sin(theta)
        t = (t - t.min()) / max(float(t.max() - t.min()), 1.0)
        img = a[None, None] * (1 - t[..., None]) + b[None, None] * t[..., None]
    else:  # smooth colour noise: a coarse random grid upsampled
        gh, gw = int(rng.integers(2, 6)), int(rng.integers(2, 6))
        coarse = rng.uniform(0, 255, (gh, gw, 3)).astype(np.float32)
        img = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)
    img = img + rng.normal(0, 4, (height, width, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


# ---------------------------------------------------------------------------------------------------
# shapes
def _shape_mask(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    m = np.zeros((height, width), np.uint8)
    short = min(height, width)
    r = float(rng.uniform(0.07, 0.3)) * short + 4
    cx = float(rng.uniform(-0.1, 1.1)) * width
    cy = float(rng.uniform(-0.1, 1.1)) * height
    angle = float(rng.uniform(0, 180))
    kind = SHAPES[int(rng.integers(len(SHAPES)))]
    centre = (int(round(cx)), int(round(cy)))
    if kind == "ellipse":
        axes = (int(round(r)), int(round(r * rng.uniform(0.35, 1.0))))
        cv2.ellipse(m, centre, axes, angle, 0, 360, 1, -1)
    elif kind == "rectangle":
        box = cv2.boxPoints(((cx, cy), (2 * r, 2 * r * float(rng.uniform(0.3, 1.0))), angle))
        cv2.fillPoly(m, [np.round(box).astype(np.int32)], 1)
    elif kind == "polygon":  # a triangle or a star-ish polygon, rotated
        n = int(rng.integers(3, 8))
        ang = np.deg2rad(angle) + np.sort(rng.uniform(0, 2 * np.pi, n)) if n > 3 else \
            np.deg2rad(angle) + np.array([0.0, 2.1, 4.2]) + rng.uniform(-0.3, 0.3, 3)
        rad = r * rng.uniform(0.55, 1.0, n)
        pts = np.stack([cx + rad * np.cos(ang), cy + rad * np.sin(ang)], 1)
        cv2.fillPoly(m, [np.round(pts).astype(np.int32)], 1)
    else:  # ring: an elliptical annulus
        ry = r * float(rng.uniform(0.6, 1.0))
        cv2.ellipse(m, centre, (int(round(r)), int(round(ry))), angle, 0, 360, 1, -1)
        k = float(rng.uniform(0.35, 0.65))
        cv2.ellipse(m, centre, (max(1, int(round(r * k))), max(1, int(round(ry * k)))), angle, 0, 360, 0, -1)
    return m.astype(bool)


def _pick_colour(rng: np.random.Generator, avoid: list[np.ndarray]) -> np.ndarray:
    cands = rng.uniform(0, 255, (24, 3))
    if not avoid:
        return cands[0]
    dist = np.linalg.norm(cands[:, None, :] - np.stack(avoid)[None], axis=2).min(axis=1)
    return cands[int(np.argmax(dist))]


def _paint(rng: np.random.Generator, img: np.ndarray, mask: np.ndarray, colour: np.ndarray) -> None:
    ys, xs = np.nonzero(mask)
    if xs.size == 0:
        return
    vals = np.repeat(colour[None].astype(np.float32), xs.size, axis=0)
    style = int(rng.integers(3))
    if style == 1:  # stripes
        period = float(rng.uniform(5, 16))
        theta = float(rng.uniform(0, np.pi))
        phase = (xs * np.cos(theta) + ys * np.sin(theta)) * (2 * np.pi / period)
        vals += (10.0 * np.sin(phase))[:, None]
    elif style == 2:  # shading across the object
        t = (xs - xs.min()) / max(1, xs.max() - xs.min()) - 0.5
        vals += (24.0 * t)[:, None]
    vals += rng.normal(0, 5, vals.shape)
    img[ys, xs] = np.clip(vals, 0, 255)


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


def _json_bytes(doc: dict) -> bytes:
    return json.dumps(doc, separators=(",", ":")).encode("utf-8")


def _add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 0  # fixed metadata: identical bytes for a given seed
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    tar.addfile(info, io.BytesIO(data))


def write_sa1b_shards(out_dir: str | Path, num_images: int, images_per_shard: int = 16, seed: int = 0,
                      size_range: tuple[int, int] = (192, 320), photo_backgrounds: bool = True) -> list[Path]:
    """Write ``sa_000000.tar``, ``sa_000001.tar``, ... into ``out_dir``; each holds ``sa_<k>.jpg`` (JPEG q95) +
    ``sa_<k>.json`` (SA-1B JSON) for ``images_per_shard`` consecutive images. Same seed, same bytes.
    Returns the shard paths in order."""
    return write_shards(out_dir, num_images, images_per_shard,
                        lambda k: sa1b_record(seed, k, size_range, photo_backgrounds)[:2])


def write_shards(out_dir: str | Path, num_images: int, images_per_shard: int,
                 record: Callable[[int], tuple[bytes, dict]]) -> list[Path]:
    """``sa_000000.tar``, ... in ``out_dir`` with ``sa_<k>.jpg`` + ``sa_<k>.json`` from ``record(k)`` =
    (JPEG bytes, SA-1B doc), pairs adjacent as in SA-1B; each tar is written to ``.part`` and renamed."""
    if num_images < 0 or images_per_shard < 1:
        raise ValueError("num_images must be >= 0 and images_per_shard >= 1")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    shards = []
    for s, start in enumerate(range(0, num_images, images_per_shard)):
        path = out / f"sa_{s:06d}.tar"
        tmp = path.with_name(path.name + ".part")
        with tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT) as tar:
            for k in range(start, min(num_images, start + images_per_shard)):
                jpg, doc = record(k)
                _add_member(tar, f"sa_{k}.jpg", jpg)
                _add_member(tar, f"sa_{k}.json", _json_bytes(doc))
        os.replace(tmp, path)
        shards.append(path)
    return shards


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
