"""Object storage against a real S3-compatible server (moto_server on 127.0.0.1).

The storage helpers on local paths and s3:// alike; the main job with its teacher cache and run storage on
s3:// (killed mid step 1, resubmitted, then resubmitted again); and an annotation run reading its images
from s3:// and writing its COCO JSON there. Datasets read from a bucket: tests/test_s3_data.py.
"""
from __future__ import annotations

import io
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from edgesam import storage
from tests.s3server import make_bucket, s3_server

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def s3(tmp_path_factory) -> str:
    """Endpoint URL of a moto S3 server for this module (AWS_* variables point at it meanwhile)."""
    pytest.importorskip("moto")
    with s3_server(tmp_path_factory.mktemp("moto")) as endpoint:
        yield endpoint


def _run(cmd: list[str], timeout: float) -> subprocess.CompletedProcess:
    env = {**os.environ, "RAY_ADDRESS": "local"}
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("where", ["local", "s3"])
def test_storage_helpers(where, s3, tmp_path):
    base = str(tmp_path / "root") if where == "local" else make_bucket(f"helpers-{os.getpid()}") + "/root"
    a = storage.join(base, "sub", "a.json")
    assert not storage.exists(a) and storage.listdir(base) == []
    storage.write_json(a, {"x": 1})
    storage.write_bytes(storage.join(base, "b.bin"), b"\x00\x01")
    storage.write_text(storage.join(base, "sub", "deep", "c.txt"), "hello")
    assert storage.read_json(a) == {"x": 1} and storage.is_file(a) and not storage.is_dir(a)
    assert storage.is_dir(storage.join(base, "sub")) and storage.size(storage.join(base, "b.bin")) == 2
    assert storage.listdir(base) == ["b.bin"]  # no temp files are left behind
    assert storage.listdir(base, recursive=True) == ["b.bin", "sub/a.json", "sub/deep/c.txt"]
    assert sorted(storage.iter_files(base)) == ["b.bin", "sub/a.json", "sub/deep/c.txt"]  # folder by folder
    assert list(storage.iter_files(storage.join(base, "missing"))) == []
    assert [storage.name(p) for p in storage.glob(storage.join(base, "sub"), "*.json")] == ["a.json"]
    with pytest.raises(FileNotFoundError):
        storage.read_bytes(storage.join(base, "missing"))
    storage.remove(storage.join(base, "b.bin"))
    storage.remove(storage.join(base, "b.bin"))  # missing_ok
    assert not storage.exists(storage.join(base, "b.bin"))

    t = torch.arange(6.0).view(2, 3)
    storage.torch_save({"t": t}, storage.join(base, "m.pt"))
    assert torch.equal(storage.torch_load(storage.join(base, "m.pt"), weights_only=True)["t"], t)
    import hashlib

    assert storage.sha256(a) == hashlib.sha256(json.dumps({"x": 1}, indent=2).encode()).hexdigest()

    with storage.staged_dir(storage.join(base, "staged")) as d:
        (d / "q").mkdir()
        (d / "q" / "f.txt").write_text("staged")
        rel = storage.relocate(d / "q" / "f.txt", d, storage.join(base, "staged"))
    assert storage.read_text(rel) == "staged"
    with storage.local_copy(storage.join(base, "staged")) as local:
        assert Path(local, "q", "f.txt").read_text() == "staged"
    fetched = storage.fetch(storage.join(base, "sub", "deep", "c.txt"), cache_dir=tmp_path / "fetch")
    assert Path(fetched).read_text() == "hello"
    storage.move(storage.join(base, "staged"), storage.join(base, "moved"))
    assert not storage.exists(storage.join(base, "staged"))
    assert storage.read_text(storage.join(base, "moved", "q", "f.txt")) == "staged"
    storage.rmtree(storage.join(base, "moved"))
    assert not storage.exists(storage.join(base, "moved"))
    if where == "s3":
        assert storage.to_uri(*storage.resolve(a)) == a


@pytest.mark.timeout(60)
def test_bad_uris_and_missing_buckets_fail_clearly(s3):
    with pytest.raises(ValueError, match="bucket"):
        storage.resolve("s3://")
    with pytest.raises(FileNotFoundError):
        storage.read_bytes(f"s3://no-such-bucket-{os.getpid()}/x.json")
    assert not storage.exists(f"s3://no-such-bucket-{os.getpid()}/x.json")


@pytest.mark.timeout(300)
def test_model_paths_on_s3(s3, tmp_path):
    """Checkpoints read straight from a bucket: the student (load_student, serving), a step checkpoint
    directory as ``init_checkpoint`` (read_state), and a tiny teacher checkpoint (with its sha256)."""
    from edgesam.models import EdgeSAM, build_teacher, load_student, save_student
    from edgesam.models.teacher import sha256_file
    from pipelines.distill_loop import STATE_FILE, read_state
    from serve.config import ModelSection
    from serve.model import load_backends

    bucket = make_bucket("edgesam-models")
    torch.manual_seed(0)
    model = EdgeSAM(256).eval()
    uri = save_student(model, f"{bucket}/m/student.pt", meta={"note": "random"})
    assert uri == f"{bucket}/m/student.pt" and storage.is_file(uri)
    loaded, extras = load_student(uri, img_size=256)
    assert extras["meta"]["note"] == "random"
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k

    storage.torch_save({"model": model.state_dict(), "rpn": None}, f"{bucket}/runs/x/checkpoint_0/{STATE_FILE}")
    state = read_state(f"{bucket}/runs/x/checkpoint_0")  # a Ray Train checkpoint directory in the bucket
    assert state["rpn"] is None and set(state["model"]) == set(model.state_dict())

    backends = load_backends(ModelSection(checkpoint=uri, backend="torch", img_size=256, device="cpu", threads=1))
    assert "student.pt" in backends.info.identity and backends.info.meta["note"] == "random"
    img = np.zeros((1, 3, 256, 256), np.float32)
    assert backends.encoder(img).shape[-2:] == (16, 16)

    teacher = build_teacher("tiny", img_size=256, seed=3)
    state = {f"image_encoder.{k}": v for k, v in teacher.image_encoder.state_dict().items()}
    state.update(teacher.prompt_decoder.state_dict())
    storage.torch_save(state, f"{bucket}/m/tiny_teacher.pt")
    again = build_teacher("tiny", f"{bucket}/m/tiny_teacher.pt", img_size=256, seed=99)
    assert again.checkpoint_sha256 == sha256_file(f"{bucket}/m/tiny_teacher.pt") == storage.sha256(f"{bucket}/m/tiny_teacher.pt")
    x = torch.zeros(1, 3, 256, 256)
    with torch.no_grad():
        assert torch.allclose(again.embed(x), teacher.embed(x))

    # `edgesam export --precision fp16` into the bucket: the FP16 copies land beside the fp32 graphs
    from edgesam.export.export_cli import main as export_main
    from edgesam.export.fp16 import PRECISION_KEY

    assert export_main(["--checkpoint", uri, "--img-size", "256", "--out", f"{bucket}/onnx", "--precision", "fp16",
                        "--no-verify"]) == 0
    names = {storage.name(f) for f in storage.glob(f"{bucket}/onnx", "*.onnx")}
    assert {"encoder.fp16.onnx", "decoder.fp16.onnx", "decoder_image.fp16.onnx", "decoder_prompt.fp16.onnx"} <= names
    import onnx

    local = storage.fetch(f"{bucket}/onnx")
    props = {p.key: p.value for p in onnx.load(str(Path(local) / "encoder.fp16.onnx")).metadata_props}
    assert props[PRECISION_KEY] == "fp16"


def _bucket_files(uri: str) -> list[str]:
    return storage.listdir(uri, recursive=True)


def _distill_overrides(bucket: str, tmp: Path, name: str, **extra) -> list[str]:
    over = {
        "cache.data.source": tmp / "sample", "cache.data.sample_images": 16, "cache.output.dir": f"{bucket}/cache",
        "cache.output.rows_per_file": 8, "cache.compute.num_cpus_per_actor": 0.25,
        "train.storage_path": f"{bucket}/runs", "train.name": name, "train.checkpoint_every_steps": 2,
        "step1.epochs": 2, "step1.batch_size": 2, "step2.batch_size": 2, "step2.max_prompts": 4, "step2.max_steps": 3,
        "step3.epochs": 1, "step3.batch_size": 2, "step3.max_steps": 3, "eval.max_images": 2,
        "train.scaling.resources_per_worker": "{CPU: 0.5}",
    }
    over.update(extra)
    return [f"{k}={v}" for k, v in over.items()]


def _start(cmd: list[str], log: Path) -> subprocess.Popen:
    return subprocess.Popen(cmd, cwd=REPO, env={**os.environ, "RAY_ADDRESS": "local"}, start_new_session=True,
                            stdout=open(log, "w"), stderr=subprocess.STDOUT)


def _kill_when(proc: subprocess.Popen, ready, log: Path, what: str, timeout: float = 400) -> None:
    """SIGKILL the driver's whole process group once ``ready()`` holds (fail if it never does)."""
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None and not ready():
        time.sleep(0.3)
    reached = ready()
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    time.sleep(2)  # a PUT whose body had fully arrived may still complete on the server
    assert reached, f"{what} never happened before the kill:\n" + log.read_text()[-3000:]


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_main_job_on_s3_killed_resubmitted_and_rerun(s3, tmp_path):
    """The main job's resume contract, with cache and run storage on s3://. The driver is SIGKILLed once while
    caching and once mid step 1; each resubmission continues (no image cached twice, no step trained twice, the
    step-1 losses fall across the kill), the job exits 0 with every output in the bucket, and a further
    resubmission recomputes nothing."""
    import pyarrow.parquet as pq

    from edgesam.data.synthetic import write_sa1b_shards

    bucket = make_bucket("edgesam-e2e")
    # 8 small tars (8 read tasks) and 2-row shards: shards land one by one, so the first kill hits mid-cache
    write_sa1b_shards(tmp_path / "sample", num_images=16, images_per_shard=2, seed=0)
    cmd = [sys.executable, "pipelines/distill.py", *_distill_overrides(bucket, tmp_path, "s3e2e", **{
        "cache.output.rows_per_file": 2, "cache.compute.batch_size": 2, "cache.compute.preprocess_batch_size": 2,
        "step2.max_steps": 20})]  # step 2 runs its one epoch (~7 steps): enough to see its loss fall

    def shards() -> list[str]:
        return [f for f in _bucket_files(f"{bucket}/cache") if re.fullmatch(r"part-[0-9a-f]+\.parquet", f)]

    _kill_when(_start(cmd, tmp_path / "a.log"), lambda: len(shards()) >= 1, tmp_path / "a.log", "a first shard")
    first = shards()
    done_before = sum(pq.read_metadata(f"{bucket}/cache/{f}").num_rows for f in first)
    assert done_before < 16, "caching finished before it could be interrupted"
    assert storage.read_json(f"{bucket}/cache/manifest.json")["status"] == "in_progress"

    step1 = f"{bucket}/runs/s3e2e-encoder_kd"

    def step1_checkpoints() -> set[str]:
        return {f.split("/")[0] for f in _bucket_files(step1) if f.startswith("checkpoint_") and f.endswith("state.pt")}

    # the second checkpoint means the first one is registered with Ray Train
    _kill_when(_start(cmd, tmp_path / "b.log"), lambda: len(step1_checkpoints()) >= 2, tmp_path / "b.log",
               "a second step-1 checkpoint")
    assert not storage.exists(f"{step1}/DONE.json"), "step 1 finished before it could be interrupted"
    manifest = storage.read_json(f"{bucket}/cache/manifest.json")
    assert manifest["status"] == "complete" and manifest["counts"]["images"] == 16
    assert manifest["counts"]["written_this_run"] == 16 - done_before, "the resumed cache recomputed cached images"
    assert set(first) <= set(shards()) and manifest["counts"]["duplicates"] == 0
    ids = [i for f in shards() for i in pq.read_table(f"{bucket}/cache/{f}", columns=["image_id"]).column("image_id").to_pylist()]
    assert len(ids) == len(set(ids)) == 16, "an image was cached twice"

    done = _run(cmd, timeout=600)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    assert "using complete teacher cache" in done.stdout and "RANDOM weights" in done.stdout
    files = _bucket_files(bucket)
    assert not [f for f in files if ".tmp" in f], files
    for f in ("runs/s3e2e/student.pt", "runs/s3e2e/eval_report.json", "runs/s3e2e/training_curves.png",
              "runs/s3e2e/mask_grid.png",
              "runs/s3e2e/onnx/encoder.onnx", "runs/s3e2e/onnx/decoder.onnx", "runs/s3e2e-encoder_kd/DONE.json",
              "runs/s3e2e-prompt_kd/DONE.json", "runs/s3e2e-rpn/DONE.json"):
        assert f in files and storage.size(f"{bucket}/{f}") > 0, f
    marker = storage.read_json(f"{step1}/DONE.json")
    assert marker["checkpoint"].startswith(f"{bucket}/runs/s3e2e-encoder_kd/checkpoint_")
    from pipelines.distill_loop import read_state

    assert read_state(marker["checkpoint"])["resumes"], "step 1 did not resume from its checkpoint in the bucket"
    for kind in ("encoder_kd", "prompt_kd", "rpn"):
        marker = storage.read_json(f"{bucket}/runs/s3e2e-{kind}/DONE.json")
        hist = read_state(marker["checkpoint"])["history"]
        steps = [h["step"] for h in hist]
        assert steps == list(range(1, marker["step"] + 1)), f"{kind}: steps repeated or lost: {steps}"
        if kind == "encoder_kd":
            assert len(steps) % 2 == 0 and len(steps) // 2 >= 3, steps  # 2 epochs of >= 3 steps
        if kind in ("encoder_kd", "prompt_kd"):
            losses = np.array([h["loss"] for h in hist])
            k = max(2, len(losses) // 3)
            assert losses[-k:].mean() < losses[:k].mean(), f"{kind}: loss did not decrease: {losses}"
    report = storage.read_json(f"{bucket}/runs/s3e2e/eval_report.json")
    assert report["outputs"]["student"] == f"{bucket}/runs/s3e2e/student.pt"
    assert report["random_teacher"] is True and report["num_images"] >= 1
    for key in ("student_vs_teacher/box", "student_vs_teacher/box+1", "student_vs_gt/point", "student_vs_gt/point+2"):
        assert 0.0 <= report["metrics"][key] <= 100.0, key

    from edgesam.models import load_student

    model, extras = load_student(f"{bucket}/runs/s3e2e/student.pt", img_size=256)  # straight from the bucket
    assert model.rpn is not None and extras["meta"]["random_teacher"] is True

    # Resubmitting the finished job recomputes nothing: no image cached, no step trained, no file rewritten.
    before = {f: storage.size(f"{bucket}/{f}") for f in files if f.startswith(("cache/", "runs/s3e2e-"))}
    again = _run(cmd, timeout=400)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert again.stdout.count("already finished") == 3 and "using complete teacher cache" in again.stdout
    after = {f: storage.size(f"{bucket}/{f}") for f in _bucket_files(bucket) if f.startswith(("cache/", "runs/s3e2e-"))}
    assert after == before, sorted(set(after) ^ set(before))


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.timeout(600)
def test_annotate_on_s3_driver_killed_then_resumed(s3, tmp_path):
    """Images in a bucket -> shards and COCO JSON in a bucket (checkpoint also read from the bucket). The driver
    is SIGKILLed once shards have landed; the rerun labels only the rest: every image labelled exactly once
    across the shards, each once in the COCO JSON, and a further rerun labels nothing."""
    import pyarrow.parquet as pq
    from pycocotools.coco import COCO

    from edgesam.data.synthetic import make_scene
    from edgesam.models import EdgeSAM, save_student
    from edgesam.models.rpn import build_rpn
    from PIL import Image

    bucket = make_bucket("edgesam-annotate")
    sizes = {f"d{i % 3}/img{i:02d}.{'jpg' if i % 2 else 'png'}": (96 + 8 * (i % 4), 128) for i in range(22)}
    sizes["three.jpg"] = (64, 64)
    for i, (name, (h, w)) in enumerate(sizes.items()):
        buf = io.BytesIO()
        Image.fromarray(make_scene(np.random.default_rng(i), h, w)[0]).save(buf, "JPEG" if name.endswith("jpg") else "PNG")
        storage.write_bytes(f"{bucket}/images/{name}", buf.getvalue())
    storage.write_bytes(f"{bucket}/images/bad.jpg", b"not an image")
    torch.manual_seed(0)
    model = EdgeSAM(256).eval()
    model.rpn = build_rpn(model.image_encoder.feature_channels, width=32, num_convs=1, gn_groups=8).eval()
    save_student(model, f"{bucket}/models/student.pt", meta={"random_teacher": True})

    over = ["model.img_size=256", f"model.checkpoint={bucket}/models/student.pt", "everything.mode=rpn",
            "everything.num_outputs=3", "everything.rpn_score_thresh=0.0", "everything.max_proposals=4",
            "everything.stability_score_thresh=0.0", "compute.num_cpus=0.25", "model.threads=1",
            "output.overlays=true", "output.formats=[coco_rle, yolo]", "output.shard_images=2"]
    cmd = [sys.executable, "pipelines/annotate.py", "--input", f"{bucket}/images", "--output", f"{bucket}/labels", *over]

    def shards() -> list[str]:
        return [f for f in _bucket_files(f"{bucket}/labels/shards") if f.endswith(".parquet")]

    def labelled_ids(files: list[str]) -> list[int]:
        ids = []
        for f in files:
            t = pq.read_table(f"{bucket}/labels/shards/{f}", columns=["image_id", "status"]).to_pylist()
            ids += [r["image_id"] for r in t if r["status"] != "failed"]
        return ids

    _kill_when(_start(cmd, tmp_path / "a.log"), lambda: len(shards()) >= 1, tmp_path / "a.log", "a first shard")
    before = labelled_ids(shards())
    n = len(sizes) + 1  # + bad.jpg
    assert 0 < len(before) < n, f"{len(before)} of {n} images done at the kill: not mid-run"
    assert not storage.exists(f"{bucket}/labels/summary.json")

    first = _run(cmd, timeout=300)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    summary = storage.read_json(f"{bucket}/labels/summary.json")
    assert summary["resumed"] == len(before) and summary["processed_this_run"] == n - len(before)
    ids = labelled_ids(shards())
    assert len(ids) == len(set(ids)) == n, "an image was labelled twice, or lost"
    files = storage.listdir(f"{bucket}/labels", recursive=True)
    assert {"annotations.json", "skipped.json", "summary.json", "run.json"} <= set(files), files
    assert sum(f.startswith("overlays/") for f in files) == len(sizes)
    assert {"yolo/data.yaml", "yolo/labels/d0/img00.txt", "yolo/labels/three.txt"} <= set(files)
    local = tmp_path / "annotations.json"
    local.write_bytes(storage.read_bytes(f"{bucket}/labels/annotations.json"))
    coco = COCO(str(local))
    assert sorted(img["file_name"] for img in coco.dataset["images"]) == sorted(sizes)  # each image once
    for img in coco.dataset["images"]:
        assert (img["height"], img["width"]) == sizes[img["file_name"]]
        for ann in coco.loadAnns(coco.getAnnIds(imgIds=[img["id"]])):
            assert coco.annToMask(ann).shape == sizes[img["file_name"]]
    skipped = storage.read_json(f"{bucket}/labels/skipped.json")
    assert [s["file_name"] for s in skipped] == ["bad.jpg"]
    assert summary["coco_json"] == [f"{bucket}/labels/annotations.json"] and summary["labelled"] == len(sizes)

    again = _run(cmd, timeout=200)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert storage.read_json(f"{bucket}/labels/summary.json")["processed_this_run"] == 0
