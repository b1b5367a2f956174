"""Bulk annotation end to end on a real local Ray cluster: mixed formats, bad files, COCO validity, resume."""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO

from edgesam.data.rle import decode_rle, mask_to_bbox
from edgesam.data.synthetic import make_scene

REPO = Path(__file__).resolve().parent.parent
S = 256
OVERRIDES = [f"model.img_size={S}", "model.rpn_config={width: 32, num_convs: 1, gn_groups: 8}",
             "everything.mode=rpn", "everything.num_outputs=3", "everything.rpn_score_thresh=0.0",
             "everything.max_proposals=6", "everything.stability_score_thresh=0.0",
             "compute.num_cpus=0.25", "compute.num_actors=1", "model.threads=1",
             "input.max_pixels=20000000", "output.overlays=true",
             "output.formats=[coco_rle,sa1b]"]


def _scene(seed: int, h: int, w: int) -> np.ndarray:
    return make_scene(np.random.default_rng(seed), h, w)[0]


def _save(img: np.ndarray | Image.Image, path: Path, **kw) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    (img if isinstance(img, Image.Image) else Image.fromarray(img)).save(path, **kw)


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> tuple[Path, dict, dict]:
    """-> (root, good {file_name: (h, w)}, bad {file_name: reason fragment})."""
    root = tmp_path_factory.mktemp("images")
    good = {}
    for i, (name, (h, w)) in enumerate({"a/one.jpg": (120, 160), "a/b/two.png": (100, 140), "c/three.webp": (90, 130),
                                        "four.bmp": (110, 100), "c/five.tif": (80, 120), "c/six.TIFF": (64, 96)}.items()):
        _save(_scene(i, h, w), root / name)
        good[name] = (h, w)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees on display: stored 150x90 (w x h) shows as 90x150
    _save(_scene(10, 90, 150), root / "rotated/exif.jpg", exif=exif)
    good["rotated/exif.jpg"] = (150, 90)
    _save(_scene(11, 100, 100)[..., 0], root / "modes/gray.png")
    good["modes/gray.png"] = (100, 100)
    rgba = np.concatenate([_scene(12, 90, 110), np.full((90, 110, 1), 128, np.uint8)], axis=2)
    _save(rgba, root / "modes/rgba.png")
    good["modes/rgba.png"] = (90, 110)

    bad = {}
    (root / "bad").mkdir()
    (root / "bad/not_image.jpg").write_text("this is not a JPEG\n")
    bad["bad/not_image.jpg"] = "not an image"
    buf = io.BytesIO()
    Image.fromarray(_scene(13, 100, 100)).save(buf, format="PNG")
    (root / "bad/truncated.png").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    bad["bad/truncated.png"] = "truncated"
    _save(np.zeros((1, 1, 3), np.uint8), root / "bad/tiny.png")
    bad["bad/tiny.png"] = "too small"
    _save(Image.new("RGB", (6000, 4000), (90, 120, 200)), root / "bad/huge.png", compress_level=1)  # 24 MP > max_pixels 20 MP
    bad["bad/huge.png"] = "too large"
    (root / "notes.txt").write_text("not listed: other extension")
    return root, good, bad


@pytest.fixture(scope="module")
def ray_local():
    """A private local Ray cluster (tests/raycluster.py): never attaches to another Ray on the machine."""
    from raycluster import start_local_cluster

    with start_local_cluster(head={"CPU": 2}) as cluster:
        yield cluster


def _run(inp: Path, out: Path, extra: list[str] = ()) -> tuple[int, dict | None]:
    from pipelines.annotate import main
    from pipelines.annotate_run import SUMMARY_FILE

    rc = main(["--input", str(inp), "--output", str(out), *OVERRIDES, *extra])
    summary = out / SUMMARY_FILE
    return rc, (json.loads(summary.read_text()) if summary.is_file() and rc != 2 else None)


@pytest.mark.timeout(240)
def test_annotate_folder_tree_skips_bad_files_and_resumes(tree, ray_local, tmp_path, capsys):
    root, good, bad = tree
    out = tmp_path / "out"
    rc, summary = _run(root, out)
    assert rc == 0
    n = len(good) + len(bad)  # one bar: images done / total, with the masks per second
    err = capsys.readouterr().err
    assert "annotate: 100%" in err and f"{n}/{n}" in err and "masks/s=" in err, err[-2000:]
    assert summary["images_listed"] == len(good) + len(bad)
    assert summary["labelled"] == summary["labelled_this_run"] == len(good)
    assert summary["skipped"] == len(bad) and summary["failed"] == 0
    assert summary["processed_this_run"] == len(good) + len(bad) and summary["random_weights"] is True

    # COCO JSON: pycocotools loads it; every good image is there with its (EXIF-rotated) size
    coco = COCO(str(out / "annotations.json"))
    images = {im["file_name"]: im for im in coco.loadImgs(coco.getImgIds())}
    assert set(images) == set(good)
    for name, (h, w) in good.items():
        assert (images[name]["height"], images[name]["width"]) == (h, w), name
    assert coco.loadCats(coco.getCatIds()) == [{"id": 1, "name": "object", "supercategory": "object"}]
    ids = [im["id"] for im in images.values()]
    assert len(set(ids)) == len(ids) and all(isinstance(i, int) and 0 < i < 2**53 for i in ids)
    anns = coco.loadAnns(coco.getAnnIds())
    assert len(anns) == summary["annotations"] > 0
    assert sorted(a["id"] for a in anns) == list(range(1, len(anns) + 1))
    for a in anns:
        im = coco.imgs[a["image_id"]]
        assert isinstance(a["segmentation"]["counts"], str)
        assert a["segmentation"]["size"] == [im["height"], im["width"]]
        m = decode_rle(a["segmentation"])
        assert a["area"] == int(m.sum()) and a["bbox"] == mask_to_bbox(m)
        assert {"score", "stability_score", "iscrowd", "category_id"} <= set(a)
    res = coco.loadRes([{k: a[k] for k in ("image_id", "category_id", "segmentation", "score")} for a in anns])
    assert len(res.getAnnIds()) == len(anns)

    # bad files: listed with reasons, nothing else lost
    skipped = {s["file_name"]: s["reason"] for s in json.loads((out / "skipped.json").read_text())}
    assert set(skipped) == set(bad)
    for name, fragment in bad.items():
        assert fragment in skipped[name].lower(), (name, skipped[name])

    # optional outputs
    stem = Path("rotated/exif")
    sa1b = json.loads((out / "sa1b" / stem.with_suffix(".json")).read_text())
    assert sa1b["image"]["file_name"] == "rotated/exif.jpg" and (sa1b["image"]["height"], sa1b["image"]["width"]) == (150, 90)
    assert len(sa1b["annotations"]) == len(coco.getAnnIds(imgIds=[images["rotated/exif.jpg"]["id"]]))
    overlay = Image.open(out / "overlays" / stem.with_suffix(".png"))
    assert overlay.size == (90, 150)

    # the shards: Parquet with the documented schema, one row per listed file
    import pyarrow.parquet as pq

    from edgesam.formats.shards import SHARD_SCHEMA, ShardIndex

    shards = sorted((out / "shards").rglob("*.parquet"))
    assert shards and all(pq.read_schema(f).equals(SHARD_SCHEMA) for f in shards)
    assert sum(pq.read_metadata(f).num_rows for f in shards) == len(good) + len(bad)
    assert summary["warmup"]["actors"] == 1 and summary["warmup"]["actor_warmup_seconds"] > 0
    assert summary["warmup"]["first_image_seconds"] > 0 and summary["steady_seconds_per_image"] > 0
    assert 0 <= summary["overhead_seconds_per_image"] < summary["seconds_per_image"]

    # rerun: everything resumes, no shard is rewritten or added, the COCO JSON content is the same
    mtimes = {p: p.stat().st_mtime_ns for p in shards}
    before = json.loads((out / "annotations.json").read_text())
    rc, again = _run(root, out)
    assert rc == 0
    assert again["processed_this_run"] == 0 and again["resumed"] == len(good) + len(bad)
    assert again["labelled"] == len(good) and again["skipped"] == len(bad)
    assert {p: p.stat().st_mtime_ns for p in sorted((out / "shards").rglob("*.parquet"))} == mtimes
    after = json.loads((out / "annotations.json").read_text())
    assert after["images"] == before["images"] and after["annotations"] == before["annotations"]

    # resume reads what the shards hold (the listing/resume logic, without another Ray run): rows of a shard
    # that is lost are pending again, and only those; retry_skipped also retries the skipped files
    from pipelines.annotate_run import list_images, pending

    listing = list_images(root, [".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff"])
    lost = set(pq.read_table(shards[0], columns=["file_name"])["file_name"].to_pylist())
    shards[0].rename(shards[0].with_suffix(".moved"))
    todo, resumed = pending(listing, ShardIndex.scan(out), retry_skipped=False)
    assert set(todo["file_name"].to_pylist()) == lost and resumed == len(good) + len(bad) - len(lost)
    shards[0].with_suffix(".moved").rename(shards[0])
    todo, _ = pending(listing, ShardIndex.scan(out), retry_skipped=True)
    assert set(todo["file_name"].to_pylist()) == set(bad)

    # a larger run's outputs are split (here past 4 images), each part written by a Ray task: every image once,
    # annotation ids unique and consecutive across the files
    rc, split = _run(root, out, ["output.coco_max_images=4", "output.formats=[coco_rle,sa1b]"])
    assert rc == 0 and split["convert_parts"] == 3 and split["processed_this_run"] == 0
    names = [f"annotations-{i:05d}-of-00003.json" for i in range(3)]
    assert [Path(f).name for f in split["coco_json"]] == names
    docs = [json.loads((out / n).read_text()) for n in names]
    assert [len(d["images"]) for d in docs] == [4, 4, 1]
    assert sorted(im["file_name"] for d in docs for im in d["images"]) == sorted(good)
    ids = [a["id"] for d in docs for a in d["annotations"]]
    assert sorted(ids) == list(range(1, len(anns) + 1))
    for d in docs:
        assert {a["image_id"] for a in d["annotations"]} <= {im["id"] for im in d["images"]}

    # other everything-mode settings on the same output folder are refused, not mixed
    rc, _ = _run(root, out, ["everything.max_proposals=7"])
    assert rc == 2


def test_cli_errors_are_clear(tmp_path, capsys):
    from pipelines.annotate import main

    assert main(["--input", str(tmp_path / "missing"), "--output", str(tmp_path / "o")]) == 2
    assert "not a directory" in capsys.readouterr().err
    assert main(["--input", str(tmp_path), "--output", str(tmp_path / "o"), "everything.mode=boxes"]) == 2
    assert "bad configuration" in capsys.readouterr().err
    onnx_dir = tmp_path / "onnx"
    onnx_dir.mkdir()
    assert main(["--input", str(tmp_path), "--output", str(tmp_path / "o2"), f"model.onnx_dir={onnx_dir}"]) == 2
    assert "lacks encoder.onnx, decoder.onnx, rpn.onnx" in capsys.readouterr().err


def test_script_entry_point_runs():
    r = subprocess.run([sys.executable, "pipelines/annotate.py", "--help"], cwd=REPO, capture_output=True, text=True,
                       timeout=120, env={**os.environ, "PYTHONPATH": ""})
    assert r.returncode == 0 and "--input" in r.stdout and "ray job submit" in r.stdout


def test_worker_onnx_and_checkpoint_branches(tmp_path):
    """The actor's model branches without Ray: ONNX folder (encoder/decoder via make_backends + rpn.onnx) and a
    student checkpoint; a checkpoint without an RPN is refused for RPN mode before any actor starts."""
    import torch

    from edgesam.export.onnx_export import export_all
    from edgesam.models import EdgeSAM, save_student
    from edgesam.export.rpn_onnx import export_rpn_onnx
    from edgesam.models.rpn import build_rpn
    from edgesam.config import load_config
    from pipelines.annotate_config import AnnotateConfig
    from pipelines.annotate_model import preflight
    from pipelines.annotate_worker import AnnotateWorker

    img_path = tmp_path / "in" / "scene.png"
    _save(_scene(5, 90, 120), img_path)
    item = {"file_name": "scene.png", "image_id": 7}
    inp = str(tmp_path / "in")
    torch.manual_seed(0)
    model = EdgeSAM(S).eval()
    model.rpn = build_rpn(model.image_encoder.feature_channels, width=32, gn_groups=8).eval()
    onnx_dir = tmp_path / "onnx"
    export_all(model, onnx_dir)
    export_rpn_onnx(model, onnx_dir / "rpn.onnx")
    cfg = load_config(AnnotateConfig, "annotate", [*OVERRIDES, f"model.onnx_dir={onnx_dir}"])
    preflight(cfg)
    worker = AnnotateWorker(cfg.model_dump(mode="json"), inp, str(tmp_path / "out_onnx"))
    assert worker.gen.decoder.name.startswith("onnxruntime") and worker.gen.rpn.name.startswith("onnxruntime")
    row = worker.label(item)
    assert row["status"] == "labelled" and row["width"] == 120 and row["height"] == 90
    assert worker.gen.stats["decoder_calls"] == 1 + 1  # + the warm-up scene

    # a checkpoint with an RPN (meta["rpn_config"] rebuilds it) runs RPN mode
    with_rpn = save_student(model, tmp_path / "with_rpn.pt", meta={"rpn_config": {"width": 32, "gn_groups": 8}})
    cfg = load_config(AnnotateConfig, "annotate", [*OVERRIDES, f"model.checkpoint={with_rpn}"])
    preflight(cfg)
    worker = AnnotateWorker(cfg.model_dump(mode="json"), inp, str(tmp_path / "out_rpn_ckpt"))
    b = worker.label(item)
    assert b["status"] == "labelled" and worker.gen.stats["decoder_calls"] == 1 + 1  # + the warm-up scene
    # the same checkpoint through ONNX Runtime (exported once into the cache): the same proposals and masks
    cfg = load_config(AnnotateConfig, "annotate", [*OVERRIDES, f"model.checkpoint={with_rpn}",
                                                   "model.backend=onnxruntime", f"model.export_cache_dir={tmp_path / 'cache'}"])
    ort_worker = AnnotateWorker(cfg.model_dump(mode="json"), inp, str(tmp_path / "out_rpn_ort"))
    assert ort_worker.gen.decoder.name.startswith("onnxruntime") and ort_worker.gen.rpn.name.startswith("onnxruntime")
    a = ort_worker.label(item)
    assert a["status"] == "labelled"
    np.testing.assert_allclose(ort_worker.gen.last_proposals, worker.gen.last_proposals, atol=0.5)
    assert len(a["annotations"]) == len(b["annotations"])
    # model.int8: the INT8 backbone of rpn.onnx and prompt decoder, the same proposals within quantisation error
    cfg = load_config(AnnotateConfig, "annotate", [*OVERRIDES, f"model.onnx_dir={onnx_dir}", "model.int8=true"])
    i8 = AnnotateWorker(cfg.model_dump(mode="json"), inp, str(tmp_path / "out_int8"))
    assert i8.gen.decoder.name.endswith("-int8") and i8.gen.rpn.name.endswith("-int8")
    assert i8.label(item)["status"] == "labelled"
    with pytest.raises(ValueError, match="model.int8 runs in ONNX Runtime"):
        AnnotateWorker(load_config(AnnotateConfig, "annotate", [*OVERRIDES, f"model.checkpoint={with_rpn}",
                                                                "model.backend=torch", "model.int8=true"]
                                   ).model_dump(mode="json"), inp, str(tmp_path / "out_bad8"))
    with pytest.raises(ValueError, match="backend=torch"):
        AnnotateWorker(load_config(AnnotateConfig, "annotate", [*OVERRIDES, f"model.onnx_dir={onnx_dir}",
                                                                "model.backend=torch"]).model_dump(mode="json"),
                       inp, str(tmp_path / "out_bad"))

    plain = EdgeSAM(S).eval()
    ckpt = save_student(plain, tmp_path / "plain.pt", meta={})
    cfg = load_config(AnnotateConfig, "annotate", [*OVERRIDES, f"model.checkpoint={ckpt}"])
    with pytest.raises(ValueError, match="has no RPN"):
        preflight(cfg)
    cfg = load_config(AnnotateConfig, "annotate", [*OVERRIDES, f"model.checkpoint={ckpt}", "everything.mode=grid",
                                                   "everything.points_per_side=3"])
    preflight(cfg)
    worker = AnnotateWorker(cfg.model_dump(mode="json"), inp, str(tmp_path / "out_ckpt"))
    before = worker.gen.stats["prompts"]  # the warm-up scene's
    assert worker.label(item)["status"] == "labelled"
    assert worker.gen.stats["prompts"] - before == 9
