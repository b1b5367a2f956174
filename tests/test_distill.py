"""Distillation on Ray Train: the main job end to end, resume, a killed worker, and two nodes."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
pytestmark = [pytest.mark.ray, pytest.mark.slow]


def _overrides(tmp: Path, name: str, **extra) -> list[str]:
    base = {
        "cache.data.source": tmp / "sample", "cache.data.sample_images": 16, "cache.output.dir": tmp / "cache",
        "cache.output.rows_per_file": 8, "cache.compute.num_cpus_per_actor": 0.25, "train.storage_path": tmp / "runs",
        "train.name": name, "train.checkpoint_every_steps": 2, "train.seen_ids_dir": tmp / "seen",
        "step1.epochs": 2, "step1.batch_size": 2, "step2.batch_size": 2, "step2.max_prompts": 4, "step3.epochs": 1,
        "step3.batch_size": 2, "eval.max_images": 2, "eval.holdout_fraction": 0.15,
        "train.scaling.resources_per_worker": "{CPU: 0.5}",
    }
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]


def _checkpoints(run_dir: Path) -> list[Path]:
    return sorted(run_dir.glob("checkpoint_*"))


def _registered_checkpoints(run_dir: Path) -> int:
    """Checkpoints the Train controller has registered (its snapshot file), not merely written to disk:
    a worker killed between the two restarts from scratch."""
    try:
        snap = json.loads((run_dir / "checkpoint_manager_snapshot.json").read_text())
    except (OSError, ValueError):
        return 0
    return len(snap.get("checkpoint_results") or [])


def _state(done_marker: Path) -> dict:
    ckpt = Path(json.loads(done_marker.read_text())["checkpoint"])
    return torch.load(ckpt / "state.pt", map_location="cpu", weights_only=False)


def _history(done_marker: Path) -> list[dict]:
    return _state(done_marker)["history"]


def _run(cmd: list[str], timeout: float) -> subprocess.CompletedProcess:
    env = {**os.environ, "RAY_ADDRESS": "local"}
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.timeout(600)
def test_main_job_interrupted_resubmitted_and_complete(tmp_path):
    """Kill the driver mid step 1, resubmit the same command: same final step counts, losses fall, outputs load."""
    cmd = [sys.executable, "pipelines/distill.py", *_overrides(tmp_path, "e2e")]
    proc = subprocess.Popen(cmd, cwd=REPO, env={**os.environ, "RAY_ADDRESS": "local"}, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    step1_dir = tmp_path / "runs" / "e2e-encoder_kd"
    deadline = time.time() + 300
    # the second checkpoint directory means the first one is registered with Ray Train
    while time.time() < deadline and len(_checkpoints(step1_dir)) < 2 and proc.poll() is None:
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert _checkpoints(step1_dir), "no step-1 checkpoint before the deadline"
    assert not (step1_dir / "DONE.json").exists(), "step 1 finished before it could be interrupted"

    done = _run(cmd, timeout=500)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert _state(step1_dir / "DONE.json")["resumes"], "step 1 did not resume from its checkpoint"
    assert "RANDOM weights" in done.stdout

    spe = None
    for kind in ("encoder_kd", "prompt_kd", "rpn"):
        marker = tmp_path / "runs" / f"e2e-{kind}" / "DONE.json"
        hist = _history(marker)
        steps = [h["step"] for h in hist]
        assert steps == list(range(1, len(steps) + 1)), f"{kind}: steps not continuous {steps}"
        assert json.loads(marker.read_text())["step"] == len(steps)
        if kind == "encoder_kd":
            spe = len(steps) // 2  # 2 epochs
            assert len(steps) == 2 * spe and spe >= 3
        losses = np.array([h["loss"] for h in hist])
        if kind in ("encoder_kd", "prompt_kd"):
            k = max(2, len(losses) // 3)
            assert losses[-k:].mean() < losses[:k].mean(), f"{kind}: loss did not decrease: {losses}"

    out = tmp_path / "runs" / "e2e"
    report = json.loads((out / "eval_report.json").read_text())
    assert report["random_teacher"] is True and report["num_images"] >= 1
    m = report["metrics"]
    for key in ("student_vs_teacher/box", "student_vs_teacher/box+1", "student_vs_gt/point", "student_vs_gt/point+2"):
        assert 0.0 <= m[key] <= 100.0
    for f in ("training_curves.png", "mask_grid.png", "onnx/encoder.onnx", "onnx/decoder.onnx", "student.pt"):
        assert (out / f).stat().st_size > 0, f

    from edgesam.models import load_student

    model, extras = load_student(out / "student.pt", img_size=256)
    assert model.rpn is not None and extras["meta"]["random_teacher"] is True
    # resubmitting a finished job changes nothing
    again = _run(cmd, timeout=300)
    assert again.returncode == 0 and again.stdout.count("already finished") == 3


@pytest.mark.timeout(500)
def test_killed_worker_restarts_from_checkpoint(tmp_path):
    over = _overrides(tmp_path, "ft", **{"step2.enabled": False, "step3.enabled": False, "export.onnx": False,
                                          "step1.epochs": 3, "train.max_failures": 2})
    proc = subprocess.Popen([sys.executable, "pipelines/distill.py", *over], cwd=REPO,
                            env={**os.environ, "RAY_ADDRESS": "local"}, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    run_dir = tmp_path / "runs" / "ft-encoder_kd"
    pid_file = tmp_path / "seen" / "encoder_kd-rank0.pid"
    deadline = time.time() + 300
    while time.time() < deadline and _registered_checkpoints(run_dir) < 2 and proc.poll() is None:
        time.sleep(0.2)
    assert _registered_checkpoints(run_dir), "no registered checkpoint before the deadline"
    time.sleep(1)
    victim = int(pid_file.read_text().split()[0])
    os.kill(victim, signal.SIGKILL)
    out, _ = proc.communicate(timeout=400)
    assert proc.returncode == 0, out[-4000:]
    assert int(pid_file.read_text().split()[0]) != victim, "no new worker process was started"
    state = _state(run_dir / "DONE.json")
    assert state["resumes"] and state["resumes"][0] >= 2, out[-3000:]  # restarted from a checkpoint
    hist = state["history"]
    steps = [h["step"] for h in hist]
    assert steps == list(range(1, len(steps) + 1))
    spe = json.loads((run_dir / "DONE.json").read_text())["step"] // 3
    assert len(steps) == 3 * spe


@pytest.mark.timeout(500)
def test_two_nodes_train_on_disjoint_shards(tmp_path):
    from tests.raycluster import start_local_cluster

    # 2 logical CPUs per node: each worker takes 1, leaving room for the Ray Data feeding tasks and the
    # dataset split coordinator (a node whose CPUs are all taken by workers stalls the input pipeline).
    with start_local_cluster(head={"CPU": 2}, workers=[{"CPU": 2}]) as cluster:
        import ray

        assert len(cluster.alive_nodes()) == 2
        from pipelines.distill import main

        rc = main(["--config", "quickstart", *_overrides(tmp_path, "mn", **{
            "step2.enabled": False, "step3.enabled": False, "export.onnx": False, "step1.epochs": 1,
            "train.scaling.num_workers": 2, "train.scaling.placement_strategy": "STRICT_SPREAD",
            "cache.data.sample_images": 20, "train.scaling.resources_per_worker": "{CPU: 1}",
            "train.materialize_max_mib": 0})])  # Ray Data's streaming split, the large-cache path
        assert rc == 0
        seen = tmp_path / "seen"
        ids = [set((seen / f"encoder_kd-rank{r}.txt").read_text().split()) for r in (0, 1)]
        assert ids[0] and ids[1] and not (ids[0] & ids[1]), "workers trained on overlapping shards"
        nodes = {(seen / f"encoder_kd-rank{r}.pid").read_text().split()[1] for r in (0, 1)}
        assert len(nodes) == 2 and nodes <= {n["NodeID"] for n in ray.nodes()}, "workers did not run on two nodes"
        from edgesam.models import load_student

        model, _ = load_student(tmp_path / "runs" / "mn" / "student.pt", img_size=256)
        assert sum(p.numel() for p in model.image_encoder.parameters()) == 5_517_552
