"""Synthetic SA-1B generator: determinism, exact masks in the written JSON, SA-1B format, sample dataset."""
from __future__ import annotations

import io
import json
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from edgesam.data import synthetic as S
from edgesam.data.rle import decode_rle, decode_segmentation, mask_to_bbox

NUM, PER_SHARD, SEED = 6, 4, 7
SIZE_RANGE = (96, 160)


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> list[Path]:
    return S.write_sa1b_shards(tmp_path_factory.mktemp("shards"), NUM, PER_SHARD, seed=SEED, size_range=SIZE_RANGE)


def _members(tar_path: Path) -> dict[str, bytes]:
    with tarfile.open(tar_path) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers()}


def _docs(shards: list[Path]) -> dict[int, tuple[bytes, dict]]:
    out = {}
    for s in shards:
        mem = _members(s)
        for name, data in mem.items():
            if name.endswith(".json"):
                k = int(name[3:-5])
                out[k] = (mem[f"sa_{k}.jpg"], json.loads(data))
    return out


def test_shard_layout(shards):
    assert [p.name for p in shards] == ["sa_000000.tar", "sa_000001.tar"]
    with tarfile.open(shards[0]) as tar:
        assert tar.getnames() == [f"sa_{k}.{e}" for k in range(4) for e in ("jpg", "json")]
    with tarfile.open(shards[1]) as tar:
        assert tar.getnames() == ["sa_4.jpg", "sa_4.json", "sa_5.jpg", "sa_5.json"]
    assert not list(shards[0].parent.glob("*.part"))


def test_deterministic_bytes(shards, tmp_path):
    again = S.write_sa1b_shards(tmp_path / "again", NUM, PER_SHARD, seed=SEED, size_range=SIZE_RANGE)
    assert [p.read_bytes() for p in again] == [p.read_bytes() for p in shards]
    other = S.write_sa1b_shards(tmp_path / "other", 2, PER_SHARD, seed=SEED + 1, size_range=SIZE_RANGE)
    assert other[0].read_bytes() != shards[0].read_bytes()
    # an image's content does not depend on the shard grouping
    regrouped = S.write_sa1b_shards(tmp_path / "regroup", NUM, 3, seed=SEED, size_range=SIZE_RANGE)
    assert _members(regrouped[1])["sa_4.jpg"] == _members(shards[1])["sa_4.jpg"]


def test_json_is_sa1b_format_and_masks_are_exact(shards):
    docs = _docs(shards)
    assert sorted(docs) == list(range(NUM))
    total = 0
    for k, (jpg, doc) in docs.items():
        assert set(doc) == {"image", "annotations"}
        info = doc["image"]
        assert info == {"image_id": k, "width": info["width"], "height": info["height"], "file_name": f"sa_{k}.jpg"}
        w, h = info["width"], info["height"]
        with Image.open(io.BytesIO(jpg)) as im:
            assert im.format == "JPEG" and im.size == (w, h)
        image, masks = S.scene_for_index(SEED, k, SIZE_RANGE)
        assert image.shape == (h, w, 3) and len(masks) == len(doc["annotations"]) >= 1
        union = np.zeros((h, w), np.int32)
        for i, (ann, m) in enumerate(zip(doc["annotations"], masks)):
            assert set(ann) == {"id", "segmentation", "bbox", "area", "predicted_iou", "stability_score",
                                "crop_box", "point_coords"}
            seg = ann["segmentation"]
            assert isinstance(seg["counts"], str) and seg["size"] == [h, w]
            dec = decode_rle(seg)
            assert dec.dtype == bool and np.array_equal(dec, m)  # exact round trip
            assert ann["area"] == int(m.sum()) >= S.MIN_VISIBLE_AREA
            assert ann["bbox"] == mask_to_bbox(m)
            rle_b = {"size": seg["size"], "counts": seg["counts"].encode()}
            assert mask_utils.toBbox(rle_b).tolist() == ann["bbox"]
            assert int(mask_utils.area(rle_b)) == ann["area"]
            x, y = ann["point_coords"][0]
            assert float(x).is_integer() and m[int(y), int(x)]
            assert ann["crop_box"] == [0, 0, w, h] and ann["predicted_iou"] == 1.0 and ann["stability_score"] == 1.0
            assert ann["id"] == k * 1000 + i
            union += m
            total += 1
        assert union.max() == 1  # visible parts never overlap
    assert total >= 2 * NUM


def test_sizes_vary_within_range(shards):
    sizes = [(d["image"]["width"], d["image"]["height"]) for _, d in _docs(shards).values()]
    assert all(SIZE_RANGE[0] <= v <= SIZE_RANGE[1] for s in sizes for v in s)
    assert any(w > h for w, h in sizes) and any(h > w for w, h in sizes)
    assert len(set(sizes)) >= NUM - 1


def test_make_scene_contract():
    rng = np.random.default_rng(0)
    for h, w in [(64, 96), (200, 120)]:
        img, masks = S.make_scene(rng, h, w, max_objects=5)
        assert img.dtype == np.uint8 and img.shape == (h, w, 3)
        assert 1 <= len(masks) <= 5
        assert all(m.dtype == bool and m.shape == (h, w) and m.sum() >= 64 for m in masks)
        assert np.sum(masks, axis=0).max() <= 1
        # objects differ from each other: the mean colours of the instances are not all the same
        means = np.array([img[m].mean(axis=0) for m in masks])
        if len(masks) > 1:
            assert np.ptp(means, axis=0).max() > 10
    # a photo background (any size) is fitted to the scene
    photo = S.photo_background(np.random.default_rng(1), 50, 70)
    assert S.available_photos(), "scikit-image ships its sample photos"
    assert photo.shape == (50, 70, 3) and photo.dtype == np.uint8
    img, masks = S.make_scene(np.random.default_rng(2), 80, 90, background=photo)
    assert img.shape == (80, 90, 3)
    outside = ~np.any(masks, axis=0) if masks else np.ones((80, 90), bool)
    assert outside.any()
    # same generator state -> same scene
    a = S.make_scene(np.random.default_rng(5), 100, 100)
    b = S.make_scene(np.random.default_rng(5), 100, 100)
    assert np.array_equal(a[0], b[0]) and all(np.array_equal(x, y) for x, y in zip(a[1], b[1]))


def test_folder_layouts_hold_the_same_images(shards, tmp_path):
    tar_docs = _docs(shards)
    flat = S.write_sa1b_folder(tmp_path / "flat", NUM, seed=SEED, size_range=SIZE_RANGE)
    edge = S.write_sa1b_folder(tmp_path / "edge", NUM, seed=SEED, size_range=SIZE_RANGE, layout="edgesam", split="val")
    for k, (jpg, doc) in tar_docs.items():
        assert (flat / f"sa_{k}.jpg").read_bytes() == jpg
        assert json.loads((flat / f"sa_{k}.json").read_text()) == doc
        assert (edge / "images" / "val" / f"sa_{k}.jpg").read_bytes() == jpg
        assert json.loads((edge / "annotations" / "val" / f"sa_{k}.json").read_text()) == doc
    with pytest.raises(ValueError):
        S.write_sa1b_folder(tmp_path / "x", 1, layout="nope")


def test_coco_set_uses_all_three_segmentation_forms(tmp_path):
    images_dir, js, masks = S.write_coco_set(tmp_path / "coco", 4, seed=3)
    doc = json.loads(js.read_text())
    assert len(doc["images"]) == 4 and len(masks) == 4
    forms = set()
    by_image: dict[int, list] = {}
    for a in doc["annotations"]:
        seg = a["segmentation"]
        forms.add("polygon" if isinstance(seg, list) else "rle" if isinstance(seg["counts"], list) else "crle")
        by_image.setdefault(a["image_id"], []).append(a)
    assert forms == {"polygon", "rle", "crle"}
    for im, ms in zip(doc["images"], masks):
        assert (images_dir / im["file_name"]).is_file()
        for a, m in zip(by_image.get(im["id"], []), ms):
            dec = decode_segmentation(a["segmentation"], im["height"], im["width"])
            iou = (dec & m).sum() / (dec | m).sum()
            assert iou >= 0.99 and a["bbox"] == mask_to_bbox(m) and a["area"] == int(m.sum())


def test_ensure_sample_dataset_is_idempotent_and_atomic(tmp_path):
    root = tmp_path / "sample"
    out = S.ensure_sample_dataset(root, num_images=3, images_per_shard=2, seed=1, size_range=SIZE_RANGE)
    assert out == root and sorted(p.name for p in root.glob("sa_*.tar")) == ["sa_000000.tar", "sa_000001.tar"]
    assert json.loads((root / "SAMPLE.json").read_text())["num_images"] == 3
    stamp = [(p.name, p.stat().st_mtime_ns) for p in sorted(root.iterdir())]
    assert S.ensure_sample_dataset(root, num_images=3, images_per_shard=2, seed=1) == root
    assert [(p.name, p.stat().st_mtime_ns) for p in sorted(root.iterdir())] == stamp
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sample"]  # no temp folders left behind
    # an empty folder is filled; a folder with other content is refused, not overwritten
    empty = tmp_path / "empty"
    empty.mkdir()
    S.ensure_sample_dataset(empty, num_images=1, images_per_shard=1, size_range=SIZE_RANGE)
    assert (empty / "sa_000000.tar").is_file()
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError):
        S.ensure_sample_dataset(busy, num_images=1)
    assert (busy / "keep.txt").read_text() == "mine"


def test_cli(tmp_path):
    out = tmp_path / "cli"
    res = subprocess.run([sys.executable, "-m", "edgesam.data.synthetic", "--out", str(out), "--num-images", "3",
                          "--images-per-shard", "2", "--seed", "4", "--min-size", "64", "--max-size", "96"],
                         capture_output=True, text=True, timeout=60, cwd=Path(__file__).resolve().parent.parent)
    assert res.returncode == 0, res.stderr
    assert "3 synthetic images in 2 shard(s)" in res.stdout
    assert sorted(p.name for p in out.iterdir()) == ["sa_000000.tar", "sa_000001.tar"]
    same = S.write_sa1b_shards(tmp_path / "lib", 3, 2, seed=4, size_range=(64, 96))
    assert [p.read_bytes() for p in same] == [(out / p.name).read_bytes() for p in same]
