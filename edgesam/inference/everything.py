"""Segment everything: RPN proposals (or SAM's point grid) -> chunked decoder calls -> low-res filters -> ONE mask
NMS over all candidates -> kept masks resized once to the original size -> RLE.

RPN mode (default), per image or crop:
    encoder + RPN in one pass (``RpnEncoderBackend``: embedding and decoded proposals) -> threshold, top-k,
    class-agnostic box NMS (:func:`edgesam.models.rpn.select_proposals`) -> decoder calls of at most
    ``decoder_chunk[device]`` proposals as box prompts (optionally plus the centre as a positive point) ->
    stability / IoU-head / crop-edge filters per candidate on the low-res logits
    (:mod:`edgesam.inference.lowres_post`) -> every survivor kept compactly (its binary low-res mask, one bit
    per pixel, box, area, scores) -> after the last call, one mask NMS over all of them -> only the kept masks
    are resized (once, over their bounding box) to the original size and run-length encoded, with area and
    bbox from the same pass -> area filter. Across crops: NMS on RLE IoU.
    Torch backends (``decode_tensors``) keep the embedding and logits on their device (CUDA): token selection
    and filters run there, the binary masks come to the host packed (1 bit per low-res pixel) for the NMS,
    and only the kept low-res logits come to the host for the RLE.
    ``timings`` accumulates seconds per stage (encoder + RPN, decoder, post-processing).
Grid mode: SAM's ``points_per_side``^2 single-point prompts in decoder calls of ``points_per_batch`` but never
more than ``decoder_chunk[device]``, same filters and output, for comparison.

Chunking. The kept masks do not depend on how the prompts are split into decoder calls: NMS runs once, over
every candidate of the crop, in score order (greedy NMS per call and again over the survivors would not be
the same: A may suppress C in one call and then lose to B from a later call, and C is gone). Memory stays
bounded by the call size: a call's float logits are dropped once its candidates are packed, except for the
first ``logit_cache_mb`` of candidates in prompt order (their logits feed the RLE directly). Kept candidates
outside that cache are decoded again (their prompts only, in calls of the same bound) for the RLE;
``stats["redecoded_prompts"]`` counts them and their time counts as "decoder".

Scores. EdgeSAM's IoU head is not distilled, so masks are ranked (``score``, NMS order) by the stability
score: IoU of the low-res logits thresholded at +-``stability_score_offset``. It is computed once, on the
S/4 low-res logits (as EdgeSAM's predictor does), and filtered at ``stability_score_thresh``; the IoU head is
reported as ``predicted_iou`` and filtered only when ``pred_iou_thresh`` > 0.

ONNX. ``encoder.onnx`` outputs only the embedding, but the RPN needs the stride-8/16/32 maps. Rather than run
a torch encoder beside ONNX (two encoder passes, torch weights needed at deploy time), RPN mode with ONNX runs
``rpn.onnx`` (:func:`edgesam.models.rpn.export_rpn_onnx`): image -> embedding + decoded boxes + scores in one
graph, in place of ``encoder.onnx``; thresholds and NMS stay outside the graph.

Output records follow SA-1B: ``segmentation`` (RLE, str counts, original size), ``bbox`` XYWH, ``area``,
``score`` (= stability), ``stability_score``, ``predicted_iou``, ``point_coords`` [[x, y]] (grid point or
proposal centre), ``crop_box`` XYWH; RPN mode adds ``rpn_box`` XYWH and ``rpn_score``. All coordinates are
original-image pixels.
"""
from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from pydantic import Field

from ..config import StrictModel
from ..data.transforms import ResizeLongestSide, preprocess
from ..models.prompt_decoder import select_outputs
from ..models.rpn import RPN_ONNX_FILE, select_proposals
from . import amg_utils as U
from .backends import DecoderBackend, EncoderBackend
from .lowres_post import (LowRes, PackedMasks, Upsampler, filter_lowres, lowres_boxes, lowres_boxes_in_crop, lowres_nms,
                          masks_to_rles)
from .rpn_backends import OrtRpnEncoder, RpnEncoderBackend, TorchRpnEncoder
from .torch_options import TorchOptions

__all__ = ["EverythingConfig", "EverythingGenerator", "candidates_from_logits",
           # encoder + RPN backends (edgesam.inference.rpn_backends), importable from here as before
           "OrtRpnEncoder", "RpnEncoderBackend", "TorchRpnEncoder"]


class EverythingConfig(StrictModel):
    """Segment-everything settings (defaults: SAM's AMG where they apply)."""

    mode: Literal["rpn", "grid"] = "rpn"
    # grid mode
    points_per_side: int = Field(32, ge=1, le=128)
    # prompts per decoder call (SAM's name), an upper bound: a call never holds more than decoder_chunk[device]
    points_per_batch: int = Field(64, ge=1, le=4096)
    # rpn mode
    prompt: Literal["box", "box+point"] = "box"
    rpn_score_thresh: float = Field(0.05, ge=0, le=1)
    rpn_nms_iou: float = Field(0.7, gt=0, le=1)
    rpn_pre_nms_top_k: int = Field(1000, ge=1)
    max_proposals: int = Field(100, ge=1, le=4096)
    # both
    num_outputs: Literal[1, 3, 4] | None = None  # None: 1 for RPN boxes (unambiguous), 3 for grid points (SAM)
    pred_iou_thresh: float = Field(0.0, ge=0, le=1)  # IoU head: not distilled in EdgeSAM, off by default
    stability_score_thresh: float = Field(0.95, ge=0, le=1)
    stability_score_offset: float = Field(1.0, ge=0)
    mask_threshold: float = 0.0
    min_mask_area: int = Field(0, ge=0)  # original-size pixels
    mask_nms_iou: float = Field(0.7, gt=0, le=1)
    crop_n_layers: int = Field(0, ge=0, le=3)
    crop_overlap_ratio: float = Field(512 / 1500, ge=0, lt=1)
    crop_nms_iou: float = Field(0.7, gt=0, le=1)
    max_masks: int = Field(1000, ge=1)
    # prompts per decoder call, per device kind (memory bound: ONNX Runtime's arena holds the largest call, ~35 MB
    # per prompt at S = 1024; 8 keeps a 1-CPU actor under 2 GB at 12 MP, and the split decoder's image side runs
    # once per image whatever the chunk; on a GPU larger calls fill the device)
    decoder_chunk: dict[str, int] = Field(default_factory=lambda: {"cpu": 8, "cuda": 256})
    # float low-res logits kept per crop for the RLE of the kept masks, first candidates in prompt order (so the
    # same ones whatever the chunking); kept masks beyond it are decoded again. 256 KB per candidate at S = 1024
    logit_cache_mb: float = Field(64, ge=0)
    # ranking score (NMS order, output order, COCO score): the stability score (EdgeSAM does not distil the IoU
    # head), the IoU head (a student trained on GT masks, step2.mask_target), or their product
    score: Literal["stability", "iou", "iou*stability", "rpn*stability"] = "stability"

    def outputs_per_prompt(self) -> int:
        return self.num_outputs if self.num_outputs is not None else (1 if self.mode == "rpn" else 3)

    def chunk_for(self, device: str) -> int:
        """Prompts per decoder call on ``device`` ("cpu", "cuda", "cuda:1", ...; unknown kinds use the CPU's)."""
        kind = str(device).split(":", 1)[0]
        return max(1, int(self.decoder_chunk.get(kind, self.decoder_chunk.get("cpu", 8))))


def candidates_from_logits(logits: np.ndarray | torch.Tensor, iou: np.ndarray | torch.Tensor, cfg: EverythingConfig,
                           input_hw: tuple[int, int], crop_hw: tuple[int, int], img_size: int,
                           crop_box: list[int] | None = None, orig_hw: tuple[int, int] | None = None) -> list[dict]:
    """One decoder batch -> the masks that pass the filters, as RLEs in the original frame (no NMS).

    logits (N,4,S/4,S/4) low-res mask logits and iou (N,4) from the decoder (numpy or torch, any device);
    ``input_hw`` the resized extent of the crop inside the S frame, ``crop_hw`` its original size, ``crop_box``
    XYXY in the image of ``orig_hw`` (default: the whole image). Tokens are picked by ``cfg.outputs_per_prompt()``;
    filters: stability score (low-res logits, valid region) >= ``stability_score_thresh``, IoU head >=
    ``pred_iou_thresh`` when that is > 0, non-empty and >= ``min_mask_area`` pixels at the original size, and
    (true crops only) not touching an inner crop edge. Masks are resized once, low-res -> original
    (:mod:`edgesam.inference.lowres_post`). Returns dicts {"prompt", "token" (index among the selected
    tokens), "rle" (str counts, original size), "area", "bbox" (XYWH), "stability", "iou"}, in prompt order.
    """
    del img_size  # the low-res frame is S/4 of it; kept in the signature for callers
    orig_hw = tuple(orig_hw or crop_hw)
    crop_box = list(crop_box) if crop_box is not None else [0, 0, orig_hw[1], orig_hw[0]]
    lt, it = torch.as_tensor(logits), torch.as_tensor(iou)
    c = filter_lowres(lt, it, cfg.outputs_per_prompt(), input_hw, cfg.mask_threshold, cfg.stability_score_offset,
                      cfg.stability_score_thresh, cfg.pred_iou_thresh)
    up = Upsampler(input_hw, crop_hw)
    c = c.take(np.flatnonzero(_off_crop_edge(lowres_boxes(c.logits > cfg.mask_threshold), up, crop_box, orig_hw)))
    recs = masks_to_rles(c.logits, up, (crop_box[0], crop_box[1]), orig_hw, cfg.mask_threshold)
    out = []
    for j, (rle, area, bbox) in enumerate(recs):
        if area > 0 and area >= cfg.min_mask_area:
            out.append({"prompt": int(c.prompt[j]), "token": int(c.token[j]), "rle": rle, "area": area, "bbox": bbox,
                        "stability": float(c.stability[j]), "iou": float(c.iou[j])})
    return out


def _off_crop_edge(boxes: np.ndarray, up: Upsampler, crop_box: list[int], orig_hw: tuple[int, int]) -> np.ndarray:
    """Low-res boxes (K,4) [row0, row1, col0, col1] -> (K,) bool: the mask does not touch an inner crop edge
    (box estimated from the low-res mask, SAM's 20 px tolerance); all True on the whole image."""
    image_box = [0, 0, orig_hw[1], orig_hw[0]]
    if list(crop_box) == image_box or len(boxes) == 0:
        return np.ones(len(boxes), bool)
    return ~U.near_crop_edge(lowres_boxes_in_crop(boxes, up), crop_box, image_box)


def _scores(kind: str, c: LowRes, prompt_score: np.ndarray | None) -> torch.Tensor:
    """Ranking scores (K,) of the candidates (see :func:`_score`)."""
    if kind == "iou":
        return c.iou
    if kind == "iou*stability":
        return c.iou * c.stability
    if kind == "rpn*stability" and prompt_score is not None:
        return torch.as_tensor(prompt_score, device=c.prompt.device)[c.prompt].float() * c.stability
    return c.stability


def _score(kind: str, stability: float, iou: float, rpn: float | None) -> float:
    """The ranking score of a mask; "rpn*stability" falls back to the stability score in grid mode."""
    if kind == "iou":
        return iou
    if kind == "iou*stability":
        return iou * stability
    if kind == "rpn*stability" and rpn is not None:
        return rpn * stability
    return stability


class _CropPool:
    """Every candidate of one crop that passed the per-candidate filters, in prompt order (prompt, then token).

    Host numpy: packed binary masks (:class:`PackedMasks`), prompt / token / score / stability / iou (K,).
    Float logits (k, hl, wl) on the decoder's device only for the first ``cap`` candidates: a prefix in prompt
    order, so which ones are cached does not depend on the chunking.
    """

    FIELDS = ("prompt", "token", "score", "stability", "iou")

    def __init__(self, cap: int) -> None:
        self.cap, self.n = int(cap), 0
        self.parts: list[PackedMasks] = []
        self.columns: dict[str, list[np.ndarray]] = {f: [] for f in self.FIELDS}
        self.cache: list[tuple[int, torch.Tensor]] = []  # (index of the part's first candidate, its logits)

    def __len__(self) -> int:
        return self.n

    def add(self, c: LowRes, masks: PackedMasks, score: torch.Tensor) -> None:
        """One decoder call's candidates ``c`` (K), their packed masks and ranking scores (K,)."""
        room = max(0, min(len(c), self.cap - self.n))
        if room:  # a slice would keep the whole call's logits alive: copy when only part of them fits
            self.cache.append((self.n, c.logits if room == len(c) else c.logits[:room].clone()))
        self.parts.append(masks)
        for f, v in zip(self.FIELDS, (c.prompt, c.token, score, c.stability, c.iou)):
            self.columns[f].append(v.detach().cpu().numpy())
        self.n += len(c)

    def masks(self) -> PackedMasks:
        return PackedMasks.cat(self.parts)

    def column(self, name: str) -> np.ndarray:
        return np.concatenate(self.columns[name])

    @property
    def cached(self) -> int:
        """Candidates 0 .. cached-1 have their logits in the cache."""
        return min(self.n, self.cap)


# -- the generator ---------------------------------------------------------------------------------------
class EverythingGenerator:
    """Segment everything in an image with an encoder/decoder pair and (RPN mode) an encoder+RPN backend.

    ``stats`` counts images, encoder calls, decoder calls and prompts sent to the decoder (re-decoded ones
    included) since construction, and of those prompts the ones decoded again for the RLE of a kept mask
    whose logits were not cached (``redecoded_prompts``).
    ``last_proposals`` holds the last image's RPN proposals (M,5) [x0, y0, x1, y1, score] in the original
    frame (all crops; empty in grid mode), for box-recall evaluation.
    """

    def __init__(self, decoder: DecoderBackend, cfg: EverythingConfig | None = None,
                 encoder: EncoderBackend | None = None, rpn: RpnEncoderBackend | None = None) -> None:
        self.cfg = cfg or EverythingConfig()
        if self.cfg.mode == "rpn" and rpn is None:
            raise ValueError("everything mode 'rpn' needs an RPN backend (a checkpoint with an RPN, or rpn.onnx); "
                             "use mode 'grid' for a point grid")
        if self.cfg.mode == "grid" and encoder is None and rpn is None:
            raise ValueError("everything mode 'grid' needs an encoder backend")
        self.decoder, self.encoder, self.rpn = decoder, encoder, rpn
        self.img_size = int((rpn if self.cfg.mode == "rpn" else encoder or rpn).img_size)  # type: ignore[union-attr]
        self.transform = ResizeLongestSide(self.img_size)
        self.stats = {"images": 0, "encoder_calls": 0, "decoder_calls": 0, "prompts": 0, "redecoded_prompts": 0}
        self.timings = {"encoder": 0.0, "decoder": 0.0, "post": 0.0}  # seconds since construction, by stage
        self.last_proposals = np.zeros((0, 5), np.float32)
        # torch backends (``decode_tensors``) keep the embedding and the logits on their device, CPU or CUDA;
        # numpy backends (ONNX Runtime, TensorRT) post-process on the CPU
        self.tensor_path = hasattr(decoder, "decode_tensors")
        self.device = str(getattr(decoder, "device", "cpu")) if self.tensor_path else "cpu"
        # where the decoder itself runs, for its call size: a numpy backend may still run on a GPU (TensorRT,
        # ONNX Runtime's CUDA provider)
        self.decoder_device = str(getattr(decoder, "device", "")) or (
            "cuda" if "cuda" in str(getattr(decoder, "name", "")) else "cpu")

    @classmethod
    def from_model(cls, model: torch.nn.Module, cfg: EverythingConfig | None = None, device: str = "cpu",
                   torch_options: TorchOptions | None = None) -> "EverythingGenerator":
        """Torch backends from an :class:`EdgeSAM` (``model.rpn`` is needed for RPN mode), run as
        ``torch_options`` says (None: :meth:`TorchOptions.for_device`)."""
        from .runtime import make_backends

        cfg = cfg or EverythingConfig()
        opts = torch_options or TorchOptions.for_device(device)
        enc, dec = make_backends("torch", model=model, device=device, torch_options=opts)
        rpn = None
        if getattr(model, "rpn", None) is not None:
            rpn = TorchRpnEncoder(model.image_encoder, model.rpn, model.img_size, device, opts)
        elif cfg.mode == "rpn":
            raise ValueError("model has no RPN (model.rpn is None); load a checkpoint trained with step 3 or use mode 'grid'")
        return cls(dec, cfg, encoder=enc, rpn=rpn)

    @classmethod
    def from_onnx(cls, onnx_dir: str | Path, cfg: EverythingConfig | None = None, device: str = "cpu",
                  threads: int | None = None, ort_decoder: str = "auto", int8: bool | str = False) -> "EverythingGenerator":
        """ONNX Runtime backends from an export folder (``encoder.onnx``, ``decoder.onnx``, and ``rpn.onnx`` for
        RPN mode); ``ort_decoder`` and ``int8`` as in :func:`edgesam.inference.runtime.make_backends`."""
        from .runtime import make_backends

        cfg = cfg or EverythingConfig()
        enc, dec = make_backends("onnxruntime", onnx_dir=onnx_dir, device=device, threads=threads,
                                 ort_decoder=ort_decoder, int8=int8)
        rpn = None
        rpn_path = Path(onnx_dir) / RPN_ONNX_FILE
        if cfg.mode == "rpn":
            if not rpn_path.is_file():
                raise FileNotFoundError(f"everything mode 'rpn' with ONNX needs {rpn_path}: write it with "
                                        "edgesam.models.rpn.export_rpn_onnx(model, path), or use mode 'grid'")
            sess = getattr(dec, "session", None) or getattr(dec, "prompt_session", None)
            providers = getattr(sess, "get_providers", lambda: None)()
            if int8 is True:
                from .quantize import quantize_folder

                rpn_path = quantize_folder(onnx_dir, [RPN_ONNX_FILE])[0]
            rpn = OrtRpnEncoder(rpn_path, providers, threads)
        return cls(dec, cfg, encoder=enc, rpn=rpn)

    # -- public ------------------------------------------------------------------------------------------
    def generate(self, image: np.ndarray) -> list[dict]:
        """uint8 (H,W,3) RGB (grayscale / RGBA converted) -> SA-1B-style records, best score first."""
        from .predictor import as_rgb_uint8

        image = as_rgb_uint8(image)
        if not image.flags.writeable:  # e.g. np.asarray(PIL image); torch wants writable memory
            image = image.copy()
        cfg = self.cfg
        h, w = image.shape[:2]
        crops, _ = U.crop_boxes((h, w), cfg.crop_n_layers, cfg.crop_overlap_ratio)
        kept: list[dict] = []
        proposals: list[np.ndarray] = []
        for crop_box in crops:
            cands, props = self._crop(image, crop_box)  # already deduplicated (low-res mask NMS)
            area = (crop_box[2] - crop_box[0]) * (crop_box[3] - crop_box[1])
            kept.append(cands | {"crop_area": [area] * len(cands["rles"])})
            proposals.append(props)
        self.stats["images"] += 1
        self.last_proposals = np.concatenate(proposals)
        merged = {k: [x for c in kept for x in c[k]] for k in kept[0]}
        t0 = time.perf_counter()
        if len(crops) > 1 and merged["rles"]:
            # across crops (different frames: exact RLE IoU at the original size), prefer masks from smaller (higher-resolution) crops, as SAM does
            order = np.lexsort((-np.asarray(merged["score"]), np.asarray(merged["crop_area"])))
            keep = U.mask_nms(merged["rles"], np.asarray(merged["score"]), cfg.crop_nms_iou, order=order)
            merged = {k: [v[i] for i in keep] for k, v in merged.items()}
        order = np.argsort(-np.asarray(merged["score"], np.float64), kind="stable")[: cfg.max_masks]
        out = [self._record(merged, i) for i in order]
        self.timings["post"] += time.perf_counter() - t0
        return out

    # -- internals -----------------------------------------------------------------------------------------
    def _sync(self) -> None:
        if self.device.startswith("cuda"):
            torch.cuda.synchronize(self.device)

    def _clock(self, stage: str, t0: float) -> float:
        self._sync()
        t = time.perf_counter()
        self.timings[stage] += t - t0
        return t

    def _encode(self, x: np.ndarray):
        """-> (embedding, boxes, scores) (RPN mode) or (embedding, None, None): torch on ``self.device`` when the
        backend offers ``tensors``, else numpy."""
        if self.cfg.mode == "rpn":
            run = getattr(self.rpn, "tensors", None) if self.tensor_path else None
            return run(x) if run is not None else self.rpn(x)  # type: ignore[misc]
        if self.encoder is None:
            return self.rpn(x)[0], None, None  # type: ignore[misc]
        run = getattr(self.encoder, "tensors", None) if self.tensor_path else None
        return (run(x) if run is not None else self.encoder(x)), None, None

    def _decode(self, emb, coords: np.ndarray, labels: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """One decoder call -> (logits (N,4,S/4,S/4), iou (N,4)) torch tensors (on ``self.device`` for torch
        backends); counted in ``stats`` and timed as "decoder"."""
        t0 = time.perf_counter()
        if self.tensor_path:
            dev = self.device
            t = lambda a: torch.as_tensor(a, dtype=torch.float32, device=dev)  # noqa: E731
            # a device tensor passes as it is: its dtype is the backend's, and the split decoder reuses its
            # image side while it sees the same embedding object
            emb_t = emb if torch.is_tensor(emb) else t(emb)
            out = self.decoder.decode_tensors(emb_t, t(coords), t(labels))  # type: ignore[attr-defined]
        else:
            logits, iou = self.decoder(emb, coords, labels)
            out = torch.from_numpy(np.asarray(logits, np.float32)), torch.from_numpy(np.asarray(iou, np.float32))
        self.stats["decoder_calls"] += 1
        self.stats["prompts"] += len(coords)
        self._clock("decoder", t0)
        return out

    def prompts_per_call(self) -> int:
        """Prompts per decoder call: ``decoder_chunk`` for the device (the memory bound), and in grid mode also
        at most ``points_per_batch``."""
        n = self.cfg.chunk_for(self.decoder_device)
        return min(n, self.cfg.points_per_batch) if self.cfg.mode == "grid" else n

    def _crop(self, image: np.ndarray, crop_box: list[int]) -> tuple[dict, np.ndarray]:
        """Candidates (filtered, deduplicated at low resolution, RLE in the original frame) for one crop, and its
        proposals (M,5) original frame."""
        cfg = self.cfg
        x0, y0, x1, y1 = crop_box
        crop = image[y0:y1, x0:x1]
        crop_hw = crop.shape[:2]
        t0 = time.perf_counter()
        x, input_hw = preprocess(crop, self.img_size)
        x = x.numpy()
        offset = np.array([x0, y0], np.float32)
        props = np.zeros((0, 5), np.float32)
        prompt_box: np.ndarray | None = None
        prompt_score: np.ndarray | None = None
        emb, boxes, scores = self._encode(x)
        self.stats["encoder_calls"] += 1
        if cfg.mode == "rpn":
            pb, ps = select_proposals(torch.as_tensor(boxes[0]).float().cpu(), torch.as_tensor(scores[0]).float().cpu(),
                                      input_hw, cfg.rpn_score_thresh, cfg.rpn_nms_iou, cfg.max_proposals,
                                      cfg.rpn_pre_nms_top_k)
            pb, ps = pb.numpy(), ps.numpy()
            coords, labels = U.box_prompts(pb, cfg.prompt == "box+point")
            prompt_box = self.transform.invert_coords(pb.reshape(-1, 2, 2), crop_hw).reshape(-1, 4) + np.tile(offset, 2)
            prompt_score = ps
            points = prompt_box.reshape(-1, 2, 2).mean(axis=1)
            props = np.concatenate([prompt_box, ps[:, None]], axis=1).astype(np.float32)
        else:
            pts = U.grid_points(cfg.points_per_side, crop_hw)
            coords, labels = U.point_prompts(self.transform.apply_coords(pts, crop_hw))
            points = pts + offset
        self._clock("encoder", t0)
        up = Upsampler(input_hw, crop_hw)
        pool = _CropPool(int(cfg.logit_cache_mb * 2**20) // (up.hl * up.wl * 4))
        for sl in U.batches(len(coords), self.prompts_per_call()) if len(coords) else []:
            logits, iou = self._decode(emb, coords[sl], labels[sl])
            t0 = time.perf_counter()
            c = filter_lowres(logits, iou, cfg.outputs_per_prompt(), input_hw, cfg.mask_threshold,
                              cfg.stability_score_offset, cfg.stability_score_thresh, cfg.pred_iou_thresh, sl.start)
            del logits, iou  # bounded memory: only the candidates (packed, and up to the cache) outlive the call
            packed = PackedMasks.from_masks(c.logits > cfg.mask_threshold)
            inner = np.flatnonzero(_off_crop_edge(packed.boxes, up, list(crop_box), image.shape[:2]))
            if len(inner) < len(c):
                c, packed = c.take(inner), packed.take(inner)
            if len(c):
                pool.add(c, packed, _scores(cfg.score, c, prompt_score))
            del c, packed
            self._clock("post", t0)
        cands: dict[str, list] = {k: [] for k in ("rles", "area", "bbox", "score", "stability", "iou", "point",
                                                  "crop_box", "rpn_box", "rpn_score")}
        if not len(pool):
            return cands, props
        t0 = time.perf_counter()
        score = pool.column("score")
        keep = lowres_nms(pool.masks(), score, cfg.mask_nms_iou, max_keep=cfg.max_masks)
        recs: list[tuple[dict, int, list[float]] | None] = [None] * len(keep)
        self._clock("post", t0)
        for pos, lt in self._kept_logits(pool, keep, emb, coords, labels, (up.hl, up.wl)):
            t0 = time.perf_counter()
            for p, r in zip(pos, masks_to_rles(lt, up, (x0, y0), image.shape[:2], cfg.mask_threshold)):
                recs[p] = r
            self._clock("post", t0)
        t0 = time.perf_counter()
        stab, iou_h, prompt = pool.column("stability"), pool.column("iou"), pool.column("prompt")
        for j, (rle, area, bbox) in zip(keep, recs):  # type: ignore[misc]
            if area == 0 or area < cfg.min_mask_area:
                continue
            n = int(prompt[j])
            cands["rles"].append(rle)
            cands["area"].append(area)
            cands["bbox"].append(bbox)
            cands["score"].append(float(score[j]))
            cands["stability"].append(float(stab[j]))
            cands["iou"].append(float(iou_h[j]))
            cands["point"].append([float(v) for v in points[n]])
            cands["crop_box"].append(U.xyxy_to_xywh(crop_box))
            cands["rpn_box"].append(None if prompt_box is None else U.xyxy_to_xywh(prompt_box[n]))
            cands["rpn_score"].append(None if prompt_score is None else float(prompt_score[n]))
        self._clock("post", t0)
        return cands, props

    def _kept_logits(self, pool: _CropPool, keep: np.ndarray, emb, coords: np.ndarray, labels: np.ndarray,
                     hw: tuple[int, int]) -> Iterator[tuple[np.ndarray, torch.Tensor]]:
        """The float low-res logits of the kept candidates ``keep`` (indices into ``pool``), a batch at a time ->
        (positions in ``keep`` (n,), logits (n, hl, wl) of ``hw``): cached ones first, then the others decoded
        again (their prompts only, in calls of at most :meth:`prompts_per_call` prompts)."""
        for start, part in pool.cache:
            pos = np.flatnonzero((keep >= start) & (keep < start + len(part)))
            if pos.size:
                yield pos, part[torch.as_tensor(keep[pos] - start, device=part.device)]
        missing = np.flatnonzero(keep >= pool.cached)
        if missing.size == 0:
            return
        prompt, token = pool.column("prompt")[keep[missing]], pool.column("token")[keep[missing]]
        todo = np.unique(prompt)
        for sl in U.batches(len(todo), self.prompts_per_call()):
            batch = todo[sl]
            logits, iou = self._decode(emb, coords[batch], labels[batch])
            self.stats["redecoded_prompts"] += len(batch)
            lt = select_outputs(logits, iou, self.cfg.outputs_per_prompt())[0]
            sel = np.flatnonzero(np.isin(prompt, batch))
            rows = torch.as_tensor(np.searchsorted(batch, prompt[sel]), device=lt.device)
            yield missing[sel], lt[rows, torch.as_tensor(token[sel], device=lt.device), :hw[0], :hw[1]].float()

    @staticmethod
    def _record(c: dict, i: int) -> dict:
        rec = {"segmentation": c["rles"][i], "bbox": list(c["bbox"][i]), "area": int(c["area"][i]),
               "score": float(c["score"][i]), "stability_score": float(c["stability"][i]),
               "predicted_iou": float(c["iou"][i]), "point_coords": [c["point"][i]], "crop_box": c["crop_box"][i]}
        if c["rpn_box"][i] is not None:
            rec["rpn_box"] = c["rpn_box"][i]
            rec["rpn_score"] = c["rpn_score"][i]
        return rec
