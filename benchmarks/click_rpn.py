"""Centre-click mIoU with and without the RPN's box (paper: COCO 48.0 -> 54.3), on held-out synthetic images.

    python benchmarks/click_rpn.py --checkpoint runs/click-rpn/student.pt --config synthetic-gt [key=value ...] \
        --out BENCHMARKS.md

The student must have an RPN (distillation step 3). The held-out images are the run's own split
(``pipelines.distill_split.make_split`` of the same config and overrides: deterministic by image id).
Both prompt kinds run the same protocol (:mod:`edgesam.eval.miou`): ``point`` = the GT mask's centre click
(distance-transform peak); ``click+rpn`` = that click plus the RPN proposal the paper's rule picks
(:mod:`edgesam.inference.click_to_box`: proposals containing the click, the 5 nearest by centre, the best
score), or the click alone when none contains it; then +1/+2 refinement clicks; student vs GT masks.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import load_average, replace_section  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    import torch

    import numpy as np

    from edgesam.config import load_config
    from edgesam.data.cache import model_input
    from edgesam.eval.miou import EvalSample, evaluate_model, gt_prompts_and_lowres
    from edgesam.inference.click_to_box import CLICK_RPN, rpn_proposals, select_boxes
    from edgesam.models import load_student
    from pipelines.distill_config import DistillConfig
    from pipelines.distill_split import make_split
    from pipelines.evaluate import load_rows

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--config", default="synthetic-gt")
    p.add_argument("--max-instances", type=int, default=16)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=None)
    p.add_argument("overrides", nargs="*")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    cfg = load_config(DistillConfig, a.config, a.overrides)
    split = make_split(cfg)
    img_size = cfg.cache.preprocessing.img_size
    model, _ = load_student(a.checkpoint, img_size=img_size)
    if model.rpn is None:
        raise SystemExit(f"{a.checkpoint} has no RPN: train it with step 3 first")
    rows = load_rows(split["holdout_files"], set(split["holdout_ids"]), img_size)
    t0, load0 = time.time(), load_average()
    # student vs GT only, point and click+rpn (the teacher comparisons of evaluate_rows are not needed here)
    model.eval()
    rng = np.random.default_rng(0)
    samples = [EvalSample.from_cache_row(r, max_instances=a.max_instances, rng=rng) for r in rows]
    with torch.no_grad():
        embs_props = [rpn_proposals(model, model_input(r["image_jpeg"], img_size)[None], r["input_hw"]) for r in rows]
    got = evaluate_model(lambda e, c, l: model.decode(e, c, l), [e for e, _ in embs_props], samples, img_size,
                         kinds=("point", CLICK_RPN), proposals=[p for _, p in embs_props], refine_iters=2)
    # how often the rule found a box (0 % makes click+rpn identical to point)
    # and how good the chosen box is: its IoU with the instance's GT box (the box prompt's mIoU bounds click+rpn)
    from torchvision.ops import box_iou

    with_box = total = 0
    box_ious: list[float] = []
    for smp, (_, props) in zip(samples, embs_props):
        if smp.num_instances:
            centres, _ = gt_prompts_and_lowres(smp, img_size)
            chosen, has = select_boxes(torch.from_numpy(centres), *props)
            with_box, total = with_box + int(has.sum()), total + len(has)
            ious = box_iou(chosen, torch.from_numpy(smp.boxes)).diagonal()
            box_ious += ious[has].tolist()
    bi = np.asarray(box_ious) if box_ious else np.zeros(1)
    num_props = float(np.mean([len(p[0]) for _, p in embs_props]))
    table = ["| prompt | mIoU | +1 click | +2 clicks |", "|---|---|---|---|"]
    for kind in ("point", CLICK_RPN):
        table.append(f"| {kind} | {got[kind]:.1f} | {got[kind + '+1']:.1f} | {got[kind + '+2']:.1f} |")
    cmd = f"python benchmarks/click_rpn.py --checkpoint {a.checkpoint} --config {a.config} " + " ".join(a.overrides)
    body = "\n".join([
        f"Command: `{cmd.strip()} --out BENCHMARKS.md` ({time.strftime('%Y-%m-%d %H:%M %Z')}, shared 2-CPU machine, "
        f"load average {load0:.1f}, {time.time() - t0:.0f} s). Student vs GT on {int(got['num_images'])} held-out "
        f"synthetic images ({int(got['num_instances'])} instances, at most {a.max_instances} per image), {img_size} px.",
        f"The RPN gave {num_props:.1f} proposals per image (score > 0.05); {with_box} of {total} centre clicks "
        f"({100 * with_box / max(1, total):.0f} %) fell inside one and got a box. The chosen box against the "
        f"instance's GT box: mean IoU {bi.mean():.2f}, {100 * (bi >= 0.5).mean():.0f} % at IoU >= 0.5, "
        f"{100 * (bi >= 0.75).mean():.0f} % at >= 0.75.", "", *table, "",
        f"**Centre click {got['point']:.1f} -> click+rpn {got['click+rpn']:.1f} mIoU** (paper, COCO with the "
        "official models: 48.0 -> 54.3)."])
    print(body)
    if a.out:
        replace_section(a.out, "click-rpn", "## Click -> RPN box -> point+box prompt (issue 10)", body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
