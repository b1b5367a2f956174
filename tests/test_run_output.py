"""Quiet pipeline output: Ray's driver logs go to the run's log file, the train bar shows loss and speed."""
from __future__ import annotations

import json
import logging
import warnings

import pytest

pytest.importorskip("ray")

from pipelines.run_output import RunOutput, local_run_dir  # noqa: E402
from pipelines.train_progress import TrainBar  # noqa: E402


def test_ray_logs_go_to_the_run_log_not_the_terminal(tmp_path, capfd):
    import ray.data

    out = RunOutput(tmp_path / "run", verbose=False, tag="t")
    out.quiet_ray()
    out.quiet_ray()  # idempotent: one file handler
    logging.getLogger("ray").warning("ray-noise-123")
    logging.getLogger("ray.data").info("data-noise-456")
    logging.getLogger("ray").error("ray-error-789")  # errors still reach the terminal
    for h in logging.getLogger("ray").handlers:
        h.flush()
    err = capfd.readouterr().err  # Ray's handler writes to the process's stderr
    text = out.driver_log.read_text()
    assert "ray-noise-123" in text and "data-noise-456" in text and "ray-error-789" in text
    assert "ray-noise-123" not in err and "data-noise-456" not in err
    consoles = [h for n in ("ray", "ray.data") for h in logging.getLogger(n).handlers
                if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)]
    assert consoles and all(h.level == logging.ERROR for h in consoles)  # errors still reach the terminal
    assert sum(getattr(h, "_edgesam", False) for h in logging.getLogger("ray").handlers) == 1
    ctx = ray.data.DataContext.get_current()
    assert ctx.enable_progress_bars is False and ctx.print_on_execution_start is False
    ctx.enable_progress_bars, ctx.print_on_execution_start = True, True  # leave the process as found


def test_summary_lists_outputs_logs_and_stage_times(tmp_path, capsys):
    out = RunOutput(tmp_path / "run", tag="distill")
    with out.stage("cache"):
        pass
    out.timings["encoder_kd"] = 12.0
    config = out.write_config("a: 1\n")
    assert config.read_text() == "a: 1\n" and "a: 1" not in capsys.readouterr().out  # not printed unless -v
    out.summary({"student": "/x/student.pt"})
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("[distill] finished in ") and len(lines) <= 8
    assert any("student" in ln and "/x/student.pt" in ln for ln in lines)
    assert any("driver_log" in ln and str(out.driver_log.resolve()) in ln for ln in lines)
    timings = json.loads((tmp_path / "run" / "timings.json").read_text())
    assert set(timings) == {"cache", "encoder_kd", "total"} and timings["encoder_kd"] == 12.0


def test_local_run_dir():
    assert str(local_run_dir("runs", "q")) == "runs/q"
    assert str(local_run_dir("s3://b/runs", "q")) == "runs/q"
    assert str(local_run_dir("runs", "q", "out/x")) == "out/x"


def test_train_bar_shows_loss_throughput_and_messages(capsys):
    bar = TrainBar(board=None, desc="encoder_kd", total=10)
    from edgesam.progress import progress_bar

    bar.bar = progress_bar(desc="encoder_kd", total=10, unit="step")
    bar._apply([{"t": 100.0, "step": 1, "loss": 2.0, "images": 4}, {"t": 102.0, "step": 2, "loss": 1.5, "images": 4},
                {"t": 102.5, "msg": "resumed encoder_kd at step 2/10"}, {"t": 103.0, "step": 2, "phase": "eval"}])
    assert bar.bar.n == 2 and bar._ips == pytest.approx(2.0)  # 4 images in 2 s
    post = bar.bar.postfix
    bar.bar.close()
    assert "img/s=2.00" in post and "phase=eval" in post
    assert "resumed encoder_kd at step 2/10" in capsys.readouterr().out  # a line of its own, above the bar


def test_dataset_filter_and_read_raise_no_deprecation(tmp_path):
    """The train dataset's read/filter calls use Ray 2.60's current API (no RayDeprecationWarning/UserWarning)."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import ray

    from pipelines.distill_data import BASE_COLUMNS, GT_COLUMNS, BlockShard, materialized_blocks, train_dataset

    cols = {c: [b"x", b"y", b"z"] if c in ("image_jpeg", "embedding") else [1, 2, 3] for c in BASE_COLUMNS + GT_COLUMNS}
    cols["image_id"] = ["a", "b", "c"]
    path = tmp_path / "part-0.parquet"
    pq.write_table(pa.table(cols), path)
    ray.init(address="local", num_cpus=1, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            ds = train_dataset({"train_files": [str(path)], "holdout_ids": ["b"]}, BASE_COLUMNS, 0.25, 256)
        ours = [w for w in caught if "pipelines" in w.filename or "ray_remote_args" in str(w.message)
                or "instead of 'fn'" in str(w.message)]
        assert not ours, [f"{w.filename}:{w.lineno}: {w.message}" for w in ours]
        assert sorted(r["image_id"] for r in ds.take_all()) == ["a", "c"]
        blocks = materialized_blocks(ds)  # small: handed to the workers by reference
        assert blocks is not None
        assert [t.column("image_id").to_pylist() for t in BlockShard(ray.get(blocks), 0, 1).iter_batches(1)] == [["a"], ["c"]]
        streamed = train_dataset({"train_files": [str(path)], "holdout_ids": ["b"]}, BASE_COLUMNS, 0.25, 0)
        assert materialized_blocks(streamed) is None
    finally:
        ray.shutdown()


def test_block_shards_are_disjoint_equal_and_drop_the_tail():
    import pyarrow as pa

    from pipelines.distill_data import BlockShard

    tables = [pa.table({"image_id": [f"i{k}" for k in range(7)]}), pa.table({"image_id": ["i7", "i8", "i9", "i10"]})]
    shards = [BlockShard(tables, r, 2) for r in (0, 1)]
    ids = [[i for t in s.iter_batches(2) for i in t.column("image_id").to_pylist()] for s in shards]
    assert [len(x) for x in ids] == [4, 4]  # 11 rows -> 5 per worker -> 2 full batches of 2
    assert not set(ids[0]) & set(ids[1])
    assert [t.num_rows for t in shards[0].iter_batches(2, drop_last=False)] == [2, 2, 1]
    assert ids[0] == [i for t in shards[0].iter_batches(2) for i in t.column("image_id").to_pylist()]  # same order
