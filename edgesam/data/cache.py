"""Teacher cache format: one Parquet row per image, plus ``manifest.json``.

Pure functions (no Ray) that the caching pipeline maps over batches, and readers for training.

Row schema (``CACHE_SCHEMA``), coordinates x-y in the *input frame* (resized so the longest side is
``img_size``; padding bottom/right, so no offset):

==================== ============================ ==========================================================
column               type                         meaning
==================== ============================ ==========================================================
image_id             string                       file stem, unique
source               string                       where the image came from (tar::member or path)
orig_height/width    int32                        original image size (pixels)
input_height/width   int32                        resized, unpadded extent in the S x S input
image_jpeg           binary                       the resized RGB image, JPEG (what teacher and student see)
embedding            binary                       float16 C-order (256, S/16, S/16) teacher embedding
gt_boxes             list<float32>                K*4 XYXY GT boxes, input frame
gt_points            list<float32>                K*2 GT points (SA-1B point_coords), input frame
gt_rles              list<string>                 K compressed-RLE counts at the original size
prompt_index         list<int32>                  K' annotation indices of the fixed, seeded prompt set
teacher_box_masks    binary                       packbits of (K', S/4, S/4) bool, token 0 for the GT box
teacher_point_masks  binary                       packbits of (K', S/4, S/4) bool, best-IoU token for the GT point
==================== ============================ ==========================================================
"""
from __future__ import annotations

import io
import json
import uuid
import zlib
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from PIL import Image
from pydantic import BaseModel, ConfigDict

from .. import storage
from .transforms import PIXEL_MEAN, PIXEL_STD, ResizeLongestSide, normalize_pad

CACHE_FORMAT_VERSION = 1
MANIFEST = "manifest.json"

CACHE_SCHEMA = pa.schema([
    ("image_id", pa.string()), ("source", pa.string()),
    ("orig_height", pa.int32()), ("orig_width", pa.int32()),
    ("input_height", pa.int32()), ("input_width", pa.int32()),
    ("image_jpeg", pa.binary()), ("embedding", pa.binary()),
    ("gt_boxes", pa.list_(pa.float32())), ("gt_points", pa.list_(pa.float32())),
    ("gt_rles", pa.list_(pa.string())), ("prompt_index", pa.list_(pa.int32())),
    ("teacher_box_masks", pa.binary()), ("teacher_point_masks", pa.binary()),
])

# Between pipeline stages: raw records (bytes + JSON annotations) and a skip reason.
RAW_SCHEMA = pa.schema([
    ("image_id", pa.string()), ("source", pa.string()), ("image_bytes", pa.binary()),
    ("annotations_json", pa.string()), ("skip_reason", pa.string()),
])
PRE_SCHEMA = pa.schema([f for f in CACHE_SCHEMA if f.name not in ("embedding", "teacher_box_masks", "teacher_point_masks")]
                       + [pa.field("skip_reason", pa.string())])


class Preprocessing(BaseModel):
    """Everything that changes what the teacher sees or what a row holds; part of the cache identity."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    img_size: int = 1024
    jpeg_quality: int = 95
    num_prompts: int = 16
    prompt_seed: int = 0
    max_pixels: int = 50_000_000
    min_side: int = 8

    def identity(self) -> dict:
        return {"img_size": self.img_size, "pixel_mean": list(PIXEL_MEAN), "pixel_std": list(PIXEL_STD),
                "resize": "longest-side PIL bilinear on uint8 (segment-anything ResizeLongestSide), pad bottom/right", "jpeg_quality": self.jpeg_quality,
                "num_prompts": self.num_prompts, "prompt_seed": self.prompt_seed,
                "cache_format_version": CACHE_FORMAT_VERSION}


def stable_seed(image_id: str, seed: int) -> int:
    return (zlib.crc32(image_id.encode()) + seed * 1_000_003) % (2**32)


# ---------------------------------------------------------------------------------------------------
# Stage 1: readers -> raw rows
def raw_rows(records: Iterable[Any], done_ids: frozenset[str] | set[str] = frozenset()) -> Iterator[dict]:
    """RawRecord / Skipped items -> rows of RAW_SCHEMA; records whose id is in ``done_ids`` are dropped."""
    from .records import RawRecord

    for rec in records:
        if isinstance(rec, RawRecord):
            if rec.image_id in done_ids:
                continue
            yield {"image_id": rec.image_id, "source": rec.source, "image_bytes": rec.image_bytes,
                   "annotations_json": json.dumps(rec.annotations), "skip_reason": ""}
        else:
            yield {"image_id": "", "source": rec.source, "image_bytes": b"", "annotations_json": "[]",
                   "skip_reason": rec.reason}


# ---------------------------------------------------------------------------------------------------
# Stage 2: decode, resize, prompts
def encode_jpeg(image: np.ndarray, quality: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def decode_jpeg(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        return np.array(im.convert("RGB"))


def _gt_prompts(annotations: list[dict], orig_hw: tuple[int, int], tf: ResizeLongestSide) -> tuple[np.ndarray, np.ndarray, list[str]]:
    boxes, points, rles = [], [], []
    for ann in annotations:
        x, y, w, h = (float(v) for v in ann["bbox"])
        pts = ann.get("point_coords") or [[x + w / 2, y + h / 2]]
        boxes.append([x, y, x + w, y + h])
        points.append([float(pts[0][0]), float(pts[0][1])])
        seg = ann.get("segmentation") or {}
        counts = seg.get("counts", "")
        rles.append(counts.decode() if isinstance(counts, bytes) else str(counts))
    if not boxes:
        return np.zeros((0, 4), np.float32), np.zeros((0, 2), np.float32), []
    return (tf.apply_boxes(np.array(boxes, np.float32), orig_hw), tf.apply_coords(np.array(points, np.float32), orig_hw), rles)


def sample_prompt_index(image_id: str, num_annotations: int, pre: Preprocessing) -> np.ndarray:
    """The fixed, seeded prompt set: up to ``num_prompts`` distinct annotation indices, sorted."""
    k = min(pre.num_prompts, num_annotations)
    rng = np.random.default_rng(stable_seed(image_id, pre.prompt_seed))
    return np.sort(rng.choice(num_annotations, size=k, replace=False)).astype(np.int32) if k else np.zeros(0, np.int32)


def preprocess_row(row: dict, pre: Preprocessing) -> dict:
    """A RAW_SCHEMA row -> a PRE_SCHEMA row; failures become ``skip_reason`` (never raise)."""
    from .images import decode_image

    out = {f.name: None for f in PRE_SCHEMA}
    out.update(image_id=row["image_id"], source=row["source"], skip_reason=row["skip_reason"])
    if row["skip_reason"]:
        return out
    try:
        image = decode_image(row["image_bytes"], row["source"], min_side=pre.min_side, max_pixels=pre.max_pixels)
        annotations = json.loads(row["annotations_json"])
        tf = ResizeLongestSide(pre.img_size)
        resized = tf.apply_image(image).round().clamp(0, 255).to(torch.uint8)[0].permute(1, 2, 0).numpy()
        orig_hw = image.shape[:2]
        boxes, points, rles = _gt_prompts(annotations, orig_hw, tf)
        out.update(orig_height=orig_hw[0], orig_width=orig_hw[1], input_height=resized.shape[0],
                   input_width=resized.shape[1], image_jpeg=encode_jpeg(resized, pre.jpeg_quality),
                   gt_boxes=boxes.reshape(-1).tolist(), gt_points=points.reshape(-1).tolist(), gt_rles=rles,
                   prompt_index=sample_prompt_index(row["image_id"], len(boxes), pre).tolist())
    except Exception as exc:  # noqa: BLE001 - a bad record is reported and skipped, never fatal
        out["skip_reason"] = f"{type(exc).__name__}: {exc}"
    return out


def preprocess_table(batch: pa.Table, pre: Preprocessing) -> pa.Table:
    rows = [preprocess_row(r, pre) for r in batch.to_pylist()]
    return pa.Table.from_pylist(rows, schema=PRE_SCHEMA)


# ---------------------------------------------------------------------------------------------------
# Stage 3: the teacher
def model_input(image_jpeg: bytes, img_size: int) -> torch.Tensor:
    """Stored resized JPEG -> normalised padded (3, S, S) float32, exactly what the teacher saw."""
    img = torch.from_numpy(decode_jpeg(image_jpeg)).permute(2, 0, 1)[None].float()
    return normalize_pad(img, img_size)[0]


def pack_masks(masks: np.ndarray) -> bytes:
    return np.packbits(masks.astype(bool), axis=None).tobytes()


def unpack_masks(data: bytes, k: int, side: int) -> np.ndarray:
    """Packed bytes -> (k, side, side) bool."""
    if k == 0:
        return np.zeros((0, side, side), bool)
    bits = np.unpackbits(np.frombuffer(data, np.uint8), count=k * side * side)
    return bits.reshape(k, side, side).astype(bool)


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


# ---------------------------------------------------------------------------------------------------
# Stage 4: atomic shard writer
def schema_metadata(pre: Preprocessing) -> dict[bytes, bytes]:
    s = pre.img_size
    return {b"edgesam.embedding_shape": json.dumps([256, s // 16, s // 16]).encode(),
            b"edgesam.embedding_dtype": b"float16", b"edgesam.mask_side": str(s // 4).encode(),
            b"edgesam.cache_format_version": str(CACHE_FORMAT_VERSION).encode()}


def write_shard(batch: pa.Table, out_dir: str, pre: Preprocessing, row_group_size: int = 16) -> pa.Table:
    """Write the good rows of a batch to one Parquet shard (tmp file + rename: never a partial shard).

    Returns a summary table: one row per written image (kind "written") or skipped record (kind "skipped").
    """
    import pyarrow.fs as pafs

    rows = batch.to_pylist()
    good = [r for r in rows if not r["skip_reason"]]
    summary = [{"kind": "skipped", "image_id": r["image_id"], "source": r["source"], "reason": r["skip_reason"], "file": ""}
               for r in rows if r["skip_reason"]]
    if good:
        fs, base = storage.resolve(out_dir)
        name = f"part-{uuid.uuid4().hex}.parquet"
        table = pa.Table.from_pylist([{k: r[k] for k in CACHE_SCHEMA.names} for r in good], schema=CACHE_SCHEMA)
        table = table.replace_schema_metadata(schema_metadata(pre))
        # Object stores: one upload is already atomic, and a rename would copy the whole shard.
        tmp = f"{base}/.tmp-{name}" if isinstance(fs, pafs.LocalFileSystem) else f"{base}/{name}"
        with fs.open_output_stream(tmp) as sink:
            # fp16 embeddings and JPEG bytes do not compress: skip the codec for them.
            codecs = {n: ("NONE" if n in ("embedding", "image_jpeg") else "ZSTD") for n in CACHE_SCHEMA.names}
            pq.write_table(table, sink, row_group_size=row_group_size, compression=codecs,
                           use_dictionary=["image_id", "source"])
        if tmp != f"{base}/{name}":
            fs.move(tmp, f"{base}/{name}")
        summary += [{"kind": "written", "image_id": r["image_id"], "source": r["source"], "reason": "", "file": name}
                    for r in good]
    return pa.Table.from_pylist(summary, schema=pa.schema([("kind", pa.string()), ("image_id", pa.string()),
                                                            ("source", pa.string()), ("reason", pa.string()),
                                                            ("file", pa.string())]))


# ---------------------------------------------------------------------------------------------------
# Manifest and resume
def shard_files(cache_dir: str | Path) -> list[Path] | list[str]:
    """Complete shards, sorted: Paths for a local cache, URIs for one in object storage."""
    if storage.is_uri(cache_dir):
        return storage.glob(cache_dir, "part-*.parquet")
    return sorted(Path(cache_dir).glob("part-*.parquet"))


def scan_done_ids(cache_dir: str | Path) -> tuple[set[str], list[str]]:
    """Ids in complete shards; leftover temp files and unreadable shards are removed and reported."""
    removed = []
    for tmp in storage.glob(cache_dir, ".tmp-part-*"):
        storage.remove(tmp)
        removed.append(f"{storage.name(tmp)}: unfinished temp shard removed")
    done: set[str] = set()
    for f in shard_files(cache_dir):
        try:
            ids = pq.read_table(f, columns=["image_id"]).column("image_id").to_pylist()
        except Exception as exc:  # noqa: BLE001
            storage.remove(f)
            removed.append(f"{storage.name(f)}: unreadable shard removed ({exc})")
            continue
        done.update(ids)
    return done, removed


class CacheMismatchError(ValueError):
    """The cache was made with another teacher or other preprocessing."""


def cache_identity(teacher_identity: dict, pre: Preprocessing) -> dict:
    return {"teacher": teacher_identity, "preprocessing": pre.identity()}


def check_identity(cache_dir: str | Path, identity: dict) -> dict | None:
    """Return the existing manifest (or None); raise CacheMismatchError if its identity differs."""
    path = storage.join(cache_dir, MANIFEST)
    if not storage.is_file(path):
        return None
    try:
        manifest = storage.read_json(path)
    except json.JSONDecodeError as exc:
        raise CacheMismatchError(f"{path} is not valid JSON ({exc}); move the cache away or repair it") from exc
    old = manifest.get("identity")
    if old != identity:
        diff = _diff(old or {}, identity)
        raise CacheMismatchError(
            f"refusing to mix caches: {cache_dir} was made with a different teacher or preprocessing ({diff}). "
            "Use another output directory or delete this cache.")
    return manifest


def _diff(a: dict, b: dict, prefix: str = "") -> str:
    parts = []
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            sub = _diff(va, vb, f"{prefix}{k}.")
            if sub:
                parts.append(sub)
        elif va != vb:
            parts.append(f"{prefix}{k}: cache has {va!r}, requested {vb!r}")
    return "; ".join(parts)


def write_manifest(cache_dir: str | Path, manifest: dict) -> str:
    return storage.write_json(storage.join(cache_dir, MANIFEST), manifest)  # atomic (temp + rename, or one PUT)


# ---------------------------------------------------------------------------------------------------
# Readers for training (no Ray)
def load_manifest(cache_dir: str | Path, expect: dict | None = None) -> dict:
    """Validate and return the manifest; ``expect`` is a partial identity that must match (e.g. img_size)."""
    path = storage.join(cache_dir, MANIFEST)
    if not storage.is_file(path):
        raise FileNotFoundError(f"not a teacher cache: {path} is missing")
    manifest = storage.read_json(path)
    if manifest.get("status") != "complete":
        raise ValueError(f"teacher cache {cache_dir} is not complete (status {manifest.get('status')!r}); rerun the caching job")
    pre = manifest["identity"]["preprocessing"]
    if pre.get("cache_format_version") != CACHE_FORMAT_VERSION:
        raise ValueError(f"cache format {pre.get('cache_format_version')} is not supported (expected {CACHE_FORMAT_VERSION})")
    for key, value in (expect or {}).items():
        if pre.get(key) != value:
            raise CacheMismatchError(f"cache {cache_dir} has {key}={pre.get(key)!r}, expected {value!r}")
    return manifest


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

