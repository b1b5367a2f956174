"""Segment everything: RPN mode vs SAM's 32x32 point grid, seconds per image and recall, on the same images.

    python benchmarks/everything.py --img-size 1024 --threads 2 --images 2 --out BENCHMARKS.md
    python benchmarks/everything.py --checkpoint runs/sa1b/student.pt ...   # a distilled student with an RPN
    python benchmarks/everything.py --checkpoint runs/synthetic-gt/student.pt --img-size 256 \
        --dataset-sizes 192,320 --seed 2 --images 24 stability_score_thresh=0.8 rpn_score_thresh=0.3
    python benchmarks/everything.py --checkpoint runs/synthetic-kd/student.pt --img-size 128 --section everything-kd \
        --dataset-sizes 192,320 --seed 2 --images 24 stability_score_thresh=0.8 rpn_score_thresh=0.3
        # distilled from the trained small SAM teacher (configs/synthetic-kd.yaml), beside the GT-trained one

Images are synthetic scenes (``edgesam.data.synthetic.make_scene``) with exact instance masks, so recall and AP
are computed against true GT. Without ``--checkpoint`` the student and RPN have RANDOM weights: the timings
are real (they do not depend on weight values, except through how many proposals pass the score threshold,
capped at ``max_proposals``) but recall/AP are meaningless. Writes the section between
``<!-- everything:begin -->`` and ``<!-- everything:end -->`` of ``--out`` and prints it.
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

from benchmarks.common import load_average, machine_info, replace_section, set_threads, wait_for_quiet  # noqa: E402
from edgesam.config import add_config_args, load_config  # noqa: E402
from edgesam.data.rle import encode_mask, mask_to_bbox  # noqa: E402
from edgesam.data.images import decode_image  # noqa: E402
from edgesam.data.synthetic import make_scene, sa1b_record  # noqa: E402
from edgesam.eval.everything_eval import evaluate_everything  # noqa: E402
from edgesam.inference.everything import EverythingConfig, EverythingGenerator  # noqa: E402
from edgesam.models import EdgeSAM, load_student  # noqa: E402
from edgesam.models.rpn import build_rpn  # noqa: E402

HEADING = "## Segment everything: RPN vs point grid (issue: RPN-driven segment everything)"
SECTION = "everything"


def build_model(checkpoint: Path | None, img_size: int, seed: int) -> tuple[EdgeSAM, bool]:
    """-> (student with an RPN, random_weights)."""
    if checkpoint is not None:
        model, _ = load_student(checkpoint, img_size)
        if model.rpn is None:
            raise SystemExit(f"{checkpoint} has no RPN: RPN mode needs a student trained with distillation step 3")
        return model.eval(), False
    torch.manual_seed(seed)
    model = EdgeSAM(img_size).eval()
    model.rpn = build_rpn(model.image_encoder.feature_channels, width=64, num_convs=2).eval()
    return model, True


def scenes(n: int, height: int, width: int, seed: int, size_range: tuple[int, int] | None = None
           ) -> list[tuple[np.ndarray, list[np.ndarray]]]:
    """``n`` synthetic scenes with exact masks: ``height`` x ``width`` from ``make_scene``, or, with ``size_range``,
    the dataset's own images (``sa1b_record``: random sizes, photo backgrounds, JPEG round trip) of ``seed``,
    which differ from every training image when ``seed`` differs from the training set's."""
    if size_range is None:
        rng = np.random.default_rng(seed)
        return [make_scene(rng, height, width) for _ in range(n)]
    out = []
    for i in range(n):
        jpeg, _, masks = sa1b_record(seed, i, size_range)
        out.append((decode_image(jpeg), masks))
    return out


def run_modes(model: EdgeSAM, cfgs: dict[str, EverythingConfig], images: list[tuple[np.ndarray, list[np.ndarray]]],
              repeats: dict[str, int]) -> tuple[list[dict], list[float]]:
    """Time ``generate`` per image, the modes interleaved image by image so that both see the same machine load
    (median of ``repeats[mode]`` runs, after one untimed warm-up call per mode), and evaluate the output.
    -> (one result per mode, 1-min load averages sampled before each image)."""
    gens = {m: EverythingGenerator.from_model(model, c) for m, c in cfgs.items()}
    for g in gens.values():
        g.generate(np.zeros((64, 64, 3), np.uint8))  # warm-up: allocator, kernels
        g.stats = {k: 0 for k in g.stats}
    times: dict[str, list[float]] = {m: [] for m in cfgs}
    evals: dict[str, list[dict]] = {m: [] for m in cfgs}
    loads = []
    for i, (img, masks) in enumerate(images):
        h, w = img.shape[:2]
        gt = [{"segmentation": encode_mask(m), "bbox": mask_to_bbox(m)} for m in masks]
        for m, gen in gens.items():
            loads.append(load_average())
            runs = []
            for _ in range(repeats[m]):
                t0 = time.perf_counter()
                recs = gen.generate(img)
                runs.append(time.perf_counter() - t0)
            times[m].append(float(np.median(runs)))
            evals[m].append({"id": i + 1, "height": h, "width": w, "gt": gt, "pred": recs,
                             "proposals": gen.last_proposals if m == "rpn" else None})
            print(f"  {m}: image {i + 1}/{len(images)} {w}x{h}: {times[m][-1]:.2f} s (median of {len(runs)}), "
                  f"{len(recs)} masks, load {loads[-1]:.2f}", flush=True)
    n = len(images)
    results = []
    for m, gen in gens.items():
        calls = n * repeats[m]
        results.append({"mode": m, "images": n, "repeats": repeats[m], "seconds": times[m],
                        "s_per_image": float(np.mean(times[m])), "prompts_per_image": gen.stats["prompts"] / calls,
                        "decoder_calls_per_image": gen.stats["decoder_calls"] / calls,
                        "masks_per_image": sum(len(e["pred"]) for e in evals[m]) / n, "eval": evaluate_everything(evals[m])})
    return results, loads


def bench_postprocess(images: list[tuple[np.ndarray, list[np.ndarray]]], cfg: EverythingConfig, img_size: int,
                      n_masks: int = 100, seed: int = 0) -> dict:
    """Seconds per image to filter, upsample, RLE-encode and mask-NMS ``n_masks`` masks that all pass the filters.

    With random weights no mask passes the stability filter, so the timed runs above leave this cost out; here
    the low-res logits are made from the GT masks (+-10, shifted by a few low-res pixels so NMS has duplicates).
    """
    import torch.nn.functional as F

    from edgesam.data.transforms import resized_shape
    from edgesam.inference import amg_utils as U
    from edgesam.inference.everything import candidates_from_logits

    rng = np.random.default_rng(seed)
    low = img_size // 4
    cfg = cfg.model_copy(update={"num_outputs": 1})
    times, kept = [], []
    for img, masks in images:
        h, w = img.shape[:2]
        ih, iw = resized_shape(h, w, img_size)
        logits = np.full((n_masks, 4, low, low), -10.0, np.float32)
        for i in range(n_masks):
            m = torch.from_numpy(masks[i % len(masks)].astype(np.float32))[None, None]
            m = F.interpolate(m, (ih // 4, iw // 4), mode="area")[0, 0].numpy() > 0.5
            dy, dx = rng.integers(-2, 3, 2)
            m = np.roll(m, (dy, dx), axis=(0, 1))
            logits[i, 0, : ih // 4, : iw // 4] = np.where(m, 10.0, -10.0)
        t0 = time.perf_counter()
        cands = candidates_from_logits(logits, np.ones((n_masks, 4), np.float32), cfg, (ih, iw), (h, w), img_size)
        keep = U.mask_nms([c["rle"] for c in cands], np.array([c["stability"] for c in cands]), cfg.mask_nms_iou)
        times.append(time.perf_counter() - t0)
        kept.append(len(keep))
    return {"masks_in": n_masks, "s_per_image": float(np.mean(times)), "kept_per_image": float(np.mean(kept))}


def _f(v: float | None, fmt: str = ".3f") -> str:
    return "n/a" if v is None else format(v, fmt)


def render(info: dict, cmd: str, results: list[dict], random_weights: bool, image_desc: str, img_size: int,
           loads: tuple[float, ...], cfgs: dict[str, EverythingConfig], post: dict | None = None) -> str:
    w = "RANDOM weights (student and RPN): recall/AP are meaningless, only the timings count" if random_weights \
        else "distilled student checkpoint"
    lines = [f"Command: `{cmd}`", "",
             f"Machine: {info['cpu']}, {info['logical_cpus']} logical CPUs, {info['threads']} torch threads; torch "
             f"{info['torch']}; {info['date']}; 1-min load average {loads[0]:.2f} at start, {loads[1]:.2f} at end, "
             f"{loads[2]:.2f}-{loads[3]:.2f} before the timed images (the machine is shared: timings under load are "
             "pessimistic; the modes run interleaved image by image so both see the same load).", "",
             f"Model: EdgeSAM student + FCOS RPN, torch eager on CPU, S = {img_size}; {w}. Images: {image_desc}, "
             "the same images for both modes.", "",
             "s / image: mean over images of the median of the runs per image (RPN mode: "
             f"{results[0].get('repeats', 1) if results and results[0]['mode'] == 'rpn' else 1} runs; grid: 1 run).", "",
             "| mode | images | prompts / image | decoder calls / image | s / image | masks / image | recall@0.5 | "
             "recall@0.75 | RPN box recall@0.5 | segm AP |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        e = r["eval"]
        note = " (random)" if random_weights else ""
        lines.append(f"| {r['mode']} | {r['images']} | {r['prompts_per_image']:.0f} | {r['decoder_calls_per_image']:.0f} | "
                     f"{r['s_per_image']:.2f} | {r['masks_per_image']:.1f} | {_f(e['recall@0.5'])}{note} | "
                     f"{_f(e['recall@0.75'])}{note} | {_f(e['box_recall@0.5'])}{note if e['box_recall@0.5'] is not None else ''} | "
                     f"{_f(e['AP'])}{note} |")
    if len(results) == 2 and results[0]["s_per_image"] > 0:
        rpn, grid = (results[0], results[1]) if results[0]["mode"] == "rpn" else (results[1], results[0])
        lines += ["", f"The {cfgs['grid'].points_per_side}x{cfgs['grid'].points_per_side} grid takes "
                      f"{grid['s_per_image'] / rpn['s_per_image']:.1f}x the time of RPN mode per image here. The decoder "
                      f"dominates: RPN mode decodes {rpn['prompts_per_image']:.0f} box prompts in one call, the grid "
                      f"{grid['prompts_per_image']:.0f} point prompts in {grid['decoder_calls_per_image']:.0f} calls."]
        if not random_weights and grid["eval"]["recall@0.5"]:
            speed = grid["s_per_image"] / rpn["s_per_image"]
            keep = rpn["eval"]["recall@0.5"] / grid["eval"]["recall@0.5"]
            met = "met" if speed >= 10 and keep >= 0.9 else "not met"
            lines += ["", f"Against the goal (RPN mode >= 10x faster than the grid at >= 90 % of its recall@0.5): "
                          f"**{speed:.1f}x faster at {100 * keep:.0f} % of the grid's recall** ({met})."]
    if post is not None:
        lines += ["", f"Post-processing when masks survive (not in the rows above if they show 0 masks / image): "
                      f"filtering, upsampling to the image size, RLE encoding and mask NMS of {post['masks_in']} "
                      f"surviving low-res masks take {post['s_per_image']:.2f} s / image "
                      f"({post['kept_per_image']:.0f} kept after NMS), the same code path in both modes."]
    keys = {"rpn": ("prompt", "rpn_score_thresh", "rpn_nms_iou", "max_proposals"), "grid": ("points_per_side", "points_per_batch")}
    common = ("num_outputs", "stability_score_thresh", "stability_score_offset", "mask_nms_iou")
    lines += ["", "Settings: " + "; ".join(
        f"{m}: " + ", ".join(f"{k}={getattr(c, k)}" for k in keys[m] + common) + f" (tokens per prompt {c.outputs_per_prompt()})"
        for m, c in cfgs.items()) + "."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--img-size", type=int, default=1024)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--images", type=int, default=2, help="images per mode (the same ones for both)")
    p.add_argument("--height", type=int, default=768)
    p.add_argument("--width", type=int, default=1024)
    p.add_argument("--dataset-sizes", default=None, metavar="LO,HI",
                   help="use the synthetic dataset's images (long side LO..HI px, seed --seed) instead of fixed-size scenes")
    p.add_argument("--checkpoint", type=Path, default=None, help="student checkpoint with an RPN (default: random)")
    add_config_args(p, default="everything")  # EverythingConfig YAML + key=value overrides (both modes)
    p.add_argument("--points-per-side", type=int, default=32)
    p.add_argument("--modes", default="rpn,grid")
    p.add_argument("--rpn-repeats", type=int, default=3, help="timed RPN-mode runs per image (median); grid runs once")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-load", type=float, default=1.5, help="wait for a 1-min load average at or below this")
    p.add_argument("--wait", type=float, default=600, help="seconds to wait for a quiet machine before starting")
    p.add_argument("--out", type=Path, default=Path("BENCHMARKS.md"))
    p.add_argument("--json", type=Path, default=None, help="also write the raw numbers here")
    p.add_argument("--section", default=SECTION, help="BENCHMARKS.md section to write (e.g. everything-kd for the "
                   "teacher-distilled student, beside the GT-trained one)")
    p.add_argument("--fullres", action="store_true", help="12 MP photos through ONNX Runtime, before vs after "
                   "(benchmarks/everything_fullres.py); --images photos, --before another checkout for the 'before' row")
    p.add_argument("--before", type=Path, default=None, help="with --fullres: a checkout whose code gives the 'before' row")
    args = p.parse_args(argv)
    cmd = "python benchmarks/everything.py " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    if args.fullres:
        from benchmarks.everything_fullres import main_fullres

        return main_fullres(args, cmd)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if not modes or any(m not in ("rpn", "grid") for m in modes):
        p.error("--modes must list rpn and/or grid")

    set_threads(args.threads)
    torch.set_num_interop_threads(1)
    model, random_weights = build_model(args.checkpoint, args.img_size, args.seed)
    if random_weights:
        print("NOTE: RANDOM weights (student and RPN): recall/AP are meaningless; timings are real.", flush=True)
    base = load_config(EverythingConfig, args.config, args.overrides)
    cfgs = {m: base.model_copy(update={"mode": m, "points_per_side": args.points_per_side}) for m in modes}
    size_range = tuple(int(v) for v in args.dataset_sizes.split(",")) if args.dataset_sizes else None
    imgs = scenes(args.images, args.height, args.width, args.seed, size_range)
    load_start = wait_for_quiet(args.max_load, args.wait)
    info = machine_info(args.threads)
    results, sampled = run_modes(model, cfgs, imgs, {"rpn": args.rpn_repeats, "grid": 1})
    post = bench_postprocess(imgs, base, args.img_size)
    print(f"[everything] post-processing: {post}", flush=True)
    loads = (load_start, load_average(), min(sampled), max(sampled))
    if size_range is None:
        desc = f"synthetic scenes {args.width}x{args.height} (`make_scene`, exact GT masks)"
    else:
        desc = (f"{len(imgs)} images of the synthetic SA-1B-format set with seed {args.seed} (long side {size_range[0]}-"
                f"{size_range[1]} px, JPEG, exact GT masks; the training set uses seed 0, so none was trained on)")
    body = render(info, cmd, results, random_weights, desc, args.img_size, loads, cfgs, post)
    heading = HEADING if args.section == SECTION else f"{HEADING} ({args.section})"
    replace_section(args.out, args.section, heading, body)
    if args.json:
        args.json.write_text(json.dumps({"info": info, "loads": loads, "results": results, "postprocess": post,
                                         "random_weights": random_weights}, indent=2, default=float))
    print(body)
    print(f"wrote section '{args.section}' of {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
