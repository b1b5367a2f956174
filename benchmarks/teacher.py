"""The small SAM teacher's held-out mIoU against GT (issue 14), from a training run's report.

    python benchmarks/teacher.py --train [key=value ...] --out BENCHMARKS.md     # train (configs/synthetic-teacher.yaml), then report
    python benchmarks/teacher.py --report runs/synthetic-teacher/train_report.json --out BENCHMARKS.md

The held-out set is 48 fresh synthetic scenes (generator seed 2; training used seed 1), protocol
:mod:`edgesam.eval.miou` against the exact GT masks: GT box / centre click, +1/+2 seeded error-region
clicks, first mask token, IoU per instance at the original resolution, mean x100.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import machine_info, replace_section  # noqa: E402

STAGES = ("box", "box+1", "box+2", "point", "point+1", "point+2")


def render(report: dict, cmd: str) -> str:
    info = machine_info(report["config"]["torch_threads"])
    cfg, h = report["config"], report["holdout"]
    o = cfg["optim"]
    rows = ["| step | " + " | ".join(STAGES) + " |", "|---|" + "---|" * len(STAGES)]
    for e in report["evals"]:
        rows.append(f"| {e['step']} | " + " | ".join(f"{e[k]:.1f}" for k in STAGES) + " |")
    return "\n".join([
        f"Command: `{cmd}` ({info['date']}, {info['cpu']}, {cfg['torch_threads']} torch thread(s); the 2 cores were "
        f"shared with other jobs, load average 20-45). Teacher `{cfg['name']}`: segment-anything's ImageEncoderViT / "
        "PromptEncoder / MaskDecoder (edgesam.models.teacher.SMALL_CONFIGS), trained from scratch with SAM's recipe "
        f"(focal:dice {o['focal_weight']:g}:{o['dice_weight']:g}, IoU-head MSE, box or single-point prompts with the "
        f"min over the multimask tokens, {o['click_iters']} corrective clicks) on {report['train_scenes']} fresh "
        f"synthetic scenes, batch {o['batch_size']} x {o['max_prompts']} prompts, {report['steps']} steps "
        f"(stopped by: {report['stopped']}), {report['wall_seconds']:.0f} s wall "
        f"({report['train_seconds'] / max(1, report['steps']):.2f} s/step). Held-out mIoU x100 vs GT on "
        f"{h['num_instances']} instances of {h['num_images']} unseen scenes:", "", *rows])


def render_runs(reports: list[tuple[str, dict]]) -> str:
    """One row per training run: settings, steps, wall time, final held-out mIoU."""
    rows = ["| run | batch x prompts | clicks | focal alpha | steps | wall s | s/step | " + " | ".join(STAGES) + " |",
            "|---|---|---|---|---|---|---|" + "---|" * len(STAGES)]
    for path, r in reports:
        o, h = r["config"]["optim"], r["holdout"]
        init = f" (from {r['config']['init_checkpoint']})" if r["config"].get("init_checkpoint") else ""
        rows.append(f"| `{path}`{init} | {o['batch_size']} x {o['max_prompts']} | {o['click_iters']} | "
                    f"{o.get('focal_alpha', 0.25):g} | {r['steps']} | {r['wall_seconds']:.0f} | "
                    f"{r['train_seconds'] / max(1, r['steps']):.2f} | " + " | ".join(f"{h[k]:.1f}" for k in STAGES)
                    + f" ({h['num_images']} images) |")
    return "\n".join(rows)


def overfit(steps: int, seed: int = 0) -> list[dict]:
    """Capacity check: fit ONE fixed batch (2 scenes x 4 instances, exact boxes, no clicks) for ``steps`` steps.
    Returns [{"step", "loss", "dice", "train_iou"}] every 10 steps."""
    import torch

    from edgesam.teacher_train.loop import TeacherTrainConfig, _batch, build_teacher, make_scene, train_step

    torch.set_num_threads(1)
    cfg = TeacherTrainConfig.model_validate({"name": "sam_micro_128", "optim": {
        "focal_alpha": -1, "click_iters": 0, "loss_upsample": 1, "box_noise": 0.0}})
    gen = torch.Generator().manual_seed(seed)
    teacher = build_teacher(cfg.name, None, cfg.img_size, seed=seed).requires_grad_(True).train()
    opt = torch.optim.AdamW(teacher.parameters(), cfg.optim.lr)
    images, idx, gt, boxes = _batch([make_scene(1, k, cfg.img_size) for k in range(2)], 4, gen)
    valid = torch.ones(len(idx), cfg.img_size, cfg.img_size, dtype=torch.bool)
    out = []
    for i in range(steps):
        loss, m = train_step(teacher, images, idx, gt, boxes, "box", cfg.optim, gen, valid)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if i % 10 == 0 or i == steps - 1:
            out.append({"step": i, "loss": float(loss.detach()), "dice": m["dice@0"], "train_iou": m["train_iou@0"]})
            print(out[-1], flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--report", type=Path, nargs="+", default=None, help="one or more train_report.json")
    p.add_argument("--train", action="store_true", help="train first (configs/synthetic-teacher.yaml + overrides)")
    p.add_argument("--overfit", type=int, default=0, help="only the capacity check: fit one batch this many steps")
    p.add_argument("--out", default=None)
    p.add_argument("overrides", nargs="*")
    a = p.parse_args(argv)
    if a.overfit:
        overfit(a.overfit)
        return 0
    if a.train:
        from edgesam.config import load_config
        from edgesam.teacher_train.loop import TeacherTrainConfig, train_teacher

        report = train_teacher(load_config(TeacherTrainConfig, "synthetic-teacher", a.overrides))
        cmd = "python benchmarks/teacher.py --train " + " ".join(a.overrides)
    else:
        paths = a.report or [Path("runs/synthetic-teacher/train_report.json")]
        reports = [(str(q), json.loads(q.read_text())) for q in paths]
        report = reports[-1][1]
        cmd = "python pipelines/train_teacher.py --config synthetic-teacher"
    body = render(report, cmd.strip())
    if not a.train and len(reports) > 1:
        body += "\n\nAll runs (final held-out mIoU x100 vs GT):\n\n" + render_runs(reports)
    print(body)
    if a.out:
        replace_section(a.out, "teacher", "## A small SAM teacher that segments (issue 14)", body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
