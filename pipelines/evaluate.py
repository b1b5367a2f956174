"""Evaluate a student on held-out cache rows: mIoU against GT and against the teacher.

    python pipelines/evaluate.py --checkpoint runs/quickstart/student.pt --cache runs/quickstart/cache [--all]

Protocol (edgesam.eval.miou): GT box, centre click (distance-transform peak), +1/+2 refinement clicks
from the error region; first mask token; IoU at the original resolution; mean over instances x 100.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
import pyarrow.parquet as pq
import torch

from edgesam.data.cache import decode_row, load_manifest, shard_files
from edgesam.eval.miou import EvalSample, evaluate_model


def load_rows(files: list[str], ids: set[str] | None, img_size: int, limit: int | None = None) -> list[dict]:
    """Decode cache rows (optionally only ``ids``), in file order."""
    rows: list[dict] = []
    for f in files:
        table = pq.read_table(f)
        for r in table.to_pylist():
            if ids is None or r["image_id"] in ids:
                rows.append(decode_row(r, img_size))
                if limit and len(rows) >= limit:
                    return rows
    return rows


@torch.no_grad()
def evaluate_rows(model, teacher_pd, rows: list[dict], img_size: int, refine_clicks: int = 2,
                  max_instances: int = 16, seed: int = 0, device: torch.device | str = "cpu",
                  traces: list | None = None) -> dict[str, float]:
    """-> {"student_vs_gt/box", "student_vs_gt/box+1", ..., "student_vs_teacher/...", "teacher_vs_gt/..."}."""
    model = model.to(device).eval()
    teacher_pd = teacher_pd.to(device).eval()
    rng = np.random.default_rng(seed)
    samples = [EvalSample.from_cache_row(r, max_instances=max_instances, rng=rng) for r in rows]
    student_embs = [model.image_encoder(r["image"][None].to(device)) for r in rows]
    teacher_embs = [r["embedding"][None].to(device) for r in rows]
    student_fn = lambda e, c, l: model.decode(e, c, l)  # noqa: E731
    teacher_fn = lambda e, c, l: teacher_pd(e, c, l)  # noqa: E731
    kw = dict(refine_iters=refine_clicks, seed=seed)
    hook = (lambda i, s, t: traces.append((i, s, t))) if traces is not None else None
    out = {}
    for name, res in (
        ("student_vs_gt", evaluate_model(student_fn, student_embs, samples, img_size, on_trace=hook, **kw)),
        ("student_vs_teacher", evaluate_model(student_fn, student_embs, samples, img_size, reference_fn=teacher_fn,
                                              reference_embeddings=teacher_embs, **kw)),
        ("teacher_vs_gt", evaluate_model(teacher_fn, teacher_embs, samples, img_size, **kw)),
    ):
        out.update({f"{name}/{k}": v for k, v in res.items() if not k.startswith("ignored_clicks")})
    return out


def evaluate_holdout(model, teacher_pd, config: dict, device) -> dict[str, float]:
    """End-of-epoch evaluation inside the Ray Train loop (rank 0)."""
    ev = config["eval"]
    rows = load_rows(config["holdout_files"], set(config["holdout_ids"]), config["img_size"])
    was_training = model.training
    res = evaluate_rows(model, teacher_pd, rows, config["img_size"], ev["refine_clicks"], ev["max_instances_per_image"],
                        ev["seed"], device)
    model.train(was_training)
    return {k: v for k, v in res.items() if k.startswith("student_vs_") and "/num_" not in k}


def evaluate_holdout_report(model, teacher_pd, cfg, split: dict, out_dir: Path) -> dict:
    """Final evaluation: the full report plus a mask-overlay grid (box prompts, student vs GT)."""
    from edgesam.data.cache import decode_jpeg
    from edgesam.eval.miou import full_res_masks

    img_size = cfg.cache.preprocessing.img_size
    rows = load_rows(split["holdout_files"], set(split["holdout_ids"]), img_size)
    traces: list = []
    metrics = evaluate_rows(model, teacher_pd, rows, img_size, cfg.eval.refine_clicks,
                            cfg.eval.max_instances_per_image, cfg.eval.seed, traces=traces)
    report = {"num_images": len(rows), "metrics": metrics, "protocol": __doc__.strip().splitlines()[-2:]}
    images, preds, refs, titles = [], [], [], []
    by_id = {r["image_id"]: r for r in rows}
    for _, sample, trace in traces:
        if trace.kind != "box" or len(images) >= 8:
            continue
        row = by_id[sample.image_id]
        full = full_res_masks(trace.pred_lowres[0][:1], sample.input_hw, sample.orig_hw, img_size)[0] > 0
        img = decode_jpeg(row["image_jpeg"])
        img = np.asarray(torch.nn.functional.interpolate(torch.from_numpy(img).permute(2, 0, 1)[None].float(),
                         sample.orig_hw, mode="bilinear")[0].permute(1, 2, 0).round().byte())
        images.append(img), preds.append(full.cpu().numpy()), refs.append(sample.masks(0, 1)[0]), titles.append(sample.image_id)
    if images:
        from edgesam.eval.plots import mask_grid

        report["mask_grid"] = str(mask_grid(images, preds, refs, out_dir / "mask_grid.png", titles=titles,
                                            pred_label="student (box)", ref_label="GT").resolve())
    return report


def main(argv: list[str] | None = None) -> int:
    from edgesam.models import build_teacher_prompt_decoder, load_student

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--cache", required=True)
    parser.add_argument("--max-images", type=int, default=50)
    parser.add_argument("--refine-clicks", type=int, default=2)
    parser.add_argument("--out", default=None, help="write the metrics JSON here")
    args = parser.parse_args(argv)
    manifest = load_manifest(args.cache)
    pre = manifest["identity"]["preprocessing"]
    teacher = manifest["identity"]["teacher"]
    model, extras = load_student(args.checkpoint, img_size=pre["img_size"])
    tname = teacher["name"] if teacher["name"] in ("vit_h", "vit_l", "vit_b") else "tiny"
    seed = int(teacher["name"].rsplit("seed", 1)[-1]) if "seed" in teacher["name"] else 0
    tckpt = (extras.get("meta") or {}).get("teacher", {}).get("checkpoint")
    teacher_pd = build_teacher_prompt_decoder(tname, tckpt, pre["img_size"], seed=seed)
    rows = load_rows([str(f) for f in shard_files(args.cache)], None, pre["img_size"], args.max_images)
    metrics = evaluate_rows(model, teacher_pd, rows, pre["img_size"], args.refine_clicks)
    text = json.dumps({"num_images": len(rows), "metrics": metrics}, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
