"""Dataset readers on real local files with planted bad records (tars, folders, COCO sets, detection).

The same readers on object storage: tests/test_s3_data.py. Image decoding and RLE: tests/test_images_rle.py.
"""
from __future__ import annotations

import io
import json
import shutil
import tarfile
from pathlib import Path

import cv2
import numpy as np
import pytest

from edgesam.data import synthetic as S
from edgesam.data.images import ImageDecodeError, decode_image
from edgesam.data.readers import (FORMATS, detect_format, iter_any, iter_coco, iter_image_folder, iter_sa1b_folder,
                                  iter_sa1b_tar, iter_source, list_sources)
from edgesam.data.records import RawRecord, Skipped
from edgesam.data.rle import decode_rle, mask_to_bbox
from tests.imaging import png_bytes

SIZE_RANGE = (64, 112)


def split(items):
    items = list(items)
    recs = [i for i in items if isinstance(i, RawRecord)]
    skips = [i for i in items if isinstance(i, Skipped)]
    assert len(recs) + len(skips) == len(items)
    return recs, skips


def add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> list[Path]:
    return S.write_sa1b_shards(tmp_path_factory.mktemp("shards"), 6, 3, seed=11, size_range=SIZE_RANGE)


# ---------------------------------------------------------------------------------------------------
# SA-1B tars
def test_tar_round_trip(shards):
    assert len(shards) == 2
    recs, skips = split(r for s in shards for r in iter_sa1b_tar(s))
    assert skips == [] and [r.image_id for r in recs] == [f"sa_{k}" for k in range(6)]
    for k, r in enumerate(recs):
        jpg, doc, masks = S.sa1b_record(11, k, SIZE_RANGE)
        assert r.image_bytes == jpg and r.annotations == doc["annotations"]
        assert (r.width, r.height) == (doc["image"]["width"], doc["image"]["height"])
        assert r.source == f"{shards[k // 3]}::sa_{k}.jpg"
        assert decode_image(r.image_bytes, r.source).shape == (r.height, r.width, 3)
        for ann, m in zip(r.annotations, masks):
            assert np.array_equal(decode_rle(ann["segmentation"]), m)


def _good_pair(k: int) -> tuple[bytes, bytes]:
    jpg, doc, _ = S.sa1b_record(5, k, SIZE_RANGE)
    return jpg, json.dumps(doc).encode()


def test_tar_with_planted_bad_records(tmp_path):
    path = tmp_path / "sa_000099.tar"
    jpg0, js0 = _good_pair(0)
    jpg1, js1 = _good_pair(1)
    jpg2, js2 = _good_pair(2)
    degen = json.loads(js2)
    good_ann = degen["annotations"][0]
    degen["annotations"] = [good_ann,
                            {**good_ann, "id": 901, "bbox": [3, 4, 0, 5]},
                            {**good_ann, "id": 902, "bbox": [3, 4, 5, -2]},
                            {**good_ann, "id": 903, "bbox": [float("nan"), 4, 5, 5]},
                            {**good_ann, "id": 904, "bbox": [1, 2, 3]}]
    text_doc = {"image": {"image_id": 7, "width": 50, "height": 40, "file_name": "sa_txt.jpg"},
                "annotations": [good_ann]}
    with tarfile.open(path, "w") as tar:
        dir_info = tarfile.TarInfo("shard")
        dir_info.type = tarfile.DIRTYPE
        tar.addfile(dir_info)
        add_member(tar, "shard/sa_0.json", js0)  # JSON before its image, under a subfolder
        add_member(tar, "shard/sa_0.jpg", jpg0)
        add_member(tar, "sa_txt.jpg", b"this is a text file, not a JPEG\n")
        add_member(tar, "sa_nojson.jpg", jpg1)
        add_member(tar, "sa_1.jpg", jpg1)
        add_member(tar, "README.txt", b"ignored")
        add_member(tar, "sa_badjson.jpg", jpg1)
        add_member(tar, "sa_badjson.json", b"{this is not json")
        add_member(tar, "sa_txt.json", json.dumps(text_doc).encode())
        add_member(tar, "sa_degen.jpg", jpg2)
        add_member(tar, "sa_degen.json", json.dumps(degen).encode())
        add_member(tar, "sa_orphan.json", js1)
        add_member(tar, "sa_1.json", js1)  # far from its image
    recs, skips = split(iter_sa1b_tar(path))
    assert sorted(r.image_id for r in recs) == ["sa_0", "sa_1", "sa_degen", "sa_txt"]
    by_id = {r.image_id: r for r in recs}
    assert by_id["sa_0"].image_bytes == jpg0 and by_id["sa_0"].source == f"{path}::shard/sa_0.jpg"
    assert by_id["sa_1"].annotations == json.loads(js1)["annotations"]
    assert by_id["sa_degen"].annotations == [good_ann]
    reasons = {s.source.replace(f"{path}::", ""): s.reason for s in skips}
    assert len(skips) == 7 and len(reasons) == 7
    assert reasons["sa_nojson.jpg"] == "missing annotation JSON"
    assert reasons["sa_badjson.json"].startswith("bad JSON: ")
    assert reasons["sa_orphan.json"] == "annotation JSON without an image"
    for ident in (901, 902, 903, 904):
        assert reasons[f"sa_degen.json#ann{ident}"].startswith("bad annotation: ")
    assert "degenerate bbox" in reasons["sa_degen.json#ann901"]
    # the text file comes through as a record; decoding it fails with its source in the message
    txt = by_id["sa_txt"]
    assert (txt.width, txt.height) == (50, 40)
    with pytest.raises(ImageDecodeError, match=r"sa_000099\.tar::sa_txt\.jpg"):
        decode_image(txt.image_bytes, txt.source)
    for r in recs:
        if r.image_id != "sa_txt":
            decode_image(r.image_bytes, r.source)


def _member_spans(path: Path) -> dict[str, tuple[int, int]]:
    with tarfile.open(path) as tar:
        return {m.name: (m.offset, m.offset_data + m.size) for m in tar.getmembers()}


@pytest.mark.parametrize("where", ["half", "header", "inside_header", "before_end_marker"])
def test_truncated_tar_yields_pairs_before_the_cut(tmp_path, where):
    [full] = S.write_sa1b_shards(tmp_path / "full", 6, 6, seed=2, size_range=SIZE_RANGE)
    data = full.read_bytes()
    spans = _member_spans(full)
    cut = {"half": len(data) // 2,
           "header": spans["sa_3.jpg"][0],
           "inside_header": spans["sa_3.jpg"][0] + 100,
           "before_end_marker": spans["sa_5.json"][1] + 1}[where]
    path = tmp_path / "sa_000000.tar"
    path.write_bytes(data[:cut])
    complete = [k for k in range(6) if spans[f"sa_{k}.json"][1] <= cut and spans[f"sa_{k}.jpg"][1] <= cut]
    half_pairs = [k for k in range(6) if spans[f"sa_{k}.jpg"][1] <= cut < spans[f"sa_{k}.json"][1]]
    recs, skips = split(iter_sa1b_tar(path))
    assert [r.image_id for r in recs] == [f"sa_{k}" for k in complete]
    assert len(complete) == 6 if where == "before_end_marker" else 1 <= len(complete) < 6
    if where in ("header", "inside_header"):
        assert complete == [0, 1, 2] and half_pairs == []
    for r in recs:
        assert r.image_bytes == S.sa1b_record(2, int(r.image_id[3:]), SIZE_RANGE)[0]
    tar_skips = [s for s in skips if s.source == str(path)]
    assert len(tar_skips) == 1 and "truncated or corrupt tar" in tar_skips[0].reason
    assert sorted(s.source for s in skips if s not in tar_skips) == [f"{path}::sa_{k}.jpg" for k in half_pairs]
    assert all(s.reason == "missing annotation JSON" for s in skips if s not in tar_skips)


def test_unreadable_tars_give_one_skip(tmp_path):
    for name, data in [("empty.tar", b""), ("garbage.tar", b"\x01" * 3000)]:
        p = tmp_path / name
        p.write_bytes(data)
        recs, skips = split(iter_sa1b_tar(p))
        assert recs == [] and len(skips) == 1 and skips[0].source == str(p)
    recs, skips = split(iter_sa1b_tar(tmp_path / "missing.tar"))
    assert recs == [] and len(skips) == 1


# ---------------------------------------------------------------------------------------------------
# extracted SA-1B folders
def test_folder_and_edgesam_layout_round_trip(shards, tmp_path):
    tar_recs = {r.image_id: r for s in shards for r in iter_sa1b_tar(s)}
    flat = S.write_sa1b_folder(tmp_path / "flat", 6, seed=11, size_range=SIZE_RANGE)
    (flat / "sub").mkdir()
    shutil.copy(flat / "sa_0.jpg", flat / "sub" / "lonely.jpg")  # no JSON
    (flat / "sub" / "broken.jpg").write_bytes((flat / "sa_1.jpg").read_bytes())
    (flat / "sub" / "broken.json").write_text("[1, 2,")
    recs, skips = split(iter_sa1b_folder(flat))
    assert sorted(r.image_id for r in recs) == sorted(tar_recs)
    for r in recs:
        t = tar_recs[r.image_id]
        assert (r.image_bytes, r.annotations, r.width, r.height) == (t.image_bytes, t.annotations, t.width, t.height)
        assert r.source == str(flat / f"{r.image_id}.jpg")
    assert sorted((Path(s.source).name, s.reason.split(":")[0]) for s in skips) == [
        ("broken.json", "bad JSON"), ("lonely.jpg", "missing annotation JSON")]

    edge = S.write_sa1b_folder(tmp_path / "edge", 6, seed=11, size_range=SIZE_RANGE, layout="edgesam", split="train")
    S.write_sa1b_folder(tmp_path / "edge_val", 2, seed=99, size_range=SIZE_RANGE, layout="edgesam", split="val")
    for sub in ("images/val", "annotations/val"):
        shutil.copytree(tmp_path / "edge_val" / sub, edge / sub)
    for k in range(2):  # same stems in two splits would collide: rename the val ones
        (edge / "images/val" / f"sa_{k}.jpg").rename(edge / "images/val" / f"sa_9{k}.jpg")
        (edge / "annotations/val" / f"sa_{k}.json").rename(edge / "annotations/val" / f"sa_9{k}.json")
    recs, skips = split(iter_sa1b_folder(edge))
    assert skips == [] and len(recs) == 8
    got = {r.image_id: r for r in recs}
    for k, t in tar_recs.items():
        assert got[k].image_bytes == t.image_bytes and got[k].annotations == t.annotations
    assert got["sa_90"].source == str(edge / "images" / "val" / "sa_90.jpg")
    assert detect_format(edge) == "sa1b-folder" and detect_format(flat) == "sa1b-folder"
    assert list_sources(edge) == [str(edge)]
    assert len(split(iter_any(edge))[0]) == 8


# ---------------------------------------------------------------------------------------------------
# COCO
def _dist_peak(mask: np.ndarray) -> float:
    padded = np.pad(mask.astype(np.uint8), 1)
    return cv2.distanceTransform(padded, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)[1:-1, 1:-1]


def test_coco_round_trip(tmp_path):
    images_dir, js, masks = S.write_coco_set(tmp_path / "coco", 3, seed=4)
    doc = json.loads(js.read_text())
    first = doc["annotations"][0]
    n_good = len(doc["annotations"])
    doc["annotations"].append({**first, "id": 500, "iscrowd": 1})  # crowd: left out silently
    doc["annotations"].append({**first, "id": 501, "segmentation": [[1, 1, 5, 5]]})  # 2 points: bad
    doc["annotations"].append({**first, "id": 502, "segmentation": {"size": [3, 3], "counts": "0"}})  # wrong size
    doc["images"].append({"id": 99, "file_name": "gone.jpg", "height": 10, "width": 10})
    js.write_text(json.dumps(doc))
    forms = {a["id"]: ("polygon" if isinstance(a["segmentation"], list)
                       else "rle" if isinstance(a["segmentation"]["counts"], list) else "crle")
             for a in doc["annotations"]}
    assert {forms[a["id"]] for a in doc["annotations"][:n_good]} == {"polygon", "rle", "crle"}

    recs, skips = split(iter_coco(images_dir, js))
    assert [r.image_id for r in recs] == [Path(im["file_name"]).stem for im in doc["images"][:3]]
    assert sorted(s.source for s in skips) == sorted([f"{js}#ann501", f"{js}#ann502", str(images_dir / "gone.jpg")])
    assert sum(len(r.annotations) for r in recs) == n_good
    for r, im, ms in zip(recs, doc["images"], masks):
        assert (r.width, r.height) == (im["width"], im["height"]) and r.image_bytes == (images_dir / im["file_name"]).read_bytes()
        assert len(r.annotations) == len(ms)
        for ann, m in zip(r.annotations, ms):
            assert set(ann) >= {"id", "bbox", "area", "segmentation", "point_coords"}
            assert isinstance(ann["segmentation"]["counts"], str) and ann["segmentation"]["size"] == [r.height, r.width]
            dec = decode_rle(ann["segmentation"])
            if forms[ann["id"]] == "polygon":
                assert (dec & m).sum() / (dec | m).sum() >= 0.95
            else:
                assert np.array_equal(dec, m)
            assert ann["area"] == int(dec.sum()) and ann["bbox"] == mask_to_bbox(m)
            (x, y), = ann["point_coords"]
            assert dec[int(y), int(x)]
            dist = _dist_peak(dec)
            assert dist[int(y), int(x)] == dist.max()
    json.dumps([r.annotations for r in recs])  # JSON-safe


def test_coco_broken_json_and_detection(tmp_path):
    root = tmp_path / "set"
    images_dir, js, _ = S.write_coco_set(root, 2, seed=1)
    assert detect_format(root) == "coco" and list_sources(root) == [str(root)]
    recs, skips = split(iter_any(root))
    assert len(recs) == 2 and skips == []
    assert len(split(iter_source(str(js), "coco"))[0]) == 2  # one instances file as the source
    assert detect_format(js) == "coco"
    # the usual COCO layout: annotations/instances_val2017.json + val2017/
    coco = tmp_path / "coco2017"
    (coco / "annotations").mkdir(parents=True)
    shutil.copytree(images_dir, coco / "val2017")
    shutil.copy(js, coco / "annotations" / "instances_val2017.json")
    assert detect_format(coco) == "coco"
    assert [r.image_id for r in split(iter_any(coco))[0]] == [r.image_id for r in recs]
    bad = tmp_path / "bad.json"
    bad.write_text('{"x": 1}')
    with pytest.raises(ValueError, match="cannot tell"):
        detect_format(bad)  # a JSON that is no COCO instances file
    bad.write_text('{"images": [')
    recs, skips = split(iter_coco(images_dir, bad))
    assert recs == [] and len(skips) == 1 and skips[0].source == str(bad)
    assert skips[0].reason.startswith("bad COCO JSON: ")
    recs, skips = split(iter_coco(images_dir, tmp_path / "nope.json"))
    assert recs == [] and len(skips) == 1
    bad.write_text('{"images": 3}')
    assert len(split(iter_coco(images_dir, bad))[1]) == 1


# ---------------------------------------------------------------------------------------------------
# plain image folders, detection
def test_image_folder_ids_and_detection(tmp_path, shards):
    root = tmp_path / "imgs"
    (root / "sub" / "deeper").mkdir(parents=True)
    img = png_bytes(np.zeros((16, 16, 3), np.uint8))
    files = {"a.jpg": img, "sub/a.jpg": img, "sub/b.PNG": img, "sub/deeper/c.JpEg": img, "notes.txt": b"x",
             "sub/d.json": b"{}", "x.webp": img}
    for name, data in files.items():
        (root / name).write_bytes(data)
    recs, skips = split(iter_image_folder(root))
    assert skips == []
    assert [r.image_id for r in recs] == ["a", "sub__a", "sub__b", "sub__deeper__c", "x"]
    assert all(r.annotations == [] and r.width is None for r in recs)
    assert recs[3].source == str(root / "sub" / "deeper" / "c.JpEg")
    assert detect_format(root) == "images" and list_sources(root) == [str(root)]
    assert [r.image_id for r in split(iter_any(root))[0]] == [r.image_id for r in recs]

    shard_dir = shards[0].parent
    assert detect_format(shard_dir) == "sa1b-tar" and detect_format(shards[0]) == "sa1b-tar"
    assert list_sources(shard_dir) == [str(s) for s in shards] and list_sources(shards[1]) == [str(shards[1])]
    assert [r.image_id for r in split(iter_any(shard_dir))[0]] == [f"sa_{k}" for k in range(6)]
    assert len(split(iter_any(shard_dir, limit_sources=1))[0]) == 3
    assert [r.image_id for r in split(iter_source(list_sources(shard_dir)[1], "sa1b-tar"))[0]] == ["sa_3", "sa_4", "sa_5"]
    assert set(FORMATS) == {"sa1b-tar", "sa1b-folder", "coco", "images"}
    with pytest.raises(FileNotFoundError):
        detect_format(tmp_path / "does-not-exist")
    with pytest.raises(ValueError):
        list(iter_source(str(root), "parquet"))


def test_damaged_bytes_never_raise(tmp_path):
    """Random byte damage: readers only yield records/skips, decode_image only raises ImageDecodeError."""
    [shard] = S.write_sa1b_shards(tmp_path / "s", 3, 3, seed=8, size_range=SIZE_RANGE)
    data = shard.read_bytes()
    rng = np.random.default_rng(0)
    seen_records = 0
    for i in range(60):
        b = bytearray(data)
        for _ in range(int(rng.integers(1, 16))):
            b[int(rng.integers(len(b)))] = int(rng.integers(256))
        if i % 3 == 0:
            b = b[: int(rng.integers(1, len(b)))]
        path = tmp_path / f"d{i}.tar"
        path.write_bytes(bytes(b))
        for item in iter_sa1b_tar(path):
            assert isinstance(item, (RawRecord, Skipped))
            if isinstance(item, RawRecord):
                seen_records += 1
                json.dumps(item.annotations)
                try:
                    decode_image(item.image_bytes, item.source)
                except ImageDecodeError as exc:
                    assert item.source in str(exc)
    assert seen_records > 0
