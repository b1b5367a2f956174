"""Typed configuration of the distillation job (YAML in configs/, CLI overrides ``key.sub=value``)."""
from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from edgesam.config import StrictModel
from pipelines.cache_teacher import CacheConfig


class StepConfig(StrictModel):
    """One distillation step. lr values are for the whole (global) batch."""

    kind: Literal["encoder_kd", "prompt_kd", "rpn"]
    enabled: bool = True
    epochs: int = 1
    max_steps: int | None = None  # caps steps per epoch (quickstart); None = full epochs
    batch_size: int = 2  # images per worker
    lr: float = 1e-4
    min_lr: float = 1e-5
    warmup_epochs: float = 0.0
    warmup_lr: float = 1e-7
    weight_decay: float = 0.05
    grad_clip: float = 0.0  # max-norm; 0 disables
    decode_iters: int = 2  # prompt_kd: initial decode + refinement iterations
    max_prompts: int = 16  # prompt_kd: GT prompts per image
    point_prob: float = 0.5  # prompt_kd: P(point prompts) per batch, else boxes
    train_decoder: bool = True  # prompt_kd: False freezes the mask decoder (the paper's freezing ablation)
    # prompt_kd: "teacher" (the paper), "gt" (GT masks from the cache, for labelled data or a weak teacher)
    # or "teacher+gt" (teacher loss + gt_weight x GT loss)
    mask_target: Literal["teacher", "gt", "teacher+gt"] = "teacher"
    gt_weight: float = 1.0


class ScalingCfg(StrictModel):
    num_workers: int = 1
    use_gpu: bool = False
    resources_per_worker: dict[str, float] = Field(default_factory=lambda: {"CPU": 1})
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = "PACK"


class TrainCfg(StrictModel):
    name: str = "quickstart"
    storage_path: str = "runs"  # shared storage (NFS/S3) on multi-node clusters
    seed: int = 0
    checkpoint_every_steps: int = 20
    num_checkpoints_to_keep: int = 2
    max_failures: int = 2
    seen_ids_dir: str | None = None  # tests: each worker appends the image ids it trained on here
    data_task_cpus: float = 0.25  # Ray Data read/filter tasks feeding the workers
    # A train split whose Parquet files (local or s3:// / gs://) total at most this is read once per run and its
    # blocks handed to the workers by reference; a larger one streams through Ray Data every epoch. 0 = always stream.
    materialize_max_mib: float = 256
    sync_bn: bool = False  # SyncBatchNorm across GPU workers (step 1 in the paper)
    torch_threads: int | None = None  # intra-op threads per CPU worker (default: OMP_NUM_THREADS Ray sets)
    # Train a step again although a run of it exists (finished, or made with another config/inputs), and every
    # enabled step after it; "all" = from step 1. Without it a changed step config or cache is refused.
    restart: Literal["step1", "step2", "step3", "all"] | None = None
    scaling: ScalingCfg = ScalingCfg()


class StudentCfg(StrictModel):
    init_checkpoint: str | None = None  # an EdgeSAM/ours checkpoint to start the first enabled step from
    # THU-MIG's original RepViT-M1 ImageNet checkpoint (repvit_m1_distill_300.pth) for the encoder's backbone
    # when there is no init_checkpoint (the paper's init); None = random backbone
    backbone_checkpoint: str | None = None
    # prompt encoder + mask decoder at the start: "auto" = init_checkpoint's when one is given (fine-tuning keeps
    # an official checkpoint's decoder), else the teacher's; "teacher" = always the teacher's; "checkpoint" =
    # init_checkpoint's (an error without one)
    decoder_init: Literal["auto", "teacher", "checkpoint"] = "auto"

    @model_validator(mode="before")
    @classmethod
    def _removed_keys(cls, data):
        if isinstance(data, dict) and "upsample_mode" in data:
            raise ValueError("student.upsample_mode was removed: it never reached the model. The neck always "
                             "upsamples bicubically, as the official EdgeSAM weights were trained; delete the key")
        return data

    @model_validator(mode="after")
    def _one_init(self) -> "StudentCfg":
        if self.init_checkpoint and self.backbone_checkpoint:
            raise ValueError("student.init_checkpoint and student.backbone_checkpoint are exclusive: an init checkpoint "
                             "already holds a trained encoder (set student.backbone_checkpoint=null)")
        if self.decoder_init == "checkpoint" and not self.init_checkpoint:
            raise ValueError("student.decoder_init=checkpoint needs student.init_checkpoint")
        return self


class EvalCfg(StrictModel):
    holdout_fraction: float = 0.15  # images held out by a hash of their id
    max_images: int = 16
    max_instances_per_image: int = 16
    refine_clicks: int = 2
    seed: int = 0
    # held-out evaluation inside steps 1-2: after every epoch, after each step's last epoch, or never (the final
    # evaluation at the end of the run happens in every case)
    during_steps: Literal["every_epoch", "last_epoch", "off"] = "every_epoch"


class RpnCfg(StrictModel):
    width: int = 64
    num_convs: int = 2


class DistillExportCfg(StrictModel):
    onnx: bool = True


class DistillConfig(StrictModel):
    cache: CacheConfig = CacheConfig()
    student: StudentCfg = StudentCfg()
    step1: StepConfig = StepConfig(kind="encoder_kd", lr=1e-3, min_lr=1e-5, warmup_epochs=0.1, grad_clip=5.0)
    step2: StepConfig = StepConfig(kind="prompt_kd", lr=1e-4, min_lr=1e-5, grad_clip=0.01)
    step3: StepConfig = StepConfig(kind="rpn", lr=1e-3, min_lr=1e-5, weight_decay=1e-4, grad_clip=10.0)
    train: TrainCfg = TrainCfg()
    eval: EvalCfg = EvalCfg()
    rpn: RpnCfg = RpnCfg()
    export: DistillExportCfg = DistillExportCfg()
    output_dir: str | None = None  # default: <storage_path>/<name>
    ray_address: str | None = None

    def steps(self) -> list[StepConfig]:
        return [s for s in (self.step1, self.step2, self.step3) if s.enabled]

