"""A briefly trained student for accuracy gates that need non-random weights (INT8 vs fp32 IoU, surviving masks).

    python benchmarks/quick_student.py --minutes 8 --out /tmp/quick_student.pt

End to end on synthetic scenes (``edgesam.data.synthetic.make_scene``, photo backgrounds when
``/work/shared/images`` exists) at S = 256: encoder, prompt encoder and decoder from random init, box and
centre-point prompts from the GT masks, SAM's GT mask loss (:func:`edgesam.distill.losses.gt_mask_loss`),
AdamW, for a wall-clock budget (steps: :func:`edgesam.distill.quick_student.quick_train_step`). It is not a
distilled EdgeSAM (no teacher); it is a shape segmenter whose weights have the structure of trained ones
(peaked activations, confident logits), which is what a quantisation or post-processing check needs. Prints
the running mean IoU on the training stream.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from edgesam.data.synthetic import make_scene, photo_background  # noqa: E402
from edgesam.distill.quick_student import quick_optimizer, quick_train_step  # noqa: E402
from edgesam.models import EdgeSAM  # noqa: E402
from edgesam.models.checkpoint import save_student  # noqa: E402
from edgesam.models.rpn import build_rpn  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=8.0)
    p.add_argument("--img-size", type=int, default=256)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--init", type=Path, default=None, help="continue from this checkpoint")
    p.add_argument("--freeze-encoder", action="store_true", help="train the prompt encoder + decoder only (faster steps)")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    s = args.img_size
    if args.init is not None:
        from edgesam.models.checkpoint import load_student

        model, _ = load_student(args.init, s)
    else:
        model = EdgeSAM(s)
        model.rpn = build_rpn(model.image_encoder.feature_channels, width=64, num_convs=2)  # untrained, saved as is
    model.train()
    opt = quick_optimizer(model, args.lr, args.freeze_encoder)
    t_end = time.monotonic() + 60 * args.minutes
    step, ious = 0, []
    while time.monotonic() < t_end:
        h, w = (int(v) for v in rng.integers(s * 3 // 4, s + 1, 2))
        img, masks = make_scene(rng, h, w, background=photo_background(rng, h, w) if rng.random() < 0.5 else None)
        if not masks:
            continue
        loss, iou = quick_train_step(model, opt, img, masks, rng, args.freeze_encoder)
        ious.append(iou)
        step += 1
        if step % 25 == 0:
            print(f"step {step}: loss {loss:.3f}, mean IoU (last 25) {np.mean(ious[-25:]):.3f}", flush=True)
    save_student(model.eval(), args.out, {"trained": f"quick_student.py, {step} steps, {args.minutes} min, S={s}",
                                          "train_iou_last50": float(np.mean(ious[-50:])) if ious else None})
    print(f"saved {args.out} after {step} steps; mean IoU over the last 50 steps {np.mean(ious[-50:]):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
