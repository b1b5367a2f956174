"""RPN box recall@0.5 on dense scenes: targets from the sampled prompts (before) against all GT boxes (after).

    python benchmarks/rpn_dense.py --train 48 --test 16 --steps 300 --out BENCHMARKS.md

Distillation step 3 used to build its RPN targets from the <= ``max_prompts`` (16) prompts sampled per
image (``pipelines/distill_loop.decode_batch``), so on SA-1B (~100 objects per image) most objects were
taught as background. The scenes here are dense (``edgesam.data.synthetic_dense``: >= 100 exact instance
masks per image, here at ``--size`` px so the RPN input is the image itself). Both variants train the same
RPN (same init, same seed, same ``--steps`` and batches, AdamW) on the same frozen student encoder
features (a RANDOM-weight RepViT encoder: no weights can be downloaded; its features are computed once),
and differ only in the target boxes: ``prompts`` = ``max_prompts`` boxes drawn with replacement per image
and step, as the old code did; ``all`` = every GT box, as step 3 does now. Recall@0.5: the fraction of the
held-out images' GT boxes matched by one of the top-N proposals (score threshold 0, NMS 0.7) at IoU >= 0.5.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from benchmarks.common import load_average, replace_section  # noqa: E402


def dense_set(n: int, offset: int, size: int, min_masks: int, seed: int) -> list[tuple[np.ndarray, torch.Tensor]]:
    """n dense scenes (size x size) -> [(uint8 image, (K,4) XYXY boxes)]."""
    from edgesam.data.synthetic_dense import make_dense_scene

    out = []
    for i in range(offset, offset + n):
        rng = np.random.default_rng([seed, i, 11])
        image, inst = make_dense_scene(rng, size, size, min_masks, radius_range=(0.02, 0.07))
        boxes = []
        for y0, x0, m in inst:
            ys, xs = np.nonzero(m)
            boxes.append([x0 + xs.min(), y0 + ys.min(), x0 + xs.max() + 1, y0 + ys.max() + 1])
        out.append((image, torch.tensor(boxes, dtype=torch.float32)))
    return out


@torch.no_grad()
def features(encoder, images: list[np.ndarray], size: int) -> list[dict[str, torch.Tensor]]:
    from edgesam.data.transforms import normalize_pad

    out = []
    for img in images:
        x = normalize_pad(torch.from_numpy(img).permute(2, 0, 1)[None].float(), size)
        f = encoder.forward_features(x)
        out.append({k: f[k] for k in ("s8", "s16", "s32")})
    return out


def train(channels, feats, boxes, steps: int, batch: int, mode: str, max_prompts: int, seed: int, lr: float):
    from edgesam.models.rpn import build_rpn, train_rpn_step

    torch.manual_seed(seed)
    rpn = build_rpn(channels)
    opt = torch.optim.AdamW(rpn.parameters(), lr=lr, weight_decay=1e-4)
    rng = np.random.default_rng(seed)
    order = np.random.default_rng(seed + 1)
    size = None
    for step in range(steps):
        idx = order.choice(len(feats), size=batch, replace=False)
        f = {k: torch.cat([feats[i][k] for i in idx]) for k in ("s8", "s16", "s32")}
        size = size or int(f["s8"].shape[-1] * 8)
        targets = []
        for i in idx:
            b = boxes[i]
            draw = rng.integers(0, len(b), max_prompts) if len(b) > max_prompts else np.arange(len(b))
            targets.append(b if mode == "all" else b[torch.from_numpy(draw)])
        loss, _ = train_rpn_step(rpn, f, targets, size)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(rpn.parameters(), 10.0)
        opt.step()
    return rpn.eval()


@torch.no_grad()
def recall(rpn, feats, boxes, size: int, top: int) -> tuple[float, float]:
    """-> (recall@0.5 over all GT boxes, mean number of proposals)."""
    from torchvision.ops import box_iou

    hit = total = 0
    nprop = []
    for f, g in zip(feats, boxes):
        [(b, _)] = rpn.proposals(rpn(f), size, score_thresh=0.0, nms_iou=0.7, max_proposals=top)
        nprop.append(len(b))
        total += len(g)
        if len(b):
            hit += int((box_iou(g, b).max(dim=1).values >= 0.5).sum())
    return hit / max(1, total), float(np.mean(nprop))


def main(argv: list[str] | None = None) -> int:
    from edgesam.models import EdgeSAM

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--train", type=int, default=48)
    p.add_argument("--test", type=int, default=16)
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--min-masks", type=int, default=100)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--max-prompts", type=int, default=16)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    t0, load0 = time.time(), load_average()
    data = dense_set(a.train + a.test, 0, a.size, a.min_masks, a.seed)
    torch.manual_seed(a.seed)
    encoder = EdgeSAM(a.size).image_encoder.eval()
    feats = features(encoder, [d[0] for d in data], a.size)
    boxes = [d[1] for d in data]
    tr, te = slice(0, a.train), slice(a.train, a.train + a.test)
    objs = [len(b) for b in boxes]
    rows = []
    for mode in ("prompts", "all"):
        rpn = train(encoder.feature_channels, feats[tr], boxes[tr], a.steps, a.batch, mode, a.max_prompts, a.seed, a.lr)
        r100, n100 = recall(rpn, feats[te], boxes[te], a.size, 100)
        r300, n300 = recall(rpn, feats[te], boxes[te], a.size, 300)
        tr_r, _ = recall(rpn, feats[tr], boxes[tr], a.size, 100)
        rows.append((mode, r100, r300, tr_r, n100))
        print(mode, r100, r300, tr_r, flush=True)
    label = {"prompts": f"before: <= {a.max_prompts} sampled prompt boxes per image",
             "all": "after: all GT boxes of the image"}
    table = ["| RPN targets | recall@0.5, top 100 (held out) | recall@0.5, top 300 (held out) | "
             "recall@0.5, top 100 (train images) |", "|---|---|---|---|"]
    table += [f"| {label[m]} | {r100:.3f} | {r300:.3f} | {trr:.3f} |" for m, r100, r300, trr, _ in rows]
    body = "\n".join([
        f"Command: `python benchmarks/rpn_dense.py --train {a.train} --test {a.test} --size {a.size} --steps {a.steps}"
        f" --batch {a.batch} --out BENCHMARKS.md` ({time.strftime('%Y-%m-%d %H:%M %Z')}, {a.threads} threads on a "
        f"shared 2-CPU machine, load average {load0:.1f}, {time.time() - t0:.0f} s). Dense synthetic scenes "
        f"{a.size}x{a.size}, {min(objs)}-{max(objs)} objects per image (mean {np.mean(objs):.0f}); RPN (FCOS, "
        f"width 64) on the frozen features of a RANDOM-weight student encoder; {a.steps} AdamW steps of "
        f"{a.batch} images, lr {a.lr}, same seed and batches both ways.", "", *table])
    print(body)
    if a.out:
        replace_section(a.out, "rpn-dense", "## RPN targets on dense scenes (issue 10)", body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
