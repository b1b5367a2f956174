"""End of a distillation run: student checkpoint, evaluation report, plots, ONNX export, summary."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from edgesam.models import EdgeSAM, build_teacher_prompt_decoder, save_student


def _load_final(cfg, ckpt_dir: str) -> tuple[EdgeSAM, list[dict]]:
    from pipelines.distill_loop import STATE_FILE

    state = torch.load(Path(ckpt_dir) / STATE_FILE, map_location="cpu", weights_only=False)
    model = EdgeSAM(cfg.cache.preprocessing.img_size)
    model.load_state_dict(state["model"])
    if state.get("rpn") is not None:
        from edgesam.models.rpn import build_rpn

        model.rpn = build_rpn(model.image_encoder.feature_channels, **cfg.rpn.model_dump())
        model.rpn.load_state_dict(state["rpn"])
    return model.eval(), state.get("history", [])


def _histories(cfg) -> list[dict]:
    """Concatenate the metric histories of every step (each step's last checkpoint holds its own)."""
    from pipelines.distill_loop import STATE_FILE

    out = []
    for step in cfg.steps():
        marker = Path(cfg.train.storage_path) / f"{cfg.train.name}-{step.kind}" / "DONE.json"
        if marker.is_file():
            ckpt = json.loads(marker.read_text())["checkpoint"]
            hist = torch.load(Path(ckpt) / STATE_FILE, map_location="cpu", weights_only=False).get("history", [])
            out += [{**h, "kind": step.kind} for h in hist]
    return out


def finish_run(cfg, ckpt_dir: str, split: dict, random_teacher: bool) -> dict:
    from edgesam.eval.plots import plot_curves
    from pipelines.evaluate import evaluate_holdout_report

    out = Path(cfg.output_dir or Path(cfg.train.storage_path) / cfg.train.name)
    out.mkdir(parents=True, exist_ok=True)
    model, _ = _load_final(cfg, ckpt_dir)
    meta = {"teacher": cfg.cache.teacher.model_dump(mode="json"), "random_teacher": random_teacher,
            "img_size": cfg.cache.preprocessing.img_size, "rpn_config": cfg.rpn.model_dump(), "source_checkpoint": ckpt_dir}
    student_path = save_student(model, out / "student.pt", meta=meta)
    t = cfg.cache.teacher
    teacher_pd = build_teacher_prompt_decoder(t.name, t.checkpoint, cfg.cache.preprocessing.img_size, seed=t.tiny_seed)
    report = evaluate_holdout_report(model, teacher_pd, cfg, split, out)
    report["random_teacher"] = random_teacher
    curves = plot_curves(_histories(cfg), out / "training_curves.png")
    outputs = {"student": str(student_path.resolve()), "eval_report": str((out / "eval_report.json").resolve()),
               "curves": str(Path(curves).resolve()), "mask_grid": report.get("mask_grid", ""),
               "teacher_cache": str(Path(cfg.cache.output.dir).resolve())}
    if cfg.export.onnx:
        from edgesam.export.onnx_export import export_all

        from edgesam.models.teacher import sha256_file

        # A student distilled from a random teacher is flagged as random weights for serving.
        files = export_all(model, out / "onnx", checkpoint_sha256="random" if random_teacher else sha256_file(student_path))
        outputs.update({f"onnx_{k}": str(Path(v).resolve()) for k, v in files.items()})
    report["outputs"] = outputs
    (out / "eval_report.json").write_text(json.dumps(report, indent=2, default=str))
    return report
