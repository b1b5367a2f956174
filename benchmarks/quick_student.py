"""A briefly trained student for accuracy gates that need non-random weights (INT8 vs fp32 IoU, surviving masks).

    python benchmarks/quick_student.py --minutes 8 --out /tmp/quick_student.pt

End to end on synthetic scenes (``edgesam.data.synthetic.make_scene``, photo backgrounds when
``/work/shared/images`` exists) at S = 256: encoder, prompt encoder and decoder from random init, box and
centre-point prompts from the GT masks, SAM's GT mask loss (:func:`edgesam.distill.losses.gt_mask_loss`),
AdamW, for a wall-clock budget. It is not a distilled EdgeSAM (no teacher); it is a shape segmenter whose
weights have the structure of trained ones (peaked activations, confident logits), which is what a
quantisation or post-processing check needs. Prints the running mean IoU on the training stream.
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
from edgesam.data.transforms import ResizeLongestSide, lowres_masks, preprocess  # noqa: E402
from edgesam.distill.losses import decoder_valid_mask, gt_mask_loss  # noqa: E402
from edgesam.models import EdgeSAM  # noqa: E402
from edgesam.models.checkpoint import save_student  # noqa: E402
from edgesam.models.rpn import build_rpn  # noqa: E402


def _prompts(masks: list[np.ndarray], tf: ResizeLongestSide, hw: tuple[int, int], rng: np.random.Generator):
    """GT masks -> box prompts (half also with the centre click): coords (K,3,2), labels (K,3) in the S frame."""
    coords, labels = [], []
    for m in masks:
        ys, xs = np.nonzero(m)
        box = np.array([[xs.min(), ys.min()], [xs.max() + 1, ys.max() + 1]], np.float32)
        i = rng.integers(len(xs))
        pt = np.array([[xs[i] + 0.5, ys[i] + 0.5]], np.float32)
        c = tf.apply_coords(np.concatenate([pt, box]), hw)
        lab = [1.0 if rng.random() < 0.5 else -2.0, 2.0, 3.0]  # -2: ignored point (box only)
        coords.append(c)
        labels.append(lab)
    return torch.tensor(np.stack(coords)), torch.tensor(labels, dtype=torch.float32)


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
        model.train()
    else:
        model = EdgeSAM(s).train()
        model.rpn = build_rpn(model.image_encoder.feature_channels, width=64, num_convs=2)  # untrained, saved as is
    skip = ("rpn.", "image_encoder.") if args.freeze_encoder else ("rpn.",)
    if args.freeze_encoder:
        model.image_encoder.eval().requires_grad_(False)
    opt = torch.optim.AdamW([q for n, q in model.named_parameters() if not n.startswith(skip)], lr=args.lr,
                            weight_decay=0.01)
    tf = ResizeLongestSide(s)
    t_end = time.monotonic() + 60 * args.minutes
    step, ious = 0, []
    while time.monotonic() < t_end:
        h, w = (int(v) for v in rng.integers(s * 3 // 4, s + 1, 2))
        img, masks = make_scene(rng, h, w, background=photo_background(rng, h, w) if rng.random() < 0.5 else None)
        if not masks:
            continue
        x, input_hw = preprocess(img, s)
        coords, labels = _prompts(masks, tf, (h, w), rng)
        gt = lowres_masks(torch.from_numpy(np.stack(masks)), input_hw, s)
        valid = decoder_valid_mask([input_hw], s, s // 4)
        if args.freeze_encoder:
            with torch.no_grad():
                emb = model.embed(x)
        else:
            emb = model.embed(x)
        logits, iou = model.decode(emb, coords, labels)
        loss, _ = gt_mask_loss(logits, iou, gt, valid, multimask=False)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        with torch.no_grad():
            pred = logits[:, 0] > 0
            ious.append(float(((pred & gt).sum((-1, -2)) / (pred | gt).sum((-1, -2)).clamp(min=1)).mean()))
        step += 1
        if step % 25 == 0:
            print(f"step {step}: loss {loss.item():.3f}, mean IoU (last 25) {np.mean(ious[-25:]):.3f}", flush=True)
    save_student(model.eval(), args.out, {"trained": f"quick_student.py, {step} steps, {args.minutes} min, S={s}",
                                          "train_iou_last50": float(np.mean(ious[-50:])) if ious else None})
    print(f"saved {args.out} after {step} steps; mean IoU over the last 50 steps {np.mean(ious[-50:]):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
