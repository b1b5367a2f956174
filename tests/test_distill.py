"""Distillation on Ray Train: a killed worker and two nodes. The main job killed, resubmitted and rerun end to
end is tests/test_s3.py::test_main_job_on_s3_killed_resubmitted_and_rerun (the same driver, storage on s3://)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

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
