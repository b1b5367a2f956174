"""Caching stage 3: the SAM teacher as a stateful batch callable (one per Ray Data actor)."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import torch

from .cache_schema import CACHE_SCHEMA, Preprocessing, model_input, pack_masks


class TeacherBatch:
    """Stateful callable (one per actor): PRE_SCHEMA batch -> CACHE_SCHEMA batch with ``skip_reason``.

    Embeddings are computed in one batched call (autocast fp16 on CUDA) and stored as float16; teacher
    masks are decoded for the seeded prompt set (box -> token 0; point -> best teacher-IoU token).
    """

    def __init__(self, teacher_name: str, checkpoint: str | None, pre: Preprocessing, device: str = "auto",
                 tiny_seed: int = 0, torch_threads: int | None = None) -> None:
        from ..models.teacher import build_teacher

        if torch_threads:  # Ray sets OMP_NUM_THREADS from the actor's (fractional) CPUs; override on purpose
            torch.set_num_threads(torch_threads)
        self.device = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
        self.teacher = build_teacher(teacher_name, checkpoint, pre.img_size, seed=tiny_seed).to(self.device)
        self.pre = pre

    @torch.inference_mode()
    def embed(self, images: torch.Tensor) -> torch.Tensor:
        images = images.to(self.device)
        if self.device.startswith("cuda"):
            with torch.autocast("cuda", dtype=torch.float16):
                return self.teacher.embed(images).float()
        return self.teacher.embed(images)

    @torch.inference_mode()
    def masks_for(self, emb: torch.Tensor, row: dict) -> tuple[bytes, bytes]:
        idx = np.asarray(row["prompt_index"], dtype=np.int64)
        if idx.size == 0:
            return b"", b""
        boxes = torch.tensor(row["gt_boxes"], dtype=torch.float32).view(-1, 4)[idx]
        points = torch.tensor(row["gt_points"], dtype=torch.float32).view(-1, 2)[idx]
        k = len(idx)
        dev = self.device
        box_logits, _ = self.teacher.decode(emb, boxes.view(k, 2, 2).to(dev),
                                            torch.tensor([[2.0, 3.0]], device=dev).expand(k, 2))
        pt_coords = torch.cat([points[:, None], torch.zeros(k, 1, 2)], dim=1).to(dev)
        pt_labels = torch.tensor([[1.0, -1.0]], device=dev).expand(k, 2)
        pt_logits, pt_iou = self.teacher.decode(emb, pt_coords, pt_labels)
        best = pt_logits[torch.arange(k, device=dev), pt_iou.argmax(1)]
        return pack_masks((box_logits[:, 0] > 0).cpu().numpy()), pack_masks((best > 0).cpu().numpy())

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = batch.to_pylist()
        good = [i for i, r in enumerate(rows) if not r["skip_reason"]]
        out = [{**r, "embedding": None, "teacher_box_masks": None, "teacher_point_masks": None} for r in rows]
        if good:
            images = torch.stack([model_input(rows[i]["image_jpeg"], self.pre.img_size) for i in good])
            embs = self.embed(images)
            for j, i in enumerate(good):
                try:
                    out[i]["embedding"] = embs[j].to(torch.float16).cpu().numpy().tobytes()
                    out[i]["teacher_box_masks"], out[i]["teacher_point_masks"] = self.masks_for(embs[j:j + 1].float(), rows[i])
                except Exception as exc:  # noqa: BLE001 - e.g. a malformed annotation list
                    out[i]["skip_reason"] = f"teacher failed: {type(exc).__name__}: {exc}"
        schema = pa.schema(list(CACHE_SCHEMA) + [pa.field("skip_reason", pa.string())])
        return pa.Table.from_pylist(out, schema=schema)
