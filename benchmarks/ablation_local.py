"""In-process distillation steps 1 and 2 for the ablation (no Ray): same loss modules, batches and schedule.

On the shared 2-core machine a Ray Train run pays for a raylet, a worker process and a Ray Data pipeline per
step (minutes under load, and Ray's 30 s raylet start-up limit can fail outright), which would eat the
ablation's budget. This runner reuses the pipeline's pieces (``pipelines.distill_loop``: ``EncoderKD``,
``PromptKD``, ``decode_batch``; ``freeze_for_prompt_kd``; ``cosine_with_warmup``; ``pipelines.evaluate``)
in one process, one torch thread, on the cache's train split in a seeded order.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from edgesam.distill.schedule import cosine_with_warmup
from edgesam.distill.steps import freeze_for_prompt_kd
from edgesam.models import EdgeSAM, build_teacher_prompt_decoder
from pipelines.distill_config import StepConfig
from pipelines.distill_loop import EncoderKD, PromptKD, decode_batch
from pipelines.evaluate import evaluate_rows, load_rows


def train_rows(split: dict) -> pa.Table:
    """The cache's training rows (held-out ids removed), in file order."""
    cols = ["image_id", "image_jpeg", "embedding", "input_height", "input_width", "gt_boxes", "gt_points"]
    table = pa.concat_tables([pq.read_table(f, columns=cols) for f in split["train_files"]])
    keep = [i for i, x in enumerate(table.column("image_id").to_pylist()) if x not in set(split["holdout_ids"])]
    return table.take(keep)


def run_step(model: EdgeSAM, teacher_pd, table: pa.Table, step: StepConfig, num_steps: int, img_size: int,
             seed: int) -> list[dict]:
    """``num_steps`` optimizer steps of ``step`` (encoder_kd | prompt_kd) on ``table``; returns the loss history."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    if step.kind == "prompt_kd":
        freeze_for_prompt_kd(model, train_decoder=step.train_decoder)
        module: torch.nn.Module = PromptKD(model, teacher_pd)
    elif step.kind == "encoder_kd":
        model.requires_grad_(False)
        model.image_encoder.requires_grad_(True)
        module = EncoderKD(model)
    else:
        raise ValueError(f"only steps 1 and 2 run here, got {step.kind}")
    teacher_pd.requires_grad_(False)
    params = [p for p in module.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.ndim > 1], "weight_decay": step.weight_decay},
              {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0}]
    optimizer = torch.optim.AdamW(groups, lr=step.lr)
    sched = cosine_with_warmup(optimizer, num_steps, int(step.warmup_epochs * num_steps), step.lr, step.min_lr,
                               step.warmup_lr)
    order = np.random.default_rng(seed).permutation(len(table))
    history = []
    model.train()
    for i in range(num_steps):
        start = (i * step.batch_size) % max(1, len(order) - step.batch_size + 1)
        batch = decode_batch(table.take(order[start:start + step.batch_size]), img_size, torch.device("cpu"),
                             step.max_prompts, rng)
        batch.update(kind="point" if rng.random() < step.point_prob else "box", decode_iters=step.decode_iters,
                     generator=gen, mask_target="teacher", gt_weight=1.0)
        t0 = time.time()
        loss, parts = module(batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if step.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(params, step.grad_clip)
        optimizer.step()
        sched.step()
        history.append({"step": i + 1, "kind": step.kind, "loss": float(loss.detach()), "s": time.time() - t0})
    return history


def distil_and_evaluate(steps: list[tuple[StepConfig, int]], split: dict, teacher_name: str, teacher_ckpt: str | None,
                        img_size: int, seed: int, eval_cfg, threads: int = 1) -> tuple[dict, list[dict]]:
    """Student from scratch (decoder = the teacher's), the given (step, num_steps) in order, then the held-out
    report of :func:`pipelines.evaluate.evaluate_rows` (student vs GT, vs teacher, teacher vs GT).
    ``threads``: torch intra-op threads (1: seed sets run as parallel processes, one per core)."""
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    model = EdgeSAM(img_size)
    teacher_pd = build_teacher_prompt_decoder(teacher_name, teacher_ckpt, img_size)
    model.prompt_encoder.load_state_dict(teacher_pd.prompt_encoder.state_dict())  # INIT_FROM_TEACHER
    model.mask_decoder.load_state_dict(teacher_pd.mask_decoder.state_dict())
    table = train_rows(split)
    history: list[dict] = []
    for k, (step, n) in enumerate(steps):
        history += run_step(model, teacher_pd, table, step, n, img_size, seed * 100 + k)
    model.eval()
    rows = load_rows(split["holdout_files"], set(split["holdout_ids"]), img_size)
    with torch.no_grad():
        metrics = evaluate_rows(model, teacher_pd, rows, img_size, eval_cfg.refine_clicks,
                                eval_cfg.max_instances_per_image, eval_cfg.seed)
    return metrics, history


def build_cache_local(cache_cfg) -> dict:
    """The teacher cache of ``pipelines/cache_teacher.py`` built in this process: the same stage functions
    (read -> ``preprocess_table`` -> ``TeacherBatch`` -> ``write_shard`` -> ``finalize``) without Ray Data.
    A complete cache with the same identity is reused; another identity is refused."""
    import json as _json

    import edgesam
    from edgesam.data import cache as C
    from edgesam.data.read_units import iter_unit
    from pipelines.cache_teacher import finalize, resolve_units, teacher_identity

    t0 = time.time()
    out_dir = Path(cache_cfg.output.dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    identity = C.cache_identity(teacher_identity(cache_cfg), cache_cfg.preprocessing)
    previous = C.check_identity(out_dir, identity)
    if previous and previous.get("status") == "complete":
        return previous
    done, _ = C.scan_done_ids(out_dir)
    units, fmt = resolve_units(cache_cfg)
    sources = sorted({u["source"] for u in units})
    pre = cache_cfg.preprocessing
    manifest = {"status": "in_progress", "identity": identity, "data": {"source": cache_cfg.data.source, "format": fmt,
                "num_sources": len(sources)}, "schema": C.CACHE_SCHEMA.to_string(), "code_version": edgesam.__version__,
                "config": _json.loads(_json.dumps(cache_cfg.model_dump(mode="json"))),
                "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    C.write_manifest(out_dir, manifest)
    teacher = C.TeacherBatch(cache_cfg.teacher.name, cache_cfg.teacher.checkpoint, pre, "cpu",
                             cache_cfg.teacher.tiny_seed, cache_cfg.compute.torch_threads or 1)
    summary: list[dict] = []
    bs, per_file = cache_cfg.compute.batch_size, cache_cfg.output.rows_per_file
    for unit in units:
        raw = list(C.raw_rows(iter_unit(unit), frozenset(done)))
        if not raw:
            continue
        table = C.preprocess_table(pa.Table.from_pylist(raw), pre)
        out = pa.concat_tables([teacher(table.slice(i, bs)) for i in range(0, len(table), bs)])
        for i in range(0, len(out), per_file):
            summary += C.write_shard(out.slice(i, per_file), str(out_dir), pre, cache_cfg.output.row_group_size).to_pylist()
    return finalize(out_dir, manifest, summary, time.time() - t0)
