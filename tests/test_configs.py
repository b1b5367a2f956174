"""Every YAML in configs/ loads into its typed config, and the synthetic-GT recipe says what it trains on."""
from __future__ import annotations

from pathlib import Path

import pytest

from edgesam.config import load_config
from edgesam.inference.everything import EverythingConfig
from edgesam.teacher_train.loop import TeacherTrainConfig
from pipelines.annotate_config import AnnotateConfig
from pipelines.cache_teacher import CacheConfig
from pipelines.distill_config import DistillConfig
from serve.config import ServeAppConfig

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
MODELS = {"quickstart": DistillConfig, "sa1b-1pct": DistillConfig, "synthetic-gt": DistillConfig,
          "sa1b-1pct-cache": CacheConfig, "annotate": AnnotateConfig, "everything": EverythingConfig,
          "serve": ServeAppConfig, "synthetic-teacher": TeacherTrainConfig, "synthetic-kd": DistillConfig}


def test_every_config_file_is_covered():
    assert {p.stem for p in CONFIGS.glob("*.yaml")} == set(MODELS)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_config_loads(name):
    cfg = load_config(MODELS[name], name)
    assert isinstance(cfg, MODELS[name])


def test_synthetic_gt_trains_step2_on_gt_and_overrides_work():
    cfg = load_config(DistillConfig, "synthetic-gt", ["step2.mask_target=teacher+gt", "step2.gt_weight=0.5"])
    assert cfg.step2.mask_target == "teacher+gt" and cfg.step2.gt_weight == 0.5
    assert load_config(DistillConfig, "synthetic-gt").step2.mask_target == "gt"
    assert load_config(DistillConfig, "quickstart").step2.mask_target == "teacher"  # the paper's recipe by default
    with pytest.raises(Exception, match="mask_target"):
        load_config(DistillConfig, "synthetic-gt", ["step2.mask_target=labels"])


def test_sa1b_recipe_takes_its_cache_section_from_the_cache_config():
    from pipelines.cache_teacher import CacheConfig as _Cache

    distill = load_config(DistillConfig, "sa1b-1pct")
    cache = load_config(_Cache, "sa1b-1pct-cache")
    assert distill.cache.model_dump() == cache.model_dump()
    assert distill.cache.teacher.name == "vit_h" and distill.cache.preprocessing.img_size == 1024
    # an override still reaches the included section
    over = load_config(DistillConfig, "sa1b-1pct", ["cache.output.dir=s3://b/c"])
    assert over.cache.output.dir == "s3://b/c"


def test_include_merges_sections_and_refuses_cycles(tmp_path):
    from edgesam.config import read_config_file

    (tmp_path / "base.yaml").write_text("a: {x: 1, y: 2}\nb: 3\n")
    (tmp_path / "top.yaml").write_text("include: {sec: base.yaml, .: base.yaml}\nsec: {a: {y: 9}}\n")
    got = read_config_file(tmp_path / "top.yaml")
    assert got == {"a": {"x": 1, "y": 2}, "b": 3, "sec": {"a": {"x": 1, "y": 9}, "b": 3}}
    (tmp_path / "c1.yaml").write_text("include: {.: c2.yaml}\n")
    (tmp_path / "c2.yaml").write_text("include: {.: c1.yaml}\n")
    with pytest.raises(ValueError, match="include cycle"):
        read_config_file(tmp_path / "c1.yaml")


def test_removed_upsample_mode_key_is_refused_with_the_reason():
    with pytest.raises(Exception, match="upsample_mode was removed"):
        load_config(DistillConfig, "quickstart", ["student.upsample_mode=bilinear"])
