"""The teacher-caching job on a real autoscaling Ray cluster (Ray's fake node provider, one machine).

The head has no "teacher" resource, the teacher actors request {"teacher": 1}, and the only node type
that has it starts at zero nodes: the job can only finish if the autoscaler adds teacher nodes, the actor
pool runs there, and the nodes go away again after the idle timeout. See tests/raycluster.py for how
the cluster is started and torn down without touching other Ray processes on the machine.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import pyarrow.parquet as pq
import pytest

from raycluster import NodeType, start_local_cluster

pytestmark = [pytest.mark.ray, pytest.mark.slow]

NUM_IMAGES = 8
IDLE_TIMEOUT_MIN = 0.1  # 6 s, as in Ray's fake-cluster example; pending actors are placed as soon as a node joins


def _sa1b_shards(root: Path) -> list[Path]:
    from edgesam.data.synthetic import write_sa1b_shards

    return write_sa1b_shards(root, num_images=NUM_IMAGES, images_per_shard=4)


def _wait(predicate: Callable[[], bool], timeout_s: float, what: str) -> float:
    t0 = time.monotonic()
    while not predicate():
        if time.monotonic() - t0 > timeout_s:
            raise TimeoutError(f"{what} did not happen within {timeout_s:.0f} s")
        time.sleep(0.5)
    return time.monotonic() - t0


@pytest.mark.timeout(300)
def test_cache_job_scales_teacher_nodes_up_from_zero_and_back(tmp_path: Path) -> None:
    import ray

    from edgesam.config import load_config
    from edgesam.data.readers import iter_sa1b_tar
    from edgesam.data.records import RawRecord
    from pipelines.cache_teacher import CacheConfig, run_cache

    shards = _sa1b_shards(tmp_path / "data")
    expected_ids = {r.image_id for s in shards for r in iter_sa1b_tar(s) if isinstance(r, RawRecord)}
    assert len(expected_ids) == NUM_IMAGES
    out = tmp_path / "cache"
    cfg = load_config(CacheConfig, None, [
        f"data.source={tmp_path / 'data'}", f"output.dir={out}", "preprocessing.img_size=256",
        "compute.min_actors=1", "compute.max_actors=2", "compute.num_cpus_per_actor=0.5",
        "compute.teacher_resources={teacher: 1}", "compute.batch_size=4"])
    assert cfg.compute.teacher_resources == {"teacher": 1.0}

    t0 = time.monotonic()
    with start_local_cluster(head={"CPU": 1},
                             node_types={"teacher_node": NodeType({"CPU": 1, "teacher": 1}, min_workers=0, max_workers=2)},
                             idle_timeout_minutes=IDLE_TIMEOUT_MIN) as cluster:
        t_up = time.monotonic() - t0
        # Before: the head alone, and nothing in the cluster offers "teacher".
        assert cluster.worker_nodes() == []
        assert "teacher" not in ray.cluster_resources()
        head_id = cluster.head_node()["NodeID"]

        t1 = time.monotonic()
        manifest = run_cache(cfg)
        t_job = time.monotonic() - t1

        # Worker nodes joined for the teacher pool, each with one "teacher" unit; the head has none.
        joined = [n for n in ray.nodes() if n["NodeID"] != head_id]  # alive or already scaled away
        assert 1 <= len(joined) <= 2, joined
        assert any(n["Alive"] for n in joined)
        assert all(n["Resources"].get("teacher") == 1.0 for n in joined if n["Alive"])
        assert "teacher" not in cluster.head_node()["Resources"]
        worker_ids = {n["NodeID"] for n in joined}

        # Every teacher actor (Ray Data's map worker for TeacherBatch) ran on one of those worker nodes.
        from ray._private.state import actors

        pool = [a for a in actors().values() if "MapWorker" in a["ActorClassName"]]
        assert pool, "no Ray Data map-worker actors recorded in the GCS actor table"
        assert {a["Address"]["NodeID"] for a in pool} <= worker_ids

        # The cache itself: complete, all images once, nothing skipped.
        assert manifest["status"] == "complete"
        assert manifest["counts"]["images"] == NUM_IMAGES
        assert manifest["counts"]["duplicates"] == 0 and manifest["counts"]["skipped"] == 0
        ids = [i for f in sorted(out.glob("*.parquet")) for i in pq.read_table(f, columns=["image_id"]).column("image_id").to_pylist()]
        assert sorted(ids) == sorted(expected_ids)

        # Scale-down: once the pool is gone the idle teacher nodes are terminated (back to zero).
        t_down = _wait(lambda: cluster.worker_nodes() == [], 60 + IDLE_TIMEOUT_MIN * 60, "scale-down to 0 workers")
        assert "teacher" not in ray.cluster_resources()
        pids_inside = cluster.pids()
    # Teardown left none of this cluster's processes (head, fake worker nodes, their workers) running.
    assert pids_inside and cluster.pids() == set()
    print(f"\n[autoscaling] head up {t_up:.1f} s; cache job incl. scale-up {t_job:.1f} s with {len(joined)} teacher "
          f"node(s); scale-down {t_down:.1f} s after the job (idle timeout {IDLE_TIMEOUT_MIN * 60:.0f} s)")


@pytest.mark.timeout(120)
def test_fixed_two_node_cluster_is_isolated_and_torn_down() -> None:
    """The helper's other mode (head + fixed workers, e.g. for 2-node Ray Train tests)."""
    import ray

    with start_local_cluster(head={"CPU": 1}, workers=[{"CPU": 1, "side": 2}]) as cluster:
        nodes = cluster.alive_nodes()
        assert len(nodes) == 2
        assert sorted(n["Resources"]["CPU"] for n in nodes) == [1.0, 1.0]
        assert ray.cluster_resources()["side"] == 2.0
        # Its address file lives in its own temp dir, not /tmp/ray (where `ray.init()` elsewhere looks).
        assert not str(cluster.temp_dir).startswith("/tmp/ray/")
        assert (cluster.temp_dir / "ray_current_cluster").read_text().strip() == cluster.address

        @ray.remote(num_cpus=1)
        def where() -> str:
            time.sleep(0.5)
            return ray.get_runtime_context().get_node_id()

        # Whole-CPU tasks, 1 CPU per node: 4 of them must use both nodes.
        assert {n for n in ray.get([where.remote() for _ in range(4)], timeout=60)} == {n["NodeID"] for n in nodes}
        assert cluster.pids()
    assert cluster.pids() == set()
    assert not cluster.temp_dir.exists()
