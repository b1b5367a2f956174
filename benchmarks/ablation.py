"""Ablation at equal student steps: encoder-only KD vs encoder KD followed by prompt-in-the-loop KD.

    python benchmarks/ablation.py --teacher-name sam_micro_128 --teacher-checkpoint runs/synthetic-teacher/teacher.pth \
        --img-size 128 --images 160 --steps 60 --seeds 0 1 2 --variants all --out BENCHMARKS.md
    python benchmarks/ablation.py --images 64 --steps1 20 --steps2 20 --out BENCHMARKS.md   # random tiny teacher

Variants (all with ``--steps`` student steps in total, same teacher cache, batch size and held-out split):

* ``enc-only``: step 1 (encoder KD) for all steps; evaluated with the teacher's decoder (INIT_FROM_TEACHER).
* ``enc-prompt``: step 1 for the paper's share (10 of its 15 epochs: 2/3), then step 2 (prompt-in-the-loop
  KD, decoder trained, 1 refinement iteration: DECODE_ITERS 2) for the rest.
* ``enc-prompt-frozen``: as ``enc-prompt`` with the mask decoder frozen in step 2 (paper Tab. 5(f)).
* ``enc-prompt-2ref``: as ``enc-prompt`` with 2 refinement iterations in training (decode_iters 3).

The teacher cache is made once. ``--engine local`` (default) builds it with ``pipelines/cache_teacher.py``'s
stage functions in this process and runs each (variant, seed) in this process with the pipeline's own loss modules, batches, freezing and schedule
(``benchmarks/ablation_local.py``: no Ray start-up per step, which on the shared 2 cores costs minutes);
``--engine ray`` runs each as a full ``pipelines/distill.py`` job (Ray Train, 1 worker). Seeds change the
student init, batch order and prompt sampling, not the data or the held-out split. Each run is scored by mIoU
against GT and against the teacher on the held-out images (box, centre click, +1/+2 refinement clicks).
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import machine_info, replace_section  # noqa: E402

STAGES = ("box", "box+1", "box+2", "point", "point+1", "point+2")
TABLE_STAGES = ("box", "point", "point+1", "point+2")
VARIANTS = ("enc-only", "enc-prompt", "enc-prompt-frozen", "enc-prompt-2ref")
LABELS = {"enc-only": "encoder KD only", "enc-prompt": "encoder KD + prompt-in-the-loop KD",
          "enc-prompt-frozen": "  ... step 2 with the decoder frozen", "enc-prompt-2ref": "  ... 2 refinement iterations in step 2"}
STEP1_SHARE = 10 / 15  # the paper: 10 epochs of step 1, 5 of step 2


def split_steps(total: int, steps1: int | None = None) -> tuple[int, int]:
    s1 = round(total * STEP1_SHARE) if steps1 is None else steps1
    return s1, total - s1


def variant_overrides(variant: str, steps1: int, steps2: int) -> list[str]:
    if variant == "enc-only":
        return ["step1.epochs=1", f"step1.max_steps={steps1 + steps2}", "step2.enabled=false"]
    common = ["step1.epochs=1", f"step1.max_steps={steps1}", "step2.epochs=1", f"step2.max_steps={steps2}",
              "step2.mask_target=teacher"]
    if variant == "enc-prompt":
        return common + ["step2.decode_iters=2"]
    if variant == "enc-prompt-frozen":
        return common + ["step2.decode_iters=2", "step2.train_decoder=false"]
    if variant == "enc-prompt-2ref":
        return common + ["step2.decode_iters=3"]
    raise ValueError(f"unknown variant {variant!r}; known: {VARIANTS}")


def run_local(cfg, split: dict, variant: str, seed: int, steps1: int, steps2: int) -> tuple[dict, dict, float]:
    """One in-process run -> (eval metrics, {step kind: steps}, wall seconds)."""
    from benchmarks.ablation_local import distil_and_evaluate

    t0 = time.time()
    plan = [(cfg.step1, steps1 + steps2)] if variant == "enc-only" else [(cfg.step1, steps1), (cfg.step2, steps2)]
    t = cfg.cache.teacher
    metrics, history = distil_and_evaluate(plan, split, t.name, t.checkpoint, cfg.cache.preprocessing.img_size,
                                           seed, cfg.eval, cfg.train.torch_threads or 1)
    steps: dict[str, int] = {}
    for h in history:
        steps[h["kind"]] = steps.get(h["kind"], 0) + 1
    metrics = {**metrics, **{f"s_per_step/{k}": float(np.mean([h["s"] for h in history if h["kind"] == k])) for k in steps}}
    return metrics, steps, time.time() - t0


def init_ray_retrying(tries: int = 4) -> None:
    """A local Ray cluster; the raylet's fixed 30 s start-up limit can be missed on an overloaded machine."""
    import ray

    for i in range(tries):
        try:
            ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
            return
        except Exception as exc:  # noqa: BLE001 - retried, then re-raised
            print(f"[ablation] ray.init failed ({exc}); retry {i + 1}/{tries}", flush=True)
            ray.shutdown()
            if i == tries - 1:
                raise


def run(tmp: Path, name: str, base: list[str], extra: list[str]) -> tuple[dict, dict, float]:
    """One distillation run -> (eval metrics, {step kind: steps}, wall seconds)."""
    from pipelines.distill import main

    t0 = time.time()
    args = [*base, f"train.name={name}", *extra]
    assert main(["--config", "quickstart", *args]) == 0, f"run {name} failed"
    metrics = json.loads((tmp / "runs" / name / "eval_report.json").read_text())["metrics"]
    steps = {p.parent.name.split("-", 2)[-1].rsplit("-", 1)[-1]: json.loads(p.read_text())["step"]
             for p in (tmp / "runs").glob(f"{name}-*/DONE.json")}
    return metrics, steps, time.time() - t0


def mean_std(values: list[float]) -> str:
    v = np.asarray(values, np.float64)
    return f"{v.mean():.1f}" if len(v) < 2 else f"{v.mean():.1f} ± {v.std(ddof=1):.1f}"


def table(results: dict[str, list[dict]], ref: str) -> list[str]:
    head = f"| student (vs {ref}) | seeds | " + " | ".join(TABLE_STAGES) + " | box+1 | box+2 |"
    rows = [head, "|---|---|" + "---|" * (len(TABLE_STAGES) + 2)]
    for variant, runs in results.items():
        cells = [mean_std([r["metrics"][f"student_vs_{ref}/{k}"] for r in runs]) for k in (*TABLE_STAGES, "box+1", "box+2")]
        rows.append(f"| {LABELS[variant]} | {len(runs)} | " + " | ".join(cells) + " |")
    return rows


def cmd_line(a, steps1: int, steps2: int, variants: list[str]) -> str:
    return (f"python benchmarks/ablation.py --teacher-name {a.teacher_name}"
            + (f" --teacher-checkpoint {a.teacher_checkpoint}" if a.teacher_checkpoint else "")
            + f" --img-size {a.img_size} --images {a.images} --eval-images {a.eval_images} --steps1 {steps1} --steps2 {steps2}"
            + f" --batch-size {a.batch_size}"
            + f" --seeds {' '.join(map(str, a.seeds))} --variants {' '.join(variants)} --engine {a.engine}"
            + (f" --work-dir {a.work_dir}" if a.work_dir else ""))


def render(results: dict[str, list[dict]], metas: list[dict]) -> str:
    """The BENCHMARKS.md section: tables vs GT and vs teacher (mean ± std over seeds), commands, wall times."""
    info = machine_info(1)
    m0 = metas[0]
    first = next(iter(results.values()))[0]["metrics"]
    teacher_row = ("| teacher vs GT (same held-out instances) | - | "
                   + " | ".join(f"{first[f'teacher_vs_gt/{k}']:.1f}" for k in (*TABLE_STAGES, "box+1", "box+2")) + " |")
    walls = "; ".join(f"{v}: " + ", ".join(f"s{r['seed']} {r['wall_s']:.0f}" for r in runs) + " s" for v, runs in results.items())
    per_step = {k: np.mean([r["metrics"][f"s_per_step/{k}"] for runs in results.values() for r in runs
                            if f"s_per_step/{k}" in r["metrics"]]) for k in ("encoder_kd", "prompt_kd")}
    walls += ". Mean student step: " + ", ".join(f"{k} {v:.2f} s" for k, v in per_step.items() if np.isfinite(v))
    cmds = "; ".join(f"`{m['cmd']}` ({m['seconds']} s)" for m in metas)
    ckpt = m0["teacher_checkpoint"]
    return "\n".join([
        f"Commands: {cmds}, then `python benchmarks/ablation.py --merge --work-dir ... --out BENCHMARKS.md` "
        f"({info['date']}, {info['cpu']}, 1 torch thread per process, the 2 cores shared with other jobs). "
        f"Teacher `{m0['teacher_name']}` ({'checkpoint ' + ckpt if ckpt else 'RANDOM weights'}), "
        f"synthetic SA-1B-format set of {m0['images']} images at img_size {m0['img_size']}, batch {m0['batch_size']}, "
        f"{m0['steps1'] + m0['steps2']} student steps per run (step 1 / step 2 = {m0['steps1']} / {m0['steps2']} where "
        f"step 2 runs). mIoU x100 on {first['student_vs_gt/num_instances']:.0f} held-out instances, first mask token, "
        "seeded refinement clicks from the error region; mean ± sample std over seeds.", "",
        *table(results, "gt"), teacher_row, "", *table(results, "teacher"), "",
        f"Wall time per run: {walls}."])


def merge(work_dir: Path) -> tuple[dict[str, list[dict]], list[dict]]:
    """Combine the ``ablation-s*.json`` files of parallel invocations (one per seed set and variant list) in ``work_dir``."""
    results: dict[str, list[dict]] = {}
    metas = []
    for f in sorted(work_dir.glob("ablation-s*.json")):
        doc = json.loads(f.read_text())
        metas.append(doc["meta"])
        for v, runs in doc["results"].items():
            results.setdefault(v, []).extend(runs)
    if not metas:
        raise SystemExit(f"no ablation-s*.json in {work_dir}")
    keys = {(m["teacher_name"], m["images"], m.get("eval_images"), m["img_size"], m["batch_size"], m["steps1"], m["steps2"])
            for m in metas}
    if len(keys) > 1:
        raise SystemExit(f"the runs in {work_dir} differ in setup: {keys}")
    return {v: sorted(r, key=lambda x: x["seed"]) for v, r in results.items()}, metas


def main(argv: list[str] | None = None) -> int:
    import ray

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=64, help="synthetic images in the teacher cache")
    p.add_argument("--steps", type=int, default=None, help="total student steps (split 2/3 : 1/3)")
    p.add_argument("--steps1", type=int, default=None, help="override the step-1 share of --steps")
    p.add_argument("--steps2", type=int, default=None, help="with --steps1 and no --steps: total = steps1 + steps2")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--variants", nargs="+", default=["enc-only", "enc-prompt"], help=f"{VARIANTS} or 'all'")
    p.add_argument("--teacher-name", default="tiny")
    p.add_argument("--teacher-checkpoint", default=None)
    p.add_argument("--img-size", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--eval-images", type=int, default=12)
    p.add_argument("--engine", choices=("local", "ray"), default="local")
    p.add_argument("--work-dir", default=None, help="keep runs here (default: a temporary folder, removed)")
    p.add_argument("--cache-only", action="store_true", help="build the teacher cache in --work-dir and stop "
                   "(then run seed sets in parallel processes on it)")
    p.add_argument("--merge", action="store_true", help="only combine --work-dir's ablation-s*.json and report")
    p.add_argument("--out", default=None)
    p.add_argument("--section", default="ablation", help="BENCHMARKS.md section (ablation14: the trained teacher's)")
    a = p.parse_args(argv)
    if a.merge:
        if not a.work_dir:
            p.error("--merge needs --work-dir")
        body = render(*merge(Path(a.work_dir)))
        print(body)
        if a.out:
            replace_section(a.out, a.section, "## Distillation ablation: encoder KD vs + prompt-in-the-loop (issues 4, 14)", body)
        return 0
    variants = list(VARIANTS) if a.variants == ["all"] else a.variants
    if a.steps is None:
        if a.steps1 is None or a.steps2 is None:
            p.error("give --steps, or --steps1 and --steps2")
        steps1, steps2 = a.steps1, a.steps2
    else:
        steps1, steps2 = split_steps(a.steps, a.steps1)
    tmp = Path(a.work_dir) if a.work_dir else Path(tempfile.mkdtemp(prefix="ablation-"))
    tmp.mkdir(parents=True, exist_ok=True)
    ckpt = str(Path(a.teacher_checkpoint).resolve()) if a.teacher_checkpoint else None
    base = [f"cache.data.source={tmp / 'sample'}", f"cache.data.sample_images={a.images}",
            f"cache.output.dir={tmp / 'cache'}", f"cache.teacher.name={a.teacher_name}",
            f"cache.teacher.checkpoint={ckpt if ckpt else 'null'}", f"cache.preprocessing.img_size={a.img_size}",
            f"train.storage_path={tmp / 'runs'}", f"step1.batch_size={a.batch_size}", f"step2.batch_size={a.batch_size}",
            "step3.enabled=false", "export.onnx=false", f"eval.max_images={a.eval_images}",
            "eval.holdout_fraction=0.2", "eval.max_instances_per_image=8", "train.torch_threads=1"]
    t0 = time.time()
    results: dict[str, list[dict]] = {v: [] for v in variants}
    # per (seed set, variants): parallel invocations on one --work-dir do not overwrite each other
    run_tag = "s" + "-".join(map(str, a.seeds)) + "-" + "-".join(variants)
    try:
        if a.engine == "local":
            from benchmarks.ablation_local import build_cache_local
            from edgesam.config import load_config
            from pipelines.distill_config import DistillConfig
            from pipelines.distill_split import make_split

            cfg = load_config(DistillConfig, "quickstart", [*base, "step2.mask_target=teacher", "step2.decode_iters=2"])
            build_cache_local(cfg.cache)
            split = make_split(cfg)
            print(f"[ablation] cache ready ({split['num_train']} train, {len(split['holdout_ids'])} held-out images, "
                  f"{time.time() - t0:.0f} s)", flush=True)
            if a.cache_only:
                return 0
        for seed in a.seeds:
            for v in variants:
                if a.engine == "local":
                    over = [o for o in variant_overrides(v, steps1, steps2) if o.startswith("step2.") and "=" in o
                            and o.split("=")[0] in ("step2.decode_iters", "step2.train_decoder")]
                    vcfg = load_config(DistillConfig, "quickstart", [*base, "step2.mask_target=teacher", *over])
                    metrics, steps, wall = run_local(vcfg, split, v, seed, steps1, steps2)
                else:
                    if not ray.is_initialized():
                        init_ray_retrying()
                    metrics, steps, wall = run(tmp, f"{v}-s{seed}", base, [f"train.seed={seed}", *variant_overrides(v, steps1, steps2)])
                if sum(steps.values()) != steps1 + steps2:
                    raise SystemExit(f"{v} seed {seed}: {steps} student steps, expected {steps1 + steps2}: use more --images")
                results[v].append({"seed": seed, "metrics": metrics, "steps": steps, "wall_s": round(wall, 1)})
                print(f"[ablation] {v} seed {seed}: {steps} steps, {wall:.0f} s: "
                      + " ".join(f"{k} {metrics[f'student_vs_gt/{k}']:.1f}" for k in STAGES), flush=True)
                (tmp / f"partial-{run_tag}.json").write_text(json.dumps(results, indent=1))
        if ray.is_initialized():
            ray.shutdown()
    finally:
        if not a.work_dir:
            shutil.rmtree(tmp, ignore_errors=True)
    meta = {"cmd": cmd_line(a, steps1, steps2, variants), "teacher_name": a.teacher_name,
            "teacher_checkpoint": a.teacher_checkpoint, "images": a.images, "eval_images": a.eval_images, "img_size": a.img_size,
            "batch_size": a.batch_size, "steps1": steps1, "steps2": steps2, "seconds": round(time.time() - t0)}
    if a.work_dir:
        name = f"ablation-{run_tag}.json"
        (Path(a.work_dir) / name).write_text(json.dumps({"meta": meta, "results": results}, indent=1))
    body = render(results, [meta])
    print(body)
    if a.out:
        replace_section(a.out, a.section, "## Distillation ablation: encoder KD vs + prompt-in-the-loop (issues 4, 14)", body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
