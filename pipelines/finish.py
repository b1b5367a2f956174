"""End of a distillation run: student checkpoint, evaluation report, plots, ONNX export, summary."""
from __future__ import annotations

import time
from pathlib import Path

import torch

from edgesam import storage
from edgesam.models import EdgeSAM, build_teacher_prompt_decoder, save_student


def _load_final(cfg, ckpt_dir: str) -> tuple[EdgeSAM, list[dict]]:
    from pipelines.distill_loop import read_state

    state = read_state(ckpt_dir)
    model = EdgeSAM(cfg.cache.preprocessing.img_size)
    model.load_state_dict(state["model"])
    if state.get("rpn") is not None:
        from edgesam.models.rpn import build_rpn

        model.rpn = build_rpn(model.image_encoder.feature_channels, **cfg.rpn.model_dump())
        model.rpn.load_state_dict(state["rpn"])
    return model.eval(), state.get("history", [])


def _histories(cfg) -> list[dict]:
    """Concatenate the metric histories of every step (each step's last checkpoint holds its own)."""
    from pipelines.distill_identity import DONE, read_marker
    from pipelines.distill_loop import read_state

    out = []
    for step in cfg.steps():
        done = read_marker(storage.join(cfg.train.storage_path, f"{cfg.train.name}-{step.kind}", DONE))
        if done is not None:
            hist = read_state(done["checkpoint"]).get("history", [])
            out += [{**h, "kind": step.kind} for h in hist]
    return out


def eval_task_options(scaling) -> dict:
    """``ray.remote`` options for one task shaped like a train worker (its CPUs, its GPU when configured)."""
    res = dict(scaling.resources_per_worker)
    cpus = res.pop("CPU", 1.0)
    gpus = res.pop("GPU", 1.0) if scaling.use_gpu else 0.0
    res.pop("GPU", None)
    return {"num_cpus": cpus, "num_gpus": gpus, "resources": res}


def _final_eval(cfg_json: dict, ckpt_dir: str, split: dict) -> tuple[dict, bytes]:
    """The end-of-run evaluation, inside a Ray task with the train workers' resources (on their GPU when
    ``train.scaling.use_gpu``), not on the driver. -> (report, mask-grid PNG bytes or b"")."""
    import os
    import tempfile

    from pipelines.distill_config import DistillConfig
    from pipelines.evaluate import evaluate_holdout_report

    cfg = DistillConfig.model_validate(cfg_json)
    device = torch.device("cuda" if cfg.train.scaling.use_gpu and torch.cuda.is_available() else "cpu")
    if device.type == "cpu":
        torch.set_num_threads(cfg.train.torch_threads or max(1, int(os.environ.get("OMP_NUM_THREADS", "1"))))
    model, _ = _load_final(cfg, ckpt_dir)
    t = cfg.cache.teacher
    teacher_pd = build_teacher_prompt_decoder(t.name, t.checkpoint, cfg.cache.preprocessing.img_size, seed=t.tiny_seed)
    with tempfile.TemporaryDirectory() as tmp:
        report = evaluate_holdout_report(model, teacher_pd, cfg, split, Path(tmp), device=device)
        grid = Path(report.pop("mask_grid", "") or "/nonexistent")
        png = grid.read_bytes() if grid.is_file() else b""
    report["device"] = str(device)
    return report, png


def run_final_eval(cfg, ckpt_dir: str, split: dict, out: str | Path) -> dict:
    import ray

    from pipelines.ray_init import init_ray

    init_ray(cfg.ray_address)
    task = ray.remote(_final_eval).options(**eval_task_options(cfg.train.scaling))
    report, png = ray.get(task.remote(cfg.model_dump(mode="json"), ckpt_dir, split))
    if png:
        report["mask_grid"] = storage.display(storage.write_bytes(storage.join(out, "mask_grid.png"), png))
    return report


def finish_run(cfg, ckpt_dir: str, split: dict, random_teacher: bool) -> dict:
    from edgesam.eval.plots import plot_curves

    out = cfg.output_dir or storage.join(cfg.train.storage_path, cfg.train.name)  # local or s3:// / gs://
    storage.makedirs(out)
    model, _ = _load_final(cfg, ckpt_dir)
    meta = {"teacher": cfg.cache.teacher.model_dump(mode="json"), "random_teacher": random_teacher,
            "img_size": cfg.cache.preprocessing.img_size, "rpn_config": cfg.rpn.model_dump(), "source_checkpoint": ckpt_dir,
            # pipelines/evaluate.py scores exactly these rows of the cache (the student never trained on them)
            "holdout": {"fraction": cfg.eval.holdout_fraction, "seed": cfg.eval.seed, "ids": split["holdout_ids"]}}
    student_path = save_student(model, storage.join(out, "student.pt"), meta=meta)
    t_eval = time.time()
    report = run_final_eval(cfg, ckpt_dir, split, out)
    timings = {"final_eval": round(time.time() - t_eval, 1)}
    report["random_teacher"] = random_teacher
    curves = plot_curves(_histories(cfg), storage.join(out, "training_curves.png"))
    outputs = {"student": storage.display(student_path), "eval_report": storage.display(storage.join(out, "eval_report.json")),
               "curves": storage.display(curves), "mask_grid": report.get("mask_grid", ""),
               "teacher_cache": storage.display(cfg.cache.output.dir)}
    if cfg.export.onnx:
        from edgesam.export.onnx_export import export_all

        from edgesam.models.teacher import sha256_file

        # A student distilled from a random teacher is flagged as random weights for serving.
        t_export = time.time()
        onnx_dir = storage.join(out, "onnx")
        with storage.staged_dir(onnx_dir) as local:  # the ONNX exporter writes local files; uploaded after
            files = export_all(model, local, checkpoint_sha256="random" if random_teacher else sha256_file(student_path),
                               progress=True)
            outputs.update({f"onnx_{k}": storage.relocate(v, local, onnx_dir) for k, v in files.items()})
        timings["onnx_export"] = round(time.time() - t_export, 1)
    report["outputs"] = outputs
    report["timings"] = timings
    storage.write_json(storage.join(out, "eval_report.json"), report)
    return report
