"""Bounded read units (edgesam.data.read_units) and the streamed tar reader; dense synthetic scenes."""
from __future__ import annotations

import json
import tarfile
import tracemalloc

import numpy as np
import pyarrow.fs as pafs
import pytest

from edgesam.data import synthetic as S
from edgesam.data.read_units import iter_unit, plan_units
from edgesam.data.readers import iter_any, iter_coco, iter_sa1b_tar
from edgesam.data.records import RawRecord, Skipped
from edgesam.data.rle import decode_rle, mask_to_bbox
from edgesam.data.synthetic_dense import dense_sa1b_record, make_dense_scene, write_dense_shards

SIZE_RANGE = (64, 112)


def records(items) -> list[RawRecord]:
    return [r for r in items if isinstance(r, RawRecord)]


def same(a: list[RawRecord], b: list[RawRecord]) -> bool:
    return [(r.image_id, r.image_bytes, r.annotations, r.source) for r in a] == \
           [(r.image_id, r.image_bytes, r.annotations, r.source) for r in b]


def test_units_cover_every_format_in_bounded_chunks(tmp_path):
    shard_dir = tmp_path / "tars"
    shards = S.write_sa1b_shards(shard_dir, 7, 3, seed=3, size_range=SIZE_RANGE)
    units = plan_units(shard_dir, images_per_unit=2)
    assert [u["source"] for u in units] == [str(s) for s in shards]  # a tar is one (streamed) unit
    assert same(records(r for u in units for r in iter_unit(json.loads(json.dumps(u)))), records(iter_any(shard_dir)))
    assert len(plan_units(shard_dir, limit_sources=2)) == 2

    for layout in ("flat", "edgesam"):
        root = S.write_sa1b_folder(tmp_path / layout, 7, seed=3, size_range=SIZE_RANGE, layout=layout)
        units = plan_units(root, images_per_unit=3)
        assert [len(u["files"]) for u in units] == [3, 3, 1]
        assert same(records(r for u in units for r in iter_unit(json.loads(json.dumps(u)))), records(iter_any(root)))

    img_dir, js, _ = S.write_coco_set(tmp_path / "coco", 5, seed=3, size_range=SIZE_RANGE)
    units = plan_units(tmp_path / "coco", images_per_unit=2)
    assert [len(u["images"]) for u in units] == [2, 2, 1] and all(u["format"] == "coco" for u in units)
    got = records(r for u in units for r in iter_unit(json.loads(json.dumps(u))))  # units travel as JSON
    assert len(got) == 5 and same(got, records(iter_coco(img_dir, js)))
    assert [len(u["images"]) for u in plan_units(js, "coco", images_per_unit=4)] == [4, 1]  # one instances file

    images = plan_units(img_dir, "images", images_per_unit=2)
    assert [len(u["files"]) for u in images] == [2, 2, 1]
    with pytest.raises(ValueError, match="images_per_unit"):
        plan_units(img_dir, "images", images_per_unit=0)


def test_bad_coco_json_is_one_reported_unit(tmp_path):
    S.write_coco_set(tmp_path, 2, seed=1, size_range=SIZE_RANGE)
    (tmp_path / "annotations" / "instances.json").write_text('{"images": [ {"id": 1,')
    [unit] = plan_units(tmp_path, "coco")
    [item] = list(iter_unit(unit))
    assert isinstance(item, Skipped) and item.reason.startswith("bad COCO JSON")


def test_tar_streams_from_a_pyarrow_filesystem(tmp_path):
    [shard] = S.write_sa1b_shards(tmp_path, 4, 4, seed=5, size_range=SIZE_RANGE)
    fs = pafs.LocalFileSystem()  # open_input_stream: a forward-only stream, as from object storage
    assert same(records(iter_sa1b_tar(shard, fs)), records(iter_sa1b_tar(shard)))
    cut = tmp_path / "cut" / "sa_000001.tar"
    cut.parent.mkdir()
    cut.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    items = list(iter_sa1b_tar(cut, fs))
    assert any(isinstance(i, Skipped) and "truncated or corrupt tar" in i.reason for i in items)
    assert 0 < len(records(items)) < 4


def _peak_reading(path) -> tuple[int, int]:
    tracemalloc.start()
    n = 0
    for item in iter_sa1b_tar(path):
        n += isinstance(item, RawRecord)
        del item
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak, n


def test_tar_reader_memory_does_not_grow_with_the_tar(tmp_path):
    """Reading a tar 4x the size (same per-image content) peaks at about the same Python heap."""
    small = write_dense_shards(tmp_path / "x1", 4, 4, size=(120, 180), min_masks=20, unique_images=2)[0]
    big = write_dense_shards(tmp_path / "x4", 16, 16, size=(120, 180), min_masks=20, unique_images=2)[0]
    assert big.stat().st_size > 3.5 * small.stat().st_size
    (p1, n1), (p4, n4) = _peak_reading(small), _peak_reading(big)
    assert (n1, n4) == (4, 16)
    assert p4 < 1.25 * p1 + 64 * 1024, (p1, p4)


def test_dense_scene_is_sa1b_like():
    rng = np.random.default_rng(0)
    image, inst = make_dense_scene(rng, 240, 360, min_masks=100)
    assert image.shape == (240, 360, 3) and image.dtype == np.uint8
    assert len(inst) >= 100
    owner = np.zeros((240, 360), np.int32)
    for y0, x0, m in inst:
        assert m.sum() >= S.MIN_VISIBLE_AREA
        owner[y0:y0 + m.shape[0], x0:x0 + m.shape[1]] += m
    assert owner.max() == 1  # visible masks never overlap

    jpg, doc = dense_sa1b_record(0, 1, size=(200, 300), min_masks=100)
    h, w = doc["image"]["height"], doc["image"]["width"]
    assert (h, w) == (300, 200)  # odd indices are portrait
    anns = doc["annotations"]
    assert len(anns) >= 100 and len({a["id"] for a in anns}) == len(anns)
    for a in anns[:: max(1, len(anns) // 10)]:
        m = decode_rle(a["segmentation"])
        assert m.shape == (h, w) and int(m.sum()) == a["area"] and mask_to_bbox(m) == a["bbox"]
        x, y = a["point_coords"][0]
        assert m[int(y), int(x)]


def test_dense_tars_cycle_content_under_new_ids(tmp_path):
    [tar] = write_dense_shards(tmp_path, 5, 8, size=(100, 150), min_masks=10, unique_images=2)
    with tarfile.open(tar) as t:
        assert t.getnames() == [f"sa_{k}.{e}" for k in range(5) for e in ("jpg", "json")]  # adjacent pairs
    recs = records(iter_sa1b_tar(tar))
    assert [r.image_id for r in recs] == [f"sa_{k}" for k in range(5)]
    assert recs[0].image_bytes == recs[2].image_bytes == recs[4].image_bytes != recs[1].image_bytes
    assert [a["segmentation"] for a in recs[1].annotations] == [a["segmentation"] for a in recs[3].annotations]
    assert recs[0].annotations[0]["id"] != recs[2].annotations[0]["id"]
