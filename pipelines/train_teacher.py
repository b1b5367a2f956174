"""Train a small SAM teacher on synthetic scenes with exact GT masks (SAM's recipe; issue 14).

    python pipelines/train_teacher.py --config synthetic-teacher [key=value ...]

A plain torch loop in one process (no Ray: one small model on a few cores). Writes
``<output_dir>/teacher.pth`` in segment-anything's checkpoint format (image_encoder.*, prompt_encoder.*,
mask_decoder.*), which ``build_teacher(<name>, checkpoint=...)`` and ``pipelines/cache_teacher.py
cache.teacher.name=<name> cache.teacher.checkpoint=...`` load, and ``train_report.json`` (held-out mIoU
against GT, loss history, wall time).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from edgesam.config import add_config_args, dump_config, load_config
from edgesam.teacher_train.loop import TeacherTrainConfig, train_teacher


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_args(parser, default="synthetic-teacher")
    args = parser.parse_args(argv)
    cfg = load_config(TeacherTrainConfig, args.config, args.overrides)
    print(dump_config(cfg), flush=True)
    report = train_teacher(cfg, log=lambda m: print(m, flush=True))
    print(f"[teacher] {report['steps']} steps ({report['stopped']}), {report['wall_seconds']:.0f} s; "
          f"checkpoint {report['checkpoint']}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
