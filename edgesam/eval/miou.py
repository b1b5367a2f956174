"""Interactive mIoU protocol (method doc §6): GT box or centre click, then +N random refinement clicks.

Per image, all instances are decoded in one decoder call per iteration. For each prompt kind:

1. iteration 0: box = GT box (XYXY, input frame, labels 2/3); point = the distance-transform peak of the
   GT mask (resized to the input frame with nearest), label 1, plus a padding point; click+rpn = that click
   plus the RPN proposal picked by the paper's rule (:mod:`edgesam.inference.click_to_box`), or the click
   alone when no proposal contains it;
2. iteration i >= 1: one error pixel drawn uniformly (seeded) between the prediction (selected token's
   S/4 logits > 0) and the reference at S/4, both restricted to the valid (non-padded) area; FN -> positive,
   FP -> negative, fewer than ``min_pixels`` -> label -2 (ignored); appended to the previous points (boxes
   are kept); no mask is fed back;
3. IoU per instance at the ORIGINAL resolution (prediction through ``postprocess_masks``, > 0); instances
   with an empty union are dropped; mIoU = mean over instances x 100 (not per image).

Reference: the GT masks ("student vs GT"; at S/4 the GT is the padded input-frame mask bilinearly
downsampled, > 0), or a reference model run on the same prompt sequence on its own embedding ("student vs
teacher"; its selected-token logits > 0 at S/4, and its upsampled prediction at the original size).

Deviation, on purpose: the GT side of the IoU is the original-resolution GT mask itself, whereas the
reference round-trips it through the padded 1024 frame (nearest down, bilinear up, > 0).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..data.rle import decode_rles
from ..data.transforms import lowres_masks, postprocess_masks, valid_mask
from ..distill.prompts import (PROMPT_KINDS, append_points, centre_click, make_prompt_batch, sample_error_points,
                               sample_gt_prompts)
from ..inference.click_to_box import CLICK_RPN, click_box_prompts, decode_with_optional_box, select_boxes
from ..models.prompt_decoder import IGNORE

# "click+rpn": the centre click plus the RPN proposal the paper's rule picks for it (no box when none
# contains the click); see edgesam.inference.click_to_box. Needs per-image proposals.
EVAL_KINDS: tuple[str, ...] = (*PROMPT_KINDS, CLICK_RPN)

# (embedding (1,256,h,w), point_coords (N,P,2), point_labels (N,P)) -> (logits (N,4,4h,4w), iou (N,4))
DecodeFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]

_CHUNK_ELEMENTS = 1 << 24  # bounds full-resolution work per chunk (~64 MB of float32)


@dataclass
class EvalSample:
    """One held-out image. boxes (K,4) XYXY in the input frame; GT masks at the original size, either
    ``gt_masks`` (K,H,W) bool or ``gt_rles`` (K compressed-RLE count strings at ``orig_hw``, or pycocotools
    RLE dicts). ``points`` (K,2) input frame optionally replaces the centre click as the point prompt."""

    image_id: str
    input_hw: tuple[int, int]
    orig_hw: tuple[int, int]
    boxes: np.ndarray
    gt_masks: np.ndarray | None = None
    gt_rles: Sequence[str | dict] | None = None
    points: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.boxes = np.asarray(self.boxes, np.float32)
        if self.boxes.size == 0:
            self.boxes = self.boxes.reshape(0, 4)
        k = len(self.boxes)
        if self.boxes.ndim != 2 or self.boxes.shape[1] != 4:
            raise ValueError(f"{self.image_id}: boxes must be (K,4), got {self.boxes.shape}")
        if self.gt_masks is not None:
            self.gt_masks = np.asarray(self.gt_masks, bool)
            if self.gt_masks.shape != (k, *self.orig_hw):
                raise ValueError(f"{self.image_id}: gt_masks must be {(k, *self.orig_hw)}, got {self.gt_masks.shape}")
        if self.gt_rles is not None and len(self.gt_rles) != k:
            raise ValueError(f"{self.image_id}: {len(self.gt_rles)} RLEs for {k} boxes")
        if self.points is not None:
            self.points = np.asarray(self.points, np.float32)
            if self.points.shape != (k, 2):
                raise ValueError(f"{self.image_id}: points must be {(k, 2)}, got {self.points.shape}")

    @property
    def num_instances(self) -> int:
        return len(self.boxes)

    @property
    def has_gt(self) -> bool:
        return self.gt_masks is not None or self.gt_rles is not None

    def masks(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """GT masks [start:stop] at the original size -> (k, H, W) bool."""
        stop = self.num_instances if stop is None else stop
        if self.gt_masks is not None:
            return self.gt_masks[start:stop]
        if self.gt_rles is None:
            raise ValueError(f"{self.image_id}: no GT masks (needed for a GT reference or centre clicks)")
        h, w = self.orig_hw
        rles = [r if isinstance(r, dict) else {"size": [h, w], "counts": r} for r in self.gt_rles[start:stop]]
        if not rles:
            return np.zeros((0, h, w), bool)
        return decode_rles(rles)

    @classmethod
    def from_cache_row(cls, row: dict, max_instances: int = 64, rng: np.random.Generator | None = None) -> "EvalSample":
        """From :func:`edgesam.data.cache.decode_row` output. Instances without a segmentation are dropped;
        more than ``max_instances`` are sampled with replacement (reference SA-1K protocol)."""
        keep = np.array([i for i, r in enumerate(row["rles"]) if r], dtype=np.int64)
        boxes = np.asarray(row["boxes"], np.float32).reshape(-1, 4)[keep] if len(keep) else np.zeros((0, 4), np.float32)
        idx = sample_gt_prompts(boxes, np.zeros((len(boxes), 2), np.float32), max_instances, rng)
        return cls(image_id=row["image_id"], input_hw=tuple(row["input_hw"]), orig_hw=tuple(row["orig_hw"]),
                   boxes=boxes[idx], gt_rles=[row["rles"][keep[i]] for i in idx])


@dataclass
class ProtocolTrace:
    """What one prompt kind produced on one image: per iteration the selected-token S/4 logits (K,h,w) of
    the evaluated model (and of the reference model, if any), the refinement-click labels (K,) per
    refinement, and the final prompt points (K,P,2), (K,P)."""

    kind: str
    pred_lowres: list[torch.Tensor]
    ref_lowres: list[torch.Tensor] | None
    click_labels: list[torch.Tensor]
    coords: torch.Tensor
    labels: torch.Tensor


def _chunk(img_size: int, hw: tuple[int, int]) -> int:
    return max(1, _CHUNK_ELEMENTS // max(img_size * img_size, hw[0] * hw[1]))


def gt_prompts_and_lowres(sample: EvalSample, img_size: int) -> tuple[np.ndarray, torch.Tensor]:
    """GT centre clicks (K,2) input frame and GT masks at S/4 (K,S/4,S/4) bool.

    The GT is resized to the input frame with nearest, padded to S x S, bilinearly downsampled, > 0.
    An instance whose resized mask is empty gets its box centre as click.
    """
    k, side = sample.num_instances, img_size // 4
    h, w = sample.input_hw
    centres = np.zeros((k, 2), np.float32)
    lowres = torch.zeros(k, side, side, dtype=torch.bool)
    step = _chunk(img_size, sample.orig_hw)
    for s in range(0, k, step):
        m = torch.from_numpy(sample.masks(s, s + step)).float()[:, None]
        m = F.interpolate(m, (h, w), mode="nearest")
        for j, mj in enumerate(m[:, 0].numpy() > 0.5):
            if mj.any():
                centres[s + j] = centre_click(mj)
            else:
                x0, y0, x1, y1 = sample.boxes[s + j]
                centres[s + j] = ((x0 + x1) / 2, (y0 + y1) / 2)
        lowres[s:s + len(m)] = lowres_masks(m[:, 0], (h, w), img_size)
    return centres, lowres


def select_mask(logits: torch.Tensor, iou: torch.Tensor, num_outputs: int = 1) -> torch.Tensor:
    """(N,4,H,W) logits, (N,4) IoU -> (N,H,W): token 0 for 1 output; else the best-IoU of tokens 1-3 (3)
    or of all 4 (4), the reference's ``score`` choice."""
    if num_outputs == 1:
        return logits[:, 0]
    if num_outputs not in (3, 4):
        raise ValueError(f"num_outputs must be 1, 3 or 4, got {num_outputs}")
    first = 4 - num_outputs
    best = iou[:, first:].argmax(dim=1) + first
    return logits[torch.arange(len(logits), device=logits.device), best]


def full_res_masks(lowres: torch.Tensor, input_hw: tuple[int, int], orig_hw: tuple[int, int], img_size: int) -> torch.Tensor:
    """S/4 logits (K,h,w) -> (K,H,W) bool at the original size (upsample to S, crop, resize, > 0)."""
    return postprocess_masks(lowres[:, None].float(), input_hw, orig_hw, img_size)[:, 0] > 0


def instance_ious(pred_lowres: torch.Tensor, sample: EvalSample, img_size: int,
                  ref_lowres: torch.Tensor | None = None) -> np.ndarray:
    """Per-instance IoU (K,) at the original resolution; NaN where the union is empty.
    Reference: ``ref_lowres`` (a model's S/4 logits) if given, else the sample's GT masks."""
    k = len(pred_lowres)
    out = np.full(k, np.nan, np.float64)
    step = _chunk(img_size, sample.orig_hw)
    for s in range(0, k, step):
        pred = full_res_masks(pred_lowres[s:s + step], sample.input_hw, sample.orig_hw, img_size)
        if ref_lowres is not None:
            ref = full_res_masks(ref_lowres[s:s + step], sample.input_hw, sample.orig_hw, img_size)
        else:
            ref = torch.from_numpy(sample.masks(s, s + step)).to(pred.device)
        inter = (pred & ref).flatten(1).sum(1).double()
        union = (pred | ref).flatten(1).sum(1).double()
        iou = torch.where(union > 0, inter / union.clamp(min=1), torch.full_like(union, float("nan")))
        out[s:s + len(pred)] = iou.cpu().numpy()
    return out


@torch.no_grad()
def run_protocol(decode_fn: DecodeFn, embedding: torch.Tensor, sample: EvalSample, kind: str, img_size: int, *,
                 centres: np.ndarray | None = None, gt_lowres: torch.Tensor | None = None,
                 reference_fn: DecodeFn | None = None, reference_embedding: torch.Tensor | None = None,
                 refine_iters: int = 2, num_outputs: int = 1, generator: torch.Generator | None = None,
                 min_pixels: int = 10, proposals: tuple[torch.Tensor, torch.Tensor] | None = None,
                 rpn_k: int = 5) -> ProtocolTrace:
    """Run the prompt sequence of one kind on one image (all instances batched).

    embedding (256,h,w) or (1,256,h,w). ``centres`` (K,2) are the point prompts (default: the sample's
    ``points``); ``gt_lowres`` (K,S/4,S/4) bool is the refinement reference unless ``reference_fn`` is given.
    ``proposals`` (boxes (M,4) XYXY input frame, scores (M,)): the image's RPN proposals, for ``click+rpn``.
    """
    if kind not in EVAL_KINDS:
        raise ValueError(f"kind must be one of {EVAL_KINDS}, got {kind!r}")
    if reference_fn is None and gt_lowres is None:
        raise ValueError("need gt_lowres (GT reference) or reference_fn (model reference)")
    emb = embedding.float()
    emb = emb[None] if emb.ndim == 3 else emb
    device = emb.device
    ref_emb = None
    if reference_fn is not None:
        ref_emb = (reference_embedding if reference_embedding is not None else embedding).float().to(device)
        ref_emb = ref_emb[None] if ref_emb.ndim == 3 else ref_emb
    points = centres if centres is not None else sample.points
    if kind in ("point", CLICK_RPN) and points is None:
        raise ValueError(f"{sample.image_id}: point prompts need centres or sample.points")
    if kind == CLICK_RPN:
        if proposals is None:
            raise ValueError(f"{sample.image_id}: the {CLICK_RPN} prompt needs the image's RPN proposals")
        clicks = torch.as_tensor(points, dtype=torch.float32)
        boxes, has_box = select_boxes(clicks, *(t.float().cpu() for t in proposals), k=rpn_k)
        coords, labels = click_box_prompts(clicks, boxes, has_box)
        decode_fn = decode_with_optional_box(decode_fn, has_box)
        if reference_fn is not None:
            reference_fn = decode_with_optional_box(reference_fn, has_box)
    else:
        coords, labels = make_prompt_batch(kind, torch.from_numpy(sample.boxes) if kind == "box" else None,
                                           torch.as_tensor(points, dtype=torch.float32) if kind == "point" else None)
    coords, labels = coords.to(device), labels.to(device)
    side = img_size // 4
    valid = valid_mask(sample.input_hw, img_size, side).to(device) > 0
    trace = ProtocolTrace(kind, [], [] if reference_fn is not None else None, [], coords, labels)
    for it in range(refine_iters + 1):
        logits, iou = decode_fn(emb, coords, labels)
        pred = select_mask(logits, iou, num_outputs)
        trace.pred_lowres.append(pred)
        if reference_fn is not None:
            r_logits, r_iou = reference_fn(ref_emb, coords, labels)
            ref = select_mask(r_logits, r_iou, num_outputs)
            trace.ref_lowres.append(ref)
            ref_mask = ref > 0
        else:
            ref_mask = gt_lowres.to(device)
        if it < refine_iters:
            new_c, new_l = sample_error_points(pred > 0, ref_mask, valid, generator, min_pixels, img_size / side)
            coords, labels = append_points(coords, labels, new_c, new_l)
            trace.click_labels.append(new_l[:, 0])
    trace.coords, trace.labels = coords, labels
    return trace


def _generator(seed: int, image_index: int, kind_index: int) -> torch.Generator:
    state = np.random.SeedSequence([seed, image_index, kind_index]).generate_state(1)[0]
    return torch.Generator().manual_seed(int(state))


def stage_name(kind: str, iteration: int) -> str:
    """Result key of a stage: "box", "box+1", "point+2", ... (as in :func:`evaluate_model`)."""
    return kind if iteration == 0 else f"{kind}+{iteration}"


def evaluate_model(decode_fn: DecodeFn, embeddings: Iterable[torch.Tensor], samples: Sequence[EvalSample],
                   img_size: int, *, reference_fn: DecodeFn | None = None,
                   reference_embeddings: Iterable[torch.Tensor] | None = None,
                   kinds: Sequence[str] = PROMPT_KINDS, refine_iters: int = 2, num_outputs: int = 1, seed: int = 0,
                   min_pixels: int = 10,
                   on_trace: Callable[[int, EvalSample, ProtocolTrace], None] | None = None,
                   proposals: Sequence[tuple[torch.Tensor, torch.Tensor]] | None = None) -> dict[str, float]:
    """mIoU of ``decode_fn`` over ``samples`` (``embeddings`` aligned with them, e.g. a generator).

    Student vs GT: leave ``reference_fn`` None. Student vs teacher: ``reference_fn`` = the teacher decoder and
    ``reference_embeddings`` = the teacher embeddings (aligned with ``samples``; default: ``embeddings``).
    Returns {"box": .., "box+1": .., "box+2": .., "point": .., ..., "num_instances", "num_images",
    "ignored_clicks/<stage>" (fraction of refinement clicks labelled -2)}; mIoU values are x100, NaN when
    no instance had a non-empty union. Seeds are per (seed, image index, kind): order-independent.
    ``proposals``: per sample, its RPN proposals (boxes (M,4) input frame, scores (M,)); needed by ``click+rpn``.
    """
    for kind in kinds:
        if kind not in EVAL_KINDS:
            raise ValueError(f"kind must be one of {EVAL_KINDS}, got {kind!r}")
    if CLICK_RPN in kinds and proposals is None:
        raise ValueError(f"the {CLICK_RPN} prompt kind needs per-image RPN proposals")
    if refine_iters < 0:
        raise ValueError(f"refine_iters must be >= 0, got {refine_iters}")
    ious: dict[str, list[np.ndarray]] = {stage_name(k, i): [] for k in kinds for i in range(refine_iters + 1)}
    ignored: dict[str, list[torch.Tensor]] = {stage_name(k, i): [] for k in kinds for i in range(1, refine_iters + 1)}
    ref_iter = iter(reference_embeddings) if reference_embeddings is not None else None
    num_instances = num_images = 0
    for index, (sample, emb) in enumerate(zip(samples, embeddings, strict=True)):
        ref_emb = next(ref_iter) if ref_iter is not None else None
        if sample.num_instances == 0:
            continue
        num_images += 1
        num_instances += sample.num_instances
        centres, gt_lowres = (None, None)
        if sample.has_gt:
            centres, gt_lowres = gt_prompts_and_lowres(sample, img_size)
        elif reference_fn is None:
            raise ValueError(f"{sample.image_id}: no GT masks and no reference model")
        if sample.points is not None:
            centres = sample.points
        for ki, kind in enumerate(kinds):
            trace = run_protocol(decode_fn, emb, sample, kind, img_size, centres=centres, gt_lowres=gt_lowres,
                                 reference_fn=reference_fn, reference_embedding=ref_emb, refine_iters=refine_iters,
                                 num_outputs=num_outputs, generator=_generator(seed, index, ki), min_pixels=min_pixels,
                                 proposals=proposals[index] if proposals is not None else None)
            for it, pred in enumerate(trace.pred_lowres):
                ref = trace.ref_lowres[it] if trace.ref_lowres is not None else None
                ious[stage_name(kind, it)].append(instance_ious(pred, sample, img_size, ref))
            for it, lab in enumerate(trace.click_labels, start=1):
                ignored[stage_name(kind, it)].append((lab == IGNORE).float().cpu())
            if on_trace is not None:
                on_trace(index, sample, trace)
    out: dict[str, float] = {}
    for name, values in ious.items():
        v = np.concatenate(values) if values else np.zeros(0)
        v = v[~np.isnan(v)]
        out[name] = float(v.mean() * 100) if v.size else float("nan")
    for name, values in ignored.items():
        out[f"ignored_clicks/{name}"] = float(torch.cat(values).mean()) if values else float("nan")
    out["num_instances"] = num_instances
    out["num_images"] = num_images
    return out
