"""Segment everything does not depend on how the prompts are split into decoder calls.

One greedy mask NMS over every candidate of a crop (exact, with pruning) replaces NMS per call + NMS over the
survivors; decoder calls never exceed ``decoder_chunk``; kept masks whose logits were not cached are decoded
again. Hand-made masks through fake backends, random masks against a brute-force NMS, and a briefly trained
student (torch and ONNX Runtime, grid and RPN mode) on photos.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from edgesam.data.rle import decode_rle
from edgesam.inference import amg_utils as U
from edgesam.inference.everything import EverythingConfig, EverythingGenerator
from edgesam.inference.lowres_post import PackedMasks, lowres_boxes, lowres_nms

S = 256  # fake backends: a 256 x 256 image is the S frame itself, low-res 64 x 64
LOW = S // 4
PHOTOS = Path("/work/shared/images")


# -- brute force reference -------------------------------------------------------------------------------------
def _dense_nms(masks: np.ndarray, scores: np.ndarray, thresh: float, max_keep: int | None = None) -> list[int]:
    """Greedy NMS from the full float32 IoU matrix of binary masks (K, h, w): the definition the pruned NMS must meet."""
    f = torch.from_numpy(masks.reshape(len(masks), -1)).float()
    area = f.sum(1)
    inter = f @ f.T
    iou = (inter / (area[:, None] + area[None] - inter).clamp(min=1)).numpy()
    suppressed = np.zeros(len(masks), bool)
    keep: list[int] = []
    for i in np.argsort(-scores.astype(np.float64), kind="stable"):
        if suppressed[i]:
            continue
        keep.append(int(i))
        if max_keep is not None and len(keep) >= max_keep:
            break
        suppressed |= iou[i] > thresh
    return keep


def _random_masks(rng: np.random.Generator, k: int, hw: tuple[int, int]) -> np.ndarray:
    """Rectangles and ellipses of all sizes, some near-copies of earlier ones (so NMS has work), some empty."""
    h, w = hw
    yy, xx = np.mgrid[:h, :w]
    out = np.zeros((k, h, w), bool)
    for i in range(k):
        if i > 3 and rng.random() < 0.4:  # a perturbed copy: shifted by a pixel or two, a few pixels flipped
            m = np.roll(out[rng.integers(i)], tuple(rng.integers(-2, 3, 2)), axis=(0, 1))
            out[i] = m ^ (rng.random((h, w)) < 0.01)
            continue
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        ry, rx = rng.uniform(1, h / 2), rng.uniform(1, w / 2)
        if rng.random() < 0.5:
            out[i] = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
        else:
            out[i] = (abs(yy - cy) <= ry) & (abs(xx - cx) <= rx)
    out[rng.integers(k)] = False
    return out


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_pruned_nms_equals_brute_force(seed):
    rng = np.random.default_rng(seed)
    hw = [(48, 40), (37, 64), (64, 64), (20, 9)][seed]  # widths off and on byte boundaries
    masks = _random_masks(rng, 160, hw)
    scores = np.round(rng.random(len(masks)), 1).astype(np.float32)  # ties: broken by index, both sides
    packed = PackedMasks.from_masks(torch.from_numpy(masks))
    assert np.array_equal(packed.bits, np.packbits(masks, axis=-1))
    some = masks.any((1, 2))
    assert np.array_equal(packed.area, masks.sum((1, 2))) and not some.all()
    assert np.array_equal(packed.boxes[some], lowres_boxes(torch.from_numpy(masks[some])))
    assert (packed.boxes[~some] == [0, -1, 0, -1]).all()
    for thresh in (0.3, 0.5, 0.7, 0.9, 1.0):
        for max_keep in (None, 7):
            assert lowres_nms(packed, scores, thresh, max_keep).tolist() == _dense_nms(masks, scores, thresh, max_keep)
    # the pool is concatenated from per-call parts: the cut points change nothing
    parts = [PackedMasks.from_masks(torch.from_numpy(masks[a:b])) for a, b in ((0, 1), (1, 50), (50, 51), (51, 160))]
    assert lowres_nms(PackedMasks.cat(parts), scores, 0.7).tolist() == _dense_nms(masks, scores, 0.7)


# -- the A/B/C case through fake backends -------------------------------------------------------------------------
def _square(r0: int, r1: int, c0: int, c1: int) -> np.ndarray:
    m = np.zeros((LOW, LOW), bool)
    m[r0:r1, c0:c1] = True
    return m


# grid prompts (2 x 2 points) in order -> hand-made masks: A, C, B, nothing. With NMS IoU 0.5 and scores
# B 0.9 > A 0.8 > C 0.7: IoU(A, B) = IoU(A, C) = 0.6, IoU(B, C) = 1/3. One greedy NMS: B suppresses A, C
# stays. Per call of 2 prompts: A suppresses C in the first call, B then suppresses A: only B is left.
ABC = {"A": _square(0, 20, 10, 30), "C": _square(0, 20, 5, 25), "B": _square(0, 20, 15, 35)}
PROMPT_MASKS = [ABC["A"], ABC["C"], ABC["B"], np.zeros((LOW, LOW), bool)]
PROMPT_IOU = [0.8, 0.7, 0.9, 0.5]


class FakeEncoder:
    img_size, name = S, "fake"

    def __call__(self, images: np.ndarray) -> np.ndarray:
        return np.zeros((1, 256, S // 16, S // 16), np.float32)


class FakeDecoder:
    """Numpy backend: each grid prompt decodes to its hand-made mask (logits +-10) on all four tokens."""

    name, device = "fake", "cpu"

    def __init__(self) -> None:
        self.calls: list[int] = []
        self.index = {tuple(np.round(p).astype(int)): i for i, p in enumerate(U.grid_points(2, (S, S)))}

    def __call__(self, embedding, point_coords, point_labels, mask_input=None):
        coords = np.asarray(point_coords)
        self.calls.append(len(coords))
        idx = [self.index[tuple(np.round(c[0]).astype(int))] for c in coords]
        logits = np.where(np.stack([PROMPT_MASKS[i] for i in idx])[:, None], 10.0, -10.0).astype(np.float32)
        return np.repeat(logits, 4, axis=1), np.repeat(np.float32([PROMPT_IOU[i] for i in idx])[:, None], 4, axis=1)


class FakeTensorDecoder(FakeDecoder):
    """The same on the torch path (``decode_tensors``)."""

    def decode_tensors(self, embedding, point_coords, point_labels, mask_input=None):
        assert torch.is_tensor(embedding)
        logits, iou = self(embedding.numpy(), point_coords.numpy(), point_labels.numpy())
        return torch.from_numpy(logits), torch.from_numpy(iou)


def _chunked_then_global(masks: list[np.ndarray], scores: np.ndarray, chunk: int, thresh: float) -> list[int]:
    """NMS per call of ``chunk`` candidates, then NMS over the survivors (what one global NMS replaces)."""
    survivors: list[int] = []
    for sl in U.batches(len(masks), chunk):
        part = PackedMasks.from_masks(torch.from_numpy(np.stack(masks[sl])))
        survivors += [sl.start + int(i) for i in lowres_nms(part, scores[sl], thresh)]
    part = PackedMasks.from_masks(torch.from_numpy(np.stack([masks[i] for i in survivors])))
    return sorted(survivors[int(i)] for i in lowres_nms(part, scores[survivors], thresh))


@pytest.mark.parametrize("decoder_cls", [FakeDecoder, FakeTensorDecoder])
def test_abc_kept_set_does_not_depend_on_chunking(decoder_cls):
    masks, scores = PROMPT_MASKS[:3], np.float32(PROMPT_IOU[:3])
    assert _chunked_then_global(masks, scores, 2, 0.5) == [2]  # per call: C is lost
    assert _chunked_then_global(masks, scores, 3, 0.5) == [1, 2]  # one call: B and C
    image = np.zeros((S, S, 3), np.uint8)
    results = []
    for chunk in (1, 2, 3, 4):
        for cache_mb in (64, 0):
            dec = decoder_cls()
            cfg = EverythingConfig(mode="grid", points_per_side=2, num_outputs=1, score="iou", mask_nms_iou=0.5,
                                   stability_score_thresh=0.9, decoder_chunk={"cpu": chunk}, logit_cache_mb=cache_mb)
            gen = EverythingGenerator(dec, cfg, encoder=FakeEncoder())
            assert gen.tensor_path == (decoder_cls is FakeTensorDecoder)
            recs = gen.generate(image)
            assert max(dec.calls) <= chunk
            # B and C kept; without a cache both are decoded again (their prompts only, within the bound)
            assert gen.stats["redecoded_prompts"] == (0 if cache_mb else 2)
            assert sum(dec.calls) == 4 + gen.stats["redecoded_prompts"] == gen.stats["prompts"]
            results.append([(r["segmentation"]["counts"], r["score"]) for r in recs])
    assert all(r == results[0] for r in results)
    # B then C, at the original size: the low-res squares x 4 (up to pixels within float rounding of a crossing)
    assert [s for _, s in results[0]] == [pytest.approx(0.9), pytest.approx(0.7)]
    for (counts, _), k in zip(results[0], "BC"):
        m = decode_rle({"size": [S, S], "counts": counts}).astype(bool)
        want = np.kron(ABC[k], np.ones((4, 4), bool))
        assert (m != want).sum() <= 4 and not (m & ~want).any()


def test_logit_cache_is_a_prompt_order_prefix():
    """A cache of 2 candidates holds the first two in prompt order (A, C) whatever the chunking: B is decoded
    again, C is not."""
    image = np.zeros((S, S, 3), np.uint8)
    two = 2 * LOW * LOW * 4 / 2**20  # MB
    for chunk in (1, 3, 4):
        dec = FakeDecoder()
        cfg = EverythingConfig(mode="grid", points_per_side=2, num_outputs=1, score="iou", mask_nms_iou=0.5,
                               stability_score_thresh=0.9, decoder_chunk={"cpu": chunk}, logit_cache_mb=two)
        gen = EverythingGenerator(dec, cfg, encoder=FakeEncoder())
        assert len(gen.generate(image)) == 2
        assert gen.stats["redecoded_prompts"] == 1 and dec.calls[-1] == 1


# -- a briefly trained student on photos -------------------------------------------------------------------------
STUDENT_S = 128
STUDENT_STEPS = 200  # about 60 s on one core; the training-stream mask IoU reaches ~0.75
CHUNKS = (1, 8, 64)


@pytest.fixture(scope="module")
def photos() -> list[np.ndarray]:
    """Three photos scaled to 320 px on the long side."""
    from PIL import Image

    names = ["dog.jpg", "groceries.jpg", "demo_1.jpeg"]
    if not all((PHOTOS / n).is_file() for n in names):
        pytest.skip(f"photos not found in {PHOTOS}")
    out = []
    for n in names:
        im = Image.open(PHOTOS / n).convert("RGB")
        im.thumbnail((320, 320))
        out.append(np.asarray(im).copy())
    return out


@pytest.fixture(scope="module")
def student(photos, tmp_path_factory) -> tuple[torch.nn.Module, Path]:
    """EdgeSAM at S = 128 trained briefly (GT mask loss, box and click prompts) on the test photos themselves,
    with coarse Felzenszwalb segments as GT, plus an untrained RPN (its proposals are deterministic); exported to
    ONNX (encoder, decoder, rpn) under a temporary folder.

    Why the photos: a minute of training on synthetic scenes leaves a student that ignores its prompts (the
    same mask for every prompt), so nothing would be left for NMS to decide; fitting the photos' own segments
    gives confident, prompt-dependent masks on them (5-12 per image pass a 0.7 stability filter)."""
    pytest.importorskip("onnxruntime")
    from skimage.segmentation import felzenszwalb

    from edgesam.distill.quick_student import quick_optimizer, quick_train_step
    from edgesam.export.onnx_export import export_all
    from edgesam.models import EdgeSAM
    from edgesam.models.rpn import build_rpn

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    scenes = []
    for im in photos:
        seg = felzenszwalb(im, scale=1000, sigma=0.8, min_size=1500)
        scenes.append((im, [seg == k for k in np.unique(seg)]))
    model = EdgeSAM(STUDENT_S).train()
    opt = quick_optimizer(model)
    ious = [quick_train_step(model, opt, *scenes[i % len(scenes)], rng, clicks=True)[1] for i in range(STUDENT_STEPS)]
    assert np.mean(ious[-30:]) > 0.4  # it did learn the segments
    model.eval()
    model.rpn = build_rpn(model.image_encoder.feature_channels, width=32, gn_groups=8).eval()
    onnx_dir = tmp_path_factory.mktemp("student_onnx")
    assert export_all(model, onnx_dir)["rpn"].is_file()
    return model, onnx_dir


class CallSizes:
    """Wraps a decoder backend and records the prompts per call (numpy path)."""

    def __init__(self, inner) -> None:
        self.inner, self.calls = inner, []

    def __getattr__(self, name: str):
        return getattr(self.inner, name)

    def __call__(self, embedding, point_coords, point_labels, mask_input=None):
        self.calls.append(len(point_coords))
        return self.inner(embedding, point_coords, point_labels, mask_input)


class TensorCallSizes(CallSizes):
    def decode_tensors(self, embedding, point_coords, point_labels, mask_input=None):
        self.calls.append(int(point_coords.shape[0]))
        return self.inner.decode_tensors(embedding, point_coords, point_labels, mask_input)


# With these settings NMS per decoder call followed by NMS over the survivors keeps other masks than one NMS
# on at least one photo (grid: calls of 8 prompts; RPN: calls of 8 and 24), so the comparison has teeth.
MODES = {"grid": {"mode": "grid", "points_per_side": 10, "points_per_batch": 64, "stability_score_thresh": 0.7},
         "rpn": {"mode": "rpn", "rpn_score_thresh": 0.0, "max_proposals": 60, "stability_score_thresh": 0.7,
                 "mask_nms_iou": 0.5}}


def _run(student, backend: str, images: list[np.ndarray], **cfg) -> tuple[list[list[dict]], EverythingGenerator]:
    model, onnx_dir = student
    cfg = EverythingConfig(**cfg)
    gen = (EverythingGenerator.from_model(model, cfg) if backend == "torch"
           else EverythingGenerator.from_onnx(onnx_dir, cfg, threads=1))
    wrap = TensorCallSizes if gen.tensor_path else CallSizes
    gen.decoder = wrap(gen.decoder)
    out = [gen.generate(im) for im in images]
    assert gen.decoder.calls and max(gen.decoder.calls) <= cfg.chunk_for(gen.device)
    return out, gen


def _assert_same_masks(a: list[dict], b: list[dict]) -> None:
    """A one-to-one match with mask IoU >= 0.99 and scores within 1e-4."""
    assert len(a) == len(b)
    if not a:
        return
    iou = U.mask_iou_matrix([r["segmentation"] for r in a], [r["segmentation"] for r in b])
    best = iou.argmax(1)
    assert sorted(best.tolist()) == list(range(len(b))), "not one-to-one"
    assert iou[np.arange(len(a)), best].min() >= 0.99
    assert max(abs(r["score"] - b[j]["score"]) for r, j in zip(a, best)) <= 1e-4


@pytest.mark.parametrize("backend", ["torch", "onnxruntime"])
@pytest.mark.parametrize("mode", ["grid", "rpn"])
def test_trained_student_masks_do_not_depend_on_chunking(student, photos, backend, mode):
    runs = {c: _run(student, backend, photos, decoder_chunk={"cpu": c}, **MODES[mode]) for c in CHUNKS}
    ref = runs[CHUNKS[-1]][0]
    for recs, im in zip(ref, photos):  # non-trivial: several masks, not all covering the whole image
        assert len(recs) >= 3
        assert min(r["area"] for r in recs) < 0.5 * im.shape[0] * im.shape[1]
    for c in CHUNKS[:-1]:
        for a, b in zip(runs[c][0], ref):
            _assert_same_masks(a, b)
    # no cache (every kept mask decoded again) and a cache of a few candidates (some decoded again) give the
    # same masks as the default cache (everything cached at this size)
    for cache_mb in (0.0, 0.05, 64.0):
        recs, gen = _run(student, backend, photos, decoder_chunk={"cpu": 8}, logit_cache_mb=cache_mb, **MODES[mode])
        kept = sum(len(r) for r in recs)
        if cache_mb == 0:
            assert gen.stats["redecoded_prompts"] >= min(kept, 1)
        elif cache_mb == 64:
            assert gen.stats["redecoded_prompts"] == 0
        for a, b in zip(recs, ref):
            _assert_same_masks(a, b)
