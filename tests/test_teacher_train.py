"""Teacher training (issue 14), tiny versions: the loss falls, the checkpoint round-trips through the registry."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from edgesam.models.teacher import SMALL_CONFIGS, build_teacher, build_teacher_prompt_decoder, small_sam_registry
from edgesam.teacher_train.losses import dice_per_map, focal_per_map, sam_loss
from edgesam.teacher_train.loop import (TeacherOptimCfg, TeacherTrainConfig, evaluate_teacher, focal_weight_at,
                                       save_checkpoint, train_step, train_teacher)
from edgesam.teacher_train.prompts import noisy_boxes, uniform_points
from edgesam.teacher_train.scenes import make_scene

NAME = "sam_micro_128"


def test_sam_loss_min_over_multimask_and_iou_target():
    gt = torch.zeros(1, 8, 8, dtype=torch.bool)
    gt[0, 2:6, 2:6] = True
    good = torch.where(gt, 10.0, -10.0)[:, None]
    logits = torch.cat([-good, good, -good, -good], dim=1)  # only token 1 is right
    iou = torch.tensor([[0.0, 1.0, 0.0, 0.0]])
    single, _ = sam_loss(logits, iou, gt, multimask=False)
    multi, parts = sam_loss(logits, iou, gt, multimask=True)
    bad = 20 * focal_per_map(-good, gt[:, None])[0, 0] + dice_per_map(-good, gt[:, None])[0, 0]
    # token 0 is wrong in both; with multimask the right token 1 is picked (its loss ~0) and added
    assert multi.item() == pytest.approx(single.item(), rel=1e-3)
    assert single.item() == pytest.approx(bad.item(), rel=1e-3)
    assert float(parts["iou_mse"]) == pytest.approx(0.0, abs=1e-6)  # token 0 IoU 0 predicted 0; token 1 IoU 1 predicted 1


def test_focal_weight_ramps_from_start_to_sam_ratio():
    ramp = TeacherOptimCfg(focal_start_weight=1.0, focal_weight=20.0, focal_ramp=(0.3, 0.6))
    assert [focal_weight_at(p, ramp) for p in (0.0, 0.3, 0.45, 0.6, 1.0)] == pytest.approx([1.0, 1.0, 10.5, 20.0, 20.0])
    assert focal_weight_at(0.0, TeacherOptimCfg(focal_weight=20.0)) == 20.0  # no ramp: SAM's weight throughout


def test_objects_that_vanish_in_the_loss_frame_are_not_trained_as_empty():
    teacher = build_teacher(NAME, None, 128, seed=0)
    gt = torch.zeros(2, 128, 128, dtype=torch.bool)
    gt[0, 40:80, 40:80] = True
    gt[1, 10, 10] = True  # one pixel: empty after area-downsampling to the 32 x 32 loss frame
    boxes = torch.tensor([[40.0, 40.0, 80.0, 80.0], [10.0, 10.0, 11.0, 11.0]])
    opt = TeacherOptimCfg(click_iters=0, loss_upsample=1)
    images, idx = torch.zeros(1, 3, 128, 128), torch.zeros(2, dtype=torch.long)
    _, both = train_step(teacher, images, idx, gt, boxes, "box", opt, torch.Generator().manual_seed(0),
                         torch.ones_like(gt))
    _, first = train_step(teacher, images, idx[:1], gt[:1], boxes[:1], "box", opt,
                          torch.Generator().manual_seed(0), torch.ones_like(gt[:1]))
    assert both["dice@0"] == pytest.approx(first["dice@0"], rel=1e-5)  # the vanished prompt was dropped


def test_prompts_stay_in_mask_and_frame():
    g = torch.Generator().manual_seed(0)
    m = torch.zeros(3, 32, 32, dtype=torch.bool)
    m[:, 10:14, 20:25] = True
    pts = uniform_points(m, g).long()
    assert m[torch.arange(3), pts[:, 1], pts[:, 0]].all()
    b = noisy_boxes(torch.tensor([[0.0, 0.0, 31.0, 31.0]] * 50), 32, g, noise=0.5, max_px=4)
    assert (b >= 0).all() and (b <= 32).all() and (b[:, 2:] >= b[:, :2]).all()
    assert (b - torch.tensor([0.0, 0.0, 31.0, 31.0])).abs().max() <= 4 + 1e-5


def test_scene_masks_and_boxes_agree():
    s = make_scene(1, 3, 128)
    assert s.image.shape == (3, 128, 128) and len(s.masks) == len(s.boxes) == len(s.orig_masks) > 0
    h, w = s.input_hw
    assert max(h, w) == 128 and not s.masks[:, h:, :].any() and not s.masks[:, :, w:].any()
    for m, (x0, y0, x1, y1) in zip(s.masks, s.boxes):
        ys, xs = np.nonzero(m.numpy())
        assert xs.min() >= x0 - 1.5 and xs.max() <= x1 + 0.5 and ys.min() >= y0 - 1.5 and ys.max() <= y1 + 0.5


@pytest.mark.slow  # ~5 s alone, ~50 s on the shared 2 cores
def test_a_few_steps_lower_the_loss(tmp_path):
    cfg = TeacherTrainConfig.model_validate({
        "name": NAME, "torch_threads": 1, "eval_every": 0, "log_every": 100, "output_dir": str(tmp_path),
        "data": {"holdout_images": 2},
        "optim": {"steps": 12, "batch_size": 1, "max_prompts": 2, "lr": 1e-3, "warmup_steps": 0, "point_prob": 0.0,
                  "click_iters": 1}})
    report = train_teacher(cfg, log=lambda m: None)
    losses = [h["loss"] for h in report["history"]]
    assert report["steps"] == 12 and np.mean(losses[-4:]) < 0.8 * np.mean(losses[:4])
    assert set(report["holdout"]) >= {"box", "point", "point+2"} and (tmp_path / "teacher.pth").is_file()
    # the held-out evaluation of the reloaded checkpoint equals the one in the report
    again = evaluate_teacher(build_teacher(NAME, tmp_path / "teacher.pth", 128), [make_scene(2, k, 128) for k in range(2)])
    assert again["box"] == pytest.approx(report["holdout"]["box"], abs=1e-6)


def test_checkpoint_round_trips_through_the_registry(tmp_path):
    trained = build_teacher(NAME, None, 128, seed=3)
    with torch.no_grad():  # move the decoder off its init so a silently skipped load would show
        for p in trained.prompt_decoder.parameters():
            p.add_(0.01 * torch.randn_like(p))
    ckpt = save_checkpoint(trained, tmp_path / "teacher.pth")
    state = torch.load(ckpt, weights_only=True)
    assert {k.split(".")[0] for k in state} == {"image_encoder", "prompt_encoder", "mask_decoder"}
    # segment-anything's own Sam loads it strictly (as a sam_vit_*.pth), and build_teacher gives the same outputs
    sam = small_sam_registry[NAME](checkpoint=str(ckpt))
    teacher = build_teacher(NAME, ckpt, 128)
    assert teacher.checkpoint_sha256 and not teacher.random_weights
    x = make_scene(2, 0, 128).image[None]
    emb = teacher.embed(x)
    torch.testing.assert_close(emb, sam.image_encoder(x).detach())
    box = torch.tensor([[[10.0, 12.0], [60.0, 70.0]]])
    logits, iou = teacher.decode(emb, box, torch.tensor([[2.0, 3.0]]))
    sparse, dense = sam.prompt_encoder(points=None, boxes=box.reshape(1, 4), masks=None)
    ref_logits, ref_iou = sam.mask_decoder(emb, sam.prompt_encoder.get_dense_pe(), sparse, dense, multimask_output=False)
    torch.testing.assert_close(logits[:, :1], ref_logits.detach(), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(iou[:, :1], ref_iou.detach(), atol=1e-5, rtol=1e-5)
    pd = build_teacher_prompt_decoder(NAME, ckpt, 128)
    torch.testing.assert_close(pd(emb, box, torch.tensor([[2.0, 3.0]]))[0], logits)
    torch.testing.assert_close(emb, trained.embed(x))
    torch.testing.assert_close(logits, trained.decode(emb, box, torch.tensor([[2.0, 3.0]]))[0])


def test_registry_refuses_wrong_size_and_missing_file(tmp_path):
    with pytest.raises(ValueError, match="img_size 128"):
        build_teacher(NAME, None, 256)
    with pytest.raises(FileNotFoundError):
        build_teacher(NAME, tmp_path / "nope.pth", SMALL_CONFIGS[NAME].img_size)


def test_prompt_kd_can_freeze_the_decoder():
    from edgesam.distill.steps import freeze_for_prompt_kd
    from edgesam.models import EdgeSAM

    m = EdgeSAM(128)
    freeze_for_prompt_kd(m, train_decoder=False)
    assert not any(p.requires_grad for p in m.mask_decoder.parameters())
    assert not any(p.requires_grad for p in m.prompt_encoder.parameters())
    assert all(p.requires_grad for p in m.image_encoder.parameters())
    freeze_for_prompt_kd(m)
    assert all(p.requires_grad for p in m.mask_decoder.parameters())
