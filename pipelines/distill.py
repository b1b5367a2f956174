"""EdgeSAM distillation on Ray Train: the project's main job.

    python pipelines/distill.py                      # embedded default (configs/quickstart.yaml)
    ray job submit --working-dir . -- python pipelines/distill.py --config sa1b-1pct train.storage_path=s3://...

With no arguments it runs end to end on 2 CPU cores in a few minutes: generate the synthetic sample
set if absent, cache a tiny RANDOM-weight SAM teacher, run step 1 (encoder KD) and step 2
(prompt-in-the-loop KD) briefly, train the RPN (step 3), evaluate, export ONNX, and print where
everything went. Resubmitting the same command resumes: finished steps are skipped and an
interrupted step continues from its latest checkpoint. A changed step config, or a cache made by another
teacher or preprocessing, is refused with the differing fields named (exit code 2); ``--restart stepN``
(``train.restart``) trains step N and the steps after it again.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from edgesam import storage as storage_io
from pipelines.cache_teacher import run_cache
from pipelines.distill_config import DistillConfig, StepConfig
from pipelines.distill_identity import (StepMismatchError, check_step, digest, expected_cache_identity, mark_done,
                                        mark_started, restarts, step_identity)
from edgesam.config import add_config_args, dump_config, load_config

RANDOM_BANNER = """
################################################################################
#  WARNING: the SAM teacher has RANDOM weights (no checkpoint was given).       #
#  This run exercises the whole pipeline; the student it produces is NOT a      #
#  usable segmentation model. Pass teacher.checkpoint=/path/sam_vit_h_4b8939.pth #
################################################################################
"""


GT_BANNER = """
################################################################################
#  NOTE: the SAM teacher has RANDOM weights (no checkpoint was given), but step  #
#  2 trains on the data's GT masks (step2.mask_target), so the student learns   #
#  to segment THIS dataset's domain. Step 1 only regressed random embeddings.   #
################################################################################
"""


def ensure_cache(cfg: DistillConfig) -> dict:
    """Reuse a complete cache made with the teacher and preprocessing the config asks for, or run (resume)
    the caching job. A cache made with another teacher, checkpoint or preprocessing raises CacheMismatchError."""
    from edgesam.data.cache import check_identity

    manifest = check_identity(cfg.cache.output.dir, expected_cache_identity(cfg))
    if manifest is not None and manifest.get("status") == "complete":
        print(f"[distill] using complete teacher cache {cfg.cache.output.dir} ({manifest['counts']['images']} images)")
        return manifest
    from pipelines.ray_init import init_ray

    init_ray(cfg.ray_address)
    return run_cache(cfg.cache)


def _has_rpn(path: str | None) -> bool:
    from pipelines.distill_loop import read_state

    if not path:
        return False
    state = read_state(path)
    return state.get("rpn") is not None


def run_step(cfg: DistillConfig, step: StepConfig, split: dict, init_checkpoint: str | None,
             cache_identity: dict) -> str:
    """Run one distillation step with TorchTrainer; returns the final checkpoint directory.

    A step finished with the same identity (config + inputs, ``distill_identity``) is skipped; a run
    started with the same identity resumes from its latest checkpoint (Ray Train restores it through
    ``ray.train.get_checkpoint``); a run made with another identity is refused (StepMismatchError)
    unless ``train.restart`` names this step or an earlier one.
    """
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from pipelines.distill_data import materialized_blocks, step_columns, train_dataset
    from pipelines.distill_loop import train_loop_per_worker
    from pipelines.ray_init import init_ray
    from pipelines.train_progress import TrainBar, progress_board

    run_name = f"{cfg.train.name}-{step.kind}"
    storage = str(Path(cfg.train.storage_path).resolve()) if "://" not in cfg.train.storage_path else cfg.train.storage_path
    run_dir = f"{storage}/{run_name}"
    identity = step_identity(cfg, step, split, init_checkpoint, cache_identity)
    done = check_step(step, run_dir, identity, restart=restarts(cfg, step))
    if done is not None:
        print(f"[distill] {step.kind}: already finished at step {done['step']} with this config and inputs; "
              f"skipping (checkpoint {done['checkpoint']})")
        return done["checkpoint"]
    mark_started(run_dir, identity)
    init_ray(cfg.ray_address)  # only now: a refused or skipped step needs no cluster

    sc = cfg.train.scaling
    # Fractional CPUs for the feeding tasks: with the train workers placed, a node may have < 1 CPU free.
    ds = train_dataset(split, step_columns(step.kind, step.mask_target), cfg.train.data_task_cpus,
                       cfg.train.materialize_max_mib)
    blocks = materialized_blocks(ds)  # a small split goes to the workers by reference, not through Ray Data
    loop_cfg = {
        "step": step.model_dump(mode="json"), "img_size": cfg.cache.preprocessing.img_size,
        "teacher": cfg.cache.teacher.model_dump(mode="json"), "init_checkpoint": init_checkpoint,
        "steps_per_epoch": split["steps_per_epoch"][step.kind], "holdout_files": split["holdout_files"],
        "holdout_ids": split["holdout_ids"], "eval": cfg.eval.model_dump(mode="json"), "seed": cfg.train.seed,
        "checkpoint_every": cfg.train.checkpoint_every_steps, "sync_bn": cfg.train.sync_bn,
        "init_has_rpn": step.kind != "rpn" and _has_rpn(init_checkpoint), "seen_ids_dir": cfg.train.seen_ids_dir, "rpn": cfg.rpn.model_dump(mode="json"),
        "torch_threads": cfg.train.torch_threads, "identity_sha256": digest(identity), "progress": progress_board(),
        "backbone_checkpoint": cfg.student.backbone_checkpoint, "decoder_init": cfg.student.decoder_init,
        "train_blocks": blocks,
    }
    trainer = TorchTrainer(
        train_loop_per_worker, train_loop_config=loop_cfg,
        torch_config=TorchConfig(backend="nccl" if sc.use_gpu else "gloo"),
        scaling_config=ScalingConfig(num_workers=sc.num_workers, use_gpu=sc.use_gpu,
                                     resources_per_worker=sc.resources_per_worker,
                                     placement_strategy=sc.placement_strategy),
        run_config=RunConfig(name=run_name, storage_path=storage,
                             failure_config=FailureConfig(max_failures=cfg.train.max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=cfg.train.num_checkpoints_to_keep)),
        datasets=None if blocks is not None else {"train": ds})
    spe = split["steps_per_epoch"][step.kind]
    with TrainBar(progress_board(), f"{step.kind} ({spe}/epoch x {step.epochs}, {sc.num_workers} worker)", spe * step.epochs):
        result = trainer.fit()
    if result.checkpoint is None:
        raise RuntimeError(f"{step.kind}: training produced no checkpoint ({result.error})")
    ckpt = storage_io.to_uri(result.checkpoint.filesystem, result.checkpoint.path)  # s3:// paths keep their scheme
    mark_done(run_dir, identity, result.metrics.get("global_step"), ckpt, result.metrics)
    return ckpt


def main(argv: list[str] | None = None) -> int:
    from edgesam.data.cache import CacheMismatchError
    from edgesam.models.backbone_init import BackboneCheckpointError
    from pipelines.run_output import RunOutput, add_verbose_arg, is_verbose, local_run_dir

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_args(parser, default="quickstart")
    add_verbose_arg(parser)
    parser.add_argument("--restart", choices=["step1", "step2", "step3", "all"], default=None,
                        help="train this step again (and every later one) although a run of it exists; "
                             "same as train.restart=STEP")
    args = parser.parse_args(argv)
    overrides = list(args.overrides) + ([f"train.restart={args.restart}"] if args.restart else [])
    cfg = load_config(DistillConfig, args.config, overrides)
    out = RunOutput(local_run_dir(cfg.train.storage_path, cfg.train.name, cfg.output_dir), is_verbose(args.verbose),
                    tag="distill")
    out.activate()  # init_ray (cache pipeline, steps) takes its Ray logging settings from here
    print(f"[distill] config {out.write_config(dump_config(cfg))} (-v prints it and Ray's logs)", flush=True)
    try:
        return _run(cfg, out)
    except (CacheMismatchError, StepMismatchError, BackboneCheckpointError) as exc:
        print(f"[distill] ERROR: {exc}", file=sys.stderr, flush=True)
        return 2


def _run(cfg: DistillConfig, out) -> int:
    from pipelines.distill_split import make_split
    from pipelines.finish import finish_run

    random_teacher = cfg.cache.teacher.checkpoint is None
    banner = RANDOM_BANNER if not cfg.step2.enabled or cfg.step2.mask_target == "teacher" else GT_BANNER
    if random_teacher:
        print(banner, flush=True)
    if cfg.student.backbone_checkpoint and not cfg.student.init_checkpoint:
        _check_backbone(cfg.student.backbone_checkpoint)

    with out.stage("cache"):  # the cache pipeline starts Ray itself when it has work to do
        manifest = ensure_cache(cfg)
        split = make_split(cfg)
    ckpt = cfg.student.init_checkpoint
    for step in cfg.steps():
        with out.stage(step.kind):
            ckpt = run_step(cfg, step, split, ckpt, manifest["identity"])
    with out.stage("finish"):
        report = finish_run(cfg, ckpt, split, random_teacher=random_teacher)
    out.timings.update(report.get("timings", {}))
    out.summary(report["outputs"])
    if random_teacher:
        print("[distill] reminder: the teacher had RANDOM weights (see the banner above)", flush=True)
    return 0


def _check_backbone(path: str) -> None:
    """Fail before caching and training if the ImageNet file is the wrong one; print what it covers."""
    from edgesam.models.backbone_init import load_repvit_imagenet
    from edgesam.models.repvit import RepViTEncoder

    print(f"[distill] {load_repvit_imagenet(RepViTEncoder(), path).summary()}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
