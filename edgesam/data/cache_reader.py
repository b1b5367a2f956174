"""Reading a teacher cache for training and evaluation (no Ray): rows -> tensors, and a torch Dataset."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from .cache_manifest import load_manifest, shard_files
from .cache_schema import model_input, unpack_masks


def decode_row(row: dict, img_size: int) -> dict:
    """A cache row -> tensors for training and evaluation.

    Returns image (3,S,S) normalised padded float32, embedding (256,S/16,S/16) float32, input_hw, orig_hw,
    boxes (K,4), points (K,2) input frame, rles list[str], prompt_index (K',), teacher masks (K',S/4,S/4) bool.
    """
    side, emb_side = img_size // 4, img_size // 16
    k = len(row["prompt_index"] or [])
    emb = np.frombuffer(row["embedding"], np.float16).reshape(256, emb_side, emb_side)
    return {
        "image_id": row["image_id"],
        "image_jpeg": row["image_jpeg"],
        "image": model_input(row["image_jpeg"], img_size),
        "embedding": torch.from_numpy(emb.astype(np.float32)),
        "input_hw": (int(row["input_height"]), int(row["input_width"])),
        "orig_hw": (int(row["orig_height"]), int(row["orig_width"])),
        "boxes": torch.tensor(row["gt_boxes"] or [], dtype=torch.float32).view(-1, 4),
        "points": torch.tensor(row["gt_points"] or [], dtype=torch.float32).view(-1, 2),
        "rles": list(row["gt_rles"] or []),
        "prompt_index": torch.tensor(row["prompt_index"] or [], dtype=torch.long),
        "teacher_box_masks": torch.from_numpy(unpack_masks(row["teacher_box_masks"] or b"", k, side)),
        "teacher_point_masks": torch.from_numpy(unpack_masks(row["teacher_point_masks"] or b"", k, side)),
    }


class TeacherCacheDataset(torch.utils.data.Dataset):
    """Map-style torch Dataset over a cache directory (reads row groups lazily)."""

    def __init__(self, cache_dir: str | Path, img_size: int | None = None) -> None:
        self.manifest = load_manifest(cache_dir, {"img_size": img_size} if img_size else None)
        self.img_size = self.manifest["identity"]["preprocessing"]["img_size"]
        self.files = shard_files(cache_dir)
        self.index: list[tuple[int, int]] = []
        for fi, f in enumerate(self.files):
            self.index += [(fi, r) for r in range(pq.read_metadata(f).num_rows)]
        self._cache: tuple[int, pa.Table] | None = None

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> dict:
        fi, r = self.index[i]
        if self._cache is None or self._cache[0] != fi:
            self._cache = (fi, pq.read_table(self.files[fi]))
        return decode_row(self._cache[1].slice(r, 1).to_pylist()[0], self.img_size)
