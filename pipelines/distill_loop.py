"""The Ray Train worker loop shared by the three distillation steps.

Each step is a small loss module wrapped by ``ray.train.torch.prepare_model`` (DDP when there is more
than one worker: gloo on CPU, NCCL on GPU). The module's forward computes the loss so gradients go
through DDP's hooks. Checkpoints hold model, optimizer, scheduler, step and the metric history.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch
from torch import nn

from edgesam.data.cache import decode_row
from edgesam.models import EdgeSAM, build_teacher_prompt_decoder
from edgesam.models.checkpoint import core_state_dict

STATE_FILE = "state.pt"


class EncoderKD(nn.Module):
    """Step 1: masked MSE between student and cached teacher embeddings."""

    def __init__(self, model: EdgeSAM) -> None:
        super().__init__()
        self.encoder = model.image_encoder

    def forward(self, batch: dict) -> tuple[torch.Tensor, dict]:
        from edgesam.distill.steps import encoder_kd_step

        return encoder_kd_step(self.encoder, batch["images"], batch["embeddings"], batch["input_hw"], batch["img_size"])


class PromptKD(nn.Module):
    """Step 2: prompt-in-the-loop KD against the frozen teacher decoder run online."""

    def __init__(self, model: EdgeSAM, teacher_pd: nn.Module) -> None:
        super().__init__()
        self.student = model
        self.teacher_pd = teacher_pd

    def forward(self, batch: dict) -> tuple[torch.Tensor, dict]:
        from edgesam.distill.steps import prompt_kd_step

        return prompt_kd_step(self.student, self.teacher_pd, batch["images"], batch["embeddings"], batch["prompts"],
                              batch["input_hw"], batch["kind"], decode_iters=batch["decode_iters"],
                              generator=batch["generator"], target=batch.get("mask_target", "teacher"),
                              gt_masks=batch.get("gt_masks"), gt_weight=batch.get("gt_weight", 1.0))


class RpnStep(nn.Module):
    """Step 3: the RPN head on the frozen encoder's stride-8/16/32 features."""

    def __init__(self, model: EdgeSAM) -> None:
        super().__init__()
        self.encoder = model.image_encoder
        self.rpn = model.rpn

    def train(self, mode: bool = True) -> "RpnStep":
        super().train(mode)
        self.encoder.eval()  # frozen: keep BatchNorm running statistics fixed
        return self

    def forward(self, batch: dict) -> tuple[torch.Tensor, dict]:
        from edgesam.models.rpn import train_rpn_step

        with torch.no_grad():
            feats = self.encoder.forward_features(batch["images"])
        return train_rpn_step(self.rpn, feats, batch["gt_boxes"], batch["img_size"])


def read_state(path: str) -> dict:
    """The state dict of a Ray checkpoint directory (ours) or a checkpoint file; local or s3:// / gs://."""
    from edgesam import storage

    return storage.torch_load(storage.join(path, STATE_FILE) if storage.is_dir(path) else path, weights_only=False)


def load_weights(model: EdgeSAM, path: str) -> None:
    """Initialise from a Ray checkpoint directory (ours) or a student checkpoint file."""
    from edgesam.models.checkpoint import load_state_dict_strict

    state = read_state(path)
    rpn, model.rpn = model.rpn, None  # the "model" entry is the official-format part only
    load_state_dict_strict(model, state["model"], what=str(path))
    model.rpn = rpn
    rpn_state = state.get("rpn")
    if rpn_state is not None and model.rpn is not None:
        load_state_dict_strict(model.rpn, rpn_state, what=f"{path} (rpn)")


def _decoder_from_teacher(decoder_init: str, init_checkpoint: str | None) -> bool:
    """Whether a step starts its prompt encoder + decoder from the teacher's: always for "teacher"; for "auto"
    only without an init checkpoint (fine-tuning an official checkpoint keeps its decoder); never for "checkpoint"."""
    return decoder_init == "teacher" or (decoder_init == "auto" and not init_checkpoint)


def decode_batch(table: pa.Table, img_size: int, device: torch.device, max_prompts: int, rng: np.random.Generator,
                 with_gt_masks: bool = False) -> dict:
    """Cache rows -> a training batch; ``with_gt_masks`` adds ``gt_masks`` (per image (K,S/4,S/4) bool,
    aligned with the sampled prompts) for GT mask targets."""
    from edgesam.data.rle import decode_rles
    from edgesam.data.transforms import lowres_masks

    pylist = table.to_pylist()
    rows = [decode_row({**r, "prompt_index": [], "teacher_box_masks": b"", "teacher_point_masks": b"",
                        "gt_rles": r["gt_rles"] if with_gt_masks else [],
                        **({} if with_gt_masks else {"orig_height": r["input_height"], "orig_width": r["input_width"]})},
                       img_size)
            for r in pylist]
    prompts, gt_masks = [], []
    for r in rows:
        pool = torch.arange(len(r["boxes"]))
        if with_gt_masks:  # annotations without a mask (a COCO box-only record) cannot be GT targets
            pool = torch.tensor([i for i in range(len(r["boxes"])) if r["rles"][i]], dtype=torch.long)
        k = len(pool)
        if k > max_prompts:  # with replacement, as the reference does
            idx = pool[torch.from_numpy(rng.integers(0, k, max_prompts))]
        else:
            idx = pool
        prompts.append({"boxes": r["boxes"][idx].to(device), "points": r["points"][idx].to(device)})
        if with_gt_masks:
            h, w = r["orig_hw"]
            full = decode_rles([{"size": [h, w], "counts": r["rles"][int(i)]} for i in idx])  # (K,H,W)
            gt_masks.append(lowres_masks(torch.from_numpy(full), r["input_hw"], img_size).to(device))
    batch = {"images": torch.stack([r["image"] for r in rows]).to(device),
             "embeddings": torch.stack([r["embedding"] for r in rows]).to(device),
             "input_hw": [r["input_hw"] for r in rows], "prompts": prompts,
             # RPN targets: EVERY GT box of the image, not only the <= max_prompts sampled prompts (with
             # ~100 objects per SA-1B image, prompt boxes alone would teach the RPN that most objects are background)
             "gt_boxes": [r["boxes"].to(device) for r in rows], "image_ids": [r["image_id"] for r in rows],
             "img_size": img_size}
    if with_gt_masks:
        batch["gt_masks"] = gt_masks
    return batch


def _save(tmp: str, module_model: EdgeSAM, optimizer, scheduler, global_step: int, history: list,
          resumes: list[int], identity_sha256: str | None = None) -> None:
    torch.save({"model": core_state_dict(module_model), "rpn": module_model.rpn.state_dict() if module_model.rpn is not None else None,
                "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "global_step": global_step,
                "history": history, "resumes": resumes, "identity_sha256": identity_sha256}, os.path.join(tmp, STATE_FILE))


def train_loop_per_worker(config: dict) -> None:
    import ray
    import ray.train
    import ray.train.torch
    from ray.train import Checkpoint

    from edgesam.distill.schedule import cosine_with_warmup
    from edgesam.distill.steps import freeze_for_prompt_kd
    from pipelines.distill_config import StepConfig
    from pipelines.evaluate import evaluate_holdout
    from pipelines.train_progress import push

    step = StepConfig(**config["step"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.manual_seed(config["seed"] + rank)
    rng = np.random.default_rng(config["seed"] + 1000 * rank)
    gen = torch.Generator().manual_seed(config["seed"] + rank)
    device = ray.train.torch.get_device()
    img_size = config["img_size"]
    if device.type == "cpu":
        torch.set_num_threads(config.get("torch_threads") or max(1, int(os.environ.get("OMP_NUM_THREADS", "1"))))

    model = EdgeSAM(img_size)
    if step.kind == "rpn" or config.get("init_has_rpn"):
        from edgesam.models.rpn import build_rpn

        model.rpn = build_rpn(model.image_encoder.feature_channels, **config["rpn"])
    resume = ray.train.get_checkpoint()
    t = config["teacher"]
    teacher_pd = build_teacher_prompt_decoder(t["name"], t["checkpoint"], img_size, seed=t["tiny_seed"])
    init = config["init_checkpoint"]
    if init and not resume:
        load_weights(model, init)
    if not init and not resume and config.get("backbone_checkpoint") and step.kind != "rpn":
        from edgesam.models.backbone_init import load_repvit_imagenet

        report_init = load_repvit_imagenet(model.image_encoder, config["backbone_checkpoint"])
        if rank == 0:
            print(f"[distill] {step.kind}: {report_init.summary()}", flush=True)
    if step.kind != "rpn" and not resume and _decoder_from_teacher(config.get("decoder_init", "auto"), init):
        # The student's prompt encoder and decoder start as the teacher's. In step 1 they are not trained, so an
        # encoder-only student is evaluated (and exported) with the teacher's decoder.
        model.prompt_encoder.load_state_dict(teacher_pd.prompt_encoder.state_dict())
        model.mask_decoder.load_state_dict(teacher_pd.mask_decoder.state_dict())
    if step.kind == "prompt_kd":
        freeze_for_prompt_kd(model, train_decoder=step.train_decoder)
        loss_module: nn.Module = PromptKD(model, teacher_pd)
    elif step.kind == "encoder_kd":
        loss_module = EncoderKD(model)
    else:
        model.image_encoder.requires_grad_(False)
        loss_module = RpnStep(model)
    if config.get("sync_bn") and world > 1 and device.type == "cuda":
        loss_module = nn.SyncBatchNorm.convert_sync_batchnorm(loss_module)
    params = [p for p in loss_module.parameters() if p.requires_grad]
    # No weight decay on norms and biases (1-D tensors), as in the reference recipe.
    groups = [{"params": [p for p in params if p.ndim > 1], "weight_decay": step.weight_decay},
              {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0}]
    optimizer = torch.optim.AdamW(groups, lr=step.lr)
    spe = config["steps_per_epoch"]
    total = spe * step.epochs
    scheduler = cosine_with_warmup(optimizer, total_steps=total, warmup_steps=int(step.warmup_epochs * spe),
                                   base_lr=step.lr, min_lr=step.min_lr, warmup_lr=step.warmup_lr)
    global_step, history, resumes = 0, [], []
    if resume:
        with resume.as_directory() as d:
            state = torch.load(os.path.join(d, STATE_FILE), map_location="cpu", weights_only=False)
        if state.get("identity_sha256") != config.get("identity_sha256"):
            # the driver refuses this first (STARTED.json); this guards a checkpoint that was swapped underneath
            raise RuntimeError(f"{step.kind}: the checkpoint to resume was written under step identity "
                               f"{state.get('identity_sha256')}, this run is {config.get('identity_sha256')}: refusing "
                               "to resume its optimizer and schedule under another config (use train.restart)")
        rpn, model.rpn = model.rpn, None
        model.load_state_dict(state["model"])
        model.rpn = rpn
        if model.rpn is not None and state.get("rpn") is not None:
            model.rpn.load_state_dict(state["rpn"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        global_step, history = state["global_step"], state["history"]
        resumes = state.get("resumes", []) + [global_step]
        print(f"[distill] rank {rank}: resumed {step.kind} at step {global_step}/{total}", flush=True)
        if rank == 0:
            push(config.get("progress"), msg=f"resumed {step.kind} at step {global_step}/{total}")
    ddp = ray.train.torch.prepare_model(loss_module, parallel_strategy_kwargs={"find_unused_parameters": step.kind != "encoder_kd"})
    teacher_pd.to(device)
    if config.get("train_blocks") is not None:
        from pipelines.distill_data import BlockShard

        shard = BlockShard(ray.get(config["train_blocks"]), rank, world)
    else:
        shard = ray.train.get_dataset_shard("train")
    seen_dir = config.get("seen_ids_dir")
    if seen_dir:  # tests: which worker process trained on what
        Path(seen_dir).mkdir(parents=True, exist_ok=True)
        node = ray.get_runtime_context().get_node_id()
        Path(seen_dir, f"{step.kind}-rank{rank}.pid").write_text(f"{os.getpid()} {node}")

    def report(metrics: dict, with_ckpt: bool) -> None:
        if with_ckpt and rank == 0:
            with tempfile.TemporaryDirectory() as tmp:
                _save(tmp, model, optimizer, scheduler, global_step, history, resumes, config.get("identity_sha256"))
                ray.train.report(metrics, checkpoint=Checkpoint.from_directory(tmp))
        else:
            ray.train.report(metrics)

    start_epoch = global_step // spe
    for epoch in range(start_epoch, step.epochs):
        skip = global_step - epoch * spe
        it = shard.iter_batches(batch_size=step.batch_size, batch_format="pyarrow", drop_last=True)
        for i, table in enumerate(it):
            if i < skip or i >= spe:
                continue  # drain: every worker consumes its whole split each epoch
            batch = decode_batch(table, img_size, device, step.max_prompts, rng,
                                 with_gt_masks=step.kind == "prompt_kd" and step.mask_target != "teacher")
            batch.update(kind="point" if rng.random() < step.point_prob else "box", decode_iters=step.decode_iters,
                         generator=gen, mask_target=step.mask_target, gt_weight=step.gt_weight)
            loss, parts = ddp(batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if step.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(params, step.grad_clip)
            optimizer.step()
            scheduler.step()
            global_step += 1
            if seen_dir:
                with open(os.path.join(seen_dir, f"{step.kind}-rank{rank}.txt"), "a") as f:
                    f.write("\n".join(batch["image_ids"]) + "\n")
            rec = {"step": global_step, "epoch": epoch, "loss": float(loss.detach()), "lr": scheduler.get_last_lr()[0],
                   **{k: float(v) for k, v in parts.items()}}
            history.append(rec)
            if rank == 0:  # the driver's progress bar (pipelines/train_progress.py)
                push(config.get("progress"), step=global_step, loss=rec["loss"], images=step.batch_size * world)
            last_in_epoch = global_step == (epoch + 1) * spe
            if last_in_epoch:
                metrics = {}
                when = config["eval"].get("during_steps", "every_epoch")
                wanted = when == "every_epoch" or (when == "last_epoch" and epoch == step.epochs - 1)
                if rank == 0 and config["holdout_ids"] and step.kind != "rpn" and wanted:
                    push(config.get("progress"), step=global_step, phase="eval")
                    metrics = evaluate_holdout(model, teacher_pd, config, device)
                    history[-1].update({f"eval/{k}": v for k, v in metrics.items()})
                report({**rec, "global_step": global_step, **{f"eval/{k}": v for k, v in metrics.items()}}, True)
            elif global_step % config["checkpoint_every"] == 0:
                report({**rec, "global_step": global_step}, True)
