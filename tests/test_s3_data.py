"""Every dataset format read from object storage (a real moto_server on 127.0.0.1), as from a local disk.

SA-1B tars, extracted SA-1B folders, plain image folders and COCO sets uploaded to a bucket are detected,
planned into bounded read units and read exactly as their local copies (same records, same skips); the
caching pipeline on a real local Ray cluster caches an image folder and a COCO set straight from the bucket.
"""
from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edgesam import storage
from edgesam.data.read_units import iter_unit, plan_units
from edgesam.data.readers import detect_format
from edgesam.data.records import RawRecord, Skipped
from edgesam.data.synthetic import make_scene, write_coco_set, write_sa1b_folder, write_sa1b_shards
from tests.s3server import make_bucket, s3_server

SIZES = (48, 80)  # small images: the point is where they come from


@pytest.fixture(scope="module")
def s3(tmp_path_factory) -> str:
    """Endpoint URL of a moto S3 server for this module (AWS_* variables point at it meanwhile)."""
    pytest.importorskip("moto")
    with s3_server(tmp_path_factory.mktemp("moto")) as endpoint:
        yield endpoint


def _jpeg(seed: int, h: int, w: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(make_scene(np.random.default_rng(seed), h, w)[0]).save(buf, "JPEG")
    return buf.getvalue()


def _image_folder(root: Path) -> Path:
    """5 images in subfolders (one PNG, one upper-case extension), a broken image, a hidden file, a text file."""
    files = {"a.jpg": _jpeg(0, 48, 64), "sub/b.png": None, "sub/deep/c.JPG": _jpeg(2, 40, 56),
             "d.jpeg": _jpeg(3, 64, 48), "e.jpg": _jpeg(4, 32, 32), "broken.jpg": b"not an image",
             ".hidden/x.jpg": _jpeg(5, 16, 16), "notes.txt": b"x"}
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        if data is None:
            Image.fromarray(make_scene(np.random.default_rng(1), 40, 40)[0]).save(root / name)
        else:
            (root / name).write_bytes(data)
    return root


def _coco_set(root: Path) -> tuple[Path, dict]:
    """write_coco_set + planted bad records: a missing image, an undecodable and a crowd annotation."""
    _, js, _ = write_coco_set(root, 5, seed=6, size_range=SIZES)
    doc = json.loads(js.read_text())
    first = doc["annotations"][0]
    doc["annotations"].append({**first, "id": 900, "segmentation": [[1, 1, 5, 5]]})  # 2 points: bad
    doc["annotations"].append({**first, "id": 901, "iscrowd": 1})  # left out silently
    doc["images"].append({"id": 99, "file_name": "gone.jpg", "height": 10, "width": 10})
    js.write_text(json.dumps(doc))
    return js, doc


def _read(src: str, per_unit: int) -> tuple[dict, list[tuple[str, str]], list[dict]]:
    """-> ({image_id: (bytes, annotations, w, h)}, [(source relative to src, reason)], units)."""
    units = plan_units(src, images_per_unit=per_unit)
    recs, skips = {}, []
    base = src.partition("?")[0].rstrip("/") + "/"
    for unit in units:
        for it in iter_unit(json.loads(json.dumps(unit))):  # units travel as JSON, as in the pipeline
            if isinstance(it, RawRecord):
                assert it.image_id not in recs, it.image_id
                assert it.source.startswith(base), (it.source, base)
                recs[it.image_id] = (it.image_bytes, it.annotations, it.width, it.height)
            else:
                assert isinstance(it, Skipped) and it.source.startswith(base), it
                skips.append((it.source[len(base):], it.reason))
    return recs, sorted(skips), units


@pytest.mark.timeout(120)
def test_sa1b_tars_stream_from_s3(s3, tmp_path):
    """SA-1B tars in a bucket: detected, listed and streamed by the read units exactly as local tars are."""
    bucket = make_bucket("edgesam-data")
    tars = write_sa1b_shards(tmp_path / "sa1b", num_images=6, images_per_shard=3, seed=4)
    for t in tars:
        storage.upload(t, f"{bucket}/sa1b/{Path(t).name}")
    storage.write_bytes(f"{bucket}/sa1b/README.txt", b"not a shard")
    assert detect_format(f"{bucket}/sa1b") == detect_format(f"{bucket}/sa1b/{Path(tars[0]).name}") == "sa1b-tar"
    remote, skips, units = _read(f"{bucket}/sa1b", 64)
    local, _, _ = _read(str(tmp_path / "sa1b"), 64)
    assert [u["source"] for u in units] == [f"{bucket}/sa1b/{Path(t).name}" for t in tars]
    assert len(remote) == 6 and remote == local and skips == []
    with pytest.raises(ValueError, match="cannot tell the dataset format"):
        detect_format(f"{bucket}/sa1b/README.txt")
    with pytest.raises(FileNotFoundError):
        detect_format(f"{bucket}/nothing-here")


@pytest.mark.timeout(120)
def test_folders_and_coco_sets_read_from_s3_as_locally(s3, tmp_path):
    """Image folder, extracted SA-1B (both layouts) and COCO set (its prefix, or its instances JSON): the
    bucket copy gives the same format, the same bounded units and the same records and skips."""
    bucket = make_bucket("edgesam-folders")
    coco_js, coco_doc = _coco_set(tmp_path / "coco")
    sets = {
        "images": _image_folder(tmp_path / "images"),
        "flat": write_sa1b_folder(tmp_path / "flat", 5, seed=2, size_range=SIZES),
        "edgesam": write_sa1b_folder(tmp_path / "edgesam", 4, seed=3, size_range=SIZES, layout="edgesam"),
        "coco": coco_js.parent.parent,
    }
    (sets["flat"] / "sa_0.json").unlink()  # an image without its JSON
    (sets["flat"] / "sa_1.json").write_text("{not json")
    for name, root in sets.items():
        storage.upload(root, f"{bucket}/{name}")
    expect = {"images": ("images", 6, 3), "flat": ("sa1b-folder", 3, 3), "edgesam": ("sa1b-folder", 4, 2),
              "coco": ("coco", 5, 3)}  # format, records, units of 2 images
    for name, (fmt, n_recs, n_units) in expect.items():
        remote_src = f"{bucket}/{name}"
        assert detect_format(remote_src) == detect_format(sets[name]) == fmt, name
        remote, remote_skips, units = _read(remote_src, 2)
        local, local_skips, local_units = _read(str(sets[name]), 2)
        assert len(units) == len(local_units) == n_units, (name, units)
        assert len(remote) == n_recs and remote == local, name
        assert remote_skips == local_skips, name
    # what the skips are: ids and reasons are those of local reading (asserted equal above)
    assert sorted(_read(f"{bucket}/images", 2)[0]) == ["a", "broken", "d", "e", "sub__b", "sub__deep__c"]
    assert [s[0] for s in _read(f"{bucket}/flat", 2)[1]] == ["sa_0.jpg", "sa_1.json"]
    coco_recs, coco_skips, _ = _read(f"{bucket}/coco", 2)
    assert coco_skips == [("annotations/instances.json#ann900", coco_skips[0][1]), ("images/gone.jpg", "image file missing")]
    assert coco_skips[0][1].startswith("bad annotation")
    assert sorted(coco_recs) == sorted(Path(im["file_name"]).stem for im in coco_doc["images"][:5])
    # one instances JSON in the bucket: its images are found under the prefix above annotations/
    js = f"{bucket}/coco/annotations/instances.json"
    assert detect_format(js) == "coco"
    assert _read(f"{bucket}/coco", 64)[0] == coco_recs == {
        it.image_id: (it.image_bytes, it.annotations, it.width, it.height)
        for u in plan_units(js) for it in iter_unit(u) if isinstance(it, RawRecord)}


@pytest.fixture(scope="module")
def ray_s3(s3):
    """A local Ray cluster started after the S3 variables are set (its workers inherit them)."""
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield s3
    ray.shutdown()


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.timeout(300)
def test_cache_pipeline_reads_image_folder_and_coco_set_from_s3(ray_s3, tmp_path):
    """``data.source=s3://...`` for an image folder and a COCO set: every good image cached once, in read
    tasks of ``data.images_per_read_task`` images, the bad records listed in the manifest."""
    import pyarrow.parquet as pq

    from edgesam.config import load_config
    from edgesam.data.cache import shard_files
    from pipelines.cache_teacher import CacheConfig, run_cache

    bucket = make_bucket(f"edgesam-cache-src-{os.getpid()}")
    storage.upload(_image_folder(tmp_path / "images"), f"{bucket}/images")
    js, doc = _coco_set(tmp_path / "coco")
    storage.upload(tmp_path / "coco", f"{bucket}/coco")

    def cache(source: str, out: Path) -> tuple[dict, list[str]]:
        cfg = load_config(CacheConfig, None, [
            f"data.source={source}", f"output.dir={out}", "preprocessing.img_size=128", "preprocessing.num_prompts=2",
            "output.rows_per_file=4", "compute.batch_size=4", "compute.num_cpus_per_actor=0.25",
            "data.images_per_read_task=2"])
        manifest = run_cache(cfg)
        ids = [i for f in shard_files(out) for i in pq.read_table(f, columns=["image_id"]).column("image_id").to_pylist()]
        return manifest, ids

    manifest, ids = cache(f"{bucket}/images", tmp_path / "cache-images")
    assert manifest["status"] == "complete" and manifest["data"]["format"] == "images"
    assert manifest["data"]["num_read_units"] == 3  # 6 images, 2 per read task
    assert sorted(ids) == ["a", "d", "e", "sub__b", "sub__deep__c"]
    assert [(s["source"], "not an image" in s["reason"]) for s in manifest["skipped"]] == [(f"{bucket}/images/broken.jpg", True)]

    manifest, ids = cache(f"{bucket}/coco/annotations/instances.json", tmp_path / "cache-coco")
    assert manifest["status"] == "complete" and manifest["data"]["format"] == "coco"
    assert sorted(ids) == sorted(Path(im["file_name"]).stem for im in doc["images"] if im["id"] != 99)
    assert manifest["counts"]["images"] == 5 and manifest["data"]["num_read_units"] == 3
    assert sorted(s["source"] for s in manifest["skipped"]) == [
        f"{bucket}/coco/annotations/instances.json#ann900", f"{bucket}/coco/images/gone.jpg"]
    # the cached GT: every good annotation of the set, decoded from the bucket's JSON
    table = pa_rows(tmp_path / "cache-coco")
    good = sum(1 for a in doc["annotations"] if not a.get("iscrowd") and a["id"] != 900)
    assert sum(len(r["gt_rles"]) for r in table) == good


def pa_rows(cache_dir: Path) -> list[dict]:
    import pyarrow.parquet as pq

    from edgesam.data.cache import shard_files

    return [r for f in shard_files(cache_dir) for r in pq.read_table(f).to_pylist()]
