"""Annotation formats, each read back: Label Studio brush RLE (a hand-computed bit stream, round trips, Label
Studio's own converter where installed, malformed input), COCO polygons through pycocotools (``COO()``,
``annToMask``), YOLO segmentation text parsed and rasterised, Label Studio task JSON decoded to masks, and the
annotate pipeline's ``output.formats`` on real generator output (random weights, no Ray)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from pycocotools.coco import COCO

from edgesam.data.rle import decode_segmentation, encode_mask, mask_to_bbox
from edgesam.formats.brush_rle import BrushRLEError, decode_rle, encode_rle, mask_to_rle, rle_to_mask
from edgesam.formats.coco_polygons import coco_with_polygons, mask_to_polygons
from edgesam.formats.export import FormatOptionsCfg, write_formats
from edgesam.formats.label_studio_tasks import LabelStudioTaskCfg, result_to_mask, tasks_from_coco
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


def _coco(masks: dict[str, np.ndarray]) -> dict:
    images = [{"id": 7, "file_name": "sub/scene.png", "width": W, "height": H}]
    anns = [{"id": i + 1, "image_id": 7, "category_id": 1, "iscrowd": 0, "segmentation": encode_mask(m),
             "bbox": mask_to_bbox(m), "area": int(m.sum()), "score": 0.5 + 0.01 * i}
            for i, m in enumerate(masks.values())]
    return {"info": {}, "images": images, "annotations": anns,
            "categories": [{"id": 1, "name": "object", "supercategory": "object"}]}


def test_write_formats_reads_back_through_pycocotools_yolo_and_label_studio(tmp_path):
    cases = _masks()
    coco = _coco({k: v[0] for k, v in cases.items()})
    out = write_formats(tmp_path, coco, ["coco_rle", "coco_polygons", "yolo", "label_studio"], FormatOptionsCfg())
    assert set(out) == {"coco_rle", "coco_polygons", "yolo", "label_studio"}

    rle_api, poly_api = COCO(out["coco_rle"]), COCO(out["coco_polygons"])
    assert sorted(poly_api.getAnnIds()) == sorted(rle_api.getAnnIds())
    for (name, (mask, filled)), ann_id in zip(cases.items(), sorted(rle_api.getAnnIds())):
        rle_mask = rle_api.annToMask(rle_api.anns[ann_id]).astype(bool)
        poly_ann = poly_api.anns[ann_id]
        poly_mask = poly_api.annToMask(poly_ann).astype(bool)
        assert isinstance(poly_ann["segmentation"], list) and poly_ann["area"] == int(filled.sum())
        # a polygon cannot hold a hole: it equals the filled mask, and the IoU with the RLE mask is its area ratio
        np.testing.assert_array_equal(poly_mask, filled, err_msg=name)
        assert _iou(poly_mask, rle_mask) == pytest.approx(mask.sum() / filled.sum(), abs=1e-9)

    lines = read_yolo_seg(Path(out["yolo"]) / "labels" / "sub" / "scene.txt", W, H)
    expected_lines = sum(len(mask_to_lines(m)) for m, _ in cases.values())
    assert len(lines) == expected_lines and {c for c, _ in lines} == {0}
    union = decode_segmentation([p for _, p in lines], H, W)
    np.testing.assert_array_equal(union, np.logical_or.reduce([f for _, f in cases.values()]))
    assert "0: object" in (Path(out["yolo"]) / "data.yaml").read_text()

    tasks = json.loads(Path(out["label_studio"]).read_text())
    assert len(tasks) == 1 and tasks[0]["data"]["image"] == "/data/local-files/?d=sub/scene.png"
    results = tasks[0]["predictions"][0]["result"]
    assert [r["type"] for r in results] == ["brushlabels"] * len(cases)
    for r, (name, (mask, _)) in zip(results, cases.items()):
        assert r["value"]["brushlabels"] == ["object"] and r["value"]["format"] == "rle"
        np.testing.assert_array_equal(result_to_mask(r), mask, err_msg=name)


def test_label_studio_polygon_tasks_decode_to_the_filled_masks():
    cases = _masks()
    cfg = LabelStudioTaskCfg(kind="polygon", image_prefix="s3://bucket/", from_name="poly", label="thing")
    (task,) = tasks_from_coco(_coco({k: v[0] for k, v in cases.items()}), cfg)
    assert task["data"]["image"] == "s3://bucket/sub/scene.png"
    regions = task["predictions"][0]["result"]
    assert all(r["type"] == "polygonlabels" and r["from_name"] == "poly" for r in regions)
    assert all(0 <= x <= 100 and 0 <= y <= 100 for r in regions for x, y in r["value"]["points"])
    union = np.logical_or.reduce([result_to_mask(r) for r in regions])
    np.testing.assert_array_equal(union, np.logical_or.reduce([f for _, f in cases.values()]))


def test_empty_masks_are_dropped_from_polygon_formats():
    coco = _coco({"empty": np.zeros((H, W), bool), "disk": _masks()["disk"][0]})
    poly, dropped = coco_with_polygons(coco)
    assert dropped == 1 and [a["id"] for a in poly["annotations"]] == [2]


# -- the annotate pipeline's output.formats ---------------------------------------------------------------
def test_annotate_output_formats_config_and_real_generator_output(tmp_path):
    """output.formats parses and validates; parts from the real worker (random weights, grid mode, no Ray) are
    assembled and written in every format, and each file reads back to the COCO RLE masks."""
    from PIL import Image
    from scipy.ndimage import binary_fill_holes  # 4-connected background = the 8-connected outlines traced

    from edgesam.data.synthetic import make_scene
    from edgesam.config import load_config
    from pipelines.annotate_config import AnnotateConfig
    from pipelines.annotate_model import model_identity
    from pipelines.annotate_parts import assemble
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
    item = {"path": str(img), "file_name": "scene.png", "image_id": 11}
    out_dir = tmp_path / "out"
    assert AnnotateWorker(cfg.model_dump(mode="json"), str(out_dir)).label(item)["status"] == "labelled"
    coco, _ = assemble([item], out_dir, model_identity(cfg))
    assert coco["annotations"], "the generator produced no mask to export"
    out = write_formats(out_dir, coco, cfg.output.formats, cfg.output.export)
    rle_api, poly_api = COCO(out["coco_rle"]), COCO(out["coco_polygons"])
    for ann_id, ann in poly_api.anns.items():
        ref = rle_api.annToMask(rle_api.anns[ann_id]).astype(bool)
        got = poly_api.annToMask(ann).astype(bool)
        # polygons only fill holes (random-weight masks have large ones, so the IoU itself says little here)
        np.testing.assert_array_equal(got, binary_fill_holes(ref), err_msg=str(ann_id))
    regions = json.loads(Path(out["label_studio"]).read_text())[0]["predictions"][0]["result"]
    assert regions and all(r["type"] == "polygonlabels" for r in regions)
    lines = read_yolo_seg(Path(out["yolo"]) / "labels" / "scene.txt", 128, 96)
    assert len(lines) == len(regions)  # the same polygon pieces in both formats
