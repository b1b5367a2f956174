"""What a distillation step was made from, and the markers that record it.

A step's identity is its config (everything that changes the weights it produces: the step's own
settings, the schedule, the global batch, the seed) and its inputs (the teacher cache's identity, the
digest of the checkpoint it starts from, the ImageNet backbone file). ``STARTED.json`` records it when
a step starts, ``DONE.json`` when it finishes, and every checkpoint the step writes carries its digest.
A resubmitted job compares them with what its config asks for: a finished step with the same identity
is skipped, an interrupted one resumes, and anything else is refused with the differing fields named,
unless ``train.restart`` asks to train that step (and every later one) again.

All marker I/O goes through ``read_marker`` / ``write_marker`` / ``discard_run`` (one place to swap for
object storage).
"""
from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

from edgesam import storage
from edgesam.data import cache as C

DONE = "DONE.json"
STARTED = "STARTED.json"
STEP_NAMES = {"encoder_kd": "step1", "prompt_kd": "step2", "rpn": "step3"}


class StepMismatchError(ValueError):
    """A finished or interrupted step was made with another config or other inputs than requested."""


# --------------------------------------------------------------------------------------- marker I/O
def read_marker(path: str | Path) -> dict | None:
    return storage.read_json(path) if storage.is_file(path) else None  # local, s3:// or gs://


def write_marker(path: str | Path, obj: dict) -> None:
    storage.write_json(path, obj)  # never a half-written marker (temp + rename locally, one PUT on object stores)


def run_exists(run_dir: str | Path) -> bool:
    return bool(storage.listdir(run_dir, dirs=True))


def discard_run(run_dir: str | Path) -> str | None:
    """Move a step's run directory aside (kept, renamed ``<run>.replaced-<UTC time>``); returns the new name."""
    if not storage.exists(run_dir):
        return None
    dest = storage.join(storage.parent(run_dir), f"{storage.name(run_dir)}.replaced-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}")
    storage.move(run_dir, dest)  # a rename locally; copy + delete on object stores
    return str(dest)


# ----------------------------------------------------------------------------------------- digests
def digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def checkpoint_digest(path: str | None) -> str | None:
    """sha256 of a student checkpoint file, or of ``state.pt`` in one of our Ray checkpoint directories."""
    from edgesam.models.teacher import sha256_file
    from pipelines.distill_loop import STATE_FILE

    if not path:
        return None
    return sha256_file(storage.join(path, STATE_FILE) if storage.is_dir(path) else path)


def expected_cache_identity(cfg) -> dict:
    """The identity the cache pipeline would write for ``cfg.cache`` (teacher + preprocessing)."""
    from pipelines.cache_teacher import teacher_identity

    return C.cache_identity(teacher_identity(cfg.cache), cfg.cache.preprocessing)


def step_identity(cfg, step, split: dict, init_checkpoint: str | None, cache_identity: dict) -> dict:
    """Everything that changes the weights ``step`` produces. Operational knobs (checkpoint frequency,
    CPUs per task, threads, resources) are left out: changing them must not force a rerun."""
    spe = split["steps_per_epoch"][step.kind]
    first = init_checkpoint is None
    return {
        "step": step.model_dump(mode="json", exclude={"enabled"}),
        "schedule": {"steps_per_epoch": spe, "total_steps": spe * step.epochs,
                     "num_workers": cfg.train.scaling.num_workers, "seed": cfg.train.seed,
                     "sync_bn": cfg.train.sync_bn},
        "model": {"img_size": cfg.cache.preprocessing.img_size, "rpn": cfg.rpn.model_dump(mode="json"),
                  "decoder_init": cfg.student.decoder_init},
        "data": {"cache": cache_identity, "num_train": split["num_train"],
                 "holdout_ids_sha256": digest(sorted(split["holdout_ids"]))},
        "init": {"checkpoint_sha256": checkpoint_digest(init_checkpoint),
                 "backbone_checkpoint_sha256": checkpoint_digest(cfg.student.backbone_checkpoint) if first else None},
    }


def diff_fields(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Dotted names of the fields that differ, with both values."""
    if isinstance(old, dict) and isinstance(new, dict):
        out: list[str] = []
        for k in sorted(set(old) | set(new), key=str):
            out += diff_fields(old.get(k), new.get(k), f"{prefix}{k}.")
        return out
    return [] if old == new else [f"{prefix.rstrip('.')}: was {old!r}, requested {new!r}"]


# ------------------------------------------------------------------------------------------- checks
def _refuse(step, what: str, diffs: list[str], run_dir: str) -> StepMismatchError:
    name = STEP_NAMES[step.kind]
    shown = "; ".join(diffs[:12]) + (f"; ... ({len(diffs) - 12} more)" if len(diffs) > 12 else "")
    return StepMismatchError(
        f"{name} ({step.kind}) in {run_dir} {what} with a different config or inputs: {shown}. "
        f"Pass train.restart={name} (or --restart {name}) to train it again, and every step after it, "
        "or use another train.name.")


def restarts(cfg, step) -> bool:
    """Whether ``train.restart`` asks to train ``step`` again (the named step and every later one)."""
    order = ["step1", "step2", "step3"]
    r = cfg.train.restart
    return bool(r) and order.index(STEP_NAMES[step.kind]) >= order.index("step1" if r == "all" else r)


def check_step(step, run_dir: str, identity: dict, restart: bool = False) -> dict | None:
    """-> the DONE marker when the step is finished with this identity (skip it); None when it should run
    (fresh, or resuming a run started with this identity). Raises StepMismatchError otherwise.

    With ``restart`` a finished run, or one started under another identity, is moved aside and the step
    runs from scratch; an interrupted run started under this very identity resumes (same result, and a
    restart that is itself interrupted continues when resubmitted)."""
    done = read_marker(storage.join(run_dir, DONE))
    started = read_marker(storage.join(run_dir, STARTED))
    if restart and run_exists(run_dir):
        if done is not None or started is None or diff_fields(started["identity"], identity):
            print(f"[distill] {STEP_NAMES[step.kind]}: restart: moved {run_dir} aside to {discard_run(run_dir)}",
                  flush=True)
            return None
        print(f"[distill] {STEP_NAMES[step.kind]}: restart: resuming the interrupted restarted run", flush=True)
        return None
    if done is not None:
        if "identity" not in done:
            raise _refuse(step, "finished", ["identity: not recorded (a marker from an older version)"], run_dir)
        diffs = diff_fields(done["identity"], identity)
        if diffs:
            raise _refuse(step, "finished", diffs, run_dir)
        return done
    if started is not None:
        diffs = diff_fields(started["identity"], identity)
        if diffs:  # resuming would continue the old schedule and optimizer state under the new config
            raise _refuse(step, "was interrupted (it would resume)", diffs, run_dir)
    elif run_exists(run_dir):
        raise _refuse(step, "holds checkpoints", ["identity: not recorded (no STARTED.json)"], run_dir)
    return None


def mark_started(run_dir: str, identity: dict) -> None:
    write_marker(storage.join(run_dir, STARTED), {"identity": identity, "identity_sha256": digest(identity),
                                           "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})


def mark_done(run_dir: str, identity: dict, global_step: int | None, checkpoint: str, metrics: dict) -> dict:
    done = {"step": global_step, "checkpoint": checkpoint, "checkpoint_sha256": checkpoint_digest(checkpoint),
            "identity": identity, "identity_sha256": digest(identity), "metrics": metrics,
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    write_marker(storage.join(run_dir, DONE), done)
    return done
