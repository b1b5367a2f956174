"""Identity of distillation steps and caches: a resubmitted job skips a step only when nothing it was made
from changed, refuses (naming the fields) otherwise, and reruns it on an explicit restart."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from edgesam.config import load_config
from pipelines.distill_config import DistillConfig
from pipelines.distill_identity import (DONE, STARTED, StepMismatchError, check_step, diff_fields, mark_done,
                                        mark_started, restarts, step_identity)

REPO = Path(__file__).resolve().parent.parent
SPLIT = {"steps_per_epoch": {"encoder_kd": 5, "prompt_kd": 4, "rpn": 3}, "num_train": 20, "holdout_ids": ["a", "b"]}
CACHE_ID = {"teacher": {"name": "tiny-d2-w64-seed0", "img_size": 256, "checkpoint_sha256": None},
            "preprocessing": {"img_size": 256}}


def _identity(*overrides: str, split: dict = SPLIT, cache: dict = CACHE_ID) -> dict:
    cfg = load_config(DistillConfig, "quickstart", list(overrides))
    # through JSON, as a marker stores it
    return json.loads(json.dumps(step_identity(cfg, cfg.step1, split, None, cache)))


def _finished(run_dir: Path, identity: dict) -> None:
    (run_dir / "checkpoint_000001").mkdir(parents=True)
    (run_dir / "checkpoint_000001" / "state.pt").write_bytes(b"weights")
    mark_done(str(run_dir), identity, 10, str(run_dir / "checkpoint_000001"), {"loss": 0.1})


def test_finished_step_with_same_identity_is_skipped(tmp_path):
    cfg = load_config(DistillConfig, "quickstart")
    ident = _identity()
    _finished(tmp_path / "run", ident)
    done = check_step(cfg.step1, str(tmp_path / "run"), _identity())
    assert done["step"] == 10 and done["identity_sha256"] and done["checkpoint_sha256"]
    # operational knobs are not part of the identity
    assert _identity("train.checkpoint_every_steps=99", "train.data_task_cpus=0.5", "train.torch_threads=2") == ident


@pytest.mark.parametrize("override, field", [
    ("step1.lr=0.5", "step.lr"), ("step1.epochs=3", "schedule.total_steps"),
    ("train.scaling.num_workers=2", "schedule.num_workers"), ("train.seed=3", "schedule.seed"),
])
def test_changed_step_config_is_refused_naming_the_fields(tmp_path, override, field):
    cfg = load_config(DistillConfig, "quickstart")
    _finished(tmp_path / "run", _identity())
    with pytest.raises(StepMismatchError, match=rf"step1 \(encoder_kd\).*finished.*{field}: was .*requested.*restart=step1"):
        check_step(cfg.step1, str(tmp_path / "run"), _identity(override))


def test_changed_inputs_are_refused_naming_the_fields(tmp_path):
    cfg = load_config(DistillConfig, "quickstart")
    _finished(tmp_path / "run", _identity())
    other_cache = {**CACHE_ID, "teacher": {**CACHE_ID["teacher"], "name": "tiny-d2-w64-seed7"}}
    with pytest.raises(StepMismatchError, match=r"data\.cache\.teacher\.name: was 'tiny-d2-w64-seed0', requested 'tiny-d2-w64-seed7'"):
        check_step(cfg.step1, str(tmp_path / "run"), _identity(cache=other_cache))
    with pytest.raises(StepMismatchError, match=r"data\.num_train: was 20, requested 30"):
        check_step(cfg.step1, str(tmp_path / "run"), _identity(split={**SPLIT, "num_train": 30}))


def test_interrupted_step_never_resumes_under_another_schedule(tmp_path):
    cfg = load_config(DistillConfig, "quickstart")
    run = tmp_path / "run"
    mark_started(str(run), _identity())
    (run / "checkpoint_000000").mkdir()
    assert check_step(cfg.step1, str(run), _identity()) is None  # same identity: resume
    with pytest.raises(StepMismatchError, match=r"interrupted.*schedule\.total_steps: was 10, requested 20"):
        check_step(cfg.step1, str(run), _identity("step1.epochs=4"))
    # checkpoints from before identities were recorded are not resumed either
    (run / STARTED).unlink()
    with pytest.raises(StepMismatchError, match="not recorded"):
        check_step(cfg.step1, str(run), _identity())


def test_restart_moves_the_old_run_aside_and_cascades(tmp_path):
    cfg = load_config(DistillConfig, "quickstart", ["train.restart=step2"])
    assert [restarts(cfg, s) for s in (cfg.step1, cfg.step2, cfg.step3)] == [False, True, True]
    assert all(restarts(load_config(DistillConfig, "quickstart", ["train.restart=all"]), s) for s in cfg.steps())
    run = tmp_path / "run"
    _finished(run, _identity())
    assert check_step(cfg.step2, str(run), _identity("step1.lr=0.5"), restart=True) is None
    assert not run.exists()
    aside = list(tmp_path.glob("run.replaced-*"))
    assert len(aside) == 1 and (aside[0] / DONE).is_file()  # kept, not deleted
    # an interrupted restarted run with the requested identity resumes on resubmission
    mark_started(str(run), _identity("step1.lr=0.5"))
    (run / "checkpoint_000000").mkdir()
    assert check_step(cfg.step2, str(run), _identity("step1.lr=0.5"), restart=True) is None and run.exists()


def test_diff_fields_names_nested_paths():
    assert diff_fields({"a": {"b": 1, "c": 2}}, {"a": {"b": 1, "c": 3}, "d": 4}) == [
        "a.c: was 2, requested 3", "d: was None, requested 4"]


def test_backbone_and_init_exclusive():
    with pytest.raises(Exception, match="exclusive"):
        load_config(DistillConfig, "quickstart", ["student.init_checkpoint=a.pt", "student.backbone_checkpoint=b.pth"])
    assert load_config(DistillConfig, "sa1b-1pct").student.backbone_checkpoint.endswith("repvit_m1_distill_300.pth")


# --------------------------------------------------------------------------------------- end to end
def _run(args: list[str], timeout: float = 500) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "pipelines/distill.py", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "RAY_ADDRESS": "local"})


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.timeout(900)
def test_resubmission_refuses_another_teacher_or_step_config_and_restart_reruns(tmp_path):
    base = [f"cache.data.source={tmp_path / 'sample'}", "cache.data.sample_images=12", f"cache.output.dir={tmp_path / 'cache'}",
            "cache.output.rows_per_file=6", "cache.compute.num_cpus_per_actor=0.25", f"train.storage_path={tmp_path / 'runs'}",
            "train.name=ident", "step1.epochs=1", "step1.max_steps=2", "step2.enabled=false", "step3.enabled=false",
            "export.onnx=false", "eval.max_images=1", "train.scaling.resources_per_worker={CPU: 0.5}"]
    first = _run(base)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    step1 = tmp_path / "runs" / "ident-encoder_kd"
    done = json.loads((step1 / DONE).read_text())
    report = json.loads((tmp_path / "runs" / "ident" / "eval_report.json").read_text())
    assert report["num_images"] == 1 and report["device"] == "cpu"  # evaluated in a Ray task, not the driver

    teacher = _run(base + ["cache.teacher.tiny_seed=7"], timeout=200)
    assert teacher.returncode == 2, teacher.stdout[-2000:] + teacher.stderr[-2000:]
    assert "CacheMismatchError" not in teacher.stderr  # a clear message, not a traceback
    assert "teacher.name: cache has 'tiny-d2-w64-seed0', requested 'tiny-d2-w64-seed7'" in teacher.stderr

    changed = _run(base + ["step1.lr=0.003"], timeout=200)
    assert changed.returncode == 2, changed.stdout[-2000:] + changed.stderr[-2000:]
    assert "step1 (encoder_kd)" in changed.stderr and "step.lr: was 0.001, requested 0.003" in changed.stderr
    assert json.loads((step1 / DONE).read_text()) == done  # nothing touched

    again = _run(base + ["step1.lr=0.003", "--restart", "step1"])
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    redone = json.loads((step1 / DONE).read_text())
    assert redone["identity"]["step"]["lr"] == 0.003 and redone["identity_sha256"] != done["identity_sha256"]
    assert redone["checkpoint"] != done["checkpoint"] or redone["finished_at"] != done["finished_at"]
    assert len(list((tmp_path / "runs").glob("ident-encoder_kd.replaced-*"))) == 1
    for text in (teacher.stderr, changed.stderr):
        print(text.strip().splitlines()[-1])
