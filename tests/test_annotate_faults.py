"""Bulk annotation survives a killed actor: SIGKILL the Ray Data actor mid-run, the job still completes with
every image exactly once in the COCO output (pycocotools), because Ray Data restarts the actor and retries its
task (``max_restarts=-1``, ``max_task_retries=-1``), and an image's row reaches a shard only through the writer
(rows of a retried task are read once: :class:`edgesam.formats.shards.ShardIndex`)."""
from __future__ import annotations

import os
import signal
import threading
import time

import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO

from edgesam.data.synthetic import make_scene

pytestmark = [pytest.mark.ray, pytest.mark.slow]
S = 256
OVERRIDES = [f"model.img_size={S}", "model.rpn_config={width: 32, num_convs: 1, gn_groups: 8}",
             "everything.mode=rpn", "everything.num_outputs=3", "everything.rpn_score_thresh=0.0",
             "everything.max_proposals=6", "everything.stability_score_thresh=0.0",
             "compute.num_cpus=0.5", "compute.num_actors=1", "compute.max_tasks_in_flight_per_actor=1",
             "model.threads=1", "output.overlays=true", "output.shard_images=3"]


def _workers(cluster) -> dict[int, str]:
    """pid -> command line of this cluster's Ray Data map actors (their process title names the worker)."""
    from raycluster import _proc_cmdline

    return {pid: cmd for pid in cluster.pids() if "MapWorker" in (cmd := _proc_cmdline(pid))}


@pytest.mark.timeout(600)
def test_killed_annotation_actor_every_image_exactly_once(tmp_path):
    from raycluster import start_local_cluster

    from pipelines.annotate import main

    root, out = tmp_path / "images", tmp_path / "out"
    names = []
    for i in range(12):
        name = f"d{i % 3}/img{i:02d}.png"
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(make_scene(np.random.default_rng(i), 96 + 4 * i, 128)[0]).save(root / name)
        names.append(name)
    killed: list[int] = []
    done_at_kill: list[int] = []  # overlays drawn (one per labelled image) when the actor was killed

    with start_local_cluster(head={"CPU": 2}) as cluster:
        def killer() -> None:
            deadline = time.monotonic() + 400
            while time.monotonic() < deadline:
                done = list((out / "overlays").rglob("*.png")) if (out / "overlays").is_dir() else []
                workers = _workers(cluster)
                if len(done) >= 2 and workers:
                    pid = next(iter(workers))
                    done_at_kill.append(len(done))
                    os.kill(pid, signal.SIGKILL)  # a process of this test's own cluster, by pid
                    killed.append(pid)
                    return
                time.sleep(0.05)

        thread = threading.Thread(target=killer, daemon=True)
        thread.start()
        rc = main(["--input", str(root), "--output", str(out), *OVERRIDES])
        thread.join(5)
    assert killed, "the actor was never killed (the job ended first?)"
    assert done_at_kill[0] < len(names), "killed after every image was done: not mid-run"
    assert rc == 0
    coco = COCO(str(out / "annotations.json"))
    images = coco.loadImgs(coco.getImgIds())
    files = [im["file_name"] for im in images]
    assert sorted(files) == sorted(names)  # every image, each exactly once
    ids = [im["id"] for im in images]
    assert len(set(ids)) == len(ids) == len(names)
    ann_ids = coco.getAnnIds()
    assert len(ann_ids) > 0 and len(set(ann_ids)) == len(ann_ids) and all(coco.anns[a]["image_id"] in set(ids) for a in ann_ids)
    import pyarrow.parquet as pq

    rows = sum(pq.read_metadata(f).num_rows for f in (out / "shards").rglob("*.parquet"))
    assert rows >= len(names)  # a retried task may write its rows again; the outputs hold each image once
    print(f"\n[faults] annotate: actor pid {killed[0]} SIGKILLed after {done_at_kill[0]}/{len(names)} images; "
          f"{len(images)} images, {len(ann_ids)} annotations, each image once")
