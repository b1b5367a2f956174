"""Evaluate a student on held-out cache rows: mIoU against GT and against the teacher.

    python pipelines/evaluate.py --checkpoint runs/quickstart/student.pt --cache runs/quickstart/cache
    python pipelines/evaluate.py --checkpoint edge_sam.pth --cache /data/cache-sa1b-val --all \
        --teacher-checkpoint /models/sam_vit_h_4b8939.pth --max-instances 64

Rows: by default only the held-out rows of the cache (the ids a distillation run recorded in its
student checkpoint; for a checkpoint without them, e.g. an official one, the same id-hash split as
``eval.holdout_fraction``); ``--all`` scores every row (a cache the student never trained on, e.g.
SA-1B's validation tar). ``--max-images`` and ``--max-instances`` (per image) cap the work.
Teacher metrics need the teacher's prompt decoder: it is rebuilt from the checkpoint's record or
``--teacher-checkpoint`` (checked against the cache's teacher digest); ``--no-teacher`` reports
student vs GT only.

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
    """Decode cache rows (optionally only ``ids``), in file order, reading only the rows asked for.

    Rows hold the JPEG, not the decoded (3,S,S) image, and the teacher embedding as float16, so a few
    hundred rows at S = 1024 stay a few hundred MB (``evaluate_rows`` decodes images one at a time)."""
    rows: list[dict] = []
    for f in files:
        if ids is not None:
            batches = pq.read_table(f, filters=[("image_id", "in", sorted(ids))]).to_batches() if ids else []
        else:
            batches = pq.ParquetFile(f).iter_batches(batch_size=8)
        for batch in batches:
            for r in batch.to_pylist():
                row = decode_row(r, img_size)
                del row["image"]
                row["embedding"] = row["embedding"].half()
                rows.append(row)
                if limit and len(rows) >= limit:
                    return rows
    return rows


@torch.no_grad()
def evaluate_rows(model, teacher_pd, rows: list[dict], img_size: int, refine_clicks: int = 2,
                  max_instances: int = 16, seed: int = 0, device: torch.device | str = "cpu",
                  traces: list | None = None, click_rpn: bool = False) -> dict[str, float]:
    """-> {"student_vs_gt/box", "student_vs_gt/box+1", ..., "student_vs_teacher/...", "teacher_vs_gt/..."};
    with ``teacher_pd`` None only the student-vs-GT metrics. ``max_instances`` caps instances per image.
    ``click_rpn``: also score the ``click+rpn`` prompt (centre click + the student RPN's box for it) beside
    ``point``; the model needs an RPN, and the teacher is given the student's proposals."""
    from edgesam.data.cache import model_input

    model = model.to(device).eval()
    rng = np.random.default_rng(seed)
    samples = [EvalSample.from_cache_row(r, max_instances=max_instances, rng=rng) for r in rows]
    proposals = None
    if click_rpn:
        from edgesam.inference.click_to_box import rpn_proposals

        embs_props = [rpn_proposals(model, model_input(r["image_jpeg"], img_size)[None].to(device), r["input_hw"])
                      for r in rows]
        student_embs, proposals = [e for e, _ in embs_props], [p for _, p in embs_props]
    else:
        student_embs = [model.image_encoder(model_input(r["image_jpeg"], img_size)[None].to(device)) for r in rows]
    student_fn = lambda e, c, l: model.decode(e, c, l)  # noqa: E731
    kw = dict(refine_iters=refine_clicks, seed=seed)
    if click_rpn:
        from edgesam.eval.miou import EVAL_KINDS

        kw.update(kinds=EVAL_KINDS, proposals=proposals)
    hook = (lambda i, s, t: traces.append((i, s, t))) if traces is not None else None
    runs = [("student_vs_gt", lambda: evaluate_model(student_fn, student_embs, samples, img_size, on_trace=hook, **kw))]
    if teacher_pd is not None:
        teacher_pd = teacher_pd.to(device).eval()
        teacher_fn = lambda e, c, l: teacher_pd(e, c, l)  # noqa: E731
        teacher_embs = lambda: (r["embedding"][None].to(device).float() for r in rows)  # noqa: E731
        runs += [("student_vs_teacher", lambda: evaluate_model(student_fn, student_embs, samples, img_size,
                                                               reference_fn=teacher_fn,
                                                               reference_embeddings=teacher_embs(), **kw)),
                 ("teacher_vs_gt", lambda: evaluate_model(teacher_fn, teacher_embs(), samples, img_size, **kw))]
    out = {}
    for name, run in runs:
        out.update({f"{name}/{k}": v for k, v in run().items() if not k.startswith("ignored_clicks")})
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


def evaluate_holdout_report(model, teacher_pd, cfg, split: dict, out_dir: Path, device: torch.device | str = "cpu") -> dict:
    """Final evaluation: the full report plus a mask-overlay grid (box prompts, student vs GT), on ``device``
    (``pipelines.finish`` runs it in a Ray task with the train workers' resources)."""
    from edgesam.data.cache import decode_jpeg
    from edgesam.eval.miou import full_res_masks

    img_size = cfg.cache.preprocessing.img_size
    rows = load_rows(split["holdout_files"], set(split["holdout_ids"]), img_size)
    traces: list = []
    metrics = evaluate_rows(model, teacher_pd, rows, img_size, cfg.eval.refine_clicks,
                            cfg.eval.max_instances_per_image, cfg.eval.seed, device=device, traces=traces)
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

        from edgesam import storage

        report["mask_grid"] = storage.display(mask_grid(images, preds, refs, storage.join(out_dir, "mask_grid.png"),
                                                        titles=titles, pred_label="student (box)", ref_label="GT"))
    return report


class TeacherDecoderNeeded(ValueError):
    """The cache was made by a real teacher whose prompt decoder this evaluation was not given."""


def teacher_decoder_for(cache_teacher: dict, img_size: int, recorded: str | None, given: str | None):
    """The prompt decoder of the teacher that made the cache, never a random stand-in for a real one.

    ``cache_teacher`` is the cache identity's teacher ({"name", "img_size", "checkpoint_sha256"});
    ``recorded`` the teacher checkpoint a distillation run wrote into the student's meta, ``given`` the
    ``--teacher-checkpoint`` option. A random-weight teacher (digest None) is rebuilt from its seed."""
    from edgesam.models import build_teacher_prompt_decoder
    from edgesam.models.teacher import REGISTRY_NAMES, SMALL_CONFIGS, sha256_file

    name = cache_teacher["name"]
    tname = name if name in (*REGISTRY_NAMES, *SMALL_CONFIGS) else "tiny"  # small: pipelines/train_teacher.py
    seed = int(name.rsplit("seed", 1)[-1]) if "seed" in name else 0
    want = cache_teacher.get("checkpoint_sha256")
    if want is None:
        print(f"[evaluate] the cache's teacher ({name}) has RANDOM weights: teacher metrics compare against it",
              flush=True)
        return build_teacher_prompt_decoder(tname, None, img_size, seed=seed)
    from edgesam import storage

    path = given or (recorded if recorded and storage.is_file(recorded) else None)
    if path is None:
        raise TeacherDecoderNeeded(
            f"the cache was made by the {name} teacher (checkpoint sha256 {want[:12]}...) and this student checkpoint "
            "does not name a readable teacher checkpoint (official EdgeSAM files never do): pass --teacher-checkpoint "
            "/path/to/that SAM checkpoint for the student-vs-teacher and teacher-vs-GT metrics, or --no-teacher for "
            "student vs GT only. A random decoder is never used in its place.")
    got = sha256_file(path)
    if got != want:
        raise TeacherDecoderNeeded(f"--teacher-checkpoint {path} has sha256 {got[:12]}..., the cache was made with "
                                   f"{want[:12]}...: not the cache's teacher")
    return build_teacher_prompt_decoder(tname, path, img_size, seed=seed)


def select_ids(files: list[str], meta: dict, args) -> set[str] | None:
    """The held-out image ids to score (None = every row with ``--all``)."""
    from pipelines.distill_split import is_holdout

    if args.all:
        return None
    holdout = meta.get("holdout") or {}
    if holdout.get("ids"):
        return set(holdout["ids"])
    fraction = args.holdout_fraction if args.holdout_fraction is not None else holdout.get("fraction", 0.15)
    seed = args.eval_seed if args.eval_seed is not None else holdout.get("seed", 0)
    print(f"[evaluate] the checkpoint records no held-out ids: scoring the id-hash split (fraction {fraction}, seed "
          f"{seed}). A checkpoint trained elsewhere (an official one) may have seen these images: prefer --all on a "
          "cache of images it never trained on.", flush=True)
    ids = set()
    for f in files:
        ids |= {i for i in pq.read_table(f, columns=["image_id"]).column("image_id").to_pylist()
                if is_holdout(i, fraction, seed)}
    return ids


def main(argv: list[str] | None = None) -> int:
    from edgesam.models import load_student

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--cache", required=True)
    parser.add_argument("--all", action="store_true", help="score every row, not only the held-out ones")
    parser.add_argument("--holdout-fraction", type=float, default=None,
                        help="held-out split for a checkpoint that records none (default: 0.15)")
    parser.add_argument("--eval-seed", type=int, default=None, help="seed of that split (default: 0)")
    parser.add_argument("--max-images", type=int, default=50)
    parser.add_argument("--max-instances", type=int, default=16, help="instances per image (sampled beyond)")
    parser.add_argument("--refine-clicks", type=int, default=2)
    parser.add_argument("--teacher-checkpoint", default=None, help="the SAM checkpoint that made the cache")
    parser.add_argument("--no-teacher", action="store_true", help="student vs GT only (no teacher decoder)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", default=None, help="write the metrics JSON here")
    parser.add_argument("--click-rpn", action="store_true",
                        help="also score click+rpn (centre click + the student RPN's box for it; needs an RPN)")
    args = parser.parse_args(argv)
    manifest = load_manifest(args.cache)
    pre = manifest["identity"]["preprocessing"]
    model, extras = load_student(args.checkpoint, img_size=pre["img_size"])
    meta = extras.get("meta") or {}
    try:
        teacher_pd = None if args.no_teacher else teacher_decoder_for(
            manifest["identity"]["teacher"], pre["img_size"], (meta.get("teacher") or {}).get("checkpoint"),
            args.teacher_checkpoint)
    except TeacherDecoderNeeded as exc:
        print(f"[evaluate] ERROR: {exc}", file=sys.stderr)
        return 2
    files = [str(f) for f in shard_files(args.cache)]
    ids = select_ids(files, meta, args)
    rows = load_rows(files, ids, pre["img_size"], args.max_images)
    metrics = evaluate_rows(model, teacher_pd, rows, pre["img_size"], args.refine_clicks, args.max_instances,
                            device=args.device, click_rpn=args.click_rpn)
    text = json.dumps({"num_images": len(rows), "rows": "all" if ids is None else "held-out",
                       "max_instances_per_image": args.max_instances, "metrics": metrics}, indent=2)
    print(text)
    if args.out:
        from edgesam import storage

        storage.write_text(args.out, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
