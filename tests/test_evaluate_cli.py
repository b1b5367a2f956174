"""pipelines/evaluate.py without Ray: the teacher decoder is the cache's teacher or nothing, and held-out
rows are the ones the run recorded. Models have random weights."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from edgesam.models import build_teacher
from edgesam.models.teacher import sha256_file
from pipelines.distill_loop import _decoder_from_teacher
from pipelines.evaluate import TeacherDecoderNeeded, select_ids, teacher_decoder_for


@pytest.fixture(scope="module")
def teacher_file(tmp_path_factory):
    t = build_teacher("tiny", img_size=256, seed=3)
    state = {f"image_encoder.{k}": v for k, v in t.image_encoder.state_dict().items()}
    state.update(t.prompt_decoder.state_dict())
    path = tmp_path_factory.mktemp("teacher") / "tiny_teacher.pth"
    torch.save(state, path)
    return path, t


def test_real_teacher_decoder_is_required_and_checked(teacher_file, tmp_path):
    path, teacher = teacher_file
    ident = {"name": "tiny-d2-w64-seed3", "img_size": 256, "checkpoint_sha256": sha256_file(path)}
    with pytest.raises(TeacherDecoderNeeded, match="--teacher-checkpoint.*--no-teacher"):
        teacher_decoder_for(ident, 256, recorded=None, given=None)  # an official checkpoint records no teacher
    with pytest.raises(TeacherDecoderNeeded, match="--teacher-checkpoint"):
        teacher_decoder_for(ident, 256, recorded=str(tmp_path / "gone.pth"), given=None)
    other = tmp_path / "other.pth"
    torch.save({"x": torch.zeros(1)}, other)
    with pytest.raises(TeacherDecoderNeeded, match="not the cache's teacher"):
        teacher_decoder_for(ident, 256, recorded=None, given=str(other))
    pd = teacher_decoder_for(ident, 256, recorded=None, given=str(path))
    ref = teacher.prompt_decoder.state_dict()
    assert all(torch.equal(v, ref[k]) for k, v in pd.state_dict().items())


def test_random_teacher_is_rebuilt_from_its_seed():
    pd = teacher_decoder_for({"name": "tiny-d2-w64-seed3", "img_size": 256, "checkpoint_sha256": None}, 256, None, None)
    ref = build_teacher("tiny", img_size=256, seed=3).prompt_decoder.state_dict()
    assert all(torch.equal(v, ref[k]) for k, v in pd.state_dict().items())


def test_recorded_holdout_ids_win_and_all_scores_everything():
    args = SimpleNamespace(all=False, holdout_fraction=None, eval_seed=None)
    assert select_ids([], {"holdout": {"ids": ["a", "b"], "fraction": 0.1, "seed": 0}}, args) == {"a", "b"}
    assert select_ids([], {}, SimpleNamespace(all=True, holdout_fraction=None, eval_seed=None)) is None


def test_fine_tuning_keeps_the_checkpoint_decoder_unless_told():
    assert _decoder_from_teacher("auto", None) is True  # from scratch: the teacher's (INIT_FROM_TEACHER)
    assert _decoder_from_teacher("auto", "edge_sam.pth") is False  # fine-tuning: the checkpoint's
    assert _decoder_from_teacher("teacher", "edge_sam.pth") is True
    assert _decoder_from_teacher("checkpoint", "edge_sam.pth") is False
