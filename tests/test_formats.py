"""Annotation formats, each read back: Label Studio brush RLE (a hand-computed bit stream, round trips, Label
Studio's own converter where installed, malformed input), COCO polygons through pycocotools (``COO()``,
``annToMask``), YOLO segmentation text parsed and rasterised, Label Studio task JSON decoded to masks, and the
annotate pipeline's ``output.formats`` streamed from Parquet shards (one row per image, duplicates resolved, large
runs split) on hand-made masks and on real generator output (random weights, no Ray)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from pycocotools.coco import COCO

from edgesam.data.rle import decode_segmentation, encode_mask, mask_to_bbox
from edgesam.formats.brush_rle import BrushRLEError, decode_rle, encode_rle, mask_to_rle, rle_to_mask
from edgesam.formats.coco_polygons import mask_to_polygons, polygon_annotation
from edgesam.formats.export import FormatOptionsCfg, write_formats
from edgesam.formats.label_studio_tasks import LabelStudioTaskCfg, result_to_mask, task_for_image
from edgesam.formats.shards import ShardIndex, image_row, rows_table
from edgesam.formats.yolo_seg import mask_to_lines, read_yolo_seg

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")  # pycocotools, numpy 2
H, W = 90, 120


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    u = np.logical_or(a, b).sum()
    return 1.0 if u == 0 else float(np.logical_and(a, b).sum() / u)


def _masks() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """name -> (mask, the same mask with holes filled): what a hole-less polygon can represent."""
    yy, xx = np.mgrid[:H, :W]
    disk = (yy - 40) ** 2 + (xx - 50) ** 2 < 25 ** 2
    ring = disk & ((yy - 40) ** 2 + (xx - 50) ** 2 >= 10 ** 2)
    two = ((abs(yy - 20) < 6) & (abs(xx - 20) < 9)) | ((yy - 70) ** 2 / 100 + (xx - 95) ** 2 / 300 < 1)
    diag = np.zeros((H, W), bool)
    diag[10, 10] = diag[11, 11] = diag[12, 12] = True  # pieces touching at corners only
    edge = np.zeros((H, W), bool)
    edge[:, :7] = True  # touches the image border
    edge[H - 1, :] = True
    speckle = np.random.default_rng(3).random((H, W)) < 0.03
    return {"disk": (disk, disk), "ring": (ring, disk), "two": (two, two), "diag": (diag, diag),
            "edge": (edge, edge), "speckle": (speckle, speckle), "single": (disk & (yy == 40) & (xx == 50),) * 2}


# -- brush RLE -------------------------------------------------------------------------------------------
def test_brush_rle_matches_a_hand_computed_stream():
    # header: 4 words, word size 8, repeat sizes 3/4/8/16; a run of three 255s; a literal chunk of one 0
    bits = (f"{4:032b}" + f"{7:05b}" + "0010" + "0011" + "0111" + "1111"
            + "1" + "00" + "010" + "11111111"
            + "0" + "00" + "000" + "00000000")
    bits += "0" * (-len(bits) % 8)
    expected = [int(bits[i:i + 8], 2) for i in range(0, len(bits), 8)]
    assert encode_rle(np.array([255, 255, 255, 0], np.uint8)) == expected
    np.testing.assert_array_equal(decode_rle(expected), [255, 255, 255, 0])
    # size classes: a run of 9 needs the 4-bit class, 17 the 8-bit one, 300 the 16-bit one
    for n, cls in ((8, 0), (9, 1), (16, 1), (17, 2), (256, 2), (257, 3)):
        rle = encode_rle(np.full(n, 7, np.uint8))
        first_block = "".join(f"{b:08b}" for b in rle)[53:56]
        assert first_block == "1" + f"{cls:02b}", (n, first_block)
        np.testing.assert_array_equal(decode_rle(rle), np.full(n, 7))


def test_brush_rle_round_trips_masks_and_long_runs():
    rng = np.random.default_rng(0)
    for name, (mask, _) in _masks().items():
        rle = mask_to_rle(mask)
        assert all(isinstance(v, int) and 0 <= v <= 255 for v in rle)
        np.testing.assert_array_equal(rle_to_mask(rle, H, W), mask, err_msg=name)
    words = np.zeros(300_000, np.uint8)  # runs over 2**16 split into several blocks
    words[70_000:70_003] = 255
    np.testing.assert_array_equal(decode_rle(encode_rle(words)), words)
    for _ in range(20):  # arbitrary words, singletons and runs mixed
        w = np.repeat(rng.integers(0, 256, 50), rng.integers(1, 5, 50)).astype(np.uint8)
        np.testing.assert_array_equal(decode_rle(encode_rle(w)), w)
    np.testing.assert_array_equal(decode_rle(encode_rle(np.zeros(0, np.uint8))), [])


def test_brush_rle_agrees_with_label_studio_converter():
    """Label Studio's own Python codec (label-studio-converter), when installed: each side decodes the other."""
    brush = pytest.importorskip("label_studio_converter.brush")
    mask = _masks()["two"][0]
    ours = mask_to_rle(mask)
    theirs = brush.mask2rle(mask.astype(np.uint8) * 255)
    np.testing.assert_array_equal(np.reshape(brush.decode_rle(ours), (H, W, 4))[..., 3] > 0, mask)
    np.testing.assert_array_equal(rle_to_mask(list(theirs), H, W), mask)


@pytest.mark.parametrize("bad", [[], [0, 0, 0], "abc", [1.5, 2], [256, 0], [[1, 2]], [-1] * 8,
                                 encode_rle(np.full(40, 255, np.uint8))[:-2]])
def test_brush_rle_rejects_malformed(bad):
    with pytest.raises(BrushRLEError):
        rle_to_mask(bad, 2, 5)


def test_brush_rle_refuses_to_allocate_a_huge_header():
    huge = [0xFF, 0xFF, 0xFF, 0xFF, 0x3C, 0x8D, 0xF8]  # 2**32 - 1 words declared, nothing after
    with pytest.raises(BrushRLEError, match="limit"):
        decode_rle(huge)
    with pytest.raises(BrushRLEError, match="limit of 16"):  # the mask size bounds what is decoded
        rle_to_mask(mask_to_rle(np.ones((3, 3), bool)), 2, 2)
    with pytest.raises(BrushRLEError, match="expected"):
        rle_to_mask(mask_to_rle(np.ones((2, 1), bool)), 2, 2)


# -- polygons, YOLO, Label Studio tasks ------------------------------------------------------------------
def test_polygons_rasterise_back_to_the_mask_with_holes_filled():
    for name, (mask, filled) in _masks().items():
        polys = mask_to_polygons(mask)
        assert all(len(p) >= 6 and len(p) % 2 == 0 for p in polys)
        back = decode_segmentation(polys, H, W)
        np.testing.assert_array_equal(back, filled, err_msg=name)  # pixel-exact outline
    # simplified outlines stay close: the tolerance is in pixels
    disk = _masks()["disk"][0]
    coarse = mask_to_polygons(disk, tolerance=1.0)
    assert sum(len(p) for p in coarse) < sum(len(p) for p in mask_to_polygons(disk))
    assert _iou(decode_segmentation(coarse, H, W), disk) > 0.95


def _records(masks: dict[str, np.ndarray]) -> list[dict]:
    return [{"segmentation": encode_mask(m), "bbox": mask_to_bbox(m), "area": int(m.sum()), "score": 0.5 + 0.01 * i}
            for i, m in enumerate(masks.values())]


def _write_shard(path: Path, rows: list[dict]) -> None:
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(rows_table(rows), path)


def _one_image_run(out: Path, masks: dict[str, np.ndarray]) -> ShardIndex:
    _write_shard(out / "shards" / "run1" / "a.parquet",
                 [image_row(7, "sub/scene.png", "labelled", width=W, height=H, annotations=_records(masks))])
    return ShardIndex.scan(out)


def _write(out: Path, index: ShardIndex, formats: list[str], cfg: FormatOptionsCfg | None = None,
           max_images: int = 10_000) -> dict[str, list[str]]:
    return write_formats(out, index, formats, cfg or FormatOptionsCfg(), {"description": "test"}, max_images)["files"]


def test_write_formats_reads_back_through_pycocotools_yolo_and_label_studio(tmp_path):
    cases = _masks()
    index = _one_image_run(tmp_path, {k: v[0] for k, v in cases.items()})
    out = _write(tmp_path, index, ["coco_rle", "coco_polygons", "yolo", "label_studio", "sa1b"])
    assert set(out) == {"coco_rle", "coco_polygons", "yolo", "label_studio", "sa1b"}

    (rle_file,), (poly_file,) = out["coco_rle"], out["coco_polygons"]
    rle_api, poly_api = COCO(rle_file), COCO(poly_file)
    assert sorted(poly_api.getAnnIds()) == sorted(rle_api.getAnnIds()) == list(range(1, len(cases) + 1))
    for (name, (mask, filled)), ann_id in zip(cases.items(), sorted(rle_api.getAnnIds())):
        rle_mask = rle_api.annToMask(rle_api.anns[ann_id]).astype(bool)
        np.testing.assert_array_equal(rle_mask, mask, err_msg=name)
        poly_ann = poly_api.anns[ann_id]
        poly_mask = poly_api.annToMask(poly_ann).astype(bool)
        assert isinstance(poly_ann["segmentation"], list) and poly_ann["area"] == int(filled.sum())
        # a polygon cannot hold a hole: it equals the filled mask, and the IoU with the RLE mask is its area ratio
        np.testing.assert_array_equal(poly_mask, filled, err_msg=name)
        assert _iou(poly_mask, rle_mask) == pytest.approx(mask.sum() / filled.sum(), abs=1e-9)

    lines = read_yolo_seg(Path(out["yolo"][0]) / "labels" / "sub" / "scene.txt", W, H)
    expected_lines = sum(len(mask_to_lines(m)) for m, _ in cases.values())
    assert len(lines) == expected_lines and {c for c, _ in lines} == {0}
    union = decode_segmentation([p for _, p in lines], H, W)
    np.testing.assert_array_equal(union, np.logical_or.reduce([f for _, f in cases.values()]))
    assert "0: object" in (Path(out["yolo"][0]) / "data.yaml").read_text()

    tasks = json.loads(Path(out["label_studio"][0]).read_text())
    assert len(tasks) == 1 and tasks[0]["data"]["image"] == "/data/local-files/?d=sub/scene.png"
    results = tasks[0]["predictions"][0]["result"]
    assert [r["type"] for r in results] == ["brushlabels"] * len(cases)
    for r, (name, (mask, _)) in zip(results, cases.items()):
        assert r["value"]["brushlabels"] == ["object"] and r["value"]["format"] == "rle"
        np.testing.assert_array_equal(result_to_mask(r), mask, err_msg=name)

    doc = json.loads((Path(out["sa1b"][0]) / "sub" / "scene.json").read_text())
    assert doc["image"] == {"image_id": 7, "width": W, "height": H, "file_name": "sub/scene.png"}
    assert [a["id"] for a in doc["annotations"]] == list(range(1, len(cases) + 1))
    for a, (name, (mask, _)) in zip(doc["annotations"], cases.items()):
        np.testing.assert_array_equal(decode_segmentation(a["segmentation"], H, W), mask, err_msg=name)


def test_label_studio_polygon_tasks_decode_to_the_filled_masks():
    cases = _masks()
    cfg = LabelStudioTaskCfg(kind="polygon", image_prefix="s3://bucket/", from_name="poly", label="thing")
    image = {"id": 7, "file_name": "sub/scene.png", "width": W, "height": H}
    anns = [{"segmentation": r["segmentation"], "score": r["score"]} for r in _records({k: v[0] for k, v in cases.items()})]
    task = task_for_image(image, anns, cfg)
    assert task["data"]["image"] == "s3://bucket/sub/scene.png"
    regions = task["predictions"][0]["result"]
    assert all(r["type"] == "polygonlabels" and r["from_name"] == "poly" for r in regions)
    assert all(0 <= x <= 100 and 0 <= y <= 100 for r in regions for x, y in r["value"]["points"])
    union = np.logical_or.reduce([result_to_mask(r) for r in regions])
    np.testing.assert_array_equal(union, np.logical_or.reduce([f for _, f in cases.values()]))


def test_empty_masks_are_dropped_from_polygon_formats(tmp_path):
    empty = np.zeros((H, W), bool)
    ann = {"id": 1, "segmentation": encode_mask(empty), "area": 0}
    assert polygon_annotation(ann, H, W) is None
    index = _one_image_run(tmp_path, {"empty": empty, "disk": _masks()["disk"][0]})
    res = write_formats(tmp_path, index, ["coco_polygons"], FormatOptionsCfg(), {}, 10)
    assert res["dropped_empty_polygons"] == 1
    doc = json.loads(Path(res["files"]["coco_polygons"][0]).read_text())
    assert [a["id"] for a in doc["annotations"]] == [2]


# -- shards: one row per image, split outputs ---------------------------------------------------------------
def test_shard_index_picks_one_row_per_image_and_reports_unreadable_shards(tmp_path):
    disk = {"disk": _masks()["disk"][0]}
    rows = lambda status, iid, **kw: image_row(iid, f"im{iid}.png", status, width=W, height=H, **kw)  # noqa: E731
    # run 1: image 1 failed, 2 labelled, 3 skipped; run 2 retried 1 (labelled) and, a retried write task, 2 again
    _write_shard(tmp_path / "shards" / "r1" / "a.parquet",
                 [rows("failed", 1, reason="boom"), rows("labelled", 2, annotations=_records(disk)),
                  rows("skipped", 3, reason="not an image")])
    _write_shard(tmp_path / "shards" / "r2" / "b.parquet",
                 [rows("labelled", 1, annotations=_records(disk) * 2), rows("labelled", 2, annotations=_records(disk))])
    (tmp_path / "shards" / "r2" / "cut.parquet").write_bytes(b"PAR1 truncated by a killed writer")
    index = ShardIndex.scan(tmp_path)
    assert len(index) == 3 and [f.endswith("cut.parquet") for f, _ in index.unreadable] == [True]
    assert (index.count("labelled"), index.count("skipped"), index.count("failed")) == (2, 1, 0)
    assert sorted(index.done_ids()) == [1, 2, 3] and sorted(index.done_ids(retry_skipped=True)) == [1, 2]
    assert index.per_file() == [2, 1]  # image 2 from the earlier shard, image 1 from its labelled retry
    res = write_formats(tmp_path, index, ["coco_rle"], FormatOptionsCfg(), {}, 10)
    assert (res["images"], res["annotations"]) == (2, 3)
    index.restrict_to(np.array([1, 3]))
    assert sorted(r["image_id"] for r in index.rows(columns=["image_id"])) == [1, 3]


def test_coco_is_split_past_max_images_with_unique_ids(tmp_path):
    rng = np.random.default_rng(0)
    rows = []
    for i in range(1, 12):
        m = rng.random((H, W)) < 0.2
        rows.append(image_row(i, f"d/{i:02d}.png", "labelled", width=W, height=H, annotations=_records({"a": m, "b": ~m})))
    _write_shard(tmp_path / "shards" / "r" / "0.parquet", rows[:6])
    _write_shard(tmp_path / "shards" / "r" / "1.parquet", rows[6:])
    index = ShardIndex.scan(tmp_path)
    files = _write(tmp_path, index, ["coco_rle", "label_studio"], max_images=4)
    assert [Path(f).name for f in files["coco_rle"]] == [f"annotations-0000{i}-of-00003.json" for i in range(3)]
    assert [Path(f).name for f in files["label_studio"]] == [f"label_studio_tasks-0000{i}-of-00003.json" for i in range(3)]
    apis = [COCO(f) for f in files["coco_rle"]]
    assert [len(a.imgs) for a in apis] == [4, 4, 3]
    assert sorted(i for a in apis for i in a.imgs) == list(range(1, 12))
    ann_ids = [i for a in apis for i in a.anns]
    assert sorted(ann_ids) == list(range(1, 23))
    for a in apis:  # every annotation is in the file of its image
        assert all(ann["image_id"] in a.imgs for ann in a.anns.values())
    assert sum(len(json.loads(Path(f).read_text())) for f in files["label_studio"]) == 11
    assert [Path(f).name for f in _write(tmp_path / "small", index, ["coco_rle"], max_images=11)["coco_rle"]] == [
        "annotations.json"]


# -- the annotate pipeline's output.formats ---------------------------------------------------------------
def test_annotate_output_formats_config_and_real_generator_output(tmp_path):
    """output.formats parses and validates; a row from the real worker (random weights, grid mode, no Ray) goes
    through a shard into every format, and each file reads back to the COCO RLE masks."""
    from PIL import Image
    from scipy.ndimage import binary_fill_holes  # 4-connected background = the 8-connected outlines traced

    from edgesam.data.synthetic import make_scene
    from edgesam.config import load_config
    from pipelines.annotate_config import AnnotateConfig
    from pipelines.annotate_worker import AnnotateWorker

    overrides = ["model.img_size=256", "model.threads=1", "everything.mode=grid", "everything.points_per_side=4",
                 "everything.stability_score_thresh=0.0", "output.formats=[coco_rle,coco_polygons,yolo,label_studio]",
                 "output.export.label_studio.kind=polygon"]
    cfg = load_config(AnnotateConfig, "annotate", overrides)
    assert cfg.output.formats == ["coco_rle", "coco_polygons", "yolo", "label_studio"]
    assert load_config(AnnotateConfig, "annotate", []).output.formats == ["coco_rle"]  # today's output by default
    for bad in ("output.formats=[]", "output.formats=[coco_rle,coco_rle]", "output.formats=[voc]"):
        with pytest.raises(ValueError):
            load_config(AnnotateConfig, "annotate", [bad])

    img = tmp_path / "in" / "scene.png"
    img.parent.mkdir()
    Image.fromarray(make_scene(np.random.default_rng(2), 96, 128)[0]).save(img)
    item = {"file_name": "scene.png", "image_id": 11}
    out_dir = tmp_path / "out"
    row = AnnotateWorker(cfg.model_dump(mode="json"), str(img.parent), str(out_dir)).label(item)
    assert row["status"] == "labelled" and row["annotations"], "the generator produced no mask to export"
    _write_shard(out_dir / "shards" / "run" / "0.parquet", [row])
    res = write_formats(out_dir, ShardIndex.scan(out_dir), cfg.output.formats, cfg.output.export, {}, 100)
    out = {k: v[0] for k, v in res["files"].items()}
    rle_api, poly_api = COCO(out["coco_rle"]), COCO(out["coco_polygons"])
    assert len(rle_api.anns) == len(row["annotations"])
    for ann_id, ann in poly_api.anns.items():
        ref = rle_api.annToMask(rle_api.anns[ann_id]).astype(bool)
        got = poly_api.annToMask(ann).astype(bool)
        # polygons only fill holes (random-weight masks have large ones, so the IoU itself says little here)
        np.testing.assert_array_equal(got, binary_fill_holes(ref), err_msg=str(ann_id))
    regions = json.loads(Path(out["label_studio"]).read_text())[0]["predictions"][0]["result"]
    assert regions and all(r["type"] == "polygonlabels" for r in regions)
    lines = read_yolo_seg(Path(out["yolo"]) / "labels" / "scene.txt", 128, 96)
    assert len(lines) == len(regions)  # the same polygon pieces in both formats
