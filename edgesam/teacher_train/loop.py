"""The teacher training loop (one process, plain torch) and its held-out evaluation.

Per step: B fresh synthetic scenes -> image encoder (trained) -> up to ``max_prompts`` instances per image
-> a box (jittered) or a single point (uniform in the mask) -> 1 + ``click_iters`` decoder passes, each
adding one corrective click drawn from the previous token-0 error region (no mask fed back, matching the
evaluation protocol) -> focal + dice (20:1) + IoU MSE, averaged over the passes.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Callable, Literal

import numpy as np
import torch
import torch.nn.functional as F

from ..config import StrictModel
from ..distill.prompts import append_points, sample_error_points
from ..distill.schedule import lr_at
from ..eval.miou import EvalSample, evaluate_model
from ..models.teacher import SMALL_CONFIGS, build_teacher, sam_state_dict
from .losses import sam_loss
from .prompts import initial_prompts
from .scenes import Scene, make_scene


class TeacherDataCfg(StrictModel):
    train_seed: int = 1  # generator seed of the training scenes (the sample sets use seed 0: unseen)
    holdout_seed: int = 2
    holdout_images: int = 48
    size_range: tuple[int, int] = (192, 320)
    jpeg_quality: int | None = 95


class TeacherOptimCfg(StrictModel):
    steps: int = 2000
    batch_size: int = 4  # images per step; every image is a fresh scene
    max_prompts: int = 8  # instances per image
    lr: float = 8e-4
    min_lr: float = 1e-5
    warmup_steps: int = 100
    warmup_lr: float = 1e-6
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    point_prob: float = 0.5  # P(single-point prompt) per step, else box
    click_iters: int = 2  # corrective clicks after the initial prompt
    loss_upsample: int = 2  # loss (and click) frame: the decoder's S/4 logits upsampled this many times (<= 4)
    box_noise: float = 0.1
    box_noise_max_px: float = 5.0
    focal_weight: float = 20.0  # SAM's focal : dice, reached at the end of ``focal_ramp``
    # From scratch, 20:1 holds every mask at the empty-mask plateau (BENCHMARKS.md, "A small SAM teacher");
    # the run starts at ``focal_start_weight`` and ramps linearly to ``focal_weight`` over this fraction of the
    # run (progress in [0, 1]); (0, 0) = ``focal_weight`` throughout.
    focal_start_weight: float = 1.0
    focal_ramp: tuple[float, float] = (0.0, 0.0)
    focal_alpha: float = 0.25  # positive-class weight of the focal loss; < 0 = unweighted
    dice_weight: float = 1.0
    iou_weight: float = 1.0


class TeacherTrainConfig(StrictModel):
    name: str = "sam_small_256"  # a registry-style small SAM (edgesam.models.teacher.SMALL_CONFIGS)
    init_checkpoint: str | None = None  # continue from a teacher.pth (weights only; a fresh optimizer and schedule)
    seed: int = 0
    torch_threads: int = 2
    # wall-time budget: the cosine schedule runs on max(step / steps, elapsed / budget), so a run on a busy
    # machine still anneals and ends on time (fewer steps); None = step-based only
    max_minutes: float | None = None
    eval_every: int = 500
    log_every: int = 50
    output_dir: str = "runs/synthetic-teacher"
    data: TeacherDataCfg = TeacherDataCfg()
    optim: TeacherOptimCfg = TeacherOptimCfg()

    @property
    def img_size(self) -> int:
        if self.name not in SMALL_CONFIGS:
            raise ValueError(f"unknown small teacher {self.name!r}; known: {sorted(SMALL_CONFIGS)}")
        return SMALL_CONFIGS[self.name].img_size


def _batch(scenes: list[Scene], max_prompts: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """-> images (B,3,S,S), image index per prompt (N,), GT masks (N,S,S) bool, GT boxes (N,4)."""
    idx, masks, boxes = [], [], []
    for i, s in enumerate(scenes):
        k = len(s.masks)
        pick = torch.randperm(k, generator=gen)[:max_prompts]
        idx.append(torch.full((len(pick),), i, dtype=torch.long))
        masks.append(s.masks[pick])
        boxes.append(torch.from_numpy(s.boxes)[pick])
    return torch.stack([s.image for s in scenes]), torch.cat(idx), torch.cat(masks), torch.cat(boxes)


def focal_weight_at(progress: float, opt: TeacherOptimCfg) -> float:
    """The focal weight at ``progress`` (fraction of the run done, 0..1) under ``opt.focal_ramp``."""
    lo, hi = opt.focal_ramp
    if hi <= lo:
        return opt.focal_weight if hi <= 0 or progress >= hi else opt.focal_start_weight
    t = min(1.0, max(0.0, (progress - lo) / (hi - lo)))
    return opt.focal_start_weight + t * (opt.focal_weight - opt.focal_start_weight)


def train_step(teacher, images: torch.Tensor, img_idx: torch.Tensor, gt: torch.Tensor, boxes: torch.Tensor,
               kind: Literal["box", "point"], opt: TeacherOptimCfg, gen: torch.Generator,
               valid: torch.Tensor, focal_weight: float | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """One forward pass with corrective clicks. gt (N,S,S) bool; valid (N,S,S) bool non-padded area; both are
    area-downsampled to the loss frame (S/4 x ``loss_upsample``).
    Returns (loss averaged over the 1 + click_iters passes, metrics of the first and last pass)."""
    size = images.shape[-1]
    emb = teacher.image_encoder(images)[img_idx]  # (N,256,S/16,S/16)
    coords, labels = initial_prompts(kind, gt, boxes, size, gen, opt.box_noise, opt.box_noise_max_px)
    side = size // 4 * opt.loss_upsample
    if side != size:  # GT and valid area in the loss frame: area-downsampled, > 0.5
        gt = F.interpolate(gt[:, None].float(), (side, side), mode="area")[:, 0] > 0.5
        valid = F.interpolate(valid[:, None].float(), (side, side), mode="area")[:, 0] > 0.5
    keep = gt.flatten(1).any(1)  # an object below half a loss-frame pixel would teach "predict nothing"
    if bool(keep.any()) and not bool(keep.all()):
        emb, coords, labels, gt, valid = emb[keep], coords[keep], labels[keep], gt[keep], valid[keep]
    total = torch.zeros(())
    metrics: dict[str, float] = {}
    for it in range(opt.click_iters + 1):
        low, iou = teacher.prompt_decoder(emb, coords, labels)
        up = low if side == low.shape[-1] else F.interpolate(low, (side, side), mode="bilinear", align_corners=False)
        loss, parts = sam_loss(up, iou, gt, multimask=kind == "point" and it == 0,
                               focal_weight=opt.focal_weight if focal_weight is None else focal_weight,
                               dice_weight=opt.dice_weight, iou_weight=opt.iou_weight, focal_alpha=opt.focal_alpha)
        total = total + loss
        if it == 0 or it == opt.click_iters:
            metrics.update({f"{k}@{it}": float(v) for k, v in parts.items()})
        if it < opt.click_iters:
            with torch.no_grad():
                c, lab = sample_error_points(up[:, 0] > 0, gt, valid, gen, min_pixels=1, scale=size / side)
            coords, labels = append_points(coords, labels, c, lab)
    return total / (opt.click_iters + 1), metrics


def holdout_scenes(cfg: TeacherTrainConfig) -> list[Scene]:
    d = cfg.data
    return [make_scene(d.holdout_seed, k, cfg.img_size, d.size_range, d.jpeg_quality) for k in range(d.holdout_images)]


@torch.no_grad()
def evaluate_teacher(teacher, scenes: list[Scene], refine_iters: int = 2, seed: int = 0) -> dict[str, float]:
    """mIoU x100 against the exact GT (edgesam.eval.miou protocol: GT box / centre click, + clicks)."""
    teacher.eval()
    samples = [EvalSample(image_id=f"holdout_{s.index}", input_hw=s.input_hw, orig_hw=s.orig_hw, boxes=s.boxes,
                          gt_masks=s.orig_masks) for s in scenes]
    embs = (teacher.image_encoder(s.image[None]) for s in scenes)
    return evaluate_model(lambda e, c, l: teacher.prompt_decoder(e, c, l), embs, samples, scenes[0].image.shape[-1],
                          refine_iters=refine_iters, seed=seed)


def save_checkpoint(teacher, path: Path) -> Path:
    """segment-anything's format (plain state dict), written atomically."""
    tmp = path.with_name(path.name + ".part")
    torch.save(sam_state_dict(teacher.image_encoder, teacher.prompt_decoder), tmp)
    os.replace(tmp, path)
    return path


def train_teacher(cfg: TeacherTrainConfig, log: Callable[[str], None] = print) -> dict:
    """Train, evaluate on the held-out scenes, write ``<output_dir>/teacher.pth`` + ``train_report.json``."""
    torch.set_num_threads(max(1, cfg.torch_threads))
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    ckpt = out / "teacher.pth"
    t0 = time.time()
    size, opt = cfg.img_size, cfg.optim
    teacher = build_teacher(cfg.name, cfg.init_checkpoint, size, seed=cfg.seed)
    teacher.requires_grad_(True).train()
    params = [p for p in teacher.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.ndim > 1], "weight_decay": opt.weight_decay},
              {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0}]
    optimizer = torch.optim.AdamW(groups, lr=opt.lr)
    gen = torch.Generator().manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    held = holdout_scenes(cfg) if cfg.data.holdout_images else []
    history: list[dict] = []
    evals: list[dict] = []
    next_index, step, stopped = 0, 0, "steps"
    train_seconds = 0.0
    lr = opt.warmup_lr
    while step < opt.steps:
        progress = step / opt.steps
        if cfg.max_minutes is not None:
            progress = max(progress, (time.time() - t0) / (60 * cfg.max_minutes))
            if progress >= 1:
                stopped = "max_minutes"
                break
        lr = lr_at(max(step, round(progress * opt.steps)), opt.steps, opt.warmup_steps, opt.lr, opt.min_lr,
                   opt.warmup_lr)
        for g in optimizer.param_groups:
            g["lr"] = lr
        ts = time.time()
        scenes = []
        while len(scenes) < opt.batch_size:
            s = make_scene(cfg.data.train_seed, next_index, size, cfg.data.size_range, cfg.data.jpeg_quality)
            next_index += 1
            if len(s.masks):
                scenes.append(s)
        images, img_idx, gt, boxes = _batch(scenes, opt.max_prompts, gen)
        valid = torch.zeros(len(scenes), size, size, dtype=torch.bool)
        for i, s in enumerate(scenes):
            valid[i, : s.input_hw[0], : s.input_hw[1]] = True
        kind = "point" if rng.random() < opt.point_prob else "box"
        teacher.train()
        fw = focal_weight_at(progress, opt)
        loss, metrics = train_step(teacher, images, img_idx, gt, boxes, kind, opt, gen, valid[img_idx], fw)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if opt.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(params, opt.grad_clip)
        optimizer.step()
        step += 1
        train_seconds += time.time() - ts
        history.append({"step": step, "kind": kind, "loss": float(loss.detach()), "lr": lr, "focal_weight": fw,
                        **metrics})
        if step % cfg.log_every == 0 or step == 1:
            recent = history[-cfg.log_every:]
            log(f"[teacher] step {step}/{opt.steps} loss {np.mean([h['loss'] for h in recent]):.4f} "
                f"train IoU box {np.mean([h['train_iou@0'] for h in recent if h['kind'] == 'box'] or [np.nan]):.3f} "
                f"point {np.mean([h['train_iou@0'] for h in recent if h['kind'] == 'point'] or [np.nan]):.3f} "
                f"focal w {fw:.1f} ({train_seconds / step:.2f} s/step, {time.time() - t0:.0f} s)")
        if held and cfg.eval_every and step % cfg.eval_every == 0 and step < opt.steps:
            m = evaluate_teacher(teacher, held)
            evals.append({"step": step, **m})
            save_checkpoint(teacher, ckpt)
            log(f"[teacher] eval step {step}: box {m['box']:.1f} point {m['point']:.1f} point+2 {m['point+2']:.1f}")
    teacher.requires_grad_(False).eval()
    save_checkpoint(teacher, ckpt)
    final = evaluate_teacher(teacher, held) if held else {}
    if final:
        evals.append({"step": step, **final})
    report = {"config": cfg.model_dump(mode="json"), "checkpoint": str(ckpt), "steps": step, "stopped": stopped,
              "train_scenes": next_index, "wall_seconds": round(time.time() - t0, 1),
              "train_seconds": round(train_seconds, 1), "holdout": final, "evals": evals, "history": history}
    (out / "train_report.json").write_text(json.dumps(report, indent=1))
    if final:
        log(f"[teacher] held-out ({final['num_instances']} instances, {final['num_images']} images) mIoU vs GT: "
            + " ".join(f"{k} {final[k]:.1f}" for k in ("box", "box+1", "box+2", "point", "point+1", "point+2")))
    return report
