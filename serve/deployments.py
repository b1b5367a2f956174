"""Model deployments: ``ImageEncoder`` and ``MaskDecoder`` with ``@serve.batch``, and ``Everything``.

Replica options (replicas, autoscaling, CPUs/GPUs, ``max_ongoing_requests``) are applied by
``serve.app.build_app`` from the config; batch sizes are set per replica in ``__init__`` and may be
changed live through ``user_config`` (``{"max_batch_size": n, "batch_wait_timeout_s": t}``).

Model calls run on one dedicated thread per replica (:class:`_ModelThread`) so the event loop keeps
accepting requests while a batch computes; with ``max_concurrent_batches=1`` at most one batch runs at a
time, which is what a single CPU/GPU model wants (GPU runtimes also prefer one calling thread). The
encoder's resize/normalise/pad runs in that thread too, just before the batch's encoder call: waiting
requests queue as raw images, so batches fill rather than starving in preprocessing threads that compete
with the model for the cores.
"""
from __future__ import annotations

import asyncio
import time
from collections import Counter, OrderedDict
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

import numpy as np
from ray import serve

from edgesam.data.rle import encode_mask, mask_to_bbox
from edgesam.data.transforms import preprocess
from edgesam.inference import Predictor
from edgesam.inference.everything import EverythingConfig, EverythingGenerator

from .budget import everything_masks_in_flight, returned_masks, segment_bytes, split_by_budget
from .codec import encode_npy_b64, mask_to_png_b64
from .config import ServeAppConfig
from .messages import DecodeRequest
from .model import ShapeOnlyEncoder, load_backends
from .schemas import MAX_ABS_MASK_LOGIT


class _ModelThread:
    """A single worker thread for model calls: ``await pool.run(fn, *args)``."""

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model")

    async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)


def _apply_batch_settings(method: Any, current: dict[str, Any], settings: dict[str, Any]) -> dict[str, Any]:
    """Set ``max_batch_size`` / ``batch_wait_timeout_s`` on a ``@serve.batch`` method (the setters Serve
    provides for live changes); returns ``current`` updated with the values now in use."""
    out = dict(current)
    if "max_batch_size" in settings:
        out["max_batch_size"] = int(settings["max_batch_size"])
        method.set_max_batch_size(out["max_batch_size"])
    if "batch_wait_timeout_s" in settings:
        out["batch_wait_timeout_s"] = float(settings["batch_wait_timeout_s"])
        method.set_batch_wait_timeout_s(out["batch_wait_timeout_s"])
    return out


class _BatchStats:
    """Histogram of executed batch sizes (requests per batch), for /healthz and the benchmark."""

    def __init__(self) -> None:
        self.sizes: Counter[int] = Counter()
        self.busy_s = 0.0

    def add(self, n: int, seconds: float) -> None:
        self.sizes[n] += 1
        self.busy_s += seconds

    def as_dict(self) -> dict[str, Any]:
        batches = sum(self.sizes.values())
        items = sum(k * v for k, v in self.sizes.items())
        return {"batches": batches, "items": items, "mean_batch": items / batches if batches else 0.0,
                "histogram": {str(k): v for k, v in sorted(self.sizes.items())}, "busy_s": round(self.busy_s, 3)}


@serve.deployment(name="ImageEncoder")
class ImageEncoder:
    """uint8 (H,W,3) RGB image -> embedding (1,256,S/16,S/16) float32, dynamically batched over images."""

    def __init__(self, cfg: dict) -> None:
        self.cfg = ServeAppConfig.model_validate(cfg)
        backends = load_backends(self.cfg.model)
        self.encoder, self.model_info = backends.encoder, backends.info
        self.model_thread = _ModelThread()
        self.img_size = self.cfg.model.img_size
        self.batching = _apply_batch_settings(self._encode_batch, {}, self.cfg.encoder.model_dump())
        self.stats = _BatchStats()

    def reconfigure(self, user_config: dict) -> None:
        self.batching = _apply_batch_settings(self._encode_batch, self.batching, user_config or {})

    async def encode(self, image: np.ndarray) -> dict[str, Any]:
        """-> {"embedding" (1,256,S/16,S/16), "input_hw" resized extent, "original_hw"}."""
        emb, input_hw = await self._encode_batch(image)
        return {"embedding": emb[None], "input_hw": input_hw, "original_hw": (int(image.shape[0]), int(image.shape[1]))}

    def _preprocess_and_encode(self, images: list[np.ndarray]) -> list[tuple[np.ndarray, tuple[int, int]]]:
        inputs, hws = [], []
        for image in images:
            # arrays from Ray's object store are read-only; torch wants writable memory
            x, hw = preprocess(np.array(image), self.img_size)
            inputs.append(x[0].numpy())
            hws.append(hw)
        return list(zip(self.encoder(np.stack(inputs)), hws))

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.01)
    async def _encode_batch(self, images: list[np.ndarray]) -> list[tuple[np.ndarray, tuple[int, int]]]:
        """list of uint8 (H,W,3) RGB -> list of ((256,S/16,S/16), input_hw): resize/normalise/pad, then one
        encoder call, all in the model thread. Queued requests wait as raw images, so on a busy CPU the
        batches fill instead of preprocessing threads competing with the model for the cores."""
        t0 = time.perf_counter()
        out = await self.model_thread.run(self._preprocess_and_encode, images)
        self.stats.add(len(images), time.perf_counter() - t0)
        return out

    def info(self) -> dict[str, Any]:
        return {**self.model_info.as_dict(), "batching": self.batching, "stats": self.stats.as_dict()}


def _prompt_arrays(reqs: list[DecodeRequest]) -> dict[str, np.ndarray | None]:
    """Concatenate the prompts of same-key requests into ``predict_batch`` arguments. Mask prompts go row by
    row: each request's mask is repeated for its own prompts only (same-key requests all have one or none)."""
    coords = labels = boxes = masks = None
    if reqs[0].points is not None:
        coords = np.concatenate([np.repeat(r.points[None], r.num_prompts, 0) for r in reqs]).astype(np.float32)
        labels = np.concatenate([np.repeat(r.labels[None], r.num_prompts, 0) for r in reqs])
    if reqs[0].boxes is not None:
        boxes = np.concatenate([r.boxes for r in reqs]).astype(np.float32)
    if reqs[0].mask_input is not None:
        masks = np.concatenate([np.repeat(r.mask_input, r.num_prompts, 0) for r in reqs]).astype(np.float32)
    return {"point_coords": coords, "point_labels": labels, "boxes": boxes, "mask_input": masks}


def _format_masks(req: DecodeRequest, masks: np.ndarray, stability: np.ndarray, iou: np.ndarray,
                  low_res: np.ndarray | None = None, output_index: np.ndarray | None = None) -> list[dict]:
    """masks (N,K,H,W) bool, stability/iou (N,K), low_res (N,K,S/4,S/4) logits -> MaskOut dicts, best-per-prompt
    when asked; each with its low-res logits (base64 .npy float16 (1,S/4,S/4)) when the request asked.
    ``output_index`` (N,K): the token index of each given output when the predictor already selected
    (``Predictor.finish``); then every given output is returned."""
    out = []
    for i in range(masks.shape[0]):
        if output_index is not None or req.select == "all" or masks.shape[1] == 1:
            picks = range(masks.shape[1])
        else:
            picks = [int(np.argmax(stability[i] if req.select == "stability" else iou[i]))]
        for j in picks:
            m = masks[i, j]
            item = {"prompt_index": i, "output_index": j if output_index is None else int(output_index[i, j]),
                    "score": float(stability[i, j]),
                    "stability_score": float(stability[i, j]), "iou": float(iou[i, j]), "bbox": mask_to_bbox(m),
                    "area": int(m.sum())}
            if req.fmt == "png":
                item["png"] = mask_to_png_b64(m)
            else:
                item["segmentation"] = encode_mask(m)
            if req.return_low_res_logits and low_res is not None:
                logits = np.clip(low_res[i, j], -MAX_ABS_MASK_LOGIT, MAX_ABS_MASK_LOGIT)  # float16-safe
                item["low_res_logits"] = encode_npy_b64(logits[None].astype(np.float16))
            out.append(item)
    return out


@serve.deployment(name="MaskDecoder")
class MaskDecoder:
    """Prompt decoding, dynamically batched over requests.

    A batch is split into groups by :meth:`DecodeRequest.group_key`; each group is one decoder call
    (several clients clicking on the same image, or one client's rapid clicks), otherwise one call per
    request. Refinement requests (``mask_input``) group only with other refinement requests, each prompt
    decoding against its own request's mask. What this buys depends on the device: on CPU the SAM decoder
    costs ~the same per prompt batched or not, so the gain is amortised per-call overhead (Python, prompt
    encoding, the embedding broadcast); on GPU one call over many prompts fills the device and is much
    cheaper per prompt.
    """

    def __init__(self, cfg: dict) -> None:
        self.cfg = ServeAppConfig.model_validate(cfg)
        backends = load_backends(self.cfg.model, max_prompts=max(64, self.cfg.limits.max_boxes))
        self.decoder, self.model_info = backends.decoder, backends.info
        self.model_thread = _ModelThread()
        self.img_size = self.cfg.model.img_size
        self.batching = _apply_batch_settings(self._decode_batch, {}, self.cfg.decoder.model_dump())
        self.stats = _BatchStats()
        self.groups = _BatchStats()
        self.local: OrderedDict[str, np.ndarray] = OrderedDict()  # embedding_id -> embedding read from the store
        self.fetching: dict[str, asyncio.Future] = {}
        self.transfer = {"requests": 0, "by_ref": 0, "inline": 0, "store_reads": 0, "local_hits": 0, "bytes_read": 0}

    def reconfigure(self, user_config: dict) -> None:
        self.batching = _apply_batch_settings(self._decode_batch, self.batching, user_config or {})

    async def decode(self, req: DecodeRequest) -> dict[str, Any]:
        """-> {"masks": [MaskOut dict, ...]} or {"error": message} for a prompt the predictor rejects."""
        self.transfer["requests"] += 1
        if req.embedding is None:
            req.embedding = await self._embedding(req)
        else:
            self.transfer["inline"] += 1
        return await self._decode_batch(req)

    async def _embedding(self, req: DecodeRequest) -> np.ndarray:
        """The request's embedding from the local LRU, else read once from the object store (by its ref)."""
        self.transfer["by_ref"] += 1
        local = self.local.get(req.embedding_id)
        if local is not None:
            self.local.move_to_end(req.embedding_id)
            self.transfer["local_hits"] += 1
            return local
        pending = self.fetching.get(req.embedding_id)
        if pending is None:  # one read per embedding, also for concurrent clicks on it
            pending = self.fetching[req.embedding_id] = asyncio.ensure_future(self._read(req))
            pending.add_done_callback(lambda _: self.fetching.pop(req.embedding_id, None))
        else:
            self.transfer["local_hits"] += 1
        return await asyncio.shield(pending)

    async def _read(self, req: DecodeRequest) -> np.ndarray:
        emb = np.array(await req.embedding_ref[0], np.float32)  # writable, ours: the store may evict its copy
        self.transfer["store_reads"] += 1
        self.transfer["bytes_read"] += emb.nbytes
        if self.cfg.cache.decoder_local:
            self.local[req.embedding_id] = emb
            while len(self.local) > self.cfg.cache.decoder_local:
                self.local.popitem(last=False)
        return emb

    def _cost(self, req: DecodeRequest) -> int:
        """The request's memory estimate (serve.budget), to keep each decoder call within the budget."""
        h, w = req.original_hw
        return segment_bytes(h, w, returned_masks(req.num_prompts, req.num_outputs, req.select), self.cfg.limits)

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.005)
    async def _decode_batch(self, reqs: list[DecodeRequest]) -> list[dict[str, Any]]:
        t0 = time.perf_counter()
        groups: dict[tuple, list[int]] = {}
        for i, r in enumerate(reqs):
            groups.setdefault(r.group_key(), []).append(i)
        results: list[dict[str, Any] | None] = [None] * len(reqs)
        budget = self.cfg.limits.memory_budget_bytes
        for idx in groups.values():
            for run in split_by_budget(idx, lambda i: self._cost(reqs[i]), budget):  # each call within the budget
                for i, res in zip(run, await self.model_thread.run(self._run_group, [reqs[i] for i in run])):
                    results[i] = res
        self.stats.add(len(reqs), time.perf_counter() - t0)
        return results

    def _predictor(self, req: DecodeRequest, num_prompts: int) -> Predictor:
        p = Predictor(ShapeOnlyEncoder(self.img_size), self.decoder, max_prompts=max(num_prompts, 1))
        emb = req.embedding if req.embedding.flags.writeable else np.array(req.embedding, np.float32)  # torch: writable
        p.set_embedding(emb, req.original_hw, req.input_hw)
        return p

    def _run_group(self, group: list[DecodeRequest]) -> list[dict[str, Any]]:
        """One decoder call for the group; if it is rejected, decode one by one so only the bad request fails."""
        counts = [r.num_prompts for r in group]
        try:
            predictor = self._predictor(group[0], sum(counts))
            low = predictor.decode_batch(**_prompt_arrays(group), num_outputs=group[0].num_outputs)
        except ValueError as e:
            if len(group) == 1:
                return [{"error": str(e)}]
            return [res for r in group for res in self._run_group([r])]
        self.groups.add(len(group), 0.0)
        out, start = [], 0
        for r, n in zip(group, counts):
            sl = slice(start, start + n)
            pred = predictor.finish(low[sl], r.select)  # token choice at low res: only kept masks are upsampled
            out.append({"masks": _format_masks(r, pred.masks, pred.stability, pred.iou, pred.low_res_logits,
                                               pred.output_index)})
            start += n
        return out

    def info(self) -> dict[str, Any]:
        return {**self.model_info.as_dict(), "batching": self.batching, "stats": self.stats.as_dict(),
                "groups": self.groups.as_dict(), "embeddings": dict(self.transfer)}


def everything_config(cfg: ServeAppConfig, has_rpn: bool) -> EverythingConfig:
    """The generator's config: ``everything.generator`` fields plus the resolved mode."""
    mode = cfg.everything.mode if cfg.everything.mode != "auto" else ("rpn" if has_rpn else "grid")
    return EverythingConfig.model_validate({**cfg.everything.generator, "mode": mode})


@serve.deployment(name="Everything")
class Everything:
    """Segment-everything over whole images with its own encoder (+RPN) and decoder: heavy, so it is a
    separate deployment that scales on its own."""

    def __init__(self, cfg: dict) -> None:
        self.cfg = ServeAppConfig.model_validate(cfg)
        gen = EverythingConfig.model_validate({k: v for k, v in self.cfg.everything.generator.items() if k != "mode"})
        backends = load_backends(self.cfg.model, with_rpn=self.cfg.everything.mode != "grid",
                                 max_prompts=max(gen.max_proposals, gen.points_per_batch))  # one TensorRT execute
        self.model_info = backends.info
        self.gen_cfg = everything_config(self.cfg, backends.rpn is not None)
        self.generator = EverythingGenerator(backends.decoder, self.gen_cfg, encoder=backends.encoder, rpn=backends.rpn)
        self.model_thread = _ModelThread()  # one image at a time: the generator is stateful and compute-bound

    async def segment(self, images: list[np.ndarray]) -> list[dict[str, Any]]:
        """list of uint8 (H,W,3) -> list of {"width", "height", "annotations": [SA-1B-style records + "id"]}."""
        results = []
        for image in images:
            records = await self.model_thread.run(self.generator.generate, np.array(image))
            results.append({"width": int(image.shape[1]), "height": int(image.shape[0]),
                            "annotations": [{"id": i, **r} for i, r in enumerate(records)]})
        return results

    def info(self) -> dict[str, Any]:
        return {**self.model_info.as_dict(), "implementation": f"EverythingGenerator(mode={self.gen_cfg.mode})",
                "masks_in_flight": everything_masks_in_flight(self.cfg.everything.generator, self.gen_cfg.mode)}
