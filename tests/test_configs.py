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
