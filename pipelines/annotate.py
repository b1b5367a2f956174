"""Bulk auto-annotation with Ray Data: a folder tree of images -> segment everything -> one COCO JSON.

    python pipelines/annotate.py --input DIR --output OUT [--config annotate] [key=value ...]
    ray job submit --working-dir . -- python pipelines/annotate.py --input /data/imgs --output /data/labels \\
        model.checkpoint=/models/student.pt compute.num_actors=4 compute.num_gpus=1

Flow. The driver lists image files by extension (jpg, jpeg, png, webp, bmp, tif, tiff; sorted; no bytes are
read) and drops those that already have a part file (resume). Ray Data feeds the rest to a fixed actor pool
(``ActorPoolStrategy(size=compute.num_actors)``, fractional ``compute.num_cpus``, ``compute.num_gpus``) whose
actors load the model once, then read, decode (EXIF orientation, grayscale, RGBA), validate and label each
image with :class:`edgesam.inference.everything.EverythingGenerator` (encoder, RPN, decoder), writing
``OUT/parts/<image_id>.json`` atomically as each image completes. The driver then assembles
``OUT/annotations.json`` (COCO: ``images``, ``annotations`` with RLE str counts, bbox XYWH, area, score,
stability_score; one class-agnostic category "object") from all parts, writes ``OUT/skipped.json``
(file, reason) and ``OUT/summary.json``, and prints a summary line. Optional: SA-1B-style per-image JSON
(``output.sa1b_json``, under ``OUT/sa1b/``) and overlay PNGs (``output.overlays``, under ``OUT/overlays/``).

Resume: rerunning the same command skips every image with a part (labelled or skipped; set
``output.retry_skipped=true`` to retry skipped files). ``OUT/run.json`` records the model and everything-mode
settings; a rerun with different ones is refused rather than mixing outputs.

Image ids are stable integers (the first 52 bits of SHA-1 of the path relative to ``--input``), so adding files
does not renumber old ones; ``file_name`` is that relative path. Workers read files by absolute path: on a
multi-node cluster ``--input`` and ``--output`` must be on shared storage.

Weights: ``model.checkpoint`` (a student checkpoint, via ``load_student``; RPN mode needs one trained with
step 3) or ``model.onnx_dir`` (``encoder.onnx``/``decoder.onnx``, plus ``rpn.onnx`` for RPN mode). With neither,
the model is RANDOMLY initialised and the output is meaningless (a loud warning says so). ``model.backend``:
``auto`` runs an ``onnx_dir`` in ONNX Runtime and a checkpoint in torch; ``onnxruntime`` exports a checkpoint
once (``edgesam.export.cache``, keyed by its weights) and runs ONNX Runtime, faster on CPU.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import sys
import time
from pathlib import Path
from typing import Any, Literal

if __package__ in (None, ""):  # `python pipelines/annotate.py` and `ray job submit -- python ...`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
from pydantic import Field

from edgesam import storage
from edgesam.config import StrictModel, add_config_args, dump_config, load_config
from edgesam.data.images import IMAGE_EXTENSIONS
from edgesam.formats.export import ExportCfg, Formats, write_formats
from edgesam.inference.everything import EverythingConfig

PARTS = "parts"
COCO_FILE = "annotations.json"
SKIPPED_FILE = "skipped.json"
SUMMARY_FILE = "summary.json"
RUN_FILE = "run.json"
CATEGORY = {"id": 1, "name": "object", "supercategory": "object"}
RECORD_FIELDS = ("segmentation", "bbox", "area", "score", "stability_score", "predicted_iou", "point_coords",
                 "crop_box", "rpn_box", "rpn_score")


class ModelCfg(StrictModel):
    checkpoint: str | None = None  # student checkpoint (load_student)
    onnx_dir: str | None = None  # export folder: encoder.onnx, decoder.onnx (+ rpn.onnx for RPN mode)
    # auto: onnxruntime for onnx_dir, else torch; onnxruntime with a checkpoint (or random weights) exports it
    # once into export_cache_dir (edgesam.export.cache) and runs ONNX Runtime
    backend: Literal["auto", "torch", "onnxruntime"] = "auto"
    export_cache_dir: str | None = None  # default $EDGESAM_ONNX_CACHE or ~/.cache/edgesam/onnx
    img_size: int = Field(1024, ge=64)
    device: str = "auto"  # auto (cuda when the actor has a GPU), cpu, cuda, cuda:N
    threads: int | None = None  # intra-op threads per actor; None: max(1, round(compute.num_cpus))
    seed: int = 0  # random weights only
    rpn_config: dict[str, Any] = Field(default_factory=lambda: {"width": 64, "num_convs": 2})  # random RPN only


class InputCfg(StrictModel):
    extensions: list[str] = Field(default_factory=lambda: list(IMAGE_EXTENSIONS))
    max_pixels: int = Field(40_000_000, ge=64)  # larger images are skipped (decompression-bomb guard too)
    min_side: int = Field(8, ge=1)  # images with a shorter side are skipped
    max_file_bytes: int = Field(256 * 2**20, ge=1)
    limit: int | None = Field(None, ge=1)  # first N files (sorted), for trials


class OutputCfg(StrictModel):
    sa1b_json: bool = False
    overlays: bool = False
    overlay_max_side: int = Field(1024, ge=64)
    retry_skipped: bool = False
    formats: Formats = Field(default_factory=lambda: ["coco_rle"])  # any of coco_rle, coco_polygons, yolo, label_studio
    export: ExportCfg = ExportCfg()  # options of those formats (edgesam.formats.export)


class ComputeCfg(StrictModel):
    num_actors: int = Field(1, ge=1)
    num_cpus: float = Field(1.0, gt=0)  # fractional on small machines: whole-CPU actors can starve Ray Data
    num_gpus: float = Field(0.0, ge=0)
    max_tasks_in_flight_per_actor: int = Field(2, ge=1)


class AnnotateConfig(StrictModel):
    model: ModelCfg = ModelCfg()
    everything: EverythingConfig = EverythingConfig()
    input: InputCfg = InputCfg()
    output: OutputCfg = OutputCfg()
    compute: ComputeCfg = ComputeCfg()
    ray_address: str | None = None


class RunMismatchError(RuntimeError):
    """OUT holds parts made with another model or other everything-mode settings."""


def _loud(msg: str) -> str:
    bar = "!" * 78
    return f"{bar}\n!! {msg}\n{bar}"


RANDOM_WARNING = _loud("RANDOM WEIGHTS: neither model.checkpoint nor model.onnx_dir was given. The masks are\n"
                       "!! noise; use this only to test the pipeline.")


# -- listing and ids --------------------------------------------------------------------------------------
def image_id_for(file_name: str) -> int:
    """Stable positive integer id (< 2**52, JSON-safe) of a relative POSIX path."""
    return int(hashlib.sha1(file_name.encode("utf-8")).hexdigest()[:13], 16) or 1


def list_images(root: str | Path, extensions: list[str], limit: int | None = None) -> list[dict]:
    """-> [{"path", "file_name", "image_id"}] for every file under ``root`` (local or s3://) with an image extension, sorted."""
    exts = {e.lower() if e.startswith(".") else f".{e.lower()}" for e in extensions}
    files = [r for r in storage.listdir(root, recursive=True) if os.path.splitext(r)[1].lower() in exts]
    if limit:
        files = files[:limit]
    items, seen = [], {}
    for rel in files:
        p = storage.display(storage.join(root, rel))
        iid = image_id_for(rel)
        if iid in seen:
            raise RuntimeError(f"image id collision between {seen[iid]!r} and {rel!r}; rename one of them")
        seen[iid] = rel
        items.append({"path": p, "file_name": rel, "image_id": iid})
    return items


def part_path(out_dir: str | Path, image_id: int) -> str | Path:
    """A Path under a local ``out_dir``, a URI under an s3:// / gs:// one."""
    p = storage.join(out_dir, PARTS, f"{image_id}.json")
    return p if storage.is_uri(p) else Path(p)


def write_json_atomic(path: str | Path, obj: Any, indent: int | None = None) -> None:
    storage.write_json(path, obj, indent=indent)  # temp + rename locally, one PUT on object stores


# -- model ------------------------------------------------------------------------------------------------
def resolve_device(cfg: AnnotateConfig) -> str:
    import torch

    dev = cfg.model.device
    if dev == "auto":
        return "cuda" if cfg.compute.num_gpus > 0 and torch.cuda.is_available() else "cpu"
    return dev


def model_identity(cfg: AnnotateConfig) -> dict:
    """What the outputs depend on: the weights (file hashes) and the everything-mode settings."""
    m = cfg.model
    if m.checkpoint and m.onnx_dir:
        raise ValueError("give model.checkpoint or model.onnx_dir, not both")

    if m.checkpoint:
        if not storage.is_file(m.checkpoint):
            raise FileNotFoundError(f"model.checkpoint not found: {m.checkpoint}")
        weights = {"checkpoint": storage.display(m.checkpoint), "sha256": storage.sha256(m.checkpoint), "img_size": m.img_size}
    elif m.onnx_dir:
        if not storage.is_dir(m.onnx_dir):
            raise FileNotFoundError(f"model.onnx_dir not found: {m.onnx_dir}")
        weights = {"onnx_dir": storage.display(m.onnx_dir),
                   "sha256": {storage.name(f): storage.sha256(f) for f in storage.glob(m.onnx_dir, "*.onnx")}}
    else:
        weights = {"random": True, "seed": m.seed, "img_size": m.img_size, "rpn_config": m.rpn_config}
    return {"weights": weights, "everything": cfg.everything.model_dump(mode="json")}


def preflight(cfg: AnnotateConfig) -> None:
    """Fail on the driver, with a clear message, before any actor starts."""
    m, mode = cfg.model, cfg.everything.mode
    if m.onnx_dir:
        from edgesam.export.onnx_export import DECODER_FILE, ENCODER_FILE
        from edgesam.models.rpn import RPN_ONNX_FILE

        need = [ENCODER_FILE, DECODER_FILE] + ([RPN_ONNX_FILE] if mode == "rpn" else [])
        missing = [f for f in need if not storage.is_file(storage.join(m.onnx_dir, f))]
        if missing:
            hint = " (rpn.onnx: edgesam.export.rpn_onnx.export_rpn_onnx, or everything.mode=grid)" if RPN_ONNX_FILE in missing else ""
            raise FileNotFoundError(f"model.onnx_dir {m.onnx_dir} lacks {', '.join(missing)}{hint}")
    elif m.checkpoint and mode == "rpn":
        state = storage.torch_load(m.checkpoint, weights_only=True)
        if not (isinstance(state, dict) and state.get("rpn") is not None):
            raise ValueError(f"model.checkpoint {m.checkpoint} has no RPN (train distillation step 3) - "
                             "use everything.mode=grid for a point grid")


def build_generator(cfg: AnnotateConfig, device: str | None = None):
    """The :class:`EverythingGenerator` for ``cfg`` (torch checkpoint, ONNX folder or random weights)."""
    import torch

    from edgesam.inference.everything import EverythingGenerator

    m = cfg.model
    device = device or resolve_device(cfg)
    threads = m.threads or max(1, round(cfg.compute.num_cpus))
    torch.set_num_threads(threads)
    if m.checkpoint and m.onnx_dir:
        raise ValueError("give model.checkpoint or model.onnx_dir, not both")
    if m.onnx_dir and m.backend == "torch":
        raise ValueError("model.backend=torch needs model.checkpoint (or random weights), not model.onnx_dir")
    if m.onnx_dir:  # encoder/decoder through edgesam.inference.runtime.make_backends, plus rpn.onnx
        return EverythingGenerator.from_onnx(storage.fetch(m.onnx_dir), cfg.everything, device=device, threads=threads)
    if m.checkpoint:
        from edgesam.models import load_student

        model, _ = load_student(m.checkpoint, m.img_size)
    else:
        from edgesam.models import EdgeSAM
        from edgesam.models.rpn import build_rpn

        print(RANDOM_WARNING, file=sys.stderr, flush=True)
        torch.manual_seed(m.seed)
        model = EdgeSAM(m.img_size).eval()
        if cfg.everything.mode == "rpn":
            model.rpn = build_rpn(model.image_encoder.feature_channels, **m.rpn_config).eval()
    if m.backend == "onnxruntime":  # the same weights, exported once (keyed by their hash) and run in ORT
        from edgesam.export.cache import cached_export

        from edgesam.models.teacher import sha256_file

        sha = sha256_file(m.checkpoint) if m.checkpoint else "random"
        onnx_dir = cached_export(model, m.export_cache_dir, sha)
        return EverythingGenerator.from_onnx(onnx_dir, cfg.everything, device=device, threads=threads)
    return EverythingGenerator.from_model(model, cfg.everything, device=device)


# -- per-image work ---------------------------------------------------------------------------------------
def read_image(path: str, cfg: InputCfg) -> np.ndarray:
    """File -> uint8 (H,W,3) RGB; raises ValueError (ImageDecodeError) / OSError with the reason."""
    from edgesam.data.images import decode_image

    size = storage.size(path)
    if size > cfg.max_file_bytes:
        raise ValueError(f"file too large: {size} bytes > input.max_file_bytes {cfg.max_file_bytes}")
    data = storage.read_bytes(path)
    return decode_image(data, source=path, min_side=cfg.min_side, max_pixels=cfg.max_pixels)


def coco_records(records: list[dict]) -> list[dict]:
    return [{k: r[k] for k in RECORD_FIELDS if k in r} for r in records]


def render_overlay(image: np.ndarray, records: list[dict], max_side: int, seed: int = 0) -> np.ndarray:
    """Masks blended over the image in random colours, downscaled to ``max_side`` -> uint8 (h,w,3)."""
    from PIL import Image

    from edgesam.data.rle import decode_rle

    h, w = image.shape[:2]
    scale = min(1.0, max_side / max(h, w))
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    base = np.asarray(Image.fromarray(image).resize(size, Image.BILINEAR), np.float32)
    rng = np.random.default_rng(seed)
    for r in sorted(records, key=lambda r: -r["area"]):  # small masks on top
        m = decode_rle(r["segmentation"])
        if scale < 1.0:
            m = np.asarray(Image.fromarray(m.astype(np.uint8) * 255).resize(size, Image.NEAREST)) > 127
        base[m] = 0.5 * base[m] + 0.5 * rng.integers(0, 256, 3)
    return base.astype(np.uint8)


def _write_extras(out_dir: str | Path, cfg: OutputCfg, item: dict, image: np.ndarray, records: list[dict]) -> None:
    stem = Path(item["file_name"]).with_suffix("")
    if cfg.sa1b_json:
        h, w = image.shape[:2]
        doc = {"image": {"image_id": item["image_id"], "width": w, "height": h, "file_name": item["file_name"]},
               "annotations": [{"id": i + 1, **r} for i, r in enumerate(records)]}
        write_json_atomic(storage.join(out_dir, "sa1b", stem.with_suffix(".json").as_posix()), doc)
    if cfg.overlays:
        import io

        from PIL import Image

        buf = io.BytesIO()
        Image.fromarray(render_overlay(image, records, cfg.overlay_max_side, item["image_id"] % 2**32)).save(buf, "PNG")
        storage.write_bytes(storage.join(out_dir, "overlays", stem.with_suffix(".png").as_posix()), buf.getvalue())


class AnnotateWorker:
    """Ray Data actor: loads the generator once; each call labels a batch of listed files and writes their parts."""

    def __init__(self, cfg: dict, out_dir: str) -> None:
        self.cfg = AnnotateConfig.model_validate(cfg)
        self.out_dir = out_dir  # local path or s3:// / gs:// URI
        self.gen = build_generator(self.cfg)

    def label(self, item: dict) -> dict:
        """One listed file -> a summary row; writes its part (labelled or skipped)."""
        t0 = time.perf_counter()
        row = {"image_id": int(item["image_id"]), "file_name": str(item["file_name"]), "status": "labelled",
               "reason": "", "num_annotations": 0, "seconds": 0.0}
        try:
            image = read_image(item["path"], self.cfg.input)
        except (ValueError, OSError) as exc:  # ImageDecodeError is a ValueError
            row.update(status="skipped", reason=str(exc))
            write_json_atomic(part_path(self.out_dir, row["image_id"]),
                              {"status": "skipped", "image": {"id": row["image_id"], "file_name": row["file_name"]},
                               "reason": row["reason"]})
            return row
        try:
            records = coco_records(self.gen.generate(image))
            _write_extras(self.out_dir, self.cfg.output, item, image, records)
        except Exception as exc:  # noqa: BLE001 - one bad image must not lose the others; no part: a rerun retries
            row.update(status="failed", reason=f"{type(exc).__name__}: {exc}", seconds=time.perf_counter() - t0)
            return row
        h, w = image.shape[:2]
        row.update(num_annotations=len(records), seconds=time.perf_counter() - t0)
        write_json_atomic(part_path(self.out_dir, row["image_id"]),
                          {"status": "labelled", "image": {"id": row["image_id"], "file_name": row["file_name"],
                                                           "width": int(w), "height": int(h)},
                           "annotations": records, "seconds": row["seconds"]})
        return row

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list]:
        rows = [self.label({"path": str(batch["path"][i]), "file_name": str(batch["file_name"][i]),
                            "image_id": int(batch["image_id"][i])}) for i in range(len(batch["path"]))]
        return {k: [r[k] for r in rows] for k in rows[0]} if rows else {}


# -- driver -----------------------------------------------------------------------------------------------
def check_run(out_dir: str | Path, identity: dict, input_dir: str | Path) -> None:
    """Refuse to mix parts made with another model / settings; record the identity on the first run."""
    run = storage.join(out_dir, RUN_FILE)
    if storage.is_file(run):
        previous = storage.read_json(run)
        if previous.get("identity") != identity:
            raise RunMismatchError(
                f"{out_dir} holds results made with other model weights or everything-mode settings "
                f"(see {run}); use another --output, or delete {storage.join(out_dir, PARTS)} and {run} to start over")
        return
    write_json_atomic(run, {"identity": identity, "input": storage.display(input_dir),
                            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}, indent=2)


def pending_items(items: list[dict], out_dir: str | Path, retry_skipped: bool) -> tuple[list[dict], int]:
    """Items without a finished part -> (pending, number resumed)."""
    pending, resumed = [], 0
    parts = set(storage.listdir(storage.join(out_dir, PARTS)))  # one listing, not a request per image
    for it in items:
        p = part_path(out_dir, it["image_id"])
        if storage.name(p) in parts:
            if retry_skipped and storage.read_json(p).get("status") == "skipped":
                pending.append(it)
                continue
            resumed += 1
        else:
            pending.append(it)
    return pending, resumed


def run_actors(cfg: AnnotateConfig, pending: list[dict], out_dir: str | Path) -> list[dict]:
    """The Ray Data job over ``pending``; returns one summary row per image."""
    import ray

    if not ray.is_initialized():
        ray.init(address=cfg.ray_address, ignore_reinit_error=True)
    comp = cfg.compute
    ds = ray.data.from_items(pending, override_num_blocks=max(1, min(len(pending), 64 * comp.num_actors)))
    ds = ds.map_batches(
        AnnotateWorker, batch_size=1, fn_constructor_kwargs={"cfg": cfg.model_dump(mode="json"), "out_dir": str(out_dir)},
        compute=ray.data.ActorPoolStrategy(size=comp.num_actors, max_tasks_in_flight_per_actor=comp.max_tasks_in_flight_per_actor),
        num_cpus=comp.num_cpus, num_gpus=comp.num_gpus)
    return ds.take_all()


def assemble(items: list[dict], out_dir: str | Path, identity: dict) -> tuple[dict, list[dict]]:
    """COCO dict from the parts of ``items`` (in listing order) and the skipped list."""
    images, annotations, skipped = [], [], []
    parts = set(storage.listdir(storage.join(out_dir, PARTS)))
    for it in items:
        p = part_path(out_dir, it["image_id"])
        if storage.name(p) not in parts:
            continue
        part = storage.read_json(p)
        if part["status"] == "skipped":
            skipped.append({"file_name": it["file_name"], "image_id": it["image_id"], "status": "skipped",
                            "reason": part["reason"]})
            continue
        images.append(part["image"])
        for r in part["annotations"]:
            annotations.append({"id": len(annotations) + 1, "image_id": it["image_id"], "category_id": CATEGORY["id"],
                                "iscrowd": 0, **r})
    info = {"description": "EdgeSAM segment-everything auto-annotation (class-agnostic)",
            "mode": identity["everything"]["mode"], "random_weights": bool(identity["weights"].get("random")),
            "weights": identity["weights"], "date_created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    return {"info": info, "images": images, "annotations": annotations, "categories": [CATEGORY]}, skipped


def run_annotate(cfg: AnnotateConfig, input_dir: str | Path, output_dir: str | Path) -> dict:
    """Label (or resume labelling) every image under ``input_dir``; returns the summary."""
    t0 = time.time()
    input_dir, out_dir = str(input_dir), str(output_dir)  # local paths or s3:// / gs:// URIs
    if not storage.is_dir(input_dir):
        raise FileNotFoundError(f"--input is not a directory: {input_dir}")
    storage.makedirs(out_dir)
    identity = model_identity(cfg)
    preflight(cfg)
    if identity["weights"].get("random"):
        print(RANDOM_WARNING, file=sys.stderr, flush=True)
    check_run(out_dir, identity, input_dir)
    items = list_images(input_dir, cfg.input.extensions, cfg.input.limit)
    pending, resumed = pending_items(items, out_dir, cfg.output.retry_skipped)
    print(f"[annotate] {len(items)} image file(s) under {input_dir}: {resumed} already done, {len(pending)} to label",
          flush=True)
    rows = run_actors(cfg, pending, out_dir) if pending else []
    coco, skipped = assemble(items, out_dir, identity)
    failed = [{"file_name": r["file_name"], "image_id": int(r["image_id"]), "status": "failed", "reason": r["reason"]}
              for r in rows if r["status"] == "failed"]
    outputs = write_formats(out_dir, coco, cfg.output.formats, cfg.output.export)
    write_json_atomic(storage.join(out_dir, SKIPPED_FILE), skipped + failed, indent=2)
    labelled_now = [r for r in rows if r["status"] == "labelled"]
    summary = {
        "images_listed": len(items), "labelled": len(coco["images"]), "skipped": len(skipped), "failed": len(failed),
        "annotations": len(coco["annotations"]), "resumed": resumed, "processed_this_run": len(rows),
        "labelled_this_run": len(labelled_now),
        "seconds_per_image": (float(np.mean([r["seconds"] for r in labelled_now])) if labelled_now else None),
        "wall_seconds": round(time.time() - t0, 2), "random_weights": bool(identity["weights"].get("random")),
        "coco_json": outputs.get("coco_rle"), "outputs": outputs,
        "skipped_json": storage.display(storage.join(out_dir, SKIPPED_FILE))}
    write_json_atomic(storage.join(out_dir, SUMMARY_FILE), summary, indent=2)
    for s in skipped + failed:
        print(f"[annotate] {s['status']} {s['file_name']}: {s['reason']}")
    spi = f"{summary['seconds_per_image']:.2f} s/image" if summary["seconds_per_image"] is not None else "n/a s/image"
    print(f"[annotate] done: {summary['labelled']} images labelled ({summary['labelled_this_run']} this run, "
          f"{resumed} resumed), {summary['skipped']} skipped, {summary['failed']} failed, "
          f"{summary['annotations']} annotations, {spi}, {summary['wall_seconds']} s -> {', '.join(outputs.values())}", flush=True)
    if summary["random_weights"]:
        print(RANDOM_WARNING, file=sys.stderr, flush=True)
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", required=True, help="folder tree of images")
    parser.add_argument("--output", required=True, help="output folder (COCO JSON, parts, skipped.json)")
    add_config_args(parser, default="annotate")
    args = parser.parse_args(argv)
    try:
        cfg = load_config(AnnotateConfig, args.config, args.overrides)
    except (ValueError, FileNotFoundError) as exc:
        print(f"[annotate] ERROR: bad configuration: {exc}", file=sys.stderr)
        return 2
    print(dump_config(cfg))
    try:
        summary = run_annotate(cfg, args.input, args.output)
    except (RunMismatchError, FileNotFoundError, ValueError) as exc:
        print(f"[annotate] ERROR: {exc}", file=sys.stderr)
        return 2
    return 0 if summary["failed"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
